"""Control requests (PROTOCOL.md 2) and event subscriptions (PROTOCOL.md 3)."""

import itertools
import time

import zmq

from . import keys, wire
from .errors import XcoderError, XcoderTimeout



class _OwnsSocket:
    """close() / context manager / finaliser for a class holding one ZeroMQ socket in _sock."""

    def close(self):
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

class Client(_OwnsSocket):
    """Request/reply with the daemon's control socket.

    endpoint: the control URI, or the daemon's run directory, or None (the
    run directory of instance `name`, found as libxcoder and the CLI find it:
    wire.run_dir_default). An ipc endpoint whose socket file is missing fails
    at once (XcoderError XC_ENOTFOUND). timeout: seconds to wait for a reply
    (None = forever). A DEALER socket is used, so a timed-out request never
    wedges the client: a late reply is recognised by its id and dropped.

    Every method returns the reply's fields as a dict (or the one field that
    matters, as documented); an error reply raises XcoderError with the
    daemon's code and message."""

    def __init__(self, endpoint=None, timeout=30.0, context=None, server_key=None, client_key=None,
                 name=None):
        self.endpoint = wire.endpoint_for(endpoint, "control", name)
        self.timeout = timeout
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        keys.apply_curve(self._sock, self.endpoint, server_key, client_key)
        self._sock.connect(self.endpoint)
        self._ids = itertools.count(1)

    def request(self, op, timeout=None, **args):
        """Sends {v, op, id, **args} (None-valued args are left out) and returns
        the success reply map. Raises XcoderError on an error reply,
        XcoderTimeout when no reply came in time."""
        if self._sock is None:
            raise XcoderError("XC_ESTATE", "client is closed")
        wire.check_ipc_present(self.endpoint)
        rid = next(self._ids)
        body = wire.pack(wire.request(op, id=rid, **args))
        if len(body) > wire.REQUEST_MAX:
            raise ValueError(f"request is {len(body)} bytes; at most {wire.REQUEST_MAX}")
        self._sock.send(body)
        timeout = self.timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            ms = -1 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if not self._sock.poll(ms, zmq.POLLIN):
                raise XcoderTimeout(f"no reply to {op!r} from {self.endpoint} within {timeout} s")
            frames = self._sock.recv_multipart()
            while frames and not frames[0]:
                frames = frames[1:]
            if not frames:
                continue
            m = wire.unpack_map(frames[-1], f"reply to {op!r}")
            if m.get("id") != rid:
                continue  # a late reply to an earlier, timed-out request
            if m.get("ok") is not True:
                raise XcoderError(m.get("code", "XC_EPROTO"), str(m.get("message", "")), m)
            return m

    # ---------------------------------------------------------- the ops --

    def ping(self):
        """{proto, name, uptime_s, ...}"""
        return self.request("ping")

    def status(self):
        """The stats fields (PROTOCOL.md 3.1) plus `config`."""
        return self.request("status")

    def latent(self, j):
        """Statistics of latent j (PROTOCOL.md 3.3) as a dict, with `j` and
        `snapshot_step` (the step the values belong to) added.
        XcoderError XC_ENOTFOUND when j >= dict_size."""
        r = self.request("latent", j=int(j))
        stats = dict(r.get("stats", {}))
        stats.setdefault("j", r.get("j", j))
        if "snapshot_step" in r:
            stats.setdefault("snapshot_step", r["snapshot_step"])
        return stats

    def top(self, by="delta_norm", n=10, order="desc", alive_only=False):
        """The n latents best by field `by` (any PROTOCOL.md 3.3 field but
        `dead`), best first: a list of dicts each with `j`. order "asc" gives
        the smallest first. XcoderError XC_EINVAL for an unknown field."""
        return self.request("top", by=by, n=int(n), order=order,
                            alive_only=bool(alive_only)).get("latents", [])

    def examples(self, j, n=None):
        """Latent j's live examples (op "examples", PROTOCOL.md 2.3): a dict
        with `top` (the most activating token occurrences seen in training,
        best first) and `random` (a uniform sample of its activations), each a
        list of {act, step, producer, stream, doc, pos, token, tokens, at,
        pieces?}: `tokens` is the window of token ids around the occurrence
        (`at` indexes it), `pieces` their text when the stream has a
        vocabulary; plus `seen` (activations counted), `window`, `top_n`,
        `random_n`. n caps each list. xcoder.render_example(ex) gives the
        one-line text view."""
        return self.request("examples", j=int(j), n=None if n is None else int(n))

    def reset_examples(self, j=None):
        """Forgets latent j's examples (every latent's when j is None)."""
        if j is None:
            return self.request("examples_reset", all=True)
        return self.request("examples_reset", j=int(j))

    def checkpoint(self, timeout=None):
        """Writes a checkpoint now; returns {path, step, bytes} once written.
        XcoderError XC_EIO with the reason if it could not be written."""
        return self.request("checkpoint", timeout=timeout)

    def pause(self):
        return self.request("pause")

    def resume(self):
        return self.request("resume")

    def scaling(self, tokens, timeout=None):
        """Starts the exact Latent Scaling pass over the next `tokens` streamed
        tokens (op "scaling", argument `tokens`); returns the reply. A daemon
        without the op raises XcoderError XC_EUNKNOWN ("daemon too old")."""
        return self.request("scaling", timeout=timeout, tokens=int(tokens))

    def scaling_cancel(self):
        """Cancels the exact pass under way: {cancelled, tokens_done,
        tokens_target}; XcoderError XC_ENOTFOUND when none is. Progress while
        one runs: status()["scaling"] (tokens_done of tokens_target)."""
        return self.request("scaling", cancel=True)

    def config(self, key=None):
        """Every config key -> effective value; with key, that key's value
        (XcoderError XC_ENOTFOUND if unknown)."""
        cfg = self.request("config", key=key).get("config", {})
        return cfg if key is None else cfg[key]

    def shutdown(self):
        """Asks the daemon to stop (finish the step, checkpoint, exit)."""
        return self.request("shutdown")

    def history(self, n=100):
        """The newest n stats events of the daemon's history (op "history"),
        oldest first, as a list of dicts (the stats event's fields; undefined
        values None). At most 100000 events and 4 MiB of them in one reply;
        for the whole history read the files with xcoder.read_history."""
        from .history import parse_lines
        return parse_lines(self.request("history", n=int(n)).get("lines", []))

    def metrics(self):
        """The daemon's Prometheus text exposition (op "metrics"), as a str."""
        return self.request("metrics")["text"]

    # remote access (remote.py; PROTOCOL.md 2.1, 2.2): checkpoint files and latent tables
    from .remote import checkpoints, fetch_checkpoint, table



