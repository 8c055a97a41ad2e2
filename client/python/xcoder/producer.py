"""Producer: streams activation batches to the daemon's ingest socket.

A DEALER socket sends batch messages (PROTOCOL.md 1.1) and reads one ack or nack
per batch. At most `window` batches are in flight; when the window is full,
send() waits for a reply. The daemon replies only once its bounded queue has
room, so a busy trainer slows the producer down instead of losing data
(backpressure, PROTOCOL.md 1.3); a wait longer than `timeout` raises
XcoderTimeout.
"""

import collections
import time

import zmq

from . import keys, wire
from .errors import XcoderError, XcoderNack, XcoderTimeout, normalize_code


class Producer:
    """Sends [N, 2, d] activation batches to one daemon.

    endpoint: the ingest URI ("ipc:///run/xcoderd/ingest.sock", "tcp://..."),
    or the daemon's run directory, or None (the run directory of instance
    `name`: wire.run_dir_default). An ipc endpoint whose socket file is
    missing fails at the first send (XcoderError XC_ENOTFOUND).
    window: batches in flight before send() waits (default 8, as libxcoder).
    timeout: seconds send()/flush() wait for a reply (None = forever).
    producer: id sent with each batch (<= 64 bytes), shown in the daemon's logs.
    stream: tag of the text this producer streams ("web", "chat", ...; <= 31
    bytes of [A-Za-z0-9._:/-]), sent with every batch; the daemon's examples
    name it, and a vocabulary registered for it (send_vocab) renders them.
    dtype: default wire dtype for send() (None: f16 input is sent as f16,
    anything else as f32).
    max_msg_bytes: when set (the daemon's `max_msg_bytes`, from
    Client.config("max_msg_bytes")), send() refuses larger batches with
    ValueError before sending: the daemon nacks them XC_ETOOBIG, and ZeroMQ
    drops the connection of a peer whose frame exceeds twice the limit, which
    a producer would only see as a timeout.

    Use as a context manager, or call close() (which flushes first unless
    flush=False). Not thread-safe: one Producer per thread."""

    def __init__(self, endpoint=None, window=8, timeout=30.0, producer="", dtype=None,
                 max_msg_bytes=None, context=None, server_key=None, client_key=None, name=None, stream=""):
        if window < 1:
            raise ValueError(f"window must be >= 1; got {window}")
        if len(producer.encode()) > wire.PRODUCER_MAX:
            raise ValueError(f"producer id is {len(producer.encode())} bytes; "
                             f"at most {wire.PRODUCER_MAX}")
        if dtype is not None and dtype not in wire.DTYPES:
            raise ValueError(f"dtype must be one of {sorted(wire.DTYPES)}; got {dtype!r}")
        self.stream = wire.check_stream(stream)
        self.endpoint = wire.endpoint_for(endpoint, "ingest", name)
        self.window = int(window)
        self.timeout = timeout
        self.producer = producer
        self.dtype = dtype
        self.max_msg_bytes = max_msg_bytes
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        keys.apply_curve(self._sock, self.endpoint, server_key, client_key)
        self._sock.connect(self.endpoint)
        self._next_seq = 0
        self._in_flight = collections.OrderedDict()  # seq -> tokens
        self._nacks = []                             # pending refusals: (seq, code, reason, reply)
        self.stats = {"batches_sent": 0, "batches_acked": 0, "batches_nacked": 0,
                      "tokens_sent": 0, "tokens_acked": 0, "credit": -1}

    # ----------------------------------------------------------- public --

    @property
    def in_flight(self):
        """Batches sent and not yet acked or nacked."""
        return len(self._in_flight)

    def send(self, acts, token_ids=None, positions=None, dtype=None, stream=None):
        """Sends one batch; returns its sequence number.

        acts: [N, 2, d] (per token: base model's d values, then chat model's)
        as a numpy array or torch tensor, float32 / float16, or bfloat16 (a
        torch bfloat16 tensor, or a uint16 view with dtype="bf16").
        token_ids: optional [N] integer ids; positions: optional [N, 2]
        (doc id, position in doc); both sent as uint32. With them the daemon
        collects each latent's max-activating examples with their context.
        stream: this batch's stream tag (default: the Producer's).

        Waits first while `window` batches are in flight. If a reply to an
        earlier batch is a nack, raises XcoderNack with the daemon's code and
        reason and does NOT send this batch. Bad arguments raise ValueError /
        TypeError before anything is sent."""
        frames, n, _, _ = wire.encode_batch(self._next_seq, acts, token_ids, positions,
                                            dtype or self.dtype, self.producer,
                                            self.stream if stream is None else stream)
        if self.max_msg_bytes is not None:
            size = sum(memoryview(f).nbytes for f in frames)
            if size > self.max_msg_bytes:
                raise ValueError(f"batch is {size} bytes; the daemon accepts at most "
                                 f"{self.max_msg_bytes} (max_msg_bytes): send fewer tokens "
                                 f"per batch")
        return self._send(frames, n)

    def send_vocab(self, pieces, stream=None, chunk=None, flush=True):
        """Registers the vocabulary of a stream (default: the Producer's) with
        the daemon: pieces[i] is the text of token id i (a list of str, e.g.
        xcoder.vocab_from_tokenizer(tok)). Examples of that stream are then
        rendered as text; the stream "" holds the default vocabulary, used by
        streams without their own. Sent in messages of at most `chunk` pieces
        (default: as many as fit in max_msg_bytes, else 65536) under the same
        window as batches; flush: wait for the acks (a refusal, e.g. a full
        vocabulary arena, raises XcoderNack). Returns the number of pieces."""
        stream = self.stream if stream is None else wire.check_stream(stream)
        pieces = list(pieces)
        if not pieces:
            raise ValueError("the vocabulary is empty")
        limit = self.max_msg_bytes or (64 << 20)
        i = 0
        while i < len(pieces):
            # as many pieces as fit (UTF-8 may take 4 bytes a char), at most `chunk`
            j, size = i, 512
            while j < len(pieces) and (chunk is None or j - i < chunk):
                b = 4 + len(pieces[j].encode("utf-8", "replace")) if pieces[j] is not None else 4
                if j > i and size + b > limit:
                    break
                size += b
                j += 1
            frames, n = wire.encode_vocab(self._next_seq, pieces[i:j], first=i, stream=stream,
                                          producer=self.producer)
            self._send(frames, 0)
            i = j
        if flush:
            self.flush()
        return len(pieces)

    def send_raw(self, header, frames=()):
        """Low-level: sends a batch message with the given header map (its seq
        is set to the next sequence number if absent) and body frames, as is,
        under the same window and reply accounting. For tests and tools that
        need to send what send() would refuse."""
        header = dict(header)
        header.setdefault("seq", self._next_seq)
        n = header.get("n", 0)
        return self._send([wire.pack(header)] + [bytes(f) if not isinstance(f, (bytes, memoryview))
                                                  else f for f in frames],
                          n if isinstance(n, int) else 0, seq=header["seq"])

    def flush(self, timeout=None):
        """Waits until every batch in flight is acked. Raises XcoderNack if a
        batch was refused (after the others were answered), XcoderTimeout if
        no reply came within the timeout (argument, else the Producer's)."""
        timeout = self.timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._in_flight:
            self._wait_reply(deadline, timeout)
        self._raise_nacks()

    def poll(self):
        """Reads the replies that have already arrived (no waiting) and raises
        XcoderNack for a refusal among them."""
        self._drain()
        self._raise_nacks()

    def close(self, flush=True):
        """Flushes (unless flush=False) and closes the socket; idempotent."""
        if self._sock is None:
            return
        try:
            if flush:
                self.flush()
        finally:
            self._sock.close(0)
            self._sock = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(flush=exc_type is None)

    def __del__(self):
        try:
            if self._sock is not None:
                self._sock.close(0)
        except Exception:
            pass

    # ---------------------------------------------------------- private --

    def _send(self, frames, n, seq=None):
        if self._sock is None:
            raise XcoderError("XC_ESTATE", "producer is closed")
        if self.stats["batches_sent"] == 0:
            wire.check_ipc_present(self.endpoint)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        self._drain()
        self._raise_nacks()
        while len(self._in_flight) >= self.window:
            self._wait_reply(deadline, self.timeout)
            self._raise_nacks()
        if seq is None:
            seq = self._next_seq
        # Sending on a DEALER blocks only at its send high-water mark (1000
        # messages), far above the window; guard anyway with the deadline.
        self._sock.setsockopt(zmq.SNDTIMEO, -1 if deadline is None
                              else max(0, int((deadline - time.monotonic()) * 1000)))
        try:
            self._sock.send_multipart(frames, copy=True)
        except zmq.Again:
            raise XcoderTimeout(f"could not hand a batch to ZeroMQ within {self.timeout} s "
                                f"({self.endpoint})") from None
        self._in_flight[seq] = n
        if isinstance(seq, int) and seq >= self._next_seq:
            self._next_seq = seq + 1
        self.stats["batches_sent"] += 1
        self.stats["tokens_sent"] += n
        return seq

    def _drain(self):
        while self._sock.poll(0, zmq.POLLIN):
            self._handle(self._sock.recv_multipart())

    def _wait_reply(self, deadline, timeout):
        ms = -1 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
        if not self._sock.poll(ms, zmq.POLLIN):
            raise XcoderTimeout(
                f"no reply from the daemon at {self.endpoint} within {timeout} s "
                f"({len(self._in_flight)} batches in flight; daemon down, stuck, or its "
                f"queue has been full for that long)")
        self._handle(self._sock.recv_multipart())
        self._drain()

    def _handle(self, frames):
        # A DEALER gets the bare reply frame (a REQ-style empty delimiter is skipped).
        while frames and not frames[0]:
            frames = frames[1:]
        if not frames:
            return
        m = wire.unpack_map(frames[-1], "ingest reply")
        seq = m.get("seq")
        if seq not in self._in_flight:
            # Replies come in order; a nack without seq (unreadable header)
            # answers the oldest batch in flight.
            if seq is None and self._in_flight:
                seq = next(iter(self._in_flight))
            else:
                return  # a stale reply (to a batch already given up on)
        n = self._in_flight.pop(seq)
        if m.get("type") == "ack":
            self.stats["batches_acked"] += 1
            if n:  # a vocabulary chunk (n = 0 here) acks pieces, not tokens
                self.stats["tokens_acked"] += int(m.get("n", n))
            if "credit" in m:
                self.stats["credit"] = m["credit"]
        elif m.get("type") == "nack":
            self.stats["batches_nacked"] += 1
            self._nacks.append((m.get("seq"), m.get("code", "XC_EPROTO"),
                                str(m.get("reason", "")), m))
        else:
            raise XcoderError("XC_EPROTO", f"unexpected ingest reply type {m.get('type')!r}", m)

    def _raise_nacks(self):
        if not self._nacks:
            return
        nacks, self._nacks = self._nacks, []
        seq, code, reason, reply = nacks[0]
        raise XcoderNack(code, reason, seq=seq, reply=reply,
                         nacks=[(s, normalize_code(c), r) for s, c, r, _ in nacks])
