#!/usr/bin/python3
"""Activation normalisation (normalize, README "Activation normalisation")
through the daemon: a producer sends documents whose base activations are
~1000x the chat ones and whose chat activations are shifted, with a large first
token per document (excluded by exclude_positions_below = 1) and planted
100x-norm tokens (excluded by outlier_norm_factor = 20). Checked:
  - training waits for the statistics pass; status and metrics count the pass,
    the statistics-only tokens and both exclusions exactly;
  - the model file's activation_mean / activation_std equal numpy's mean and
    std(ddof=1) of exactly the first normalize_tokens kept tokens, and
    activation_global_scale = target_rms / sqrt(sum std^2 + 1e-8) (global) or 1
    (neuron);
  - a restart resumes the normaliser exactly; a restart with another
    normalize is refused, saying so;
  - `xcoder export --hf` carries the buffers;
  - when XC_REFERENCE_DICTIONARY names the reference's dictionary.py, its
    BatchTopKCrossCoder loads the model file strictly, normalises as
    xcoder.normalize does, and its forward in original units equals ours
    (1e-5 relative); neuron mode with keep_relative_variance = False set on the
    loaded object, as README says. Without it the test says so plainly.
Run from the repository root."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "client", "python"))
import xc_integ  # noqa: E402
from xc_integ import check, failed, run_case, wait_for  # noqa: E402

import numpy as np  # noqa: E402
import xcoder  # noqa: E402

XCODERD = os.environ.get("XCODERD", os.path.join(ROOT, "build", "xcoderd"))
XCODER = os.path.join(ROOT, "build", "xcoder")
TMP = tempfile.mkdtemp(prefix="xc_norm.")
D, F, K, B, MIX = 32, 256, 4, 64, 512
N_STATS, DOC, PER_BATCH = 2000, 32, 4        # tokens of the pass; tokens per document; documents per batch
TARGET_RMS = 100.0


def documents(n_docs, seed):
    """acts [n_docs*DOC, 2, D], positions [.., 2] and the planted outliers' mask."""
    rng = np.random.default_rng(seed)
    dirs = np.random.default_rng(1).standard_normal((2, 24, D)).astype(np.float32)
    n = n_docs * DOC
    z = (rng.random((n, 24)) < 0.1) * rng.random((n, 24)) * 3
    x = np.empty((n, 2, D), np.float32)
    x[:, 0] = 1000.0 * (z @ dirs[0] + 0.05 * rng.standard_normal((n, D)))
    x[:, 1] = z @ dirs[1] + 0.05 * rng.standard_normal((n, D)) + 40.0 + 0.5 * (np.arange(D) % 5)
    pos = np.stack([np.repeat(np.arange(n_docs), DOC), np.tile(np.arange(DOC), n_docs)], 1).astype(np.uint32)
    first = pos[:, 1] == 0
    x[first] *= 10.0                          # a large first token: excluded by position (norm < 20x the median)
    outlier = np.zeros(n, bool)
    outlier[np.arange(n_docs) * DOC + 5] = rng.random(n_docs) < 0.3
    x[outlier] *= 100.0                       # far above 20x the median: excluded as outliers
    return x, pos, first, outlier


class Daemon:
    def __init__(self, tag, state, *extra):
        self.run_dir = os.path.join(TMP, "run-" + tag)
        self.log = open(os.path.join(TMP, "daemon-%s.log" % tag), "w+")
        self.proc = subprocess.Popen(
            [XCODERD, "--run_dir", self.run_dir, "--state_dir", state, "--name", "n%d" % os.getpid(), "--d", str(D),
             "--dict_size", str(F), "--k", str(K), "--batch_size", str(B), "--threads", "1", "--stats_interval", "0.05",
             "--checkpoint_interval", "0", "--threshold_start_step", "20", "--lr", "1e-3", "--warmup_steps", "10",
             "--normalize_tokens", str(N_STATS), "--target_rms", str(TARGET_RMS), "--exclude_positions_below", "1",
             "--outlier_norm_factor", "20", "--max_abs_value", "1e9"] + list(extra), stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: os.path.exists(os.path.join(self.run_dir, "control.sock")) or self.proc.poll() is not None,
                 what="control socket")
        self.client = None
        if self.proc.poll() is None:
            self.client = xcoder.Client(self.run_dir, timeout=10)
            wait_for(lambda: self.client.ping(), what="ping")

    def logtext(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-3000:]

    def stop(self):
        if self.client:
            self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log.close()


