#!/usr/bin/python3
"""Integration tests of build/xcoderd on ipc:// endpoints in a temp dir, speaking
the wire protocol (proto/PROTOCOL.md) directly with pyzmq + msgpack, so they also
check the protocol independently of libxcoder. Prints "ok - name" / "not ok -
name: why" lines (tests/run.sh counts them) and exits non-zero on any failure.
Run from the repository root: /usr/bin/python3 tests/integ_daemon.py"""
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from xc_integ import check, failed, run_case, wait_for  # noqa: E402

import msgpack
import numpy as np
import zmq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
XCODERD = os.environ.get("XCODERD", os.path.join(ROOT, "build", "xcoderd"))  # override: a sanitizer build
D, F, K, B = 32, 256, 4, 64


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (hl,) = struct.unpack("<Q", raw[:8])
    check(hl % 8 == 0, "header length %d not 8-aligned" % hl)
    hdr = json.loads(raw[8:8 + hl].decode("utf-8"))
    meta = hdr.pop("__metadata__", {})
    data = raw[8 + hl:]
    dt = {"F32": "<f4", "I32": "<i4", "I64": "<i8"}
    out, end = {}, 0
    for name, t in sorted(hdr.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        a, b = t["data_offsets"]
        check(a == end, "tensor %s starts at %d, previous ended at %d" % (name, a, end))
        end = b
        arr = np.frombuffer(data[a:b], dtype=dt[t["dtype"]]).reshape(t["shape"])
        out[name] = arr
    check(end == len(data), "data section %d bytes but tensors end at %d" % (len(data), end))
    return out, meta


class Daemon:
    def __init__(self, tmp, *extra, name=None):
        # unique per process: the shared-memory name is host-wide, and a daemon
        # refuses a name another live daemon publishes under
        name = name or "t%d" % os.getpid()
        self.name = name
        self.dir = tmp
        self.run_dir = os.path.join(tmp, "run")
        self.state_dir = os.path.join(tmp, "state")
        self.log = open(os.path.join(tmp, "daemon-%s.log" % name), "w+")
        args = [XCODERD, "--run_dir", self.run_dir, "--state_dir", self.state_dir, "--name", name,
                "--d", str(D), "--dict_size", str(F), "--k", str(K), "--batch_size", str(B),
                "--stats_interval", "0.2", "--threads", "1", "--log_level", "info"] + list(extra)
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        self.ctx = zmq.Context.instance()
        self.ctl = None
        self.ep = {k: "ipc://%s/%s.sock" % (self.run_dir, k) for k in ("ingest", "control", "events")}
        wait_for(lambda: os.path.exists(os.path.join(self.run_dir, "control.sock")) or
                 self.proc.poll() is not None, what="control socket")
        check(self.proc.poll() is None, "daemon exited at start: " + self.logtext())
        self._ctl()
        wait_for(lambda: self.req({"op": "ping"}, timeout=0.5, retry=False) is not None, what="ping")

    def logtext(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-3000:]

    def _ctl(self):
        if self.ctl is not None:
            self.ctl.close(0)
        self.ctl = self.ctx.socket(zmq.DEALER)
        self.ctl.setsockopt(zmq.LINGER, 0)
        self.ctl.connect(self.ep["control"])

    def req_raw(self, frames, timeout=10.0):
        """Sends raw body frames (after our empty delimiter) and returns the reply dict."""
        self.ctl.send_multipart([b""] + frames)
        if not self.ctl.poll(int(timeout * 1000)):
            self._ctl()
            return None
        fr = self.ctl.recv_multipart()
        check(fr[0] == b"" and len(fr) == 2, "reply envelope %r" % fr[:1])
        return msgpack.unpackb(fr[1])

    def req(self, body, timeout=10.0, retry=True):
        body = dict(body)
        body.setdefault("v", 1)
        r = self.req_raw([msgpack.packb(body)], timeout)
        if r is None and retry:
            raise AssertionError("no reply to %r within %.0fs" % (body, timeout))
        return r

    def ok(self, body, timeout=10.0):
        r = self.req(body, timeout)
        check(r.get("ok") is True and r.get("v") == 1, "request %r failed: %r" % (body, r))
        return r

    def status(self):
        return self.ok({"op": "status"})

    def producer(self):
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(self.ep["ingest"])
        return s

    def subscriber(self, topic=b""):
        s = self.ctx.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SUBSCRIBE, topic)
        s.connect(self.ep["events"])
        return s

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        if self.ctl is not None:
            self.ctl.close(0)
            self.ctl = None
        return rc


