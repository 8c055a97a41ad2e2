#!/usr/bin/python3
"""Code normalisation variants and k-annealing end to end (README "The engine").

A short daemon run per variant (batchtopk: crosscoder, sae, mixed with
non-default weights, none, decoupled; l1: sae, decoupled) writes a checkpoint; its
code_normalization_id is the reference's CodeNormalization value and its
metadata carries mixed's weights (decoupled: threshold [2]); s_j computed here
with numpy from the decoder (the reference's formulas, written out) equals the
Python client's, and the client's threshold and batch-top-k codes (per model
for decoupled) follow it. A checkpoint is
not resumed under another code normalisation (exit 2, both named). A
k-annealing run's status k_current and checkpoint k follow the reference
schedule, computed here independently.

When XC_REFERENCE_DICTIONARY names the reference's dictionary.py
(science-of-finetuning/dictionary_learning, dictionary_learning/dictionary.py),
each checkpoint is loaded the reference's own way: saved as a torch state dict
and read with BatchTopKCrossCoder / CrossCoder.from_pretrained, which takes the
code normalisation from code_normalization_id, then load_state_dict strict; its
get_code_normalization equals the numpy s_j, and its forward (threshold mode)
and its batch-top-k encode equal ours (per model for decoupled, whose forward
decodes each model from its own codes). The mixed run is also exported with
`xcoder export --hf` and loaded with from_pretrained(DIR, from_hub=True) (the
hub mixin stubbed where huggingface_hub is absent). Without the variable the
test says so plainly. Run from the repository root."""
import json
import os
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
TMP = tempfile.mkdtemp(prefix="xc_cn.")
D, F, K, BATCH = 16, 128, 4, 64
IDS = {"crosscoder": 1, "sae": 2, "mixed": 3, "none": 4, "decoupled": 5}
NAMES = {v: k.upper() for k, v in IDS.items()}
ALPHA_SAE, ALPHA_CC = 0.5, 0.25
RUNS = {}


def start(tag, model, cn, extra=()):
    base = os.path.join(TMP, tag)
    run, state = os.path.join(base, "run"), os.path.join(base, "state")
    os.makedirs(base, exist_ok=True)
    log = open(os.path.join(base, "daemon.log"), "a+")
    args = [XCODERD, "--run_dir", run, "--state_dir", state, "--name", "cn%d%s" % (os.getpid(), tag),
            "--d", str(D), "--dict_size", str(F), "--k", str(K), "--batch_size", str(BATCH), "--threads", "1",
            "--model", model, "--code_normalization", cn, "--checkpoint_interval", "0",
            "--threshold_start_step", "5", "--code_normalization_alpha_sae", str(ALPHA_SAE),
            "--code_normalization_alpha_cc", str(ALPHA_CC)] + list(extra)
    p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    return p, run, state, log


def train(tag, model, cn, extra=(), tokens=8000, status_hook=None):
    """A short run fed by xcoder synth; its newest model file's path."""
    if tag in RUNS:
        return RUNS[tag]
    p, run, state, log = start(tag, model, cn, extra)
    try:
        wait_for(lambda: os.path.exists(os.path.join(run, "control.sock")) or p.poll() is not None,
                 what="control socket")
        check(p.poll() is None, "daemon exited at start (%s/%s)" % (model, cn))
        r = subprocess.run([XCODER, "--run-dir", run, "synth", "--tokens", str(tokens), "--quiet"],
                           capture_output=True, text=True, timeout=180)
        check(r.returncode == 0, "synth: %s" % r.stderr)
        with xcoder.Client("ipc://" + os.path.join(run, "control.sock")) as c:
            # the producer returns once its batches are acked; training may lag on a busy machine
            # (the mixing buffer keeps up to 8 batches back)
            want = tokens // BATCH - 16
            wait_for(lambda: int(c.status()["step"]) >= want, timeout=240, step=0.2, what="%d steps trained" % want)
            if status_hook:
                status_hook(c)
    finally:
        p.terminate()
        p.wait(timeout=60)
        log.close()
    files = sorted(f for f in os.listdir(state) if f.endswith(".safetensors") and ".resume." not in f)
    check(files, "no checkpoint written")
    RUNS[tag] = os.path.join(state, files[-1])
    return RUNS[tag]


