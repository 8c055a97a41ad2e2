"""The wire format of proto/PROTOCOL.md (version 1), without sockets.

Encoding writes every map as map32 and every array as array32, keys in the
order given, exactly like the C codec (proto/proto.c), so the bytes match
proto/vectors.json; scalars use msgpack's shortest encodings, floats float64.
Decoding accepts any MessagePack encoding and checks `v` first.
"""

import os
import struct

import msgpack
import numpy as np

from .errors import XcoderError

PROTO_VERSION = 1
HEADER_MAX = 4096          # bytes in an ingest header frame
REQUEST_MAX = 65536        # bytes in a control request frame
PRODUCER_MAX = 64          # bytes in a producer id
DEFAULT_NAME = "default"    # the daemon's default instance name
STREAM_MAX = 31            # bytes in a stream tag ([A-Za-z0-9._:/-])
PIECE_MAX = 1024           # bytes in one vocabulary piece

# Wire dtype name -> (numpy dtype of the bytes on the wire, bytes per value).
# bf16 travels as its raw 16-bit pattern, so numpy sees it as little-endian uint16.
DTYPES = {"f32": np.dtype("<f4"), "f16": np.dtype("<f2"), "bf16": np.dtype("<u2")}


# ----------------------------------------------------------------- msgpack --

def _pack_into(out, obj):
    if isinstance(obj, dict):
        out.append(b"\xdf" + struct.pack(">I", len(obj)))
        for k, v in obj.items():
            _pack_into(out, k)
            _pack_into(out, v)
    elif isinstance(obj, (list, tuple)):
        out.append(b"\xdd" + struct.pack(">I", len(obj)))
        for v in obj:
            _pack_into(out, v)
    elif isinstance(obj, np.generic):
        _pack_into(out, obj.item())
    else:
        out.append(msgpack.packb(obj, use_bin_type=True))


def pack(obj):
    """One MessagePack value as bytes, maps/arrays in their 32-bit forms (as the
    C codec writes them)."""
    out = []
    _pack_into(out, obj)
    return b"".join(out)


def unpack(buf, unicode_errors="strict"):
    """Decodes one MessagePack value filling buf; XcoderError(XC_EPROTO) when
    it is not valid MessagePack (or has trailing bytes). unicode_errors="replace"
    decodes strings that are not UTF-8 with U+FFFD instead of failing."""
    try:
        return msgpack.unpackb(bytes(buf), raw=False, strict_map_key=False, unicode_errors=unicode_errors)
    except (ValueError, msgpack.UnpackException, msgpack.ExtraData, TypeError) as e:
        raise XcoderError("XC_EPROTO", f"not valid MessagePack ({len(buf)} bytes): {e}")


def unpack_map(buf, what="message", unicode_errors="strict"):
    """Decodes a frame that must be one map carrying v = 1 (checked before
    anything else, as PROTOCOL.md section 0 asks)."""
    m = unpack(buf, unicode_errors)
    if not isinstance(m, dict):
        raise XcoderError("XC_EPROTO", f"{what} is not a MessagePack map")
    v = m.get("v")
    if v != PROTO_VERSION:
        raise XcoderError("XC_EVERSION",
                          f"{what} has protocol version {v!r}; this client speaks {PROTO_VERSION}")
    return m


# ------------------------------------------------------------ endpoints --

def system_run_root():
    """Where systemd's RuntimeDirectory lives (/run; tests point
    $XCODER_SYSTEM_RUN_ROOT elsewhere)."""
    return os.environ.get("XCODER_SYSTEM_RUN_ROOT") or "/run"


def run_dir_default(name=None):
    """The daemon's run directory when none is given; the one rule of every
    client (libxcoder's xc_client_default_run_dir, the JS runDirDefault):
    $XCODER_RUN_DIR if set; else where xcoderd puts it when started without
    --run_dir, $XDG_RUNTIME_DIR/xcoderd-NAME (/tmp/xcoderd-NAME without
    XDG_RUNTIME_DIR); but when no daemon listens there and one run by systemd
    does, /run/xcoderd (instance "default") or /run/xcoderd-NAME."""
    env = os.environ.get("XCODER_RUN_DIR")
    if env:
        return env
    name = name or DEFAULT_NAME
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    user = os.path.join(xdg if xdg else "/tmp", "xcoderd-" + name)
    if os.path.exists(os.path.join(user, "control.sock")):
        return user
    sys_dir = os.path.join(system_run_root(), "xcoderd" if name == DEFAULT_NAME else "xcoderd-" + name)
    if os.path.exists(os.path.join(sys_dir, "control.sock")):
        return sys_dir
    return user


def endpoint_for(endpoint, which, name=None):
    """A ZeroMQ endpoint for socket `which` ("ingest", "control", "events").

    endpoint may be a URI ("ipc://...", "tcp://..."; used as is), a run
    directory (the daemon's ipc sockets RUN_DIR/<which>.sock), or None (the
    run directory of instance `name`, see run_dir_default)."""
    if endpoint is None:
        endpoint = run_dir_default(name)
    endpoint = os.fspath(endpoint)
    if "://" in endpoint:
        return endpoint
    return f"ipc://{os.path.abspath(endpoint)}/{which}.sock"