def header(seq, n, d=D, dtype="f32", **kw):
    h = {"v": 1, "type": "batch", "producer": "integ", "seq": seq, "n": n, "d": d, "dtype": dtype,
         "layout": "n2d"}
    h.update(kw)
    return msgpack.packb(h)


def batch(rng, n, dtype="f32"):
    x = rng.standard_normal((n, 2, D)).astype(np.float32)
    return x.astype({"f32": "<f4", "f16": "<f2"}[dtype]).tobytes()


def push(sock, frames, timeout=10.0):
    sock.send_multipart(frames)
    if not sock.poll(int(timeout * 1000)):
        raise AssertionError("no ingest reply within %.0fs" % timeout)
    return msgpack.unpackb(sock.recv())


def push_window(sock, msgs, window=8, timeout=20.0):
    """Sends msgs (lists of frames) keeping at most `window` in flight; returns replies."""
    replies, sent, t0 = [], 0, time.time()
    while len(replies) < len(msgs):
        while sent < len(msgs) and sent - len(replies) < window:
            sock.send_multipart(msgs[sent])
            sent += 1
        if not sock.poll(int(max(0.01, timeout - (time.time() - t0)) * 1000)):
            raise AssertionError("only %d of %d replies within %.0fs" % (len(replies), len(msgs), timeout))
        replies.append(msgpack.unpackb(sock.recv()))
    return replies


def accounting(st):
    return (st["tokens_acked"], st["tokens_trained"] + st["tokens_buffered"] + st["tokens_queued"] +
            st["tokens_failed"])


TMP = tempfile.mkdtemp(prefix="xcd-integ-")
RNG = np.random.default_rng(1234)
DMN = None
SUB = None


def test_start_and_initial_checkpoint():
    """A fresh daemon answers, and a step-0 checkpoint has the reference layout:
    decoder.weight[m] == encoder.weight[m].T at init checks both transposes."""
    global DMN, SUB
    DMN = Daemon(TMP, "--mix_tokens", "256", "--queue_size", "8", "--max_msg_bytes", "65536",
                 "--checkpoint_interval", "0")
    SUB = DMN.subscriber()
    r = DMN.ok({"op": "checkpoint", "id": 1})
    check(r["id"] == 1 and r["step"] == 0 and os.path.isfile(r["path"]), "reply %r" % r)
    check(r["path"].startswith(DMN.state_dir), "path %s outside state_dir" % r["path"])
    t, meta = read_safetensors(r["path"])
    check(t["encoder.weight"].shape == (2, D, F), "encoder.weight %s" % (t["encoder.weight"].shape,))
    check(t["decoder.weight"].shape == (2, F, D), "decoder.weight shape")
    check(t["encoder.bias"].shape == (F,) and t["decoder.bias"].shape == (2, D), "bias shapes")
    check(t["threshold"].shape == () and t["k"].shape == () and int(t["k"]) == K, "k %r" % t["k"])
    check(int(t["code_normalization_id"]) == 1, "code_normalization_id")
    for m in range(2):
        check(np.array_equal(t["decoder.weight"][m], t["encoder.weight"][m].T),
              "decoder.weight[%d] != encoder.weight[%d].T at init" % (m, m))
    check(np.array_equal(t["encoder.weight"][0], t["encoder.weight"][1]), "base/chat encoders differ at init")
    norms = np.linalg.norm(np.concatenate([t["encoder.weight"][0], t["encoder.weight"][1]]), axis=0)
    check(np.allclose(norms, norms[0], rtol=1e-4), "encoder columns do not share one norm")
    check(meta.get("format") == "xcoderd-crosscoder" and meta.get("step") == "0", "meta %r" % meta)
    check(json.loads(meta["config"])["d"] == D, "config metadata")
    check(not any(f.startswith(".") for f in os.listdir(DMN.state_dir)), "temp file left behind")


