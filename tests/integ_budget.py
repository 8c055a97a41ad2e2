#!/usr/bin/python3
"""The token budget (max_tokens, README "Budgets"): a daemon fed by a producer
stops training at the budget, writes a final checkpoint (reason "budget") at
that token count, nacks further batches XC_ESTATE naming the budget, reports
tokens_budget / budget_fraction / eta_s (finite while training), ends the
learning-rate decay at the budget with lr_decay_to_budget, stays stopped when
restarted on its checkpoint, and refuses contradictory keys at start. Run from
the repository root."""
import math
import os
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
TMP = tempfile.mkdtemp(prefix="xc_budget.")
D, B, BUDGET, LR = 32, 64, 6400, 1e-3  # the budget is 100 steps of 64 tokens


def model_args(*extra):
    return ["--d", str(D), "--dict_size", "256", "--k", "4", "--batch_size", str(B), "--stats_interval", "0.05",
            "--threads", "1", "--checkpoint_interval", "0", "--lr", str(LR), "--warmup_steps", "10"] + list(extra)


def args(state, run, name, *extra):
    return [XCODERD, "--run_dir", run, "--state_dir", state, "--name", name] + model_args(*extra)


def Daemon(tag, *extra):
    """This file's daemon: a shared state_dir (resume across cases), one run_dir per tag."""
    return xc_integ.Daemon(XCODERD, os.path.join(TMP, "d"), "b%d" % os.getpid(),
                           model_args(*extra), tag=tag)


def budget_checkpoints(state_dir):
    out = []
    for f in sorted(os.listdir(state_dir)):
        if f.endswith(".safetensors") and not f.endswith(".resume.safetensors") and not f.startswith("."):
            _, meta = xcoder.load_checkpoint(os.path.join(state_dir, f))
            out.append((f, int(meta["step"]), int(meta["tokens"])))
    return out