def model_file(path):
    return path if ".resume." not in path else path.replace(".resume.safetensors", ".safetensors")


def train(mode, tag):
    """A daemon with normalize = mode fed enough documents for the pass and ~40 steps;
    returns (state_dir, checkpoint path, status, metrics text, acts, kept mask)."""
    state = os.path.join(TMP, "state-" + tag)
    dm = Daemon(tag, state, "--normalize", mode)
    try:
        check(dm.proc.poll() is None, "daemon exited at start: " + dm.logtext())
        x, pos, first, outlier = documents(100, seed=7)
        kept = ~first & ~outlier
        c = dm.client
        with xcoder.Producer(dm.run_dir) as p:
            per = DOC * PER_BATCH
            sent = 0
            while kept[:sent + per].sum() < N_STATS:  # not quite the pass
                p.send(x[sent:sent + per], positions=pos[sent:sent + per])
                sent += per
            p.flush()
            wait_for(lambda: c.status()["normalize_tokens_seen"] == int(kept[:sent].sum()), what="pass progress")
            st = c.status()
            check(st["normalize_state"] == "collecting" and st["step"] == 0,
                  "training should wait for the pass: %s, step %d" % (st["normalize_state"], st["step"]))
            for i in range(sent, len(x), per):
                p.send(x[i:i + per], positions=pos[i:i + per])
            p.flush()
        wait_for(lambda: c.status()["tokens_buffered"] < MIX and c.status()["tokens_queued"] == 0, timeout=60,
                 what="training on everything sent")
        st = c.status()
        metrics = c.metrics()
        r = subprocess.run([XCODER, "--run-dir", dm.run_dir, "status"], capture_output=True, text=True, timeout=30)
        check(r.returncode == 0 and "normalize %s: ready" % mode in r.stdout and
              "excluded 100 tokens by position, 30 as norm outliers" in r.stdout,
              "xcoder status does not show the normalisation: %s %s" % (r.stdout, r.stderr))
        ck = c.checkpoint()
        return state, model_file(ck["path"]), st, metrics, x, kept
    finally:
        dm.stop()


def check_stats(mode, ck, st, metrics, x, kept):
    t, meta = xcoder.load_checkpoint(ck)
    pas = x[kept][:N_STATS].astype(np.float64)
    mean, std = pas.mean(0), pas.std(0, ddof=1)
    em = np.abs(t["activation_mean"] - mean).max(axis=1) / (np.abs(mean) + std).max(axis=1)
    es = (np.abs(t["activation_std"] - std) / std).max()
    check(em.max() < 1e-6 and es < 1e-6, "%s: Welford vs numpy: mean %.3g, std %.3g (relative)" % (mode, em.max(), es))
    want = TARGET_RMS / np.sqrt((t["activation_std"].astype(np.float64) ** 2).sum(1) + 1e-8) if mode == "global" \
        else np.ones(2)
    check(np.allclose(t["activation_global_scale"], want, rtol=1e-6, atol=0),
          "%s: activation_global_scale %s, want %s" % (mode, t["activation_global_scale"], want))
    check(float(t["target_rms"]) == TARGET_RMS, "target_rms %r" % t["target_rms"])
    print("# %s: pass of %d tokens; Welford vs numpy mean %.2g, std %.2g; scale a_base %.4g, a_chat %.4g"
          % (mode, N_STATS, em.max(), es, t["activation_global_scale"][0], t["activation_global_scale"][1]), flush=True)
    n_first = int((~kept & (np.arange(len(kept)) % DOC == 0)).sum())
    n_out = int((~kept).sum()) - n_first
    check(st["normalize"] == mode and st["normalize_state"] == "ready", "status %s / %s" % (st["normalize"],
                                                                                          st["normalize_state"]))
    check(st["normalize_tokens_seen"] == N_STATS, "normalize_tokens_seen %d" % st["normalize_tokens_seen"])
    check(st["tokens_stats_only"] == N_STATS - MIX, "tokens_stats_only %d, want %d" % (st["tokens_stats_only"],
                                                                                     N_STATS - MIX))
    check(st["tokens_excluded_position"] == n_first and st["tokens_excluded_outlier"] == n_out,
          "excluded by position %d (want %d), outlier %d (want %d)" % (st["tokens_excluded_position"], n_first,
                                                                      st["tokens_excluded_outlier"], n_out))
    check(np.allclose(st["normalize_scale"], t["activation_global_scale"], rtol=1e-6), "status normalize_scale")
    check(st["fve_units"] == "original" and st["scaling_units"] == ("original" if mode == "global" else "normalised"),
          "units %s / %s" % (st["fve_units"], st["scaling_units"]))
    check(st["tokens_trained"] == int(kept.sum()) - (N_STATS - MIX) - st["tokens_buffered"],
          "tokens_trained %d: every kept token but the statistics-only ones" % st["tokens_trained"])
    vals = {}
    for line in metrics.splitlines():
        mt = re.match(r'(xcoderd_tokens_excluded_total|xcoderd_tokens_stats_only_total)\{[^}]*?(?:reason="(\w+)")?\} '
                      r'(\S+)$', line)
        if mt:
            vals[mt.group(1) + (":" + mt.group(2) if mt.group(2) else "")] = float(mt.group(3))
    want = {"xcoderd_tokens_excluded_total:position": n_first, "xcoderd_tokens_excluded_total:outlier": n_out,
            "xcoderd_tokens_stats_only_total": N_STATS - MIX}
    check(vals == want, "metrics %s, want %s" % (vals, want))
    return t