def test_batches_become_steps():
    p = DMN.producer()
    msgs = [[header(s, B), batch(RNG, B)] for s in range(20)]
    reps = push_window(p, msgs, window=4)
    for s, r in enumerate(reps):
        check(r == {"v": 1, "type": "ack", "seq": s, "n": B, "credit": r.get("credit")}, "reply %r" % r)
        check(isinstance(r["credit"], int) and 0 <= r["credit"] <= 8, "credit %r" % r["credit"])
    # mixing buffer of 256 tokens: a step each time it is full -> (20*64 - 256)/64 + 1 = 17 steps
    st = wait_for(lambda: (lambda s: s if s["step"] >= 17 and s["tokens_queued"] == 0 else None)(DMN.status()),
                  what="17 steps")
    check(st["step"] == 17, "step %d" % st["step"])
    check(st["tokens_trained"] == 17 * B and st["tokens_buffered"] == 256 - B, "tokens %r" % (st,))
    a, b = accounting(st)
    check(a == b == 20 * B, "acked %d vs trained+buffered+queued %d" % (a, b))
    check(st["l0"] > 0 and len(st["fve"]) == 2 and st["loss"] > 0, "metrics %r" % st)
    p.close(0)


def test_subscriber_gets_stats():
    t0, got = time.time(), None
    while time.time() - t0 < 5:
        if SUB.poll(500):
            topic, body = SUB.recv_multipart()
            if topic == b"stats":
                got = msgpack.unpackb(body)
                break
    check(got is not None, "no stats event in 5 s")
    for k in ("v", "type", "name", "time", "step", "tokens", "loss", "recon_l2", "recon_mse", "aux", "fve",
              "l0", "dead_fraction", "theta", "tokens_per_s", "queue_depth", "uptime_s", "counters"):
        check(k in got, "stats event lacks %s" % k)
    check(got["type"] == "stats" and got["name"] == DMN.name, "event %r" % got)
    check(all(k in got["counters"] for k in ("XC_ESHAPE", "XC_ENONFINITE", "batches_refused")), "counters")


BAD_CASES = None


def bad_cases():
    good = batch(RNG, 4)
    nan = np.zeros((4, 2, D), np.float32)
    nan[2, 1, 5] = np.nan
    inf16 = np.zeros((4, 2, D), np.float16)
    inf16[0, 0, 1] = np.inf
    big = 200  # tokens: 200*2*32*4 = 51200 bytes of payload +  tokens frame > 65536? no: use 300
    big = 300
    return [
        ("bad version", [msgpack.packb({"v": 2, "type": "batch", "seq": 1, "n": 4, "d": D, "dtype": "f32"}), good],
         "XC_EVERSION", True),
        ("header not msgpack", [b"\xc1garbage", good], "XC_EPROTO", False),
        ("header not a map", [msgpack.packb([1, 2, 3]), good], "XC_EPROTO", False),
        ("missing n", [msgpack.packb({"v": 1, "type": "batch", "seq": 3, "d": D, "dtype": "f32"}), good],
         "XC_EPROTO", True),
        ("wrong d", [header(4, 4, d=D + 1), batch(RNG, 4)], "XC_ESHAPE", True),
        ("unknown dtype", [header(5, 4, dtype="f64"), good], "XC_EDTYPE", True),
        ("length mismatch", [header(6, 5), good], "XC_ELENGTH", True),
        ("NaN", [header(7, 4), nan.tobytes()], "XC_ENONFINITE", True),
        ("Inf f16", [header(8, 4, dtype="f16"), inf16.tobytes()], "XC_ENONFINITE", True),
        ("too large", [header(9, big), batch(RNG, big)], "XC_ETOOBIG", True),
        ("missing token frame", [header(10, 4, has_tokens=True), good], "XC_EPROTO", True),
        ("token frame length", [header(11, 4, has_tokens=True), good, b"\0" * 12], "XC_ELENGTH", True),
        ("too many frames", [header(12, 4), good, b"x", b"y", b"z"], "XC_EPROTO", True),
        ("header only", [header(13, 4)], "XC_EPROTO", True),
    ]


