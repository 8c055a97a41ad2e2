"""Exceptions of the xcoder client.

Every error the daemon reports travels as a symbolic code from include/xc_error.h
("XC_ESHAPE") plus a human message; the exceptions carry both.
"""

from ._generated import ERROR_CODES

# The codes of include/xc_error.h, name -> number (the wire carries names only),
# generated from the C table (_generated.py).
CODES = dict(ERROR_CODES)


def normalize_code(code):
    """A wire code as a known symbolic name; unknown names read as XC_EPROTO
    (PROTOCOL.md section 0)."""
    if isinstance(code, bytes):
        code = code.decode("utf-8", "replace")
    if isinstance(code, str) and code in CODES:
        return code
    return "XC_EPROTO"


class XcoderError(Exception):
    """An error from the daemon (an error reply) or from talking to it.

    code: symbolic name ("XC_ENOTFOUND"); message: the daemon's text (or ours);
    reply: the whole decoded reply map when there was one."""

    def __init__(self, code, message, reply=None):
        self.code = normalize_code(code)
        self.message = message
        self.reply = reply
        super().__init__(f"{self.code}: {message}")

    @property
    def errno(self):
        """The numeric value of code in include/xc_error.h."""
        return CODES.get(self.code, CODES["XC_EPROTO"])


class XcoderNack(XcoderError):
    """The daemon refused a batch (PROTOCOL.md 1.2). seq is the refused batch's
    sequence number (None when the daemon could not read the header); reason
    is the daemon's text; nacks lists every (seq, code, reason) refusal that
    was pending when this one was raised (this one first)."""

    def __init__(self, code, reason, seq=None, reply=None, nacks=None):
        super().__init__(code, reason, reply)
        self.reason = reason
        self.seq = seq
        self.nacks = nacks if nacks is not None else [(seq, self.code, reason)]

    def __str__(self):
        s = "batch" if self.seq is None else f"batch seq {self.seq}"
        return f"daemon refused {s}: {self.code}: {self.reason}"


class XcoderTimeout(XcoderError):
    """No reply came within the timeout (daemon down, stuck, or applying
    backpressure for longer than the timeout)."""

    def __init__(self, message):
        super().__init__("XC_ETIMEDOUT", message)


class CheckpointError(ValueError):
    """A checkpoint file is truncated, corrupt or not a safetensors file."""