def test_global_pass_counts_resume():
    state, ck, st, metrics, x, kept = train("global", "g")
    t = check_stats("global", ck, st, metrics, x, kept)
    CKPTS["global"] = ck
    # the same state resumes the normaliser (no new pass) ...
    dm = Daemon("g2", state, "--normalize", "global")
    try:
        check(dm.proc.poll() is None, "restart: " + dm.logtext())
        s2 = dm.client.status()
        check(s2["normalize_state"] == "ready" and np.array_equal(np.float32(s2["normalize_scale"]),
                                                                   t["activation_global_scale"]),
              "resumed normaliser: %s %s" % (s2["normalize_state"], s2["normalize_scale"]))
    finally:
        dm.stop()
    # ... and refuses another normalisation
    dm = Daemon("g3", state, "--normalize", "off")
    dm.proc.wait(timeout=30)
    log = dm.logtext()
    dm.stop()
    check(dm.proc.returncode != 0 and "normalize = global" in log, "restart with normalize = off: rc %r, log %s"
          % (dm.proc.returncode, log[-600:]))


def test_neuron():
    state, ck, st, metrics, x, kept = train("neuron", "n")
    check_stats("neuron", ck, st, metrics, x, kept)
    CKPTS["neuron"] = ck


def test_export_and_reference():
    check("global" in CKPTS, "no checkpoint from the global run")
    ck = CKPTS["global"]
    out = os.path.join(TMP, "hf")
    r = subprocess.run([XCODER, "export", "--hf", out, ck], capture_output=True, text=True, timeout=60)
    check(r.returncode == 0, "export --hf: %s" % r.stderr)
    a, _ = xcoder.load_checkpoint(ck)
    b, _ = xcoder.load_checkpoint(os.path.join(out, "model.safetensors"))
    for k in ("activation_mean", "activation_std", "activation_global_scale", "target_rms"):
        check(np.array_equal(a[k], b[k]), "export --hf changed %s" % k)
    ref = os.environ.get("XC_REFERENCE_DICTIONARY")
    if not ref:
        print("# reference absent: XC_REFERENCE_DICTIONARY is not set, so the reference class's strict load and "
              "forward of the normalised checkpoints were NOT checked", flush=True)
        return
    check(os.path.isfile(ref), "XC_REFERENCE_DICTIONARY=%s is not a file" % ref)
    import torch
    mod = xc_integ.load_reference_dictionary(ref, os.path.join(TMP, "ref"))
    x, _, _, _ = documents(8, seed=99)
    for mode, path in sorted(CKPTS.items()):
        t, _ = xcoder.load_checkpoint(path)
        m = mod.BatchTopKCrossCoder(D, F, 2, k=int(t["k"]))
        m.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in t.items()}, strict=True)
        if mode == "neuron":
            m.keep_relative_variance = False  # README: the reference constructor has no argument for it
        check(m.has_activation_normalizer, "%s: the reference sees no normaliser" % mode)
        with torch.no_grad():
            xn = m.normalize_activations(torch.from_numpy(x)).numpy()
            theirs = m(torch.from_numpy(x)).numpy()
        ours_n = xcoder.normalize((t, {"config": '{"normalize":"%s"}' % mode}), x)
        check(np.array_equal(xn, ours_n), "%s: normalize differs from the reference's" % mode)
        ours = xcoder.reconstruct(path, x)
        err = np.abs(theirs - ours).max() / np.abs(ours).max()
        check(err <= 1e-5, "%s: forward in original units differs: max relative %.3g" % (mode, err))
        print("# reference BatchTopKCrossCoder (%s) loaded strictly from %s; normalize identical, forward max rel "
              "diff %.2g" % (mode, os.path.basename(path), err), flush=True)
    m = mod.BatchTopKCrossCoder.from_pretrained(out, from_hub=True)
    with torch.no_grad():
        theirs = m(torch.from_numpy(x)).numpy()
    err = np.abs(theirs - xcoder.reconstruct(ck, x)).max() / np.abs(theirs).max()
    check(err <= 1e-5, "from_pretrained(--hf DIR) forward differs: %.3g" % err)