def check_nack(r, code, has_seq, name):
    check(r.get("type") == "nack" and r.get("code") == code, "%s: %r" % (name, r))
    check(isinstance(r.get("reason"), str) and len(r["reason"]) > 5, "%s: no reason" % name)
    check(("seq" in r) == has_seq, "%s: seq echo %r" % (name, r))


def test_every_nack_class_model_unchanged():
    """Paused: bad batches get their nack, change no tensor and no token count."""
    DMN.ok({"op": "pause"})
    wait_for(lambda: DMN.status()["state"] == "paused", what="paused")
    before = DMN.status()
    a = DMN.ok({"op": "checkpoint"})
    ta, _ = read_safetensors(a["path"])
    p = DMN.producer()
    for name, frames, code, has_seq in bad_cases():
        r = push(p, frames)
        check_nack(r, code, has_seq, name)
    # ... and valid-looking token/position frames are accepted
    r = push(p, [header(20, 2, has_tokens=True, has_pos=True), batch(RNG, 2), np.arange(2, dtype="<u4").tobytes(),
                 np.zeros(4, "<u4").tobytes()])
    check(r["type"] == "ack" and r["n"] == 2, "tokens+pos batch: %r" % r)
    b = DMN.ok({"op": "checkpoint"})
    tb, _ = read_safetensors(b["path"])
    for k in ta:
        check(np.array_equal(ta[k], tb[k], equal_nan=True), "tensor %s changed while only bad batches arrived" % k)
    after = DMN.status()
    check(after["step"] == before["step"], "steps advanced while paused")
    check(after["tokens_acked"] == before["tokens_acked"] + 2, "acked %d -> %d" % (before["tokens_acked"],
                                                                                 after["tokens_acked"]))
    c0, c1 = before["counters"], after["counters"]
    for code, n in (("XC_EVERSION", 1), ("XC_EPROTO", 6), ("XC_ESHAPE", 1), ("XC_EDTYPE", 1), ("XC_ELENGTH", 2),
                    ("XC_ENONFINITE", 2), ("XC_ETOOBIG", 1)):
        check(c1[code] - c0[code] == n, "counter %s rose by %d, expected %d" % (code, c1[code] - c0[code], n))
    check(c1["batches_refused"] - c0["batches_refused"] == 14, "batches_refused")
    DMN.ok({"op": "resume"})
    p.close(0)
    # the refusals were announced on the events socket
    t0, kinds = time.time(), set()
    while time.time() - t0 < 3 and "XC_ENONFINITE" not in kinds:
        if SUB.poll(300):
            topic, body = SUB.recv_multipart()
            ev = msgpack.unpackb(body)
            if topic == b"alert" and ev.get("kind") == "refused":
                kinds.add(ev["code"])
    check("XC_ENONFINITE" in kinds, "no refused alert (saw %r)" % kinds)


def test_nacks_while_training_continues():
    p = DMN.producer()
    st0 = DMN.status()
    msgs, expect = [], []
    cases = bad_cases()
    for i in range(24):
        msgs.append([header(100 + i, B), batch(RNG, B)])
        expect.append(("ack", None))
        name, frames, code, _ = cases[i % len(cases)]
        msgs.append(frames)
        expect.append(("nack", code))
    reps = push_window(p, msgs, window=6)
    for r, (kind, code) in zip(reps, expect):
        check(r["type"] == kind and (code is None or r["code"] == code), "got %r expected %s %s" % (r, kind, code))
    st = wait_for(lambda: (lambda s: s if s["tokens_queued"] == 0 and s["step"] >= st0["step"] + 24 else None)(
        DMN.status()), what="training to continue")
    a, b = accounting(st)
    check(a == b, "accounting %d != %d" % (a, b))
    p.close(0)


