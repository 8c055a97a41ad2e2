#!/usr/bin/python3
"""Finding and owning a daemon instance, against real build/xcoderd processes:
- a daemon started with defaults (no --run_dir, no --name) is found by the CLI,
  the Python client and the JS client with no endpoint given (one rule in all
  three), with and without $XDG_RUNTIME_DIR, and by name;
- a missing ipc socket file fails at once in all three (a socket file nobody
  answers on still waits for the timeout);
- a second daemon with the same name and another run_dir is refused with a
  message naming the first (pid, run_dir), and the first keeps its shared memory.
Prints "ok - name" / "not ok - name: why" lines; exits non-zero on failure."""
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from xc_integ import check, failed, run_case, wait_for  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
XCODERD = os.environ.get("XCODERD", os.path.join(ROOT, "build", "xcoderd"))
XCODER = os.path.join(ROOT, "build", "xcoder")
PYPATH = os.path.join(ROOT, "client", "python")
JSDIR = os.path.join(ROOT, "client", "js")
SHAPE = ["--d", "32", "--dict_size", "256", "--k", "4", "--batch_size", "64", "--threads", "1"]
TMP = tempfile.mkdtemp(prefix="xcd-inst-")
PROCS = []


def env_without(*drop, **add):
    e = {k: v for k, v in os.environ.items() if k not in drop and k not in ("XCODER_RUN_DIR",)}
    e["PYTHONPATH"] = PYPATH
    e["XCODER_SYSTEM_RUN_ROOT"] = os.path.join(TMP, "no-system-run")  # never the host's /run
    e.update(add)
    return e


def start(args, env):
    log = open(os.path.join(TMP, "daemon-%d.log" % len(PROCS)), "w+")
    p = subprocess.Popen([XCODERD] + SHAPE + args, env=env, stdout=log, stderr=subprocess.STDOUT)
    p.logf = log
    PROCS.append(p)
    return p