def numpy_s(W_dec, cn):
    """s_j [F] from decoder.weight [2, F, d] in float64: the reference's
    get_code_normalization, summed over the models for DECOUPLED."""
    w = W_dec.astype(np.float64)
    per = np.sqrt((w ** 2).sum(axis=2))           # (2, F)
    cc = per.sum(axis=0)
    sae = np.sqrt((w ** 2).sum(axis=(0, 2)))
    return {1: cc, 2: sae, 3: ALPHA_SAE * sae + ALPHA_CC * cc, 4: np.ones_like(cc), 5: cc}[cn]


VARIANTS = [("batchtopk", "crosscoder"), ("batchtopk", "sae"), ("batchtopk", "mixed"), ("batchtopk", "none"),
            ("batchtopk", "decoupled"), ("l1", "sae"), ("l1", "decoupled")]


def numpy_codes(tensors, x, cn, mode):
    """Per-model codes [N, 2, F] in float64: threshold or batch-top-k on u s_j
    (both models alike), or per model on u |d_j^m| with threshold[m] (DECOUPLED)."""
    u = np.maximum(np.einsum("bmd,mdf->bf", x.astype(np.float64), tensors["encoder.weight"]) +
                   tensors["encoder.bias"], 0)
    w = tensors["decoder.weight"].astype(np.float64)
    per = np.sqrt((w ** 2).sum(axis=2))
    th = np.broadcast_to(np.asarray(tensors["threshold"], dtype=np.float64).reshape(-1), (2,))
    kk = int(tensors["k"])
    out, near = np.zeros((x.shape[0], 2, u.shape[1])), np.zeros((x.shape[0], 2, u.shape[1]), dtype=bool)
    for m in range(2):
        s = per[m] if cn == 5 else numpy_s(tensors["decoder.weight"], cn)
        sc = u * s
        if mode == "threshold":
            out[:, m] = u * (sc > th[m])
            near[:, m] = np.abs(sc - th[m]) <= 1e-4 * th[m]  # float vs double at the boundary
        else:
            keep = np.zeros(sc.size, dtype=bool)
            keep[np.argsort(-sc.reshape(-1), kind="stable")[:kk * x.shape[0]]] = True
            out[:, m] = u * keep.reshape(u.shape)
    return out, near


def test_checkpoint_and_codes():
    """code_normalization_id, metadata, s_j and the client's codes per variant."""
    rng = np.random.default_rng(1)
    for model, cn in VARIANTS:
        ck = train(model + "-" + cn, model, cn)
        tensors, meta = xcoder.load_checkpoint(ck)
        cid = int(tensors["code_normalization_id"])
        check(cid == IDS[cn], "%s/%s: code_normalization_id %d, want %d" % (model, cn, cid, IDS[cn]))
        if cn == "crosscoder":
            check("code_normalization" not in meta, "default run writes code_normalization metadata")
        else:
            check(meta.get("code_normalization") == cn.upper(), "%s metadata %r" % (cn, meta.get("code_normalization")))
        if cn == "mixed":
            check(float(meta["code_normalization_alpha_sae"]) == ALPHA_SAE and
                  float(meta["code_normalization_alpha_cc"]) == ALPHA_CC, "mixed weights in metadata: %r" % meta)
        s = numpy_s(tensors["decoder.weight"], cid)
        ours = xcoder.code_normalization((tensors, meta))
        rel = np.abs(ours - s).max() / s.max()
        check(rel < 1e-6, "%s/%s: client s_j differs from numpy by %.3g" % (model, cn, rel))
        if model == "batchtopk":
            x = rng.standard_normal((96, 2, D)).astype(np.float32)
            th = np.asarray(tensors["threshold"])
            check(th.shape == ((2,) if cid == 5 else ()), "%s: threshold shape %s" % (cn, th.shape))
            check((th > 0).all(), "%s: theta %s not estimated" % (cn, th))
            want, near = numpy_codes(tensors, x, cid, "threshold")
            f = xcoder.encode_models((tensors, meta), x)
            check(np.array_equal((f > 0)[~near], (want > 0)[~near]), "%s: threshold codes differ from numpy" % cn)
            want, _ = numpy_codes(tensors, x, cid, "batchtopk")
            ft = xcoder.encode_models((tensors, meta), x, mode="batchtopk")
            diff = int(((ft > 0) != (want > 0)).sum())
            check(diff <= 2, "%s: %d batch-top-k codes differ from numpy" % (cn, diff))