def test_four_producers_nothing_lost():
    st0 = DMN.status()
    sent = [0] * 4
    errors = []

    def producer(i):
        try:
            rng = np.random.default_rng(100 + i)
            s = DMN.producer()
            msgs, total = [], 0
            for q in range(40):
                n = int(rng.integers(1, 97))
                msgs.append([header(q, n, producer="p%d" % i), batch(rng, n)])
                total += n
            reps = push_window(s, msgs, window=4, timeout=30)
            for q, r in enumerate(reps):
                if r["type"] != "ack" or r["seq"] != q:
                    errors.append("producer %d seq %d: %r" % (i, q, r))
            sent[i] = total
            s.close(0)
        except Exception as e:
            errors.append("producer %d: %s" % (i, e))

    th = [threading.Thread(target=producer, args=(i,)) for i in range(4)]
    [t.start() for t in th]
    [t.join(60) for t in th]
    check(not errors, "; ".join(errors[:3]))
    st = wait_for(lambda: (lambda s: s if s["tokens_queued"] == 0 else None)(DMN.status()), what="queue drained")
    a, b = accounting(st)
    check(a == b, "acked %d != trained+buffered+queued %d" % (a, b))
    check(st["tokens_acked"] - st0["tokens_acked"] == sum(sent), "acked %d, sent %d" % (
        st["tokens_acked"] - st0["tokens_acked"], sum(sent)))
    check(st["tokens_failed"] == 0, "failed tokens")
    check(st["tokens_buffered"] < 256, "buffer not drained to below capacity: %d" % st["tokens_buffered"])


def test_backpressure_bounded_then_resumes():
    """Paused with an 8-slot queue: a producer with a 64-batch window gets only
    about queue + buffer worth of acks; after resume every batch is acked."""
    DMN.ok({"op": "pause"})
    wait_for(lambda: DMN.status()["state"] == "paused", what="paused")
    p = DMN.producer()
    n_msgs = 64
    for s in range(n_msgs):
        p.send_multipart([header(s, B), batch(RNG, B)])
    acks, t0 = [], time.time()
    while time.time() - t0 < 1.0:
        if p.poll(100):
            acks.append(msgpack.unpackb(p.recv()))
    st = DMN.status()
    # room: 8 queue slots, plus the mixing buffer (256 tokens = 4 batches) when it had space
    check(len(acks) <= 8 + 4 + 1, "%d acks while paused: backpressure did not hold" % len(acks))
    check(st["queue_depth"] <= 8 and st["counters"]["ingest_blocked"] >= 1, "queue %r" % st["queue_depth"])
    DMN.ok({"op": "resume"})
    while len(acks) < n_msgs:
        check(p.poll(10000), "only %d/%d acks after resume" % (len(acks), n_msgs))
        acks.append(msgpack.unpackb(p.recv()))
    check([a["seq"] for a in acks] == list(range(n_msgs)) and all(a["type"] == "ack" for a in acks), "acks")
    st = wait_for(lambda: (lambda s: s if s["tokens_queued"] == 0 else None)(DMN.status()), what="drained")
    a, b = accounting(st)
    check(a == b, "accounting %d != %d" % (a, b))
    p.close(0)