def logtext(p):
    p.logf.flush()
    p.logf.seek(0)
    return p.logf.read()[-2000:]


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def cli(args, env, timeout=60):
    r = subprocess.run([XCODER] + args, env=env, capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


PY_PING = "import xcoder,sys; n=sys.argv[1] or None; print(xcoder.Client(name=n, timeout=20).ping()['name'])"
JS_PING = ("const {Client}=require('./index.js'); const n=process.argv[1]||undefined;"
           "const c=new Client(undefined,{name:n,timeout:20000});"
           "c.request('ping').then(r=>{console.log(r.name);c.close();},e=>{console.log(e.code+': '+e.message);"
           "c.close();process.exitCode=1;});")


def js_ready():
    return shutil.which("node") and os.path.isdir(os.path.join(JSDIR, "node_modules", "zeromq"))


def js_run(code, arg, env, timeout=60):
    r = subprocess.run(["node", "-e", code, arg], cwd=JSDIR, env=env, capture_output=True, text=True,
                       timeout=timeout)
    return r.returncode, r.stdout + r.stderr


def all_three_find(name, env, want):
    """CLI, Python and JS, given no endpoint (only the name, if any), reach the daemon `want`."""
    rc, out = cli((["--name", name] if name else []) + ["--timeout", "20", "ping", "--json"], env)
    check(rc == 0 and '"%s"' % want in out, "CLI: rc %d: %s" % (rc, out[-400:]))
    r = subprocess.run([sys.executable, "-c", PY_PING, name or ""], env=env, capture_output=True, text=True,
                       timeout=60)
    check(r.returncode == 0 and r.stdout.strip() == want, "Python: %s" % (r.stdout + r.stderr)[-400:])
    check(js_ready(), "node or client/js/node_modules missing (make build/js.stamp)")
    rc, out = js_run(JS_PING, name or "", env)
    check(rc == 0 and out.strip() == want, "JS: rc %d: %s" % (rc, out[-400:]))


def test_default_daemon_found_by_all_clients():
    """xcoderd with no --run_dir and no --name listens in $XDG_RUNTIME_DIR/xcoderd-default."""
    xdg = os.path.join(TMP, "xdg")
    os.makedirs(xdg, mode=0o700)
    env = env_without(XDG_RUNTIME_DIR=xdg)
    d = start(["--shm", "off"], env)
    try:
        wait_for(lambda: os.path.exists(os.path.join(xdg, "xcoderd-default", "control.sock")) or d.poll() is not None,
                 timeout=30, what="control socket")
        check(d.poll() is None, "daemon exited: " + logtext(d))
        all_three_find(None, env, "default")
    finally:
        stop(d)


def test_named_daemon_without_xdg_found_by_name():
    """Without $XDG_RUNTIME_DIR the daemon and every client use /tmp/xcoderd-NAME."""
    name = "inst%d" % os.getpid()
    env = env_without("XDG_RUNTIME_DIR")
    rd = "/tmp/xcoderd-" + name
    check(not os.path.exists(rd), "%s exists already" % rd)
    d = start(["--name", name, "--shm", "off", "--state_dir", os.path.join(TMP, "state-named")], env)
    try:
        wait_for(lambda: os.path.exists(rd + "/control.sock") or d.poll() is not None, timeout=30,
                 what="control socket")
        check(d.poll() is None, "daemon exited: " + logtext(d))
        all_three_find(name, env, name)
    finally:
        stop(d)
        shutil.rmtree(rd, ignore_errors=True)


def test_missing_socket_fails_at_once():
    """No socket file: all three fail within seconds although the timeout is 20 s."""
    gone = os.path.join(TMP, "nobody-here")
    env = env_without(XCODER_RUN_DIR=gone)
    t0 = time.monotonic()
    rc, out = cli(["--run-dir", gone, "--timeout", "20", "status"], env)
    check(rc == 1 and "does not exist" in out and time.monotonic() - t0 < 5,
          "CLI: rc %d after %.1fs: %s" % (rc, time.monotonic() - t0, out))
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", PY_PING, ""], env=env, capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr
    check(r.returncode != 0 and "XC_ENOTFOUND" in out and "does not exist" in out and time.monotonic() - t0 < 5,
          "Python after %.1fs: %s" % (time.monotonic() - t0, out[-400:]))
    check(js_ready(), "node or client/js/node_modules missing (make build/js.stamp)")
    t0 = time.monotonic()
    rc, out = js_run(JS_PING, "", env)
    check(rc == 1 and "XC_ENOTFOUND" in out and "does not exist" in out and time.monotonic() - t0 < 5,
          "JS after %.1fs: rc %d: %s" % (time.monotonic() - t0, rc, out[-400:]))


def test_silent_socket_still_times_out():
    """A socket file that exists but nobody answers on: the timeout applies (exit 3)."""
    rd = os.path.join(TMP, "silent")
    os.makedirs(rd)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(os.path.join(rd, "control.sock"))  # bound, never listening: connections are refused
    try:
        t0 = time.monotonic()
        rc, out = cli(["--run-dir", rd, "--timeout", "1", "status"], env_without())
        check(rc == 3 and time.monotonic() - t0 >= 0.9, "rc %d after %.1fs: %s" % (rc, time.monotonic() - t0, out))
    finally:
        s.close()


def shm_header(name):
    with open("/dev/shm/xcoderd." + name, "rb") as f:
        h = f.read(1024)
    pid, = struct.unpack_from("<I", h, 36)
    alive, = struct.unpack_from("<I", h, 216)
    owner = h[768:1024].split(b"\0")[0].decode()
    return pid, alive, owner


def test_second_daemon_same_name_refused():
    """Same name, another run_dir: refused (exit 2) naming the first; the first keeps its object."""
    if not os.path.isdir("/dev/shm"):
        raise AssertionError("/dev/shm is missing: shared memory cannot be tested here")
    name = "own%d" % os.getpid()
    env = env_without()
    a_dir = os.path.join(TMP, "a")
    a = start(["--name", name, "--run_dir", a_dir, "--shm_interval", "0.05"], env)
    try:
        wait_for(lambda: os.path.exists("/dev/shm/xcoderd." + name) or a.poll() is not None, timeout=30,
                 what="shared memory")
        check(a.poll() is None, "first daemon exited: " + logtext(a))
        b = start(["--name", name, "--run_dir", os.path.join(TMP, "b")], env)
        try:
            b.wait(30)
        except subprocess.TimeoutExpired:
            raise AssertionError("second daemon with the same name started: " + logtext(b))
        log = logtext(b)
        check(b.returncode == 2, "second daemon exit %d: %s" % (b.returncode, log))
        check("pid %d" % a.pid in log and a_dir in log, "message does not name the first: %s" % log)
        check(os.path.exists("/dev/shm/xcoderd." + name), "the first daemon's shared memory was removed")
        pid, alive, owner = shm_header(name)
        check(pid == a.pid and alive == 1 and owner == a_dir, "object: pid %d alive %d owner %r" % (pid, alive, owner))
        rc, out = cli(["--run-dir", a_dir, "--timeout", "20", "status", "--json"], env)
        check(rc == 0 and '"shm":true' in out.replace(" ", ""), "status: %s" % out[-300:])
        r = subprocess.run([sys.executable, "-c", "import xcoder,sys; s=xcoder.SharedStats(sys.argv[1]);"
                            "print(s.snapshot().header['writer_pid'])", name],
                           env=env, capture_output=True, text=True, timeout=60)
        check(r.returncode == 0 and r.stdout.strip() == str(a.pid), "SharedStats: %s" % (r.stdout + r.stderr)[-400:])
    finally:
        stop(a)
    check(a.returncode == 0, "first daemon exit %d" % a.returncode)
    check(not os.path.exists("/dev/shm/xcoderd." + name), "object left after the owner's clean exit")


def main():
    for t in (test_default_daemon_found_by_all_clients, test_named_daemon_without_xdg_found_by_name,
              test_missing_socket_fails_at_once, test_silent_socket_still_times_out,
              test_second_daemon_same_name_refused):
        run_case(t)
    for p in PROCS:
        if p.poll() is None:
            p.kill()
            p.wait()
    shutil.rmtree(TMP, ignore_errors=True)
    return 1 if failed() else 0


if __name__ == "__main__":
    sys.exit(main())
