#!/usr/bin/python3
"""Stream mixing ratios (stream_mix, PROTOCOL.md 1.6) with real producers:

- two producers, "web" ten times faster than "chat", 50/50 mixture: every
  trained batch is exactly half web, half chat (per-step counts batch_min /
  batch_max over all steps); web is never further ahead of chat in accepted
  tokens than its queue lane and buffer lane hold (without backpressure it
  would be thousands of tokens ahead); the fast producer was held (holds > 0)
  and nothing was refused or lost (every batch acked; the token accounting
  closes per stream);
- an untagged batch and an unknown stream are refused with XC_EINVAL naming
  stream_mix; with '*' in the mixture they are trained under '*';
- a mixture of 1:3 trains each stream within a token of its share per batch;
- resume is exact: a run stopped with tokens in the buffer lanes and resumed
  ends with the same parameters, bit for bit, as a run never stopped; a daemon
  without stream_mix does not restore those lanes (and the reverse);
- `xcoder status` shows each stream's line; the Prometheus text has the
  per-stream families, each documented in daemon/xcoderd.8;
- at most stream_hold batches are held, then ingest stops reading; at shutdown
  every held or unread batch is nacked XC_ESHUTDOWN.
Run from the repository root."""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "client", "python"))
import xc_integ  # noqa: E402
from xc_integ import check, failed, run_case, wait_for  # noqa: E402

import numpy as np  # noqa: E402
import xcoder  # noqa: E402

XCODERD = os.environ.get("XCODERD", os.path.join(ROOT, "build", "xcoderd"))
XCODER = os.environ.get("XCODER", os.path.join(ROOT, "build", "xcoder"))
TMP = tempfile.mkdtemp(prefix="xc_mix.")
D, B, MIX, QS, N = 16, 64, 256, 4, 32  # batch 64 of a 256-token buffer; queue lanes of 4 batches of 32 tokens


def Daemon(tag, *extra, state=None):
    """A daemon of this suite's shape (tests/xc_integ.py Daemon) in TMP/tag; state: another's state_dir."""
    args = ["--d", str(D), "--dict_size", "128", "--k", "4", "--batch_size", str(B), "--mix_tokens", str(MIX),
            "--queue_size", str(QS), "--threads", "1", "--stats_interval", "0.05", "--checkpoint_interval", "0",
            "--shm", "off", "--lr", "1e-3", "--warmup_steps", "5", "--seed", "3"] + list(extra)
    return xc_integ.Daemon(XCODERD, os.path.join(TMP, tag), "mix%d" % os.getpid(), args, state_dir=state)


def acts(rng, n, mark):
    x = rng.standard_normal((n, 2, D)).astype(np.float32)
    x[:, :, 0] = mark  # which stream, readable in the data itself
    return x