def test_every_control_op():
    r = DMN.ok({"op": "ping", "id": "abc"})
    check(r["id"] == "abc" and r["proto"] == 1 and r["op"] == "ping", "ping %r" % r)
    st = DMN.ok({"op": "status", "id": 7})
    check(st["id"] == 7 and st["config"]["d"] == D and st["config"]["batch_size"] == B, "status config")
    for k in ("step", "tokens", "loss", "recon_l2", "recon_mse", "aux", "l1", "fve", "l0", "dead_fraction", "theta",
              "tokens_per_s", "queue_depth", "queue_size", "uptime_s", "state", "paused", "counters"):
        check(k in st, "status lacks %s" % k)
    r = DMN.ok({"op": "latent", "j": 5})
    check(r["j"] == 5 and "delta_norm" in r["stats"] and r["snapshot_step"] == DMN.status()["step"], "latent %r" % r)
    r = DMN.req({"op": "latent", "j": F})
    check(r["ok"] is False and r["code"] == "XC_ENOTFOUND", "latent out of range %r" % r)
    r = DMN.req({"op": "latent"})
    check(r["ok"] is False and r["code"] == "XC_EINVAL", "latent without j %r" % r)
    r = DMN.req({"op": "latent", "j": "five"})
    check(r["ok"] is False and r["code"] == "XC_EINVAL", "latent j string %r" % r)
    r = DMN.ok({"op": "top", "by": "max_act", "n": 5})
    vals = [l["max_act"] for l in r["latents"]]
    check(len(vals) == 5 and vals == sorted(vals, reverse=True), "top desc %r" % vals)
    r = DMN.ok({"op": "top", "by": "freq", "n": 3, "order": "asc"})
    vals = [l["freq"] for l in r["latents"]]
    check(len(vals) == 3 and vals == sorted(vals), "top asc %r" % vals)
    r = DMN.req({"op": "top", "by": "bogus"})
    check(r["ok"] is False and r["code"] == "XC_EINVAL" and "bogus" in r["message"], "top bogus %r" % r)
    r = DMN.ok({"op": "config"})
    check(r["config"]["k"] == K and r["config"]["name"] == DMN.name and "ingest" in r["config"], "config")
    r = DMN.ok({"op": "config", "key": "dict_size"})
    check(r["config"] == {"dict_size": F}, "config key %r" % r)
    r = DMN.req({"op": "config", "key": "nope"})
    check(r["ok"] is False and r["code"] == "XC_ENOTFOUND", "config bad key %r" % r)
    check(DMN.ok({"op": "pause"})["paused"] is True, "pause")
    check(DMN.ok({"op": "resume"})["paused"] is False, "resume")
    r = DMN.ok({"op": "checkpoint", "id": 99})
    check(os.path.isfile(r["path"]) and r["bytes"] == os.path.getsize(r["path"]) and r["id"] == 99, "ckpt %r" % r)
    r = DMN.req({"op": "frobnicate", "id": 3})
    check(r["ok"] is False and r["code"] == "XC_EUNKNOWN" and r["id"] == 3 and r["op"] == "frobnicate", "unk %r" % r)
    r = DMN.req_raw([b"\x93\x01"])  # truncated msgpack
    check(r["ok"] is False and r["code"] == "XC_EPROTO", "malformed %r" % r)
    r = DMN.req_raw([msgpack.packb([1, 2])])
    check(r["ok"] is False and r["code"] == "XC_EPROTO", "not a map %r" % r)
    r = DMN.req_raw([msgpack.packb({"v": 2, "op": "status", "id": 4})])
    check(r["ok"] is False and r["code"] == "XC_EVERSION" and r["id"] == 4, "v2 %r" % r)
    r = DMN.req_raw([msgpack.packb({"v": 1})])
    check(r["ok"] is False and r["code"] == "XC_EPROTO", "no op %r" % r)
    r = DMN.req_raw([msgpack.packb({"v": 1, "op": "ping"}), b"extra"])
    check(r["ok"] is False and r["code"] == "XC_EPROTO", "two frames %r" % r)
    r = DMN.req_raw([b""])
    check(r["ok"] is False and r["code"] == "XC_EPROTO", "empty frame %r" % r)
    # a REQ socket and a DEALER without a delimiter both work
    q = DMN.ctx.socket(zmq.REQ)
    q.setsockopt(zmq.LINGER, 0)
    q.connect(DMN.ep["control"])
    q.send(msgpack.packb({"v": 1, "op": "ping"}))
    check(q.poll(5000) and msgpack.unpackb(q.recv())["ok"] is True, "REQ client")
    q.close(0)
    q = DMN.ctx.socket(zmq.DEALER)
    q.setsockopt(zmq.LINGER, 0)
    q.connect(DMN.ep["control"])
    q.send(msgpack.packb({"v": 1, "op": "ping"}))
    check(q.poll(5000), "bare DEALER got no reply")
    fr = q.recv_multipart()
    check(len(fr) == 1 and msgpack.unpackb(fr[0])["ok"] is True, "bare DEALER %r" % fr)
    q.close(0)
    st = DMN.status()
    check(st["counters"]["control_errors"] >= 12, "control_errors %d" % st["counters"]["control_errors"])