def test_resume_refuses_other_code_normalization():
    """A checkpoint written under sae does not resume under crosscoder."""
    train("batchtopk-sae", "batchtopk", "sae")
    p, run, state, log = start("batchtopk-sae", "batchtopk", "crosscoder")
    try:
        rc = p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
        log.close()
    with open(os.path.join(TMP, "batchtopk-sae", "daemon.log")) as fh:
        text = fh.read()
    check(rc == 2, "daemon exit %r, want 2" % rc)
    check("code_normalization = SAE" in text and "CROSSCODER" in text, "no reason naming both: %s" % text[-600:])


def ref_schedule(k_initial, k_target, steps, step):
    """The reference trainer's k at `step` (BatchTopKCrossCoderTrainer.loss), written out."""
    if steps > 0 and k_initial != k_target:
        if step < steps:
            return max(1, int(round(k_initial - (k_initial - k_target) * (float(step) / steps))))
        return k_target
    return k_initial


def test_k_annealing():
    """status k_current and the checkpoint's k follow the reference schedule."""
    seen = {}

    def hook(c):
        st = c.status()
        seen["step"], seen["k"] = int(st["step"]), int(st["k_current"])
    ck = train("anneal", "batchtopk", "crosscoder", extra=("--k_max", "12", "--k_annealing_steps", "1000"),
               status_hook=hook)
    check(seen["step"] > 0, "no steps trained")
    check(seen["k"] == ref_schedule(12, K, 1000, seen["step"] - 1),
          "status k_current %d at step %d, reference %d" % (seen["k"], seen["step"],
                                                           ref_schedule(12, K, 1000, seen["step"] - 1)))
    tensors, meta = xcoder.load_checkpoint(ck)
    step = int(meta["step"])
    want = ref_schedule(12, K, 1000, step - 1)
    check(int(tensors["k"]) == want and int(meta["k"]) == want,
          "checkpoint k %d (metadata %s) at step %d, reference %d" % (int(tensors["k"]), meta["k"], step, want))
    check(want > K, "the run ended annealing (step %d): the check would not tell k_max from k" % step)


# ------------------------------------------------------------- reference --
def load_reference(path):
    return xc_integ.load_reference_dictionary(path, TMP)


