#!/usr/bin/python3
"""The cost model of a latent-sharded step (docs/scaling.md), as a calculator.

  scripts/mpi_cost_model.py project [--t1 S] [--trepl S] [--alpha S]
      projected tokens/s at the paper's shape (d 2304, dict_size 73728, k 100,
      B 2048) for R = 1, 4, 16, 64 ranks on 10 and 100 Gbit/s links, from t1, the
      measured seconds of one step on one machine at that shape.
  scripts/mpi_cost_model.py check FILE
      reads the JSON lines of `bash bench/mpi_netns.sh` (bench_mpi under tc
      bandwidth limits) and prints, per shaped link, the measured step time
      beside the model's: the unshaped step plus the link term.

The model (two ranks or many; each rank a machine):
  t_step(R, bw) = t_shard / R + t_repl + t_link(R, bw) + t_lat(R)
  t_shard   everything that is per latent: encoder product, selection pass,
            sparse decode/gradients, Adam, statistics (t1 - t_repl)
  t_repl    the work every rank repeats on [B, 2, d]: the loss, the residual,
            the sum of partial reconstructions, b_dec's Adam (measured ~ms)
  t_link    bytes over the busiest link direction / bw. Per step the job moves
            three [B, 2, d] float arrays: the batch broadcast from rank 0, the
            partial reconstructions reduced to rank 0, the sum broadcast back;
            two more (AuxK's residual sum) while latents are dead; plus the 2^15
            selection-histogram counts (8 bytes each) once or twice. For large
            messages MPI's pipelined trees keep each link's load near one copy
            of each array whatever R, so the busiest direction (rank 0's
            outgoing) carries two arrays (batch + sum; four with AuxK).
  t_lat     ~12 collectives a step x log2(R) hops x alpha (link latency).
"""
import json
import math
import sys

PAPER = dict(d=2304, F=73728, k=100, B=2048)


def arrays_bytes(d, B):
    return 4.0 * B * 2 * d


def link_bytes(d, B, aux):
    """Bytes over the busiest direction of a link per step (rank 0's outgoing)."""
    n = arrays_bytes(d, B)
    return (4 if aux else 2) * n + 2 * 8.0 * 32768


def t_step(t1, trepl, R, bw_bits, d, B, aux, alpha):
    t = (t1 - trepl) / R + trepl
    if R > 1:
        t += link_bytes(d, B, aux) * 8 / bw_bits + 12 * math.log2(R) * alpha
    return t


def project(argv):
    opts = dict(t1=12.6, trepl=0.05, alpha=20e-6)
    for i in range(0, len(argv) - 1, 2):
        opts[argv[i].lstrip("-")] = float(argv[i + 1])
    d, B = PAPER["d"], PAPER["B"]
    print("paper shape d=%d dict_size=%d k=%d B=%d; t1 = %.2f s/step on one machine, t_repl = %.3f s, "
          "alpha = %.0f us" % (d, PAPER["F"], PAPER["k"], B, opts["t1"], opts["trepl"], opts["alpha"] * 1e6))
    print("%-6s %-10s %14s %14s %10s" % ("ranks", "link", "tokens/s", "tokens/s AuxK", "comm %"))
    for R in (1, 4, 16, 64):
        for gbit in (10, 100):
            if R == 1 and gbit == 100:
                continue
            t = t_step(opts["t1"], opts["trepl"], R, gbit * 1e9, d, B, False, opts["alpha"])
            ta = t_step(opts["t1"], opts["trepl"], R, gbit * 1e9, d, B, True, opts["alpha"])
            comm = 0 if R == 1 else (t - ((opts["t1"] - opts["trepl"]) / R + opts["trepl"])) / t
            print("%-6d %-10s %14.0f %14.0f %9.1f%%" % (R, "-" if R == 1 else "%d Gbit/s" % gbit, B / t, B / ta,
                                                       100 * comm))


def rate_bits(s):
    s = s.lower()
    for suf, mul in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
        if s.endswith(suf):
            return float(s[: -len(suf)]) * mul
    return float(s)


def check(path):
    rows = [json.loads(line) for line in open(path) if line.startswith("{")]
    base = next((r for r in rows if r.get("link") == "none"), None)
    if not base:
        sys.exit("mpi_cost_model: no unshaped run (link none) in %s" % path)
    d, B = base["d"], base["batch"]
    # AuxK was active when the measured bytes exceed the no-AuxK model by more than half an array
    aux = base["comm_bytes_per_step"] > base["model_bytes_per_step"] + 0.5 * arrays_bytes(d, B)
    print("shape d=%d dict_size=%d k=%d B=%d; unshaped step %.1f ms; AuxK %s" %
          (d, base["dict_size"], base["k"], B, base["step_ms"], "active" if aux else "idle"))
    print("%-10s %12s %12s %8s" % ("link", "measured ms", "model ms", "ratio"))
    for r in rows:
        if r is base:
            continue
        model = base["step_ms"] + 1e3 * link_bytes(d, B, aux) * 8 / rate_bits(r["link"])
        print("%-10s %12.1f %12.1f %8.2f" % (r["link"], r["step_ms"], model, r["step_ms"] / model))


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "project":
        project(sys.argv[2:])
    elif len(sys.argv) == 3 and sys.argv[1] == "check":
        check(sys.argv[2])
    else:
        sys.exit(__doc__)