def test_budget_stops_training():
    """Budget reached -> final checkpoint at that token count, XC_ESTATE after,
    ETA finite while training, lr decayed to the budget's last step."""
    dmn = Daemon("a", "--max_tokens", str(BUDGET), "--decay_start", "50", "--lr_decay_to_budget", "on")
    try:
        check(dmn.client.config("total_steps") == BUDGET // B, "total_steps %r, want %d (the budget's steps)" %
              (dmn.client.config("total_steps"), BUDGET // B))
        st = dmn.client.status()
        check(st["tokens_budget"] == BUDGET and st["budget_fraction"] == 0 and st["budget_reached"] is False,
              "status before training: budget %r fraction %r reached %r" %
              (st["tokens_budget"], st["budget_fraction"], st["budget_reached"]))
        etas, stop, nacks = [], threading.Event(), []

        def watch():  # its own client: a ZeroMQ socket belongs to one thread
            with xcoder.Client(dmn.run_dir, timeout=10) as c:
                while not stop.is_set():
                    s = c.status()
                    if not s["budget_reached"] and s["tokens"] > 0:
                        etas.append((s["budget_fraction"], s["eta_s"]))
                    time.sleep(0.05)
        th = threading.Thread(target=watch)
        th.start()
        rng = np.random.default_rng(1)
        prod = xcoder.Producer(dmn.run_dir, window=2, timeout=30)
        sent = 0
        try:
            while sent < 3 * BUDGET:
                prod.send(rng.standard_normal((B, 2, D)).astype(np.float32))
                sent += B
                time.sleep(0.02)  # about 3000 tokens/s: a few seconds of training to watch
            prod.flush()
        except xcoder.XcoderNack as e:
            nacks.append(e)
        finally:
            prod.close(flush=False)
        stop.set()
        th.join()
        wait_for(lambda: dmn.client.status()["budget_reached"], timeout=30, what="budget reached")
        check(nacks, "no batch was refused after the budget (sent %d tokens)" % sent)
        e = nacks[0]
        check(e.code == "XC_ESTATE" and "max_tokens" in str(e) and "budget" in str(e),
              "refusal after the budget: %s %s" % (e.code, e))
        finite = [eta for frac, eta in etas if eta is not None and math.isfinite(eta)]
        check(len(finite) >= 3 and all(x >= 0 for x in finite) and max(finite) > 0,
              "eta_s while training not finite and positive: %s" % etas[:20])
        check(all(0 <= f <= 1 for f, _ in etas), "budget_fraction out of [0, 1]: %s" % etas[:20])
        wait_for(lambda: any(t == BUDGET for _, _, t in budget_checkpoints(dmn.state_dir)), timeout=30,
                 what="the budget checkpoint")
        cks = budget_checkpoints(dmn.state_dir)
        check([(s, t) for _, s, t in cks] == [(BUDGET // B, BUDGET)],
              "checkpoints (step, tokens): %s; want one at the budget" % cks)
        time.sleep(0.5)
        st = dmn.client.status()
        check(st["tokens"] == BUDGET and st["step"] == BUDGET // B, "trained past the budget: %d tokens, step %d" %
              (st["tokens"], st["step"]))
        check(st["budget_fraction"] == 1 and st["eta_s"] == 0, "after the budget: fraction %r eta %r" %
              (st["budget_fraction"], st["eta_s"]))
        check(st["counters"]["XC_ESTATE"] >= 1, "XC_ESTATE refusals not counted: %r" % st["counters"])
        # the linear decay ends at the budget: lr(step) = LR (100 - step) / (100 - 50) at the last step
        last = st["step"]
        want = [LR * (BUDGET // B - s) / (BUDGET // B - 50) for s in (last - 1, last)]
        check(any(abs(st["lr"] - w) <= 1e-9 + 1e-6 * LR for w in want), "lr at the last step %r, want one of %r" %
              (st["lr"], want))
        check("token budget reached" in dmn.logtext(), "no log line saying the budget was reached")
        r = subprocess.run([os.path.join(ROOT, "build", "xcoder"), "--run-dir", dmn.run_dir, "status"],
                           capture_output=True, text=True, timeout=30)
        check(r.returncode == 0 and "budget   reached: 6.40k tokens" in r.stdout, "xcoder status: %r" % r.stdout)
    finally:
        dmn.stop()
    # restarted on its checkpoint with the same budget: stopped at once, intake refused
    dmn = Daemon("b", "--max_tokens", str(BUDGET))
    try:
        wait_for(lambda: dmn.client.status()["budget_reached"], timeout=10, what="budget reached after resume")
        prod = xcoder.Producer(dmn.run_dir, window=1, timeout=10)
        try:
            prod.send(np.zeros((B, 2, D), np.float32))
            prod.flush()
            check(False, "a batch was accepted after resuming at the budget")
        except xcoder.XcoderNack as e:
            check(e.code == "XC_ESTATE", "after resume: %s" % e.code)
        finally:
            prod.close(flush=False)
        check(dmn.client.status()["step"] == BUDGET // B, "trained after resuming at the budget")
    finally:
        dmn.stop()


def test_no_budget_fields():
    """Without max_tokens: tokens_budget 0, fraction and ETA undefined (NaN)."""
    dmn = Daemon("c", "--fresh")
    try:
        st = dmn.client.status()
        check(st["tokens_budget"] == 0 and math.isnan(st["budget_fraction"]) and math.isnan(st["eta_s"]) and
              st["budget_reached"] is False, "no budget: %r %r %r" %
              (st["tokens_budget"], st["budget_fraction"], st["eta_s"]))
        m = dmn.client.metrics()
        check("xcoderd_tokens_budget{" in m and "xcoderd_budget_eta_seconds{" in m, "budget series not in metrics")
    finally:
        dmn.stop()


def test_config_refusals():
    """lr_decay_to_budget without its keys, or against total_steps: exit 2, saying why."""
    run, state = os.path.join(TMP, "r"), os.path.join(TMP, "s")
    for extra, want in ((["--lr_decay_to_budget", "on"], "needs max_tokens"),
                        (["--lr_decay_to_budget", "on", "--max_tokens", "6400", "--decay_start", "50",
                          "--total_steps", "200"], "contradicts"),
                        (["--lr_decay_to_budget", "on", "--max_tokens", "640", "--decay_start", "50"],
                         "below the budget")):
        r = subprocess.run(args(state, run, "b%dx" % os.getpid(), *extra), capture_output=True, text=True,
                           timeout=30)
        check(r.returncode == 2 and want in r.stderr, "%s: exit %d, %s" % (extra, r.returncode, r.stderr[-300:]))


def main():
    for c in (test_budget_stops_training, test_no_budget_fields, test_config_refusals):
        run_case(c)
    shutil.rmtree(TMP, ignore_errors=True)
    n = failed()
    print("%d failed" % n if n else "all passed")
    return 1 if n else 0


if __name__ == "__main__":
    sys.exit(main())