def test_sighup_reloads_safe_keys():
    os.makedirs(os.path.join(TMP, "h"), exist_ok=True)
    cfg = os.path.join(TMP, "h.conf")
    with open(cfg, "w") as f:
        f.write("# test\nstats_interval = 0.3\n")
    d = Daemon(os.path.join(TMP, "h"), "--config", cfg, name="h%d" % os.getpid())
    try:
        check(d.ok({"op": "config", "key": "stats_interval"})["config"]["stats_interval"] == 0.2,
              "command line must win over the file")
        with open(cfg, "w") as f:
            f.write("dead_alert_jump = 0.25   # reloadable\nd = 48  # needs a restart\n")
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: d.ok({"op": "config", "key": "dead_alert_jump"})["config"]["dead_alert_jump"] == 0.25,
                 what="reload")
        check(d.ok({"op": "config", "key": "d"})["config"]["d"] == D, "d must not change on reload")
        with open(cfg, "w") as f:
            f.write("dead_alert_jump = 0.25\ncheckpoint_interval = 77\nqueue_size = 3\n")
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: d.ok({"op": "config", "key": "checkpoint_interval"})["config"]["checkpoint_interval"] == 77,
                 what="second reload")
        check(d.ok({"op": "config", "key": "queue_size"})["config"]["queue_size"] == 64, "queue_size reloaded")
        check("need a restart to take effect: queue_size" in d.logtext(), "no restart warning in the log")
        r = d.ok({"op": "shutdown", "id": 1})
        check(r["shutting_down"] is True, "shutdown reply %r" % r)
        rc = d.proc.wait(20)
        check(rc == 0, "exit code %d after shutdown op" % rc)
        check(any(f.startswith(d.name + "-") for f in os.listdir(d.state_dir)), "no checkpoint after shutdown op")
    finally:
        d.stop()


def test_dead_fraction_alert():
    """A daemon whose latents die after 64 tokens: the dead fraction jumps after
    the first steps and an alert says so."""
    os.makedirs(os.path.join(TMP, "dd"), exist_ok=True)
    d = Daemon(os.path.join(TMP, "dd"), "--dead_tokens", "64", "--mix_tokens", "64", name="dd%d" % os.getpid())
    sub = d.subscriber()
    try:
        t0 = time.time()
        while time.time() - t0 < 5:  # one stats event before training sets the baseline
            if sub.poll(300) and sub.recv_multipart()[0] == b"stats":
                break
        p = d.producer()
        push_window(p, [[header(s, B), batch(RNG, B)] for s in range(4)], window=4)
        got, t0 = None, time.time()
        while time.time() - t0 < 5 and got is None:
            if sub.poll(300):
                topic, body = sub.recv_multipart()
                ev = msgpack.unpackb(body)
                if topic == b"alert" and ev.get("kind") == "dead_fraction":
                    got = ev
        check(got is not None, "no dead_fraction alert")
        check(got["to"] - got["from"] >= 0.05 and "dead fraction rose" in got["message"], "alert %r" % got)
        p.close(0)
    finally:
        sub.close(0)
        check(d.stop() == 0, "exit code")


