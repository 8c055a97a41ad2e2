#!/usr/bin/python3
"""The stats history (README "History", PROTOCOL.md 2.4) on a real daemon fed by
`build/xcoder synth`: every stats event seen on the events socket is one line of
STATE_DIR/history.jsonl with the same fields; `xcoder history --json`, the
Python Client.history() and xcoder.read_history() give the same lines; the file
rotates at history_max_bytes keeping one older file; the op's bounds; a torn
line stays one line. Run from the repository root."""
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "client", "python"))
import xc_integ  # noqa: E402
from xc_integ import check, failed, run_case, wait_for  # noqa: E402

import xcoder  # noqa: E402

XCODERD = os.environ.get("XCODERD", os.path.join(ROOT, "build", "xcoderd"))
XCODER = os.path.join(ROOT, "build", "xcoder")
TMP = tempfile.mkdtemp(prefix="xc_hist.")


class Daemon(xc_integ.Daemon):
    """A small daemon of its own (dirs under TMP/tag) fed by `xcoder synth`."""

    def __init__(self, tag, *extra):
        super().__init__(XCODERD, os.path.join(TMP, tag), "h%d%s" % (os.getpid(), tag),
                         ["--d", "32", "--dict_size", "256", "--k", "4", "--batch_size", "64",
                          "--stats_interval", "0.05", "--threads", "1", "--checkpoint_interval", "0"] + list(extra))

    def cli(self, *args):
        return super().cli(XCODER, *args)

    def synth(self, tokens):
        r = self.cli("synth", "--tokens", str(tokens), "--quiet")
        check(r.returncode == 0, "xcoder synth failed: %s %s" % (r.stdout, r.stderr))


def same(a, b):
    """An event's value and its history line's: equal, NaN as null."""
    if isinstance(a, float) and math.isnan(a):
        return b is None
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def file_lines(state_dir):
    out = []
    for f in ("history.jsonl.1", "history.jsonl"):
        p = os.path.join(state_dir, f)
        if os.path.exists(p):
            with open(p) as fh:
                out += [line for line in fh.read().split("\n") if line]
    return out


def test_roundtrip():
    """Events seen live == lines of the file, field by field; CLI, Client and
    file reader agree; steps never go back and advance while training."""
    dmn = Daemon("rt")
    try:
        events, stop = [], threading.Event()
        sub = xcoder.subscribe(os.path.join(dmn.run_dir), topics="stats", timeout=0.2)

        def listen():
            while not stop.is_set():
                try:
                    events.append(sub.next()[1])
                except xcoder.XcoderTimeout:
                    pass
        th = threading.Thread(target=listen)
        th.start()
        time.sleep(0.3)  # ZeroMQ joins asynchronously
        dmn.synth(30000)
        wait_for(lambda: dmn.client.status()["tokens_trained"] >= 29000, timeout=60, what="training")
        time.sleep(0.3)
        stop.set()
        th.join()
        sub.close()
        check(len(events) >= 5, "only %d stats events seen" % len(events))
        # the line is appended right after the event is sent: wait for the last one
        want = {e["time"] for e in events}
        wait_for(lambda: want <= {h["time"] for h in xcoder.read_history(dmn.state_dir)}, timeout=5,
                 what="every event seen in the history")
        hist = xcoder.read_history(dmn.state_dir)
        by_time = {h["time"]: h for h in hist}
        missing = [e["time"] for e in events if e["time"] not in by_time]
        check(not missing, "%d of %d events not in the history file (first time %r)" %
              (len(missing), len(events), missing[:1]))
        for e in events:
            h = by_time[e["time"]]
            check(same(e, h), "history line differs from the event at step %s: %s" %
                  (e.get("step"), [k for k in e if not same(e[k], h.get(k))]))
        steps = [h["step"] for h in hist]
        check(all(b >= a for a, b in zip(steps, steps[1:])), "steps go back in the history: %s" % steps[:50])
        check(steps[-1] > steps[0] and steps[-1] > 300, "steps did not advance: %d -> %d" % (steps[0], steps[-1]))
        check(all(h["type"] == "stats" and h["name"] == dmn.name for h in hist), "a line is not this daemon's stats")
        mode = os.stat(os.path.join(dmn.state_dir, "history.jsonl")).st_mode & 0o777
        check(mode & 0o007 == 0 and mode & 0o600 == 0o600, "history.jsonl mode %o (want 0640 less the umask)" % mode)
        # the CLI's --json prints the file's lines unchanged; Client.history the same events
        r = dmn.cli("history", "--json", "-n", "100000")
        check(r.returncode == 0, "xcoder history --json: %s" % r.stderr)
        lines = file_lines(dmn.state_dir)
        got = [x for x in r.stdout.split("\n") if x]
        # the daemon may append between the two reads: the CLI's lines are a prefix or extension
        n = min(len(lines), len(got))
        check(n >= len(hist) - 5 and got[:n] == lines[:n], "xcoder history --json differs from the file "
              "(%d vs %d lines)" % (len(got), len(lines)))
        ch = dmn.client.history(n=100000)
        m = min(len(ch), len(hist))
        check(m >= len(hist) - 5 and ch[:m] == hist[:m], "Client.history differs from read_history")
        ch5 = dmn.client.history(n=5)
        check(len(ch5) == 5 and ch5[-1]["time"] >= hist[-1]["time"], "history(n=5): %d events" % len(ch5))
        r = dmn.cli("history", "-n", "3")
        rows = [x for x in r.stdout.split("\n") if x]
        check(r.returncode == 0 and len(rows) == 4 and rows[0].startswith("time (UTC)"),
              "xcoder history table: %r %r" % (r.stdout, r.stderr))
        frozen = os.path.join(dmn.dir, "copy.jsonl")  # the daemon goes on appending to its own
        shutil.copy(os.path.join(dmn.state_dir, "history.jsonl"), frozen)
        whole = xcoder.read_history(frozen)
        check(len(whole) > 3 and xcoder.read_history(frozen, n=3) == whole[-3:], "read_history(n=3) is not the last 3")
    finally:
        dmn.stop()


