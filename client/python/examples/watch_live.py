#!/usr/bin/python3
"""Watch a running xcoderd live: one line per stats event, and every few seconds
the per-latent relative decoder norm Δ and the Latent Scaling ratios ν^ε, ν^r.

Per-latent data come from shared memory (SharedStats, same machine) when the
daemon publishes it, else from the control socket (Δ only: `top`). With
matplotlib installed the plots (Δ histogram, ν^ε vs ν^r by class) are drawn live,
or saved with --out FILE.png; without it the same data are summarised as text.

    /usr/bin/python3 watch_live.py --run-dir /run/xcoderd --name default
    /usr/bin/python3 watch_live.py --run-dir DIR --seconds 10 --out latents.png
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import xcoder  # noqa: E402

try:
    import matplotlib
    if not os.environ.get("DISPLAY"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    plt = None


def latent_table(client, shm, dict_size):
    """Δ, ν^ε, ν^r, class per latent (ν NaN where unknown)."""
    if shm is not None:
        s = shm.snapshot(verify=False)
        return s.delta_norm, s.nu_err, s.nu_rec, s.class_code, s.header["step"]
    rows = client.top("delta_norm", n=dict_size)
    delta = np.full(dict_size, np.nan)
    dead = np.zeros(dict_size, bool)
    for r in rows:
        delta[r["j"]] = r["delta_norm"]
        dead[r["j"]] = r.get("dead", False)
    cls = np.where(dead, 4, np.where(delta >= 0.9, 2, np.where(
        delta <= 0.1, 3, np.where((delta >= 0.4) & (delta < 0.6), 1, 0))))
    nan = np.full(dict_size, np.nan)
    return delta, nan, nan, cls, None


def text_summary(delta, nu_e, nu_r, cls):
    hist, _ = np.histogram(delta[np.isfinite(delta)], bins=10, range=(0, 1))
    bar = " ".join(f"{h}" for h in hist)
    names = xcoder.shm.CLASS_NAMES
    counts = ", ".join(f"{n} {int((cls == i).sum())}" for i, n in enumerate(names))
    known = np.isfinite(nu_e) & np.isfinite(nu_r)
    nu = (f"; ν known for {int(known.sum())} latents, median ν^ε {np.median(nu_e[known]):.3f}"
          f" ν^r {np.median(nu_r[known]):.3f}") if known.any() else "; ν not available"
    return f"  Δ histogram (0..1, 10 bins): {bar}\n  classes: {counts}{nu}"


def draw(fig, axes, delta, nu_e, nu_r, cls, step):
    for ax in axes:
        ax.clear()
    axes[0].hist(delta[np.isfinite(delta)], bins=50, range=(0, 1), color="tab:blue")
    axes[0].set_xlabel("relative decoder norm Δ (0 base-only, 1 chat-only)")
    axes[0].set_ylabel("latents")
    axes[0].set_yscale("log")
    known = np.isfinite(nu_e) & np.isfinite(nu_r)
    for i, (name, color) in enumerate(zip(xcoder.shm.CLASS_NAMES,
                                          ["grey", "tab:green", "tab:red", "tab:blue", "k"])):
        m = known & (cls == i)
        if m.any():
            axes[1].scatter(nu_e[m], nu_r[m], s=6, label=name, color=color)
    axes[1].axvline(0.2, ls=":", c="k")
    axes[1].axhline(0.5, ls=":", c="k")
    axes[1].set_xlabel(r"$\nu^\varepsilon$ (error ratio)")
    axes[1].set_ylabel(r"$\nu^r$ (reconstruction ratio)")
    if known.any():
        axes[1].legend(fontsize=7)
    fig.suptitle(f"xcoderd latents at step {step}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--run-dir", help="the daemon's run directory (default $XCODER_RUN_DIR)")
    ap.add_argument("--name", help="instance name, for shared memory (default: ask the daemon)")
    ap.add_argument("--seconds", type=float, default=0, help="stop after this long (0: never)")
    ap.add_argument("--every", type=float, default=5, help="seconds between latent refreshes")
    ap.add_argument("--out", help="save the plot to this file instead of showing it")
    args = ap.parse_args()

    client = xcoder.Client(args.run_dir, timeout=5)
    cfg = client.config()
    name = args.name or cfg["name"]
    try:
        shm = xcoder.SharedStats(name)
    except (xcoder.XcoderError, ValueError) as e:
        print(f"(no shared memory: {e}; per-latent data over the control socket)")
        shm = None
    fig = axes = None
    if plt is not None:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        if not args.out:
            plt.ion()
    else:
        print("(matplotlib is not installed: text output only)")

    t_end = time.monotonic() + args.seconds if args.seconds else None
    next_latents = 0.0
    with xcoder.subscribe(args.run_dir, ["stats", "alert", "checkpoint"], timeout=1) as sub:
        while t_end is None or time.monotonic() < t_end:
            try:
                topic, ev = sub.next()
            except xcoder.XcoderTimeout:
                topic = None
            if topic == "stats":
                fve = ev.get("fve", [0, 0])
                print(f"step {ev['step']:>7}  tokens {ev['tokens']:>10}  loss {ev['loss']:.4f}  "
                      f"FVE {fve[0]:.3f}/{fve[1]:.3f}  L0 {ev['l0']:.1f}  "
                      f"dead {ev['dead_fraction']:.3f}  θ {ev['theta']:.4g}  "
                      f"{ev['tokens_per_s']:.0f} tok/s", flush=True)
            elif topic is not None:
                print(f"[{topic}] " + ", ".join(f"{k}={v}" for k, v in ev.items()
                                                if k not in ("v", "type", "name", "time")))
            if time.monotonic() >= next_latents:
                next_latents = time.monotonic() + args.every
                delta, nu_e, nu_r, cls, step = latent_table(client, shm, cfg["dict_size"])
                step = step if step is not None else client.status()["step"]
                if plt is None:
                    print(text_summary(delta, nu_e, nu_r, cls), flush=True)
                else:
                    draw(fig, axes, delta, nu_e, nu_r, cls, step)
                    if args.out:
                        fig.savefig(args.out, dpi=120)
                    else:
                        plt.pause(0.01)
    if plt is not None and args.out:
        fig.savefig(args.out, dpi=120)
        print(f"saved {args.out}")


if __name__ == "__main__":
    main()
