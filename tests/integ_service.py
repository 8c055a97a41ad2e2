#!/usr/bin/python3
"""xcoderd as a system service (issue 8): the sd_notify protocol and the Prometheus
metrics, against the real build/xcoderd.

The test owns a unix datagram socket and hands it to the daemon as NOTIFY_SOCKET,
the way systemd does, reading each datagram with the sender's credentials
(SO_PASSCRED). It checks READY=1 comes once the sockets are bound (the control
socket answers at that moment), STATUS= with step and tokens/s at the stats
interval, WATCHDOG=1 at half of WATCHDOG_USEC (and none when the watchdog is off
or meant for another pid), RELOADING=1/READY=1 around SIGHUP, STOPPING=1 at
shutdown start (before the final checkpoint), and no READY=1 on a start-up error.

Metrics: the metrics_file parses with prometheus_client's text-format parser
(python3-prometheus-client, Debian) and a strict line checker; values match the
status op; refusals carry reason labels; the `metrics` op and `xcoder metrics`
return the same series; a reader polling the file while it is rewritten every
50 ms never sees a partial file; SIGHUP moves metrics_file; every family is
documented in daemon/xcoderd.8.

Prints "ok - name" / "not ok - name: why"; exits non-zero on any failure."""
import os
import re
import shutil
import signal
import socket
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
from prometheus_client.parser import text_string_to_metric_families

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
XCODERD = os.environ.get("XCODERD", os.path.join(ROOT, "build", "xcoderd"))
XCODER = os.environ.get("XCODER", os.path.join(ROOT, "build", "xcoder"))
D, F, K, B = 16, 64, 4, 32
TMP = tempfile.mkdtemp(prefix="xcd-service-")
SFX = str(os.getpid())  # instance names are host-wide (shared memory): unique per run