def test_rotation():
    """At history_max_bytes the file becomes history.jsonl.1 (one kept); both
    stay under the limit; the reader joins them in order; the op reads both."""
    limit = 6000
    dmn = Daemon("rot", "--history_max_bytes", str(limit))
    try:
        dmn.synth(20000)
        old = os.path.join(dmn.state_dir, "history.jsonl.1")
        wait_for(lambda: os.path.exists(old), timeout=30, what="rotation")
        first_old = xcoder.read_history(old)[0]["time"]
        wait_for(lambda: xcoder.read_history(old)[0]["time"] != first_old, timeout=30, what="a second rotation")
        # right after a rotation the current file exists again only at the next stats event
        names = lambda: sorted(f for f in os.listdir(dmn.state_dir) if f.startswith("history"))  # noqa: E731
        wait_for(lambda: names() == ["history.jsonl", "history.jsonl.1"], timeout=10,
                 what="history.jsonl and one older file (have %s)" % names())
        dmn.client.pause()  # fewer appends while comparing (stats events go on)
        for f in ("history.jsonl", "history.jsonl.1"):
            sz = os.path.getsize(os.path.join(dmn.state_dir, f))
            check(0 < sz <= limit, "%s is %d bytes; limit %d" % (f, sz, limit))
        hist = xcoder.read_history(dmn.state_dir)
        times = [h["time"] for h in hist]
        check(all(b > a for a, b in zip(times, times[1:])), "joined history is not in time order")
        ch = dmn.client.history(n=100000)
        check(len(ch) >= len(hist) - 3 and ch[0] == hist[0], "Client.history does not start at the rotated "
              "file's first line (%d vs %d events)" % (len(ch), len(hist)))
        check(dmn.client.request("history", n=100000)["more"] is False, "more = true with everything returned")
        check(dmn.client.request("history", n=2)["more"] is True, "more = false with lines left out")
    finally:
        dmn.stop()


def test_bounds_and_off():
    """n over the bound is XC_EINVAL; history_max_bytes = 0 writes nothing."""
    dmn = Daemon("off", "--history_max_bytes", "0")
    try:
        dmn.synth(3000)
        time.sleep(0.3)
        check(not any(f.startswith("history") for f in os.listdir(dmn.state_dir)),
              "history written with history_max_bytes = 0: %s" % os.listdir(dmn.state_dir))
        r = dmn.client.request("history")
        check(r["enabled"] is False and r["lines"] == [], "history reply with it off: %r" % r)
        try:
            dmn.client.request("history", n=100001)
            check(False, "n = 100001 accepted")
        except xcoder.XcoderError as e:
            check(e.code == "XC_EINVAL" and "100000" in str(e), "n = 100001: %s %s" % (e.code, e))
        r = dmn.cli("history")
        check(r.returncode == 0 and "history is off" in r.stdout, "xcoder history with it off: %r" % r.stdout)
    finally:
        dmn.stop()


def test_torn_line():
    """A line torn by a failed write (no newline) stays one unreadable line:
    the next append starts a new line, the readers skip it and say so."""
    dmn = Daemon("torn")
    try:
        dmn.client.pause()
        time.sleep(0.2)
        path = os.path.join(dmn.state_dir, "history.jsonl")
        with open(path, "a") as fh:
            fh.write('{"v":1,"type":"sta')
        time.sleep(0.3)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            hist = xcoder.read_history(dmn.state_dir)
        check(any("not JSON" in str(x.message) for x in w), "no warning for the torn line")
        check(len(hist) >= 3, "events after the torn line lost: %d" % len(hist))
        with open(path) as fh:
            text = fh.read()
        check('"type":"sta\n{' in text, "the next append did not start a new line")
    finally:
        dmn.stop()


def main():
    for c in (test_roundtrip, test_rotation, test_bounds_and_off, test_torn_line):
        run_case(c)
    shutil.rmtree(TMP, ignore_errors=True)
    n = failed()
    print("%d failed" % n if n else "all passed")
    return 1 if n else 0


if __name__ == "__main__":
    sys.exit(main())
