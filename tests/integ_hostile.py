#!/usr/bin/python3
"""Hostile peers against a real build/xcoderd (the adversarial probe's findings,
each a case that failed before the fix): finite values that overflow the step
are refused at intake (XC_ERANGE) and training goes on with finite statistics;
producer ids that are not printable UTF-8 are refused and never reach the log;
10,000 bad control requests each get their reply while the log stays small;
bursts of 65, 100 and 1,000 pings sent without reading each get exactly one
reply; the run_dir and state files are private whatever the umask.
Prints "ok - name" / "not ok - name: why"."""
import os
import shutil
import stat
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from xc_integ import check, failed, run_case, wait_for  # noqa: E402
from integ_daemon import B, D, Daemon, header, push  # noqa: E402

import msgpack
import numpy as np

TMP = tempfile.mkdtemp(prefix="xc_hostile_")
DAEMON = None


def daemon():
    global DAEMON
    if DAEMON is None:
        DAEMON = Daemon(TMP, "--mix_tokens", str(B), name="hostile%d" % os.getpid())
    return DAEMON


def test_finite_overflow_refused():
    d = daemon()
    p = d.producer()
    # bf16 0x7f7f is finite (3.39e38); so is f32 3e38: both overflow the step
    bf = np.full((B, 2, D), 0x3f80, dtype="<u2")
    bf[5, 1, 7] = 0x7f7f
    r = push(p, [header(1, B, dtype="bf16"), bf.tobytes()])
    check(r.get("type") == "nack" and r.get("code") == "XC_ERANGE", "bf16 0x7f7f: %r" % r)
    check("token 5, chat, dim 7" in r.get("reason", ""), "reason names the value: %r" % r.get("reason"))
    x = np.random.default_rng(0).standard_normal((B, 2, D)).astype("<f4")
    x[0, 0, 0] = 3e38
    r = push(p, [header(2, B), x.tobytes()])
    check(r.get("code") == "XC_ERANGE", "f32 3e38: %r" % r)
    x[0, 0, 0] = 1.0
    for seq in range(3, 8):
        r = push(p, [header(seq, B), x.tobytes()])
        check(r.get("type") == "ack", "a sound batch after the refusals: %r" % r)
    wait_for(lambda: d.status()["step"] >= 3, what="steps after the refusals")
    st = d.status()
    check(all(np.isfinite([st["loss"], st["fve"][0], st["fve"][1]])), "statistics finite: %r" %
          {k: st[k] for k in ("loss", "fve")})
    check(st["counters"]["XC_ERANGE"] == 2, "counted: %r" % st["counters"])
    p.close(0)


def test_producer_id_must_be_text():
    d = daemon()
    p = d.producer()
    x = np.zeros((B, 2, D), dtype="<f4").tobytes()
    for bad in (b"\xff\xfe", "evil\n2026-01-01T00:00:00Z INFO forged".encode(), b"a\x1b[2Jb"):
        h = msgpack.packb({"v": 1, "type": "batch", "producer": bad.decode("utf-8", "surrogateescape"), "seq": 1,
                           "n": B, "d": D, "dtype": "f32", "layout": "n2d"}, unicode_errors="surrogateescape")
        r = push(p, [h, x])
        check(r.get("code") == "XC_EPROTO" and "UTF-8" in r.get("reason", ""), "id %r: %r" % (bad, r))
    log = d.logtext()
    check("forged" not in "\n".join(l for l in log.splitlines() if not l[:4].isdigit()),
          "a forged line reached the log")
    check("\x1b" not in log, "an escape byte reached the log")
    p.close(0)


def test_control_errors_answered_log_bounded():
    d = daemon()
    size0 = os.path.getsize(d.log.name)
    n, window, got, sent = 10000, 200, 0, 0
    bad = msgpack.packb({"v": 1, "op": "no_such_op\nforged", "id": 1})
    while got < n:
        while sent < n and sent - got < window:
            d.ctl.send_multipart([b"", bad])
            sent += 1
        check(d.ctl.poll(10000), "no reply after %d of %d" % (got, n))
        fr = d.ctl.recv_multipart()
        check(msgpack.unpackb(fr[1]).get("code") == "XC_EUNKNOWN", "reply %r" % fr)
        got += 1
    grown = os.path.getsize(d.log.name) - size0
    check(grown < 64 * 1024, "10,000 bad requests wrote %d bytes of log" % grown)


def test_ping_bursts_all_answered():
    d = daemon()
    for n in (65, 100, 1000):
        for i in range(n):
            d.ctl.send_multipart([b"", msgpack.packb({"v": 1, "op": "ping", "id": i})])
        ids = set()
        while len(ids) < n:
            if not d.ctl.poll(10000):
                break
            ids.add(msgpack.unpackb(d.ctl.recv_multipart()[1])["id"])
        check(len(ids) == n, "burst of %d pings: %d replies" % (n, len(ids)))
        check(not d.ctl.poll(300), "more replies than requests")
    st = d.status()
    check(st["counters"]["replies_dropped"] == 0, "dropped: %r" % st["counters"])