def check_ipc_present(endpoint):
    """An ipc endpoint whose socket file does not exist has no daemon behind
    it: raise XcoderError XC_ENOTFOUND at once instead of waiting for the
    timeout (tcp endpoints, and socket files nobody answers on, still wait)."""
    if endpoint.startswith("ipc://") and not os.path.exists(endpoint[6:]):
        raise XcoderError("XC_ENOTFOUND",
                          f"no daemon is listening: {endpoint[6:]} does not exist (start xcoderd, "
                          f"or pass the run directory or name it uses)")


# ---------------------------------------------------------------- ingest --

def check_stream(stream):
    """A stream tag ("web", "chat", ...): "" or None for none, else 1-31 bytes of
    [A-Za-z0-9._:/-] (PROTOCOL.md 1.1). Returns it as str; ValueError otherwise."""
    if stream is None or stream == "":
        return ""
    if (not isinstance(stream, str) or len(stream.encode()) > STREAM_MAX
            or any(not (c.isascii() and (c.isalnum() or c in "._:/-")) for c in stream)):
        raise ValueError(f"stream tag must be at most {STREAM_MAX} bytes of [A-Za-z0-9._:/-] "
                         f"(e.g. 'web', 'chat'); got {stream!r}")
    return stream


def batch_header(seq, n, d, dtype, producer="", has_tokens=False, has_pos=False, stream=""):
    """The batch header map (PROTOCOL.md 1.1), keys in the C codec's order
    (`stream` last and only when set, as the C codec writes it)."""
    h = {"v": PROTO_VERSION, "type": "batch", "producer": producer, "seq": int(seq),
         "n": int(n), "d": int(d), "dtype": dtype, "layout": "n2d",
         "has_tokens": bool(has_tokens), "has_pos": bool(has_pos)}
    if stream:
        h["stream"] = check_stream(stream)
    return h


def _torch_to_numpy(x):
    """A torch tensor as (numpy array, wire dtype or None); bfloat16 becomes its
    uint16 bit pattern. Never imports torch itself."""
    import torch  # only reached when x is a torch tensor, so torch is importable
    x = x.detach()
    if x.device.type != "cpu":
        x = x.cpu()
    if x.dtype == torch.bfloat16:
        return x.contiguous().view(torch.int16).numpy().view(np.uint16), "bf16"
    return x.numpy(), None


def _is_torch(x):
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def as_payload(acts, dtype=None):
    """Checks activations [N, 2, d] and returns (array, wire dtype, n, d), the
    array C-contiguous little-endian in the wire dtype.

    acts: numpy array or torch tensor of float32 / float16 (float64 is converted
    to float32); bfloat16 as a uint16 (or int16) view with dtype="bf16", or a
    torch bfloat16 tensor. dtype forces the wire dtype ("f32", "f16", "bf16"):
    float data is converted to it (bf16 by rounding to nearest even)."""
    wire = None
    if _is_torch(acts):
        acts, wire = _torch_to_numpy(acts)
    a = np.asarray(acts)
    if a.ndim != 3 or a.shape[1] != 2:
        raise ValueError(f"activations must have shape [N, 2, d] (tokens, base/chat, width); "
                         f"got {list(a.shape)}")
    n, _, d = a.shape
    if n < 1 or d < 1:
        raise ValueError(f"activations are empty: shape {list(a.shape)}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}; got {dtype!r}")
    kind = a.dtype.kind
    if wire == "bf16" or (kind in "ui" and a.dtype.itemsize == 2):
        if wire is None and dtype != "bf16":
            raise TypeError("16-bit integer activations are read as bfloat16 bit patterns: "
                            "pass dtype=\"bf16\"")
        if dtype not in (None, "bf16"):
            raise TypeError(f"bfloat16 activations cannot be sent as {dtype}")
        if kind == "i":
            a = a.view(a.dtype.str.replace("i", "u"))
        return np.ascontiguousarray(a, dtype="<u2"), "bf16", n, d
    if kind != "f":
        raise TypeError(f"activations must be float32, float16 or bfloat16; got {a.dtype}")
    if dtype is None:
        dtype = "f16" if a.dtype.itemsize == 2 else "f32"
    if dtype == "bf16":
        out = f32_to_bf16(a.astype(np.float32, copy=False))
    else:
        out = np.ascontiguousarray(a, dtype=DTYPES[dtype])
    return out, dtype, n, d