def test_fast_and_slow_5050():
    dmn = Daemon("ratio", "--stream_mix", "web:0.5,chat:0.5")
    try:
        st = dmn.client.status()
        check(set(st["streams"]) == {"web", "chat"} and st["streams"]["web"]["share"] == 0.5,
              "streams in status before training: %r" % st["streams"])
        per, samples, stop, errors = 120, [], threading.Event(), []

        def produce(stream, pause, seed):
            rng = np.random.default_rng(seed)
            try:
                with xcoder.Producer(dmn.run_dir, window=8, timeout=60, producer=stream, stream=stream) as p:
                    for _ in range(per):
                        p.send(acts(rng, N, 1.0 if stream == "web" else -1.0))
                        time.sleep(pause)
                    p.flush()
            except Exception as e:  # a nack or a timeout: the test fails below
                errors.append("%s: %r" % (stream, e))

        def watch():  # its own client: a ZeroMQ socket belongs to one thread
            with xcoder.Client(dmn.run_dir, timeout=20) as c:
                while not stop.is_set():
                    s = c.status()["streams"]
                    samples.append((s["web"]["tokens_acked"], s["chat"]["tokens_acked"], s["web"]["tokens_held"]))
                    time.sleep(0.02)
        w = threading.Thread(target=watch)
        w.start()
        fast = threading.Thread(target=produce, args=("web", 0.002, 1))
        slow = threading.Thread(target=produce, args=("chat", 0.02, 2))
        fast.start(), slow.start()
        fast.join(timeout=120), slow.join(timeout=120)
        stop.set()
        w.join()
        check(not errors, "producers failed: %s" % errors)
        total = per * N
        # everything sent is accepted (nothing refused or dropped); the buffer then holds what no batch took
        s = wait_for(lambda: (lambda st: st if st["streams"]["web"]["tokens_queued"] == 0 and
                              st["streams"]["chat"]["tokens_queued"] == 0 else None)(dmn.client.status()),
                     timeout=30, what="queue lanes drained")
        web, chat = s["streams"]["web"], s["streams"]["chat"]
        check(s["tokens_acked"] == 2 * total and s["counters"]["batches_refused"] == 0,
              "acked %d of %d, refused %d" % (s["tokens_acked"], 2 * total, s["counters"]["batches_refused"]))
        for name, x in (("web", web), ("chat", chat)):
            check(x["tokens_acked"] == total and x["tokens_held"] == 0 and x["batches_held"] == 0,
                  "%s: acked %d of %d, %d still held" % (name, x["tokens_acked"], total, x["tokens_held"]))
            check(x["tokens_acked"] == x["tokens_trained"] + x["tokens_buffered"] + x["tokens_queued"],
                  "%s accounting: %r" % (name, x))
            check(x["batch_min"] == B // 2 and x["batch_max"] == B // 2 and x["batch_tokens"] == B // 2,
                  "%s per-step tokens min %d max %d last %d, want %d in every batch" %
                  (name, x["batch_min"], x["batch_max"], x["batch_tokens"], B // 2))
        steps = s["step"]
        check(web["tokens_trained"] == chat["tokens_trained"] == steps * B // 2 and steps >= (total - MIX // 2) // (B // 2),
              "trained web %d chat %d in %d steps" % (web["tokens_trained"], chat["tokens_trained"], steps))
        # backpressure: the fast stream waited for the slow one
        bound = MIX // 2 + QS * N + N  # web's buffer lane, queue lane, and the batch in hand
        lead = max(a - b for a, b, _ in samples)
        check(lead <= bound, "web was %d tokens ahead of chat in accepted tokens (bound %d): not held back" %
              (lead, bound))
        check(web["holds"] > 0 and max(h for _, _, h in samples) > 0,
              "the fast producer was never held: holds %d" % web["holds"])
        check(chat["holds"] < web["holds"], "the slow producer held %d times, the fast %d" %
              (chat["holds"], web["holds"]))
        print("# web holds %d, chat holds %d, max lead %d tokens (bound %d), %d steps, %d status samples" %
              (web["holds"], chat["holds"], lead, bound, steps, len(samples)))
        out = dmn.cli(XCODER, "status").stdout
        for name in ("web", "chat"):
            check(re.search(r"^stream +%s +50%%  trained .* batch 32 \[32\.\.32\]" % name, out, re.M),
                  "xcoder status shows %s's share and batch composition:\n%s" % (name, out))
        text = dmn.client.metrics()
        man = open(os.path.join(ROOT, "daemon", "xcoderd.8")).read().replace("\\", "")
        fams = sorted(set(re.findall(r"^# TYPE (xcoderd_stream_\S+)", text, re.M)))
        check(len(fams) >= 8, "per-stream families: %s" % fams)
        missing = [f for f in fams if f not in man]
        check(not missing, "families missing from daemon/xcoderd.8: %s" % missing)
        check(re.search(r'^xcoderd_stream_tokens_trained_total\{name="[^"]*",stream="web"\} %d$' %
                        web["tokens_trained"], text, re.M), "trained tokens of web in the metrics")
    finally:
        rc = dmn.stop()
    check(rc == 0, "exit status %r" % rc)


def test_untagged_and_unknown_streams():
    dmn = Daemon("rule", "--stream_mix", "web:1,chat:1")
    try:
        rng = np.random.default_rng(5)
        for stream in ("", "code"):
            with xcoder.Producer(dmn.run_dir, window=1, timeout=20, stream=stream) as p:
                try:
                    p.send(acts(rng, N, 0))
                    p.flush()
                    raise AssertionError("stream %r accepted without '*' in stream_mix" % stream)
                except xcoder.XcoderNack as e:
                    check(e.code == "XC_EINVAL" and "stream_mix" in str(e) and "'*:WEIGHT'" in str(e),
                          "refusal of %r: %s %s" % (stream, e.code, e))
        st = dmn.client.status()
        check(st["counters"]["XC_EINVAL"] == 2 and st["tokens_acked"] == 0, "counted: %r" % st["counters"])
    finally:
        dmn.stop()
    dmn = Daemon("star", "--stream_mix", "web:1,*:1")
    try:
        rng = np.random.default_rng(6)
        with xcoder.Producer(dmn.run_dir, window=4, timeout=20) as p:
            for i in range(12):
                p.send(acts(rng, N, 0), stream=["web", "", "code"][i % 3] or None)
            p.flush()
        st = wait_for(lambda: (lambda s: s if s["step"] >= 1 else None)(dmn.client.status()), what="a step")
        other = st["streams"]["*"]
        check(other["tokens_acked"] == 8 * N and st["streams"]["web"]["tokens_acked"] == 4 * N,
              "untagged and 'code' batches under '*': %r" % st["streams"])
        check(other["batch_min"] == other["batch_max"] == B // 2, "'*' half of every batch: %r" % other)
    finally:
        dmn.stop()


def test_uneven_shares():
    dmn = Daemon("uneven", "--stream_mix", "web:1,chat:3", "--batch_size", "50", "--mix_tokens", "200")
    try:
        rng = np.random.default_rng(7)
        with xcoder.Producer(dmn.run_dir, window=8, timeout=60) as p:
            for i in range(100):  # 1 web : 3 chat batches, as the mixture consumes them
                p.send(acts(rng, 25, 0), stream="web" if i % 4 == 0 else "chat")
            p.flush()
        st = wait_for(lambda: (lambda s: s if s["step"] >= 10 else None)(dmn.client.status()), what="steps")
        web, chat = st["streams"]["web"], st["streams"]["chat"]
        # 50 x 1/4 = 12.5: each batch takes 12 or 13 web tokens, the rest chat
        check(web["batch_min"] >= 12 and web["batch_max"] <= 13 and chat["batch_min"] >= 37 and chat["batch_max"] <= 38,
              "per-step web %d..%d, chat %d..%d" % (web["batch_min"], web["batch_max"], chat["batch_min"],
                                                    chat["batch_max"]))
        share = web["tokens_trained"] / (web["tokens_trained"] + chat["tokens_trained"])
        n = st["step"]  # the rounding is Bernoulli(1/2) per step: sd of the share 0.5 / (50 sqrt(n))
        check(abs(share - 0.25) <= 6 * 0.5 / (50 * n ** 0.5), "web share %.4f over %d steps" % (share, n))
    finally:
        dmn.stop()


def feed(dmn, rng_seed, first, count):
    """Batches first .. first+count-1 of one deterministic sequence alternating web and chat, one
    in flight at a time (so the daemon sees them in this order), then waits until the queue lanes
    are empty (everything sent is in the buffer or trained)."""
    with xcoder.Producer(dmn.run_dir, window=1, timeout=60) as p:
        for i in range(first, first + count):
            rng = np.random.default_rng(rng_seed * 100003 + i)
            p.send(acts(rng, N, 1.0 if i % 2 == 0 else -1.0), stream="web" if i % 2 == 0 else "chat")
        p.flush()
    def settled():
        s = dmn.client.status()
        return s["tokens_queued"] == 0 and s["tokens_acked"] + s["tokens_restored"] == \
            s["tokens_trained"] + s["tokens_buffered"]

    # drained, and still so a second later with no step in between: the accounting also holds in
    # the moment after the last batch reached the buffer and before the trainer draws from it
    def quiet():
        if not settled():
            return None
        s0 = dmn.client.status()
        time.sleep(1.0)
        s1 = dmn.client.status()
        return s1 if settled() and s1["step"] == s0["step"] and s1["tokens_buffered"] == s0["tokens_buffered"] else None
    return wait_for(quiet, timeout=90, what="queue drained and no step pending")


def model_of(state_dir):
    files = sorted(f for f in os.listdir(state_dir) if f.endswith(".safetensors") and ".resume" not in f
                   and not f.startswith("."))
    return xcoder.load_checkpoint(os.path.join(state_dir, files[-1]))


def test_resume_exact():
    mixarg = ("--stream_mix", "web:0.5,chat:0.5")
    once = Daemon("once", *mixarg)
    try:
        st = feed(once, 9, 0, 40)
    finally:
        check(once.stop() == 0, "exit")
    check(st["streams"]["web"]["tokens_buffered"] == 96 and st["streams"]["chat"]["tokens_buffered"] == 96,
          "lanes hold 96 each after 20 batches per stream: %r" % st["streams"])
    a = Daemon("twice", *mixarg)
    try:
        st = feed(a, 9, 0, 21)  # stops with 3 web batches in, 2 chat: lanes partly filled
        buffered = {k: v["tokens_buffered"] for k, v in st["streams"].items()}
    finally:
        check(a.stop() == 0, "exit")
    check(buffered["web"] != buffered["chat"] and st["tokens_buffered"] > 0, "lanes at the stop: %r" % buffered)
    b = Daemon("twice", *mixarg, state=a.state_dir)
    try:
        st = b.client.status()
        check(st["tokens_restored"] == sum(buffered.values()) and
              {k: v["tokens_buffered"] for k, v in st["streams"].items()} == buffered,
              "restored %r, was %r" % ({k: v["tokens_buffered"] for k, v in st["streams"].items()}, buffered))
        feed(b, 9, 21, 19)
    finally:
        check(b.stop() == 0, "exit")
    ta, ma = model_of(once.state_dir)
    tb, mb = model_of(a.state_dir)
    check(ma["step"] == mb["step"] and ma["tokens"] == mb["tokens"], "step/tokens %s/%s vs %s/%s" %
          (ma["step"], ma["tokens"], mb["step"], mb["tokens"]))
    diff = [k for k in ta if ta[k].tobytes() != tb[k].tobytes()]  # bit for bit (NaN buffers included)
    check(not diff, "tensors differ between the run stopped and resumed and the run never stopped: %s" % diff)
    # the lanes are not restored into a daemon without the mixture (nor would the reverse be)
    c = Daemon("plain", state=a.state_dir)
    try:
        st = c.client.status()
        check(st["tokens_restored"] == 0 and st["streams"] == {}, "restored without stream_mix: %r" % st["tokens_restored"])
        check("not restoring trainer.mix_meta" in c.logtext(), "the log says why: %s" % c.logtext()[-800:])
    finally:
        c.stop()


def test_held_bound_and_shutdown():
    """A stream alone (its partner silent): its lane fills, at most stream_hold batches are held,
    then ingest stops reading; at shutdown every held or unread batch gets an XC_ESHUTDOWN nack."""
    dmn = Daemon("held", "--stream_mix", "web:1,chat:1", "--stream_hold", "2")
    p = xcoder.Producer(dmn.run_dir, window=8, timeout=60, stream="web")
    try:
        rng = np.random.default_rng(8)
        for _ in range(16):  # 4 fill web's buffer part, 4 its queue lane, 2 are held, 6 wait unread
            p.send(acts(rng, N, 1.0))
        st = wait_for(lambda: (lambda s: s if s["counters"]["ingest_blocked"] > 0 and s["tokens_acked"] == 8 * N and
                               s["streams"]["web"]["batches_held"] == 2 else None)(dmn.client.status()),
                      what="8 batches accepted, 2 held, ingest stopped")
        time.sleep(0.3)  # and it stays so: nothing more is read or held
        st = dmn.client.status()
        web = st["streams"]["web"]
        check(web["batches_held"] == 2 and web["tokens_held"] == 2 * N and web["tokens_acked"] == 8 * N and
              st["streams"]["chat"]["waiting"] and st["step"] == 0,
              "held %d (bound 2), acked %d, waiting for chat %r" % (web["batches_held"], web["tokens_acked"],
                                                                     st["streams"]["chat"]["waiting"]))
        dmn.client.request("shutdown")
        try:
            p.flush()
            raise AssertionError("held batches were acked after shutdown")
        except xcoder.XcoderNack as e:
            codes = {c for _, c, _ in e.nacks}
            check(codes == {"XC_ESHUTDOWN"} and len(e.nacks) == 8, "nacks at shutdown: %r" % e.nacks)
    finally:
        p.close(flush=False)
        rc = dmn.stop()
    check(rc == 0, "exit status %r" % rc)


def test_bad_config():
    for bad, why in (("web", "NAME:WEIGHT"), ("web:0", "> 0"), ("web:1,web:1", "twice")):
        p = subprocess.run([XCODERD, "--run_dir", os.path.join(TMP, "bad"), "--stream_mix", bad], capture_output=True,
                           text=True, timeout=30)
        check(p.returncode != 0 and "stream_mix" in p.stderr and why in p.stderr, "stream_mix=%s: %d %s" %
              (bad, p.returncode, p.stderr[-300:]))


if __name__ == "__main__":
    try:
        for t in (test_bad_config, test_fast_and_slow_5050, test_untagged_and_unknown_streams, test_uneven_shares,
                  test_held_bound_and_shutdown, test_resume_exact):
            run_case(t)
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
    sys.exit(1 if failed() else 0)