def test_cli_errors_and_help():
    out = subprocess.run([XCODERD, "--help"], capture_output=True, text=True, timeout=10)
    check(out.returncode == 0, "--help exit %d" % out.returncode)
    for k in ("model", "d", "dict_size", "k", "batch_size", "lr", "seed", "run_dir", "state_dir", "name", "ingest",
              "control", "events", "log_level", "queue_size", "mix_tokens", "max_msg_bytes", "stats_interval",
              "checkpoint_interval"):
        check(("--%s " % k) in out.stdout, "--help lacks --%s" % k)
    out = subprocess.run([XCODERD, "--d", "abc"], capture_output=True, text=True, timeout=10)
    check(out.returncode == 2 and "d must be an integer" in out.stderr, "bad d: %r" % out.stderr)
    out = subprocess.run([XCODERD, "--batch_sise", "3"], capture_output=True, text=True, timeout=10)
    check(out.returncode == 2 and "did you mean 'batch_size'" in out.stderr, "typo: %r" % out.stderr)
    out = subprocess.run([XCODERD, "--k", "300", "--dict_size", "256"], capture_output=True, text=True, timeout=10)
    check(out.returncode == 2 and "k (300)" in out.stderr, "k > F: %r" % out.stderr)
    # a second daemon on the same run_dir and name refuses to start
    out = subprocess.run([XCODERD, "--run_dir", DMN.run_dir, "--name", DMN.name, "--d", str(D)], capture_output=True,
                         text=True, timeout=20)
    check(out.returncode == 2 and "another xcoderd" in out.stderr, "second instance: %r" % out.stderr[-300:])


def test_sigterm_checkpoint_exit0():
    st = DMN.status()
    p = DMN.producer()
    for s in range(10):  # keep the trainer busy while the signal arrives
        p.send_multipart([header(1000 + s, B), batch(RNG, B)])
    time.sleep(0.05)
    rc = DMN.stop(signal.SIGTERM)
    check(rc == 0, "exit code %d; log: %s" % (rc, DMN.logtext()[-800:]))
    files = sorted(f for f in os.listdir(DMN.state_dir) if f.startswith(DMN.name + "-") and f.endswith(".safetensors"))
    check(files, "no checkpoint")
    t, meta = read_safetensors(os.path.join(DMN.state_dir, files[-1]))
    check(int(meta["step"]) >= st["step"] and meta["reason"] == "shutdown", "final meta %r" % meta)
    check(t["encoder.weight"].shape == (2, D, F) and np.isfinite(t["decoder.weight"]).all(), "final tensors")
    got = None
    t0 = time.time()
    while time.time() - t0 < 3 and got is None:
        if SUB.poll(200):
            topic, body = SUB.recv_multipart()
            ev = msgpack.unpackb(body)
            if topic == b"checkpoint" and ev.get("reason") == "shutdown":
                got = ev
    check(got is not None and got["path"].endswith(files[-1]), "no shutdown checkpoint event")
    check(not os.path.exists(os.path.join(DMN.run_dir, "control.sock")), "ipc socket file left behind")
    p.close(0)


def main():
    if not os.access(XCODERD, os.X_OK):
        print("not ok - integ_daemon: %s not built" % XCODERD)
        return 1
    t0 = time.time()
    try:
        for fn in (test_start_and_initial_checkpoint, test_batches_become_steps, test_subscriber_gets_stats,
                   test_every_nack_class_model_unchanged, test_nacks_while_training_continues,
                   test_four_producers_nothing_lost, test_backpressure_bounded_then_resumes, test_every_control_op,
                   test_sighup_reloads_safe_keys, test_dead_fraction_alert, test_cli_errors_and_help, test_sigterm_checkpoint_exit0):
            if DMN is None and fn is not test_start_and_initial_checkpoint:
                print("not ok - %s: daemon did not start" % fn.__name__)
                continue
            run_case(fn)
    finally:
        if DMN is not None:
            if DMN.proc.poll() is None:
                DMN.stop(signal.SIGKILL)
            if failed():
                print("---- daemon log ----\n" + DMN.logtext())
        if SUB is not None:
            SUB.close(0)
        shutil.rmtree(TMP, ignore_errors=True)
    print("# integ_daemon: %.1f s" % (time.time() - t0))
    return 1 if failed() else 0


if __name__ == "__main__":
    sys.exit(main())
