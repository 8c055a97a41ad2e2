#!/usr/bin/python3
"""kill -9 campaign against a real build/xcoderd: 12 cycles, each killing the
daemon at a random moment while a producer streams (some during checkpoint
writes: checkpoint_steps = 1), then restarting it. Every restart must resume
(from the newest valid pair), and the ack ledger must account for every
acknowledged token: the tokens the previous process acked that its last
checkpoint does not hold are reported as tokens_lost_at_start, so
acked_total(before the kill) == covered(by the resumed checkpoint) + lost.
Prints "ok - name" / "not ok - name: why"."""
import os
import random
import shutil
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from xc_integ import check, failed, run_case, wait_for  # noqa: E402
from integ_daemon import B, D, Daemon, header  # noqa: E402

import msgpack
import numpy as np

TMP = tempfile.mkdtemp(prefix="xc_kill9_")
NAME = "kill9x%d" % os.getpid()  # shared memory names are machine-wide


def stream(d, seconds, rng):
    """Pushes batches for a while, keeping 8 in flight; returns tokens acked."""
    p = d.producer()
    acked, seq, inflight, t_end = 0, 0, 0, time.time() + seconds
    x = rng.standard_normal((B, 2, D)).astype("<f4").tobytes()
    while time.time() < t_end or inflight:
        while inflight < 8 and time.time() < t_end:
            p.send_multipart([header(seq, B), x])
            seq += 1
            inflight += 1
        if not p.poll(2000):
            break
        r = msgpack.unpackb(p.recv())
        inflight -= 1
        if r.get("type") == "ack":
            acked += r["n"]
    p.close(0)
    return acked


def ledger(d):
    with open(os.path.join(d.state_dir, NAME + ".ledger")) as f:
        return int(f.read().split()[1])


def test_kill9_campaign():
    rng = random.Random(9)
    nrng = np.random.default_rng(9)
    args = ("--checkpoint_steps", "1", "--checkpoint_keep", "2", "--mix_tokens", str(4 * B))
    held = [Daemon(TMP, *args, name=NAME)]
    try:
        campaign(held, 12, rng, nrng, args)
    finally:
        if held[0].proc.poll() is None:
            held[0].stop()


def campaign(held, cycles, rng, nrng, args):
    d = held[0]
    for c in range(cycles):
        stream(d, rng.uniform(0.2, 1.0), nrng)
        time.sleep(0.15)  # the ledger is rewritten every 100 ms
        acked_total = ledger(d)
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        d.ctl.close(0)
        d.ctl = None
        d = held[0] = Daemon(TMP, *args, name=NAME)  # resumes from the newest valid pair
        st = d.status()
        lost = st["counters"]["tokens_lost_at_start"]
        time.sleep(0.2)
        covered = ledger(d)  # nothing acked yet: what the resumed checkpoint covers
        check(covered + lost == acked_total, "cycle %d: covered %d + lost %d != acked %d" %
              (c, covered, lost, acked_total))
        check(lost >= 0 and st["state"] in ("starting", "running", "paused"), "cycle %d: %r" % (c, st["state"]))
    print("# %d kill -9 cycles, all resumed, every acked token accounted for" % cycles)
    check(d.stop() == 0, "clean exit after the campaign")


def test_clean_exit_loses_only_the_queue():
    tmp = tempfile.mkdtemp(prefix="xc_kill9b_")
    try:
        d = Daemon(tmp, "--mix_tokens", str(B), name=NAME)
        d.ok({"op": "pause"})
        acked = stream(d, 0.5, np.random.default_rng(1))
        check(acked > 0, "acked nothing")
        check(d.stop() == 0, "clean exit")
        d = Daemon(tmp, "--mix_tokens", str(B), name=NAME)
        st = d.status()
        time.sleep(0.2)
        covered, lost = ledger(d), st["counters"]["tokens_lost_at_start"]
        check(covered == st["tokens_restored"] and covered + lost == acked,
              "accounting after a clean exit: covered %d + lost %d vs acked %d" % (covered, lost, acked))
        d.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    try:
        run_case(test_kill9_campaign)
        run_case(test_clean_exit_loses_only_the_queue)
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
    return 1 if failed() else 0


if __name__ == "__main__":
    sys.exit(main())