def f32_to_bf16(x):
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even; NaN stays NaN."""
    b = np.ascontiguousarray(x, dtype="<f4").view("<u4")
    rounded = ((b + (0x7FFF + ((b >> 16) & 1))) >> 16).astype("<u2")
    nan = np.isnan(x)
    if nan.any():
        rounded = np.where(nan, ((b >> 16) | 0x0040).astype("<u2"), rounded)
    return rounded


def bf16_to_f32(u):
    """bfloat16 bit patterns (uint16) -> float32."""
    return (np.asarray(u, dtype="<u2").astype("<u4") << 16).view("<f4")


def decode_payload(buf, dtype, n=None, d=None):
    """Wire payload bytes -> float32 array ([n, 2, d] when n and d are given)."""
    raw = np.frombuffer(buf, dtype=DTYPES[dtype])
    x = bf16_to_f32(raw) if dtype == "bf16" else raw.astype(np.float32)
    return x.reshape(n, 2, d) if n is not None else x


def token_frame(token_ids, n):
    t = np.asarray(token_ids)
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(f"token_ids must have shape [{n}]; got {list(t.shape)}")
    if t.dtype.kind not in "ui":
        raise TypeError(f"token_ids must be integers; got {t.dtype}")
    if t.size and (t.min() < 0 or t.max() > 0xFFFFFFFF):
        raise ValueError("token_ids must fit in uint32")
    return np.ascontiguousarray(t, dtype="<u4")


def position_frame(positions, n):
    p = np.asarray(positions)
    if p.ndim != 2 or p.shape != (n, 2):
        raise ValueError(f"positions must have shape [{n}, 2] (doc id, position); "
                         f"got {list(p.shape)}")
    if p.dtype.kind not in "ui":
        raise TypeError(f"positions must be integers; got {p.dtype}")
    if p.size and (p.min() < 0 or p.max() > 0xFFFFFFFF):
        raise ValueError("positions must fit in uint32")
    return np.ascontiguousarray(p, dtype="<u4")


def encode_batch(seq, acts, token_ids=None, positions=None, dtype=None, producer="", stream=""):
    """The frames of one batch message: [header, payload, (tokens), (positions)]
    as bytes-like objects; returns (frames, n, d, wire dtype)."""
    stream = check_stream(stream)
    payload, wire, n, d = as_payload(acts, dtype)
    frames = [None, payload]
    if token_ids is not None:
        frames.append(token_frame(token_ids, n))
    if positions is not None:
        frames.append(position_frame(positions, n))
    frames[0] = pack(batch_header(seq, n, d, wire, producer,
                                  token_ids is not None, positions is not None, stream))
    return frames, n, d, wire


# ----------------------------------------------------------- vocabularies --

def vocab_header(seq, n, first=0, stream="", producer=""):
    """The vocab message header (PROTOCOL.md 1.5), keys in the C codec's order."""
    return {"v": PROTO_VERSION, "type": "vocab", "producer": producer, "seq": int(seq),
            "stream": check_stream(stream), "first": int(first), "n": int(n)}


def encode_vocab(seq, pieces, first=0, stream="", producer=""):
    """The frames of one vocab message: [header, lengths (n u32 LE), bytes]
    for pieces (a list of str; None counts as no piece, sent as "") standing
    for token ids first, first + 1, ...; returns (frames, n)."""
    raw = [b"" if p is None else (p.encode("utf-8", "replace") if isinstance(p, str) else bytes(p))
           for p in pieces]
    if not raw:
        raise ValueError("a vocabulary needs at least one piece")
    for i, b in enumerate(raw):
        if len(b) > PIECE_MAX:
            raise ValueError(f"piece {first + i} is {len(b)} bytes; at most {PIECE_MAX}")
    lens = np.array([len(b) for b in raw], dtype="<u4")
    return [pack(vocab_header(seq, len(raw), first, stream, producer)), lens.tobytes(),
            b"".join(raw)], len(raw)


# --------------------------------------------------------------- examples --

def _escape_piece(p):
    out = []
    for ch in p:
        o = ord(ch)
        if ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif o < 0x20 or o == 0x7F:
            out.append("\\x%02x" % o)
        else:
            out.append(ch)
    return "".join(out)


def render_example(ex):
    """One example of the `examples` reply (PROTOCOL.md 2.3) as one line of
    text: its window's pieces joined, the activating token in [[ ]], a token
    without a piece as <id> (<?> when its id is unknown), control characters
    escaped (\\n, \\r, \\t, \\xHH). Every client renders it the same way
    (proto/vectors.json)."""
    tokens = ex.get("tokens") or []
    pieces = ex.get("pieces")
    at = ex.get("at", -1)
    parts = []
    for i, t in enumerate(tokens):
        p = pieces[i] if pieces is not None and i < len(pieces) else None
        if p is None:
            p = "<?>" if t is None else f"<{t}>"
        else:
            p = _escape_piece(p)
        parts.append(f"[[{p}]]" if i == at else p)
    return "".join(parts)


def request(op, id=None, **args):
    """A control request map (PROTOCOL.md 2), keys v, op, id, then the arguments."""
    m = {"v": PROTO_VERSION, "op": op}
    if id is not None:
        m["id"] = id
    for k, v in args.items():
        if v is not None:
            m[k] = v
    return m
