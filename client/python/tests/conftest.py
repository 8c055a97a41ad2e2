"""Shared fixtures: a real xcoderd in a temp dir (ipc:// endpoints), and, when
XC_TAP=1, one "ok - name" / "not ok - name: why" line per test for tests/run.sh
(skips count as failures there: nothing is skipped silently)."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "client", "python"))

import xcoder  # noqa: E402

XCODERD = os.environ.get("XCODERD", os.path.join(ROOT, "build", "xcoderd"))

# The small model every daemon test trains.
D, F, K, B = 32, 256, 4, 64


class Daemon:
    """One build/xcoderd process in its own temp dir; stopped by the fixture."""

    def __init__(self, name=None, **keys):
        name = name or f"py{os.getpid()}"  # host-wide shared-memory name: unique per run
        if not os.access(XCODERD, os.X_OK):
            pytest.fail(f"{XCODERD} is missing: run `make build/xcoderd` first")
        # ipc:// paths must fit in sun_path (108 bytes): a short dir under /tmp
        self.dir = tempfile.mkdtemp(prefix="xcpy.")
        self.run_dir = os.path.join(self.dir, "run")
        self.state_dir = os.path.join(self.dir, "state")
        self.name = name
        cfg = {"d": D, "dict_size": F, "k": K, "batch_size": B, "stats_interval": 0.2,
               "threads": 1, "log_level": "info"}
        cfg.update(keys)
        self.config = cfg
        args = [XCODERD, "--run_dir", self.run_dir, "--state_dir", self.state_dir,
                "--name", name]
        for k, v in cfg.items():
            args += [f"--{k}", str(v)]
        self.log_path = os.path.join(self.dir, "daemon.log")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        self.client = xcoder.Client(self.run_dir, timeout=10)
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"xcoderd exited with status {self.proc.returncode} at start:\n"
                            f"{self.log()}")
            try:
                self.client.request("ping", timeout=0.2)
                break
            except xcoder.XcoderError as e:  # no socket file yet, or no answer yet
                if e.code not in ("XC_ENOTFOUND", "XC_ETIMEDOUT"):
                    raise
                time.sleep(0.02)
                if time.monotonic() > deadline:
                    pytest.fail(f"xcoderd did not answer ping within 10 s:\n{self.log()}")

    def log(self):
        with open(self.log_path) as f:
            return f.read()[-4000:]

    def wait_status(self, pred, timeout=10.0, what="condition"):
        """Polls status until pred(status) is true; returns that status."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.client.status()
            if pred(st):
                return st
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; "
                                     f"last status step={st.get('step')} "
                                     f"tokens={st.get('tokens')} state={st.get('state')}")
            time.sleep(0.05)

    def stop(self, timeout=20):
        """SIGTERM (unless already exited) and wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.client.close()
        self._log.close()
        return rc


@pytest.fixture
def start_daemon():
    """Factory: start_daemon(**config_keys) -> Daemon; all are stopped at the end
    of the test, and each must exit with status 0."""
    started = []

    def start(**keys):
        d = Daemon(**keys)
        started.append(d)
        return d

    yield start
    bad = []
    for d in started:
        rc = d.stop()
        if rc != 0:
            bad.append(f"xcoderd exited with status {rc}:\n{d.log()}")
        else:
            shutil.rmtree(d.dir, ignore_errors=True)
    if bad:
        pytest.fail("\n".join(bad))


@pytest.fixture
def daemon(start_daemon):
    """A running daemon with the default small model."""
    return start_daemon()


# ------------------------------------------------ "ok - name" lines for run.sh --

_outcomes = {}


def pytest_runtest_logreport(report):
    if os.environ.get("XC_TAP") != "1":
        return
    prev = _outcomes.get(report.nodeid)
    if hasattr(report, "wasxfail"):
        # an expected failure is reported, visibly, as a TAP TODO
        why = report.wasxfail or (report.longrepr[2] if isinstance(report.longrepr, tuple)
                                  else "")
        _outcomes[report.nodeid] = ("todo", why.replace("reason: ", "", 1))
    elif report.failed:
        why = str(report.longrepr.reprcrash.message) if hasattr(report.longrepr, "reprcrash") \
            and report.longrepr.reprcrash else str(report.longrepr).strip().splitlines()[-1]
        _outcomes[report.nodeid] = ("fail", f"{report.when}: {why}")
    elif report.skipped and (prev is None or prev[0] != "fail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else "skipped"
        _outcomes[report.nodeid] = ("fail", f"skipped: {reason}")
    elif prev is None:
        _outcomes[report.nodeid] = ("pass", "")
    if report.when == "teardown":
        outcome, why = _outcomes[report.nodeid]
        name = "python " + report.nodeid.split("tests/")[-1]
        why = " ".join(why.split())[:300]
        line = {"pass": f"ok - {name}", "todo": f"ok - {name} # TODO {why}"}.get(
            outcome, f"not ok - {name}: {why}")
        sys.__stdout__.write("\n" + line + "\n")
        sys.__stdout__.flush()