class Subscription(_OwnsSocket):
    """An iterator of (topic, body) events from the daemon's PUB socket.

    endpoint: the events URI, or the run directory, or None. topics: a topic
    prefix or a list of them ("stats", "checkpoint", "alert"); None or "" =
    everything. timeout: seconds iteration waits for the next event before
    raising XcoderTimeout (None = forever). Nothing is dropped silently: an
    event whose strings are not valid UTF-8 arrives with U+FFFD in their place;
    one that cannot be decoded at all arrives as topic "malformed" with body
    {"type": "malformed", "error": reason, "raw": [frames]} (both counted in
    `malformed`). Joining is asynchronous in ZeroMQ: events
    published in the first milliseconds after subscribing may be missed."""

    def __init__(self, endpoint=None, topics=None, timeout=None, context=None, server_key=None,
                 client_key=None, name=None):
        self.endpoint = wire.endpoint_for(endpoint, "events", name)
        self.timeout = timeout
        self.malformed = 0
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        if topics is None or isinstance(topics, (str, bytes)):
            topics = [topics or ""]
        for t in topics:
            self._sock.setsockopt(zmq.SUBSCRIBE, t.encode() if isinstance(t, str) else t)
        keys.apply_curve(self._sock, self.endpoint, server_key, client_key)
        self._sock.connect(self.endpoint)

    def next(self, timeout=None):
        """The next event as (topic, body dict); XcoderTimeout when none came
        within timeout (argument, else the subscription's)."""
        timeout = self.timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            ms = -1 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if not self._sock.poll(ms, zmq.POLLIN):
                raise XcoderTimeout(f"no event from {self.endpoint} within {timeout} s")
            frames = self._sock.recv_multipart()
            if len(frames) != 2:
                self.malformed += 1
                return "malformed", {"type": "malformed", "raw": frames,
                                     "error": f"an event has 2 frames (topic, body); got {len(frames)}"}
            try:
                body = wire.unpack_map(frames[1], "event")
            except XcoderError as e:
                self.malformed += 1
                try:  # strings that are not UTF-8: surface the event with U+FFFD
                    body = wire.unpack_map(frames[1], "event", unicode_errors="replace")
                except XcoderError:
                    return "malformed", {"type": "malformed", "error": str(e), "raw": frames}
            return frames[0].decode("utf-8", "replace"), body

    def __iter__(self):
        return self

    def __next__(self):
        return self.next()



def subscribe(endpoint=None, topics=None, timeout=None, context=None, server_key=None, client_key=None,
              name=None):
    """Subscribes to the daemon's events: an iterator of (topic, body) with
    body the decoded map (always v, type, name, time, then the topic's fields,
    PROTOCOL.md 3). See Subscription."""
    return Subscription(endpoint, topics, timeout, context, server_key, client_key, name)