def test_reference_load_and_forward():
    """Each checkpoint in the reference class, strictly, with the same semantics."""
    ref = os.environ.get("XC_REFERENCE_DICTIONARY")
    if not ref:
        print("# reference absent: XC_REFERENCE_DICTIONARY is not set, so the strict load into dictionary_learning "
              "and the forward comparison per code normalisation were NOT checked", flush=True)
        return
    check(os.path.isfile(ref), "XC_REFERENCE_DICTIONARY=%s is not a file" % ref)
    import torch
    mod = load_reference(ref)
    rng = np.random.default_rng(7)
    for model, cn in VARIANTS:
        ck = train(model + "-" + cn, model, cn)
        tensors, meta = xcoder.load_checkpoint(ck)
        sd = {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}
        pt = os.path.join(TMP, "%s-%s.pt" % (model, cn))
        torch.save(sd, pt)
        cls = mod.BatchTopKCrossCoder if model == "batchtopk" else mod.CrossCoder
        kw = {}
        if cn == "mixed":  # constructor arguments, not in the state dict
            kw = {"code_normalization_alpha_sae": ALPHA_SAE, "code_normalization_alpha_cc": ALPHA_CC}
        m = cls.from_pretrained(pt, **kw)  # code normalisation from code_normalization_id
        check(m.code_normalization.value == IDS[cn], "%s/%s: reference built %s" % (model, cn, m.code_normalization))
        m.load_state_dict(sd, strict=True)
        s = numpy_s(tensors["decoder.weight"], IDS[cn])
        with torch.no_grad():
            rs = m.get_code_normalization().double().numpy()
        if rs.ndim == 2:
            rs = rs.sum(axis=0)
        rs = np.broadcast_to(rs.reshape(-1), s.shape)
        check(np.abs(rs - s).max() / s.max() < 1e-6, "%s/%s: reference s_j differs from numpy" % (model, cn))
        x = (rng.standard_normal((128, 2, D)) * 2).astype(np.float32)
        with torch.no_grad():
            theirs = m(torch.from_numpy(x)).numpy()
        ours = xcoder.reconstruct((tensors, meta), x)
        err = np.abs(theirs - ours).max() / max(1e-12, np.abs(ours).max())
        check(err <= 1e-5, "%s/%s: forward differs from ours: max relative %.3g" % (model, cn, err))
        msg = "forward max rel diff %.2g" % err
        if model == "batchtopk":
            with torch.no_grad():
                fr = m.encode(torch.from_numpy(x), use_threshold=False).numpy()
            fo = xcoder.encode_models((tensors, meta), x, mode="batchtopk")
            if fr.ndim == 2:  # one code for both models
                fo = fo[:, 0]
            diff = int(((fr > 0) != (fo > 0)).sum())
            check(diff <= 2, "%s: batch-top-k selection differs in %d entries" % (cn, diff))
            msg += ", batch-top-k entries differing %d of %d" % (diff, int((fo > 0).sum()))
        print("# reference %s(%s) loaded from_pretrained + strict: %s" % (cls.__name__, NAMES[IDS[cn]], msg),
              flush=True)
    # mixed through the hub-style export: config.json carries its weights
    ck = train("batchtopk-mixed", "batchtopk", "mixed")
    out = os.path.join(TMP, "hf-mixed")
    r = subprocess.run([XCODER, "export", "--hf", out, ck], capture_output=True, text=True, timeout=60)
    check(r.returncode == 0, "export --hf: %s" % r.stderr)
    with open(os.path.join(out, "config.json")) as fh:
        cfg = json.load(fh)
    check(cfg.get("code_normalization") == "MIXED" and cfg.get("code_normalization_alpha_sae") == ALPHA_SAE and
          cfg.get("code_normalization_alpha_cc") == ALPHA_CC, "config.json %r" % cfg)
    m = mod.BatchTopKCrossCoder.from_pretrained(out, from_hub=True)
    check(m.code_normalization_alpha_sae == ALPHA_SAE and m.code_normalization_alpha_cc == ALPHA_CC,
          "hub load weights %r %r" % (m.code_normalization_alpha_sae, m.code_normalization_alpha_cc))


def main():
    for c in (test_checkpoint_and_codes, test_resume_refuses_other_code_normalization, test_k_annealing,
              test_reference_load_and_forward):
        run_case(c)
    shutil.rmtree(TMP, ignore_errors=True)
    n = failed()
    print("%d failed" % n if n else "all passed")
    return 1 if n else 0


if __name__ == "__main__":
    sys.exit(main())