def test_private_files_whatever_umask():
    old = os.umask(0)
    try:
        tmp = tempfile.mkdtemp(prefix="xc_umask_")
        d = Daemon(tmp, name="umask%d" % os.getpid())
        d.ok({"op": "checkpoint"}, timeout=60)
        mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
        check(mode(d.run_dir) & 0o027 == 0, "run_dir mode %o" % mode(d.run_dir))
        check(mode(d.state_dir) & 0o027 == 0, "state_dir mode %o" % mode(d.state_dir))
        for f in os.listdir(d.state_dir):
            check(mode(os.path.join(d.state_dir, f)) & 0o037 == 0, "%s mode %o" % (f, mode(os.path.join(d.state_dir, f))))
        for f in ("control.sock", "ingest.sock", "events.sock", "xcoderd.lock"):
            check(mode(os.path.join(d.run_dir, f)) & 0o007 == 0, "%s mode %o" % (f, mode(os.path.join(d.run_dir, f))))
        check(d.stop() == 0, "clean exit")
    finally:
        os.umask(old)
        shutil.rmtree(tmp, ignore_errors=True)


def test_run_dir_squatting_refused():
    tmp = tempfile.mkdtemp(prefix="xc_squat_")
    try:
        run = os.path.join(tmp, "run")
        os.mkdir(run)
        os.chmod(run, 0o777)  # writable by others: could be another user's trap
        victim = os.path.join(tmp, "victim")
        with open(victim, "w") as f:
            f.write("precious")
        log = open(os.path.join(tmp, "log"), "w+")
        import subprocess
        from integ_daemon import XCODERD
        rc = subprocess.call([XCODERD, "--run_dir", run, "--name", "squat", "--d", "8", "--dict_size", "64",
                              "--k", "2", "--batch_size", "64"], stdout=log, stderr=subprocess.STDOUT, timeout=20)
        log.seek(0)
        text = log.read()
        check(rc == 2 and "writable by others" in text, "world-writable run_dir accepted: rc %d %s" % (rc, text[-300:]))
        os.chmod(run, 0o700)
        os.symlink(victim, os.path.join(run, "xcoderd.lock"))  # a planted link
        rc = subprocess.call([XCODERD, "--run_dir", run, "--name", "squat", "--d", "8", "--dict_size", "64",
                              "--k", "2", "--batch_size", "64"], stdout=log, stderr=subprocess.STDOUT, timeout=20)
        check(rc == 2, "planted lock link accepted: rc %d" % rc)
        check(open(victim).read() == "precious", "the link's target was truncated")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_memory_limit_refuses_config():
    import subprocess
    from integ_daemon import XCODERD
    tmp = tempfile.mkdtemp(prefix="xc_mem_")
    try:
        base = [XCODERD, "--run_dir", os.path.join(tmp, "run"), "--name", "memlim%d" % os.getpid(), "--d", "8",
                "--dict_size", "64", "--k", "2", "--batch_size", "64"]
        r = subprocess.run(base + ["--memory_limit", str(256 << 20)], capture_output=True, text=True, timeout=20)
        check(r.returncode == 2 and "memory_limit" in r.stderr + r.stdout and "queue_size" in r.stderr + r.stdout,
              "64 x 64 MiB queue accepted under a 256 MiB limit: rc %d %s" % (r.returncode, r.stderr[-300:]))
        r = subprocess.run(base + ["--memory_limit", str(256 << 20), "--max_msg_bytes", str(1 << 20), "--queue_size",
                                   "16"], capture_output=True, text=True, timeout=20)
        check(r.returncode == 2 and "max_connections" in r.stderr + r.stdout,
              "64 connections of 17 x 2 MiB accepted under a 256 MiB limit: rc %d %s" % (r.returncode, r.stderr[-300:]))
        p = subprocess.Popen(base + ["--memory_limit", str(256 << 20), "--max_msg_bytes", str(1 << 20), "--queue_size",
                                     "16", "--max_connections", "2", "--ingest_hwm", "2"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = ""
        for line in p.stdout:
            if "memory bound" in line:
                break
        p.terminate()
        p.wait(20)
        check("memory bound" in line and "max_connections (2 per socket)" in line, "bound not stated: %r" % line)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    try:
        for t in (test_finite_overflow_refused, test_producer_id_must_be_text,
                  test_control_errors_answered_log_bounded, test_ping_bursts_all_answered,
                  test_private_files_whatever_umask, test_run_dir_squatting_refused,
                  test_memory_limit_refuses_config):
            run_case(t)
    finally:
        if DAEMON is not None:
            DAEMON.stop()
        shutil.rmtree(TMP, ignore_errors=True)
    return 1 if failed() else 0


if __name__ == "__main__":
    sys.exit(main())