class Notify:
    """A fake systemd notification socket: records (time, pid, fields) per datagram."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(path)
        self.sock.settimeout(0.1)
        self.msgs = []
        self.lock = threading.Lock()
        self.hook = None  # called with each message in the receiving thread
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        csize = socket.CMSG_SPACE(struct.calcsize("3i"))
        while not self.stop:
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, csize)
            except socket.timeout:
                continue
            except OSError:
                return
            pid = None
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", cdata[:12])[0]
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            m = (time.time(), pid, fields)
            if self.hook:
                self.hook(m)
            with self.lock:
                self.msgs.append(m)

    def all(self):
        with self.lock:
            return list(self.msgs)

    def having(self, key):
        return [m for m in self.all() if key in m[2]]

    def close(self):
        self.stop = True
        self.thread.join()
        self.sock.close()


class Daemon:
    def __init__(self, name, *extra, env=None, notify=None, wait=True):
        self.dir = os.path.join(TMP, name)
        os.makedirs(self.dir, exist_ok=True)
        self.run_dir = os.path.join(self.dir, "run")
        self.log = open(os.path.join(self.dir, "daemon.log"), "w+")
        self.ep = {k: "ipc://%s/%s.sock" % (self.run_dir, k) for k in ("ingest", "control", "events")}
        self.args = [XCODERD, "--run_dir", self.run_dir, "--state_dir", os.path.join(self.dir, "state"),
                     "--name", name + SFX, "--d", str(D), "--dict_size", str(F), "--k", str(K),
                     "--batch_size", str(B), "--stats_interval", "0.2", "--threads", "1",
                     "--checkpoint_interval", "0"] + list(extra)
        e = dict(os.environ)
        for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            e.pop(k, None)
        if notify:
            e["NOTIFY_SOCKET"] = notify.path
        e.update(env or {})
        self.ctx = zmq.Context.instance()
        self.ctl = None
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT, env=e)
        if wait:
            wait_for(lambda: os.path.exists(os.path.join(self.run_dir, "control.sock")) or
                     self.proc.poll() is not None, what="control socket")
            check(self.proc.poll() is None, "daemon exited at start: " + self.logtext())

    def logtext(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-3000:]

    def req(self, body, timeout=10.0):
        if self.ctl is None:
            self.ctl = self.ctx.socket(zmq.DEALER)
            self.ctl.setsockopt(zmq.LINGER, 0)
            self.ctl.connect(self.ep["control"])
        body = dict(body)
        body.setdefault("v", 1)
        self.ctl.send_multipart([b"", msgpack.packb(body)])
        if not self.ctl.poll(int(timeout * 1000)):
            raise AssertionError("no reply to %r within %.0fs" % (body, timeout))
        fr = self.ctl.recv_multipart()
        r = msgpack.unpackb(fr[-1])
        check(r.get("ok") is True, "request %r failed: %r" % (body, r))
        return r

    def push(self, n_batches, d=D, seed=0):
        """Sends n_batches of B tokens; returns the replies (acks or nacks)."""
        rng = np.random.default_rng(seed)
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(self.ep["ingest"])
        out = []
        for i in range(n_batches):
            h = {"v": 1, "type": "batch", "producer": "integ-service", "seq": i, "n": B, "d": d,
                 "dtype": "f32", "layout": "n2d"}
            x = rng.standard_normal((B, 2, d)).astype("<f4").tobytes()
            s.send_multipart([msgpack.packb(h), x])
            check(s.poll(10000), "no ingest reply")
            out.append(msgpack.unpackb(s.recv()))
        s.close(0)
        return out

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.ctl is not None:
            self.ctl.close(0)
            self.ctl = None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


# ----------------------------------------------------------------- notify --
def test_notify_ready_status_watchdog_reload_stopping():
    n = Notify(os.path.join(TMP, "notify-1"))
    seen_at_ready = {}

    def on_msg(m):  # at READY=1 the sockets must already be bound and answering
        if m[2].get("READY") == "1" and "ready" not in seen_at_ready:
            rd = os.path.join(TMP, "lab1", "run")
            seen_at_ready["ready"] = all(os.path.exists(os.path.join(rd, s + ".sock"))
                                         for s in ("ingest", "control", "events"))
            c = zmq.Context.instance().socket(zmq.DEALER)
            c.setsockopt(zmq.LINGER, 0)
            c.connect("ipc://%s/control.sock" % rd)
            c.send_multipart([b"", msgpack.packb({"v": 1, "op": "ping"})])
            seen_at_ready["ping"] = bool(c.poll(5000)) and msgpack.unpackb(c.recv_multipart()[-1])["ok"]
            c.close(0)

    n.hook = on_msg
    try:
        dmn = Daemon("lab1", notify=n, env={"WATCHDOG_USEC": "200000"}, wait=False)
        wait_for(lambda: n.having("READY"), what="READY=1")
        first = n.all()[0]
        check(first[2].get("READY") == "1", "first notification is not READY=1: %r" % (first[2],))
        check(first[1] == dmn.proc.pid, "READY=1 sent by pid %r, not the main pid %d" % (first[1], dmn.proc.pid))
        check(seen_at_ready.get("ready"), "socket files missing when READY=1 arrived")
        check(seen_at_ready.get("ping") is True, "control socket did not answer right after READY=1")
        check("STATUS" in first[2], "READY=1 without a STATUS= line")

        # STATUS= at the stats interval (0.2 s), with step and tokens/s; training moves it
        dmn.push(16)  # mix_tokens = 8 batches fill first
        wait_for(lambda: any(re.search(r"step [1-9]", m[2].get("STATUS", "")) for m in n.all()),
                 what="STATUS with a step > 0")
        t_ready = first[0]
        time.sleep(1.0)
        st = [m for m in n.having("STATUS") if m[0] > t_ready]
        check(len(st) >= 3, "only %d STATUS= updates in >1 s at stats_interval 0.2" % len(st))
        for m in st:
            check(re.match(r"(step \d+, [\d.]+ tokens/s|stopping|ready)", m[2]["STATUS"]),
                  "STATUS=%r lacks step and tokens/s" % m[2]["STATUS"])

        # WATCHDOG=1 every WATCHDOG_USEC/2 = 100 ms, from the main pid
        wd = [m for m in n.having("WATCHDOG") if m[0] > t_ready]
        check(all(m[2]["WATCHDOG"] == "1" and m[1] == dmn.proc.pid for m in wd), "bad WATCHDOG message")
        span = wd[-1][0] - wd[0][0] if len(wd) > 1 else 0
        rate = (len(wd) - 1) / span if span > 0 else 0
        check(len(wd) >= 8 and 6 <= rate <= 14,
              "%d WATCHDOG=1 over %.2f s (%.1f/s); expected ~10/s for WATCHDOG_USEC=200000" % (len(wd), span, rate))

        # SIGHUP: RELOADING=1 (with MONOTONIC_USEC) then READY=1
        t_hup = time.time()
        dmn.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: [m for m in n.having("READY") if m[0] > t_hup], what="READY=1 after SIGHUP")
        after = [m[2] for m in n.all() if m[0] > t_hup]
        rel = [i for i, f in enumerate(after) if f.get("RELOADING") == "1"]
        rdy = [i for i, f in enumerate(after) if f.get("READY") == "1"]
        check(rel and rdy and rel[0] < rdy[0], "SIGHUP did not give RELOADING=1 then READY=1: %r" % after[:6])
        check(after[rel[0]].get("MONOTONIC_USEC", "").isdigit(), "RELOADING=1 without MONOTONIC_USEC")

        # SIGTERM: STOPPING=1 first, the watchdog goes on while the final checkpoint is written
        t_term = time.time()
        rc = dmn.stop()
        check(rc == 0, "exit status %d after SIGTERM: %s" % (rc, dmn.logtext()))
        after = [m for m in n.all() if m[0] > t_term]
        stop = [m for m in after if m[2].get("STOPPING") == "1"]
        check(stop, "no STOPPING=1 at shutdown")
        check(not any(m[2].get("READY") for m in after), "READY=1 during shutdown")
        ck = os.listdir(os.path.join(TMP, "lab1", "state"))
        check(any(f.endswith(".safetensors") for f in ck), "no final checkpoint: %r" % ck)
    finally:
        n.close()


def test_no_watchdog_unless_asked():
    n = Notify(os.path.join(TMP, "notify-2"))
    try:
        a = Daemon("lab2", notify=n, wait=False)  # no WATCHDOG_USEC
        wait_for(lambda: n.having("READY"), what="READY=1")
        time.sleep(0.5)
        check(a.stop() == 0, "exit status")
        b = Daemon("lab3", notify=n, env={"WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"}, wait=False)
        wait_for(lambda: len(n.having("READY")) >= 2, what="second READY=1")
        time.sleep(0.5)
        check(b.stop() == 0, "exit status")
        wd = n.having("WATCHDOG")
        check(not wd, "%d WATCHDOG=1 sent although not asked (or asked of another pid)" % len(wd))
    finally:
        n.close()


def test_no_ready_on_startup_error():
    n = Notify(os.path.join(TMP, "notify-3"))
    try:
        dmn = Daemon("lab4", "--k", str(F + 1), notify=n, wait=False)  # k > dict_size
        rc = dmn.proc.wait(20)
        check(rc == 2, "exit status %d, expected 2 (configuration error)" % rc)
        time.sleep(0.2)
        check(not n.having("READY"), "READY=1 sent by a daemon that failed to start")
    finally:
        n.close()


# ---------------------------------------------------------------- metrics --
NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*)\} '
                       r'(NaN|[+-]Inf|[-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?)$')


def strict_lines(text):
    """Text format 0.0.4, stricter than the parser: HELP then TYPE then the samples of
    one family, no family twice, counters named *_total, every series labelled name."""
    check(text.endswith("\n"), "does not end with a newline")
    seen, fam, state = set(), None, None
    for i, line in enumerate(text.split("\n")[:-1], 1):
        if line.startswith("# HELP "):
            fam = line.split(" ")[2]
            check(NAME_RE.match(fam) and fam not in seen, "line %d: bad or repeated family %r" % (i, fam))
            seen.add(fam)
            state = "help"
        elif line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ")
            check(state == "help" and name == fam, "line %d: TYPE not after its HELP" % i)
            check(typ in ("gauge", "counter"), "line %d: type %s" % (i, typ))
            check(typ != "counter" or name.endswith("_total"), "line %d: counter %s without _total" % (i, name))
            state = "type"
        else:
            m = SAMPLE_RE.match(line)
            check(m, "line %d: not a sample line: %r" % (i, line))
            check(m.group(1) == fam and state == "type", "line %d: sample outside its family" % i)
            check(m.group(2).startswith('name="'), "line %d: no name label first" % i)


def families(text):
    """{sample name: (family type, {labels-tuple: value})} from prometheus_client's parser
    (which names a counter family without its _total; its samples keep it)."""
    out = {}
    for f in text_string_to_metric_families(text):
        for s in f.samples:
            typ, series = out.setdefault(s.name, (f.type, {}))
            key = tuple(sorted(s.labels.items()))
            check(key not in series, "duplicate series %s%r" % (s.name, key))
            series[key] = s.value
    return out


def value(fams, fam, **labels):
    for key, v in fams[fam][1].items():
        if all(dict(key).get(k) == x for k, x in labels.items()):
            return v
    raise AssertionError("no series %s%r" % (fam, labels))


def test_metrics_file():
    mf = os.path.join(TMP, "textfile", "xcoderd-m1.prom")
    os.makedirs(os.path.dirname(mf))
    dmn = Daemon("m1", "--metrics_file", mf, "--metrics_interval", "0.1")
    try:
        wait_for(lambda: os.path.exists(mf), what="metrics_file")
        replies = dmn.push(16)
        check(all(r.get("type") == "ack" for r in replies), "batches refused: %r" % replies[:2])
        bad = dmn.push(2, d=D + 1, seed=1)  # wrong width: XC_ESHAPE nacks
        check(all(r.get("type") == "nack" and r.get("code") == "XC_ESHAPE" for r in bad),
              "wrong-width batches not refused with XC_ESHAPE: %r" % bad[:1])
        wait_for(lambda: dmn.req({"op": "status"})["step"] >= 4, what="4 steps")
        dmn.req({"op": "pause"})
        dmn.req({"op": "checkpoint"}, timeout=30)
        st = dmn.req({"op": "status"})
        time.sleep(0.5)  # two rewrites after the numbers settled
        text = open(mf).read()
        strict_lines(text)
        fams = families(text)
        check(oct(os.stat(mf).st_mode & 0o777) == "0o644", "metrics_file mode %o" % (os.stat(mf).st_mode & 0o777))
        left = [f for f in os.listdir(os.path.dirname(mf)) if f != os.path.basename(mf)]
        check(not left, "temp files left next to metrics_file: %r" % left)

        def f(name, **lab):
            return value(fams, name, name="m1" + SFX, **lab)

        check(f("xcoderd_step") == st["step"], "step %r vs status %r" % (f("xcoderd_step"), st["step"]))
        check(f("xcoderd_tokens_trained_total") == st["tokens_trained"], "tokens_trained")
        check(f("xcoderd_tokens_acked_total") == 16 * B, "tokens_acked %r" % f("xcoderd_tokens_acked_total"))
        check(fams["xcoderd_tokens_trained_total"][0] == "counter", "tokens_trained is not a counter")
        check(f("xcoderd_batches_refused_total", reason="XC_ESHAPE") == 2, "XC_ESHAPE refusals")
        check(f("xcoderd_batches_refused_total", reason="XC_ENONFINITE") == 0, "XC_ENONFINITE refusals")
        check(abs(f("xcoderd_fve", model="base") - st["fve"][0]) < 1e-6, "fve base")
        check(abs(f("xcoderd_fve", model="chat") - st["fve"][1]) < 1e-6, "fve chat")
        check(abs(f("xcoderd_loss", term="total") - st["loss"]) < 1e-6, "loss")
        check(abs(f("xcoderd_l0") - st["l0"]) < 1e-6, "l0")
        check(abs(f("xcoderd_dead_fraction") - st["dead_fraction"]) < 1e-9, "dead_fraction")
        check(f("xcoderd_queue_capacity") == st["queue_size"], "queue capacity")
        check(f("xcoderd_state", state="paused") == 1 and f("xcoderd_state", state="running") == 0, "state")
        check(f("xcoderd_checkpoints_written_total") == 1, "checkpoints_written")
        check(f("xcoderd_last_checkpoint_step") == st["step"], "last_checkpoint_step")
        check(0 <= f("xcoderd_checkpoint_age_seconds") < 5, "checkpoint age %r" % f("xcoderd_checkpoint_age_seconds"))
        check(abs(f("xcoderd_last_checkpoint_timestamp_seconds") - time.time()) < 10, "checkpoint timestamp")
        check(f("xcoderd_uptime_seconds") > 0 and f("xcoderd_tokens_per_second") >= 0, "uptime / tokens/s")
        check(value(fams, "xcoderd_info", model="batchtopk", d=str(D), k=str(K)) == 1, "info")
        for fam, (typ, series) in fams.items():
            check(all(dict(k).get("name") == "m1" + SFX for k in series), "%s: series without name=m1" % fam)

        # the control op and the CLI print the same series (one renderer)
        op = dmn.req({"op": "metrics"})
        check(op.get("format", "").startswith("text/plain; version=0.0.4"), "format %r" % op.get("format"))
        strict_lines(op["text"])
        check(set(families(op["text"])) == set(fams), "metrics op families differ from the file")
        check(set((n, k) for n, (t, s) in families(op["text"]).items() for k in s) ==
              set((n, k) for n, (t, s) in fams.items() for k in s), "metrics op series differ from the file")
        if os.access(XCODER, os.X_OK):
            cli = subprocess.run([XCODER, "--run-dir", dmn.run_dir, "metrics"], capture_output=True, text=True,
                                 timeout=30)
            check(cli.returncode == 0, "xcoder metrics: %s" % cli.stderr)
            strict_lines(cli.stdout)
            cf = families(cli.stdout)
            check(set((n, k) for n, (t, s) in cf.items() for k in s) ==
                  set((n, k) for n, (t, s) in fams.items() for k in s), "xcoder metrics series differ from the file")
            check(value(cf, "xcoderd_step", name="m1" + SFX) == st["step"], "xcoder metrics step")
        else:
            raise AssertionError("%s not built" % XCODER)

        # every family is documented in the man page
        man = open(os.path.join(ROOT, "daemon", "xcoderd.8")).read().replace("\\", "")
        text_names = set(re.findall(r"^# TYPE (\S+)", text, re.M))
        missing = sorted(n for n in text_names if n not in man)
        check(not missing, "families missing from daemon/xcoderd.8: %s" % ", ".join(missing))
    finally:
        rc = dmn.stop()
    check(rc == 0, "exit status %d" % rc)
    fams = families(open(mf).read())  # the last file says stopping
    check(value(fams, "xcoderd_state", name="m1" + SFX, state="stopping") == 1, "final metrics not written at stop")


def test_metrics_file_atomic_and_reload():
    d = os.path.join(TMP, "textfile2")
    os.makedirs(d)
    mf, mf2 = os.path.join(d, "a.prom"), os.path.join(d, "b.prom")
    conf = os.path.join(TMP, "m2.conf")
    with open(conf, "w") as fh:
        fh.write('metrics_file = "%s"\nmetrics_interval = 0.05\n' % mf)
    dmn = Daemon("m2", "--config", conf)
    try:
        wait_for(lambda: os.path.exists(mf), what="metrics_file")
        stop = threading.Event()

        def produce():
            i = 0
            while not stop.is_set():
                dmn.push(2, seed=i)
                i += 1

        th = threading.Thread(target=produce, daemon=True)
        th.start()
        reads, t0 = 0, time.time()
        while time.time() - t0 < 2.0:  # ~40 rewrites
            text = open(mf).read()
            strict_lines(text)  # a partial file would fail here
            check("xcoderd_zmq_errors_total" in text, "truncated file (%d bytes)" % len(text))
            reads += 1
        stop.set()
        th.join(30)
        check(reads > 100, "only %d reads" % reads)
        # SIGHUP moves metrics_file (the key is reloadable)
        with open(conf, "w") as fh:
            fh.write('metrics_file = "%s"\nmetrics_interval = 0.05\n' % mf2)
        dmn.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: os.path.exists(mf2), what="metrics_file after SIGHUP")
        families(open(mf2).read())
        m1 = os.stat(mf).st_mtime
        time.sleep(0.3)
        check(os.stat(mf).st_mtime == m1, "the old metrics_file is still rewritten after SIGHUP")
    finally:
        rc = dmn.stop()
    check(rc == 0, "exit status %d" % rc)


def test_metrics_file_unwritable_is_logged_once():
    mf = os.path.join(TMP, "no-such-dir", "x.prom")
    dmn = Daemon("m3", "--metrics_file", mf, "--metrics_interval", "0.05")
    try:
        time.sleep(0.6)
        check(dmn.proc.poll() is None, "daemon died on an unwritable metrics_file")
        dmn.req({"op": "ping"})
    finally:
        rc = dmn.stop()
    log = dmn.logtext()
    check(rc == 0, "exit status %d" % rc)
    check(log.count("metrics_file not written") == 1, "warning logged %d times:\n%s" %
          (log.count("metrics_file not written"), log))
    check("no-such-dir" in log, "warning does not name the path")


if __name__ == "__main__":
    try:
        for case in (test_notify_ready_status_watchdog_reload_stopping, test_no_watchdog_unless_asked,
                     test_no_ready_on_startup_error, test_metrics_file, test_metrics_file_atomic_and_reload,
                     test_metrics_file_unwritable_is_logged_once):
            run_case(case)
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
    sys.exit(1 if failed() else 0)
