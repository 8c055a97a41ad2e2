#!/usr/bin/python3
"""The wandb bridge (python3 -m xcoder.wandb_bridge) against a real daemon fed by
`xcoder synth`, with a fake `wandb` module first on PYTHONPATH that records its
calls: init gets the daemon's config, every logged step increases, each logged
row equals the flattened history line of that step (replayed history and live
events alike); without wandb the bridge says so and exits 2. Run from the
repository root."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PYDIR = os.path.join(ROOT, "client", "python")
sys.path.insert(0, HERE)
sys.path.insert(0, PYDIR)
from xc_integ import check, failed, run_case, wait_for  # noqa: E402

import xcoder  # noqa: E402
from xcoder.wandb_bridge import metrics_of  # noqa: E402

XCODERD = os.environ.get("XCODERD", os.path.join(ROOT, "build", "xcoderd"))
XCODER = os.path.join(ROOT, "build", "xcoder")
TMP = tempfile.mkdtemp(prefix="xc_wandb.")

FAKE = '''"""A stand-in for wandb: every call appended as a JSON line to $FAKE_WANDB_LOG."""
import json, os


def _rec(kind, **kw):
    with open(os.environ["FAKE_WANDB_LOG"], "a") as fh:
        fh.write(json.dumps(dict(kind=kind, **kw)) + "\\n")


class _Run:
    def finish(self):
        _rec("finish")


def init(project=None, name=None, config=None, **kw):
    _rec("init", project=project, name=name, config=config)
    return _Run()


def log(data, step=None, **kw):
    _rec("log", data=data, step=step)


def finish():
    _rec("finish")
'''


def test_bridge_forwards_stats():
    fake = os.path.join(TMP, "fake")
    os.makedirs(fake)
    with open(os.path.join(fake, "wandb.py"), "w") as fh:
        fh.write(FAKE)
    logf = os.path.join(TMP, "calls.jsonl")
    run, state = os.path.join(TMP, "run"), os.path.join(TMP, "state")
    name = "w%d" % os.getpid()
    dlog = open(os.path.join(TMP, "daemon.log"), "w")
    p = subprocess.Popen([XCODERD, "--run_dir", run, "--state_dir", state, "--name", name, "--d", "32",
                          "--dict_size", "256", "--k", "4", "--batch_size", "64", "--threads", "1",
                          "--stats_interval", "0.05", "--checkpoint_interval", "0"], stdout=dlog, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: os.path.exists(os.path.join(run, "control.sock")) or p.poll() is not None, what="daemon")
        check(p.poll() is None, "daemon exited at start")
        r = subprocess.run([XCODER, "--run-dir", run, "synth", "--tokens", "10000", "--quiet"], capture_output=True,
                           text=True, timeout=120)
        check(r.returncode == 0, "synth: %s" % r.stderr)
        env = dict(os.environ, PYTHONPATH=fake + os.pathsep + PYDIR, FAKE_WANDB_LOG=logf)
        bridge = subprocess.Popen([sys.executable, "-m", "xcoder.wandb_bridge", "--run-dir", run, "--project", "t",
                                   "--history", "1000", "--count", "1000000", "--timeout", "3"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: os.path.exists(logf), timeout=20, what="wandb.init")
        # paced over ~1.5 s, so that a fast machine still sees many stats events (0.05 s apart)
        r = subprocess.run([XCODER, "--run-dir", run, "synth", "--tokens", "30000", "--rate", "20000", "--quiet"],
                           capture_output=True,
                           text=True, timeout=120)
        check(r.returncode == 0, "synth: %s" % r.stderr)
        out, err = bridge.communicate(timeout=60)
        check(bridge.returncode == 0, "bridge exit %d: %s" % (bridge.returncode, err))
        with open(logf) as fh:
            calls = [json.loads(line) for line in fh]
        check(calls[0]["kind"] == "init" and calls[0]["project"] == "t" and calls[0]["name"] == name and
              calls[0]["config"]["d"] == 32, "init call: %r" % calls[0])
        check(calls[-1]["kind"] == "finish", "no finish call at the end")
        logs = [c for c in calls if c["kind"] == "log"]
        steps = [c["step"] for c in logs]
        check(len(logs) >= 5 and all(b > a for a, b in zip(steps, steps[1:])), "logged steps not increasing: %s"
              % steps[:40])
        hist = xcoder.read_history(state)
        by_step = {}
        for h in hist:  # usually the first line of a step is logged; a late-joining subscriber may see a later one
            by_step.setdefault(h["step"], []).append(json.loads(json.dumps(metrics_of(h))))
        trained = xcoder.Client(run).status()["step"]
        check(steps[-1] == trained, "last logged step %d, daemon at %d" % (steps[-1], trained))
        before = [s for s in steps if s < steps[-1]]
        check(before and before[0] == min(by_step), "history not replayed: first logged step %s, history starts at "
              "%s" % (steps[:1], min(by_step)))
        for c in logs:
            want = by_step.get(c["step"], [])
            check(c["data"] in want, "step %d logged %r, which no history line of that step gives (%d lines)" %
                  (c["step"], sorted(c["data"].items())[:6], len(want)))
        check("loss" in logs[-1]["data"] and "fve_base" in logs[-1]["data"] and "classes/dead" in logs[-1]["data"],
              "logged keys: %s" % sorted(logs[-1]["data"]))
    finally:
        p.terminate()
        p.wait(timeout=60)
        dlog.close()


def test_without_wandb():
    """wandb not importable: a clear message and exit 2, nothing contacted."""
    nowb = os.path.join(TMP, "nowandb")
    os.makedirs(nowb)
    with open(os.path.join(nowb, "wandb.py"), "w") as fh:
        fh.write('raise ImportError("No module named \'wandb\'")\n')
    env = dict(os.environ, PYTHONPATH=nowb + os.pathsep + PYDIR)
    r = subprocess.run([sys.executable, "-m", "xcoder.wandb_bridge", "--run-dir", os.path.join(TMP, "none")],
                       env=env, capture_output=True, text=True, timeout=60)
    check(r.returncode == 2 and "pip install wandb" in r.stderr, "exit %d: %s" % (r.returncode, r.stderr))


def main():
    for c in (test_bridge_forwards_stats, test_without_wandb):
        run_case(c)
    shutil.rmtree(TMP, ignore_errors=True)
    n = failed()
    print("%d failed" % n if n else "all passed")
    return 1 if n else 0


if __name__ == "__main__":
    sys.exit(main())
