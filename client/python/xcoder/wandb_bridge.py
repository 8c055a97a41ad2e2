"""Forwards a daemon's stats events to Weights & Biases (README "History").

    python3 -m xcoder.wandb_bridge [--run-dir DIR | --name NAME] [--project P] [--run-name R]
                                   [--history N] [--count N] [--timeout S]

Each stats event becomes one wandb.log(metrics, step=event["step"]): every
numeric field, fve as fve_base / fve_chat, the class counts as classes/NAME and
the counters as counters/NAME; undefined values (NaN, null) are left out. An
event whose step is not past the last one logged is skipped (wandb wants steps
that increase; the daemon publishes stats while idle too). --history N first
replays the newest N lines of the daemon's history, so a bridge started late
still shows the curve from the start. The daemon's configuration is the run's
config. Needs the `wandb` package; without it the bridge says so and exits 2.
"""

import argparse
import math
import sys
import time

from .client import Client, subscribe
from .errors import XcoderTimeout


def metrics_of(event):
    """The scalars of one stats event, flat, for wandb.log."""
    out = {}

    def put(key, v):
        if isinstance(v, bool):
            out[key] = int(v)
        elif isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
            out[key] = v

    for k, v in event.items():
        if k in ("v", "time", "step"):
            continue
        if k == "fve" and isinstance(v, (list, tuple)) and len(v) == 2:
            put("fve_base", v[0])
            put("fve_chat", v[1])
        elif isinstance(v, dict) and k in ("classes", "counters", "scaling"):
            for k2, v2 in v.items():
                put("%s/%s" % (k, k2), v2)
        else:
            put(k, v)
    return out


class Bridge:
    """Logs stats events to an initialised wandb module, steps increasing."""

    def __init__(self, wandb):
        self.wandb = wandb
        self.last_step = None
        self.logged = 0

    def forward(self, event):
        step = event.get("step")
        if not isinstance(step, int) or (self.last_step is not None and step <= self.last_step):
            return False
        self.wandb.log(metrics_of(event), step=step)
        self.last_step = step
        self.logged += 1
        return True


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m xcoder.wandb_bridge", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", help="the daemon's run directory (default: instance --name's)")
    ap.add_argument("--name", default=None, help="instance name (default: default)")
    ap.add_argument("--project", default="xcoderd", help="wandb project (default xcoderd)")
    ap.add_argument("--run-name", default=None, help="wandb run name (default: the instance name)")
    ap.add_argument("--history", type=int, default=0, help="replay the newest N history lines first")
    ap.add_argument("--count", type=int, default=0, help="stop after logging N events (default: until Ctrl-C)")
    ap.add_argument("--timeout", type=float, default=0,
                    help="stop after S seconds without a new training step (0 = never)")
    a = ap.parse_args(argv)
    try:
        import wandb
    except ImportError as e:
        print("xcoder.wandb_bridge: the wandb package is not importable (%s): pip install wandb; nothing "
              "forwarded" % e, file=sys.stderr)
        return 2
    with Client(a.run_dir, name=a.name, timeout=10) as c:
        config = c.config()
        past = c.history(a.history) if a.history > 0 else []
    sub = subscribe(a.run_dir, topics="stats", name=a.name)
    run = wandb.init(project=a.project, name=a.run_name or config.get("name"), config=config)
    b = Bridge(wandb)
    try:
        for ev in past:
            b.forward(ev)
        last = time.monotonic()
        while not a.count or b.logged < a.count:
            idle = time.monotonic() - last
            if a.timeout and idle >= a.timeout:
                print("xcoder.wandb_bridge: no new step for %g s; stopping" % a.timeout, file=sys.stderr)
                break
            try:
                _, ev = sub.next(timeout=a.timeout - idle if a.timeout else None)
            except XcoderTimeout:
                continue
            if b.forward(ev):
                last = time.monotonic()
    except KeyboardInterrupt:
        pass
    finally:
        sub.close()
        (run.finish if run is not None and hasattr(run, "finish") else wandb.finish)()
    print("xcoder.wandb_bridge: %d stats events logged (last step %s)" % (b.logged, b.last_step), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