def test_scaling_original_units():
    """Latent Scaling of the global checkpoint in original units: xcoder.latent_scaling
    equals beta computed from its definition on denormalised reconstructions and
    original-unit decoder rows (v = d_chat / a_chat), and `xcoder scaling` (the
    engine's exact pass on the normalised data, converted) equals both."""
    check("global" in CKPTS, "no checkpoint from the global run")
    ck = CKPTS["global"]
    t, _ = xcoder.load_checkpoint(ck)
    x, _, first, outlier = documents(40, seed=5)
    x = x[~first & ~outlier]
    got = xcoder.latent_scaling(ck, x, min_active=20)
    check(got["units"] == "original", "units %r" % got["units"])
    a = t["activation_global_scale"].astype(np.float64)
    mu = t["activation_mean"].astype(np.float64)
    f = xcoder.encode(ck, x).astype(np.float64)
    xh = xcoder.reconstruct(ck, x).astype(np.float64)               # original units
    Wd = t["decoder.weight"].astype(np.float64) / a[:, None, None]  # decoder rows in original units
    worst, n = 0.0, 0
    for j in range(F):
        fj = f[:, j]
        if (fj > 0).sum() < 20 or not np.isfinite(got["nu_err"][j]):
            continue
        v = Wd[1, j]
        den = (fj ** 2).sum() * (v @ v)
        for m, name in enumerate(["base", "chat"]):
            be = (fj * ((x[:, m] - xh[:, m] + fj[:, None] * Wd[m, j]) @ v)).sum() / den
            br = (fj * ((xh[:, m] - mu[m]) @ v)).sum() / den
            for w, g in ((be, got["beta_err_" + name][j]), (br, got["beta_rec_" + name][j])):
                worst = max(worst, abs(g - w) / max(abs(w), 1e-3 * np.abs(v).max()))
        n += 1
    check(n >= 10, "only %d latents with a defined nu" % n)
    check(worst < 1e-3, "latent_scaling vs the definition in original units: worst relative %.3g" % worst)
    npy = os.path.join(TMP, "held.npy")
    np.save(npy, x)
    r = subprocess.run([XCODER, "scaling", "--checkpoint", ck, "--data", npy, "--min-active", "20", "--json"],
                       capture_output=True, text=True, timeout=120)
    check(r.returncode == 0, "xcoder scaling: %s" % r.stderr)
    off = json.loads(r.stdout)
    check(off["units"] == "original", "xcoder scaling units %r" % off.get("units"))
    worst_off = 0.0
    for k in ("beta_err_base", "beta_err_chat", "beta_rec_base", "beta_rec_chat", "nu_err", "nu_rec"):
        b = np.array([np.nan if v is None else v for v in off[k]])
        ok = np.isfinite(got[k])
        check(np.array_equal(np.isfinite(b), ok), "%s: defined latents differ" % k)
        worst_off = max(worst_off, float(np.max(np.abs(b[ok] - got[k][ok]) / np.maximum(np.abs(got[k][ok]), 1e-3))))
    check(worst_off < 1e-3, "xcoder scaling vs latent_scaling: worst relative %.3g" % worst_off)
    print("# Latent Scaling in original units (a_chat / a_base = %.4g): %d latents, definition vs latent_scaling "
          "%.2g, xcoder scaling vs latent_scaling %.2g (relative)" % (a[1] / a[0], n, worst, worst_off), flush=True)


CKPTS = {}


def main():
    for c in (test_global_pass_counts_resume, test_neuron, test_scaling_original_units, test_export_and_reference):
        run_case(c)
    shutil.rmtree(TMP, ignore_errors=True)
    n = failed()
    print("%d failed" % n if n else "all passed")
    return 1 if n else 0


if __name__ == "__main__":
    sys.exit(main())
