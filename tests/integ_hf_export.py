#!/usr/bin/python3
"""`xcoder export --hf DIR CKPT` (README "Hub-style export"): DIR/model.safetensors
holds the checkpoint's model tensors unchanged, DIR/config.json exactly the
__init__ arguments the reference's PyTorchModelHubMixin route passes to
BatchTopKCrossCoder / CrossCoder (activation_dim, dict_size, num_layers, k,
code_normalization) with the checkpoint's values, DIR/README.md names the class.

When XC_REFERENCE_DICTIONARY names the reference's dictionary.py
(science-of-finetuning/dictionary_learning, dictionary_learning/dictionary.py),
the class is imported from it (huggingface_hub, einops and the package's utils
stubbed where not installed: the stub loader does what the hub mixin does for a
local directory, config.json -> __init__, model.safetensors -> load_state_dict,
but strictly), loaded with from_pretrained(DIR, from_hub=True), and its forward
pass compared with ours (1e-5 relative). Without it the test says so plainly.
Run from the repository root."""
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
TMP = tempfile.mkdtemp(prefix="xc_hf.")
D, F, K = 32, 256, 4
CODE_NORMS = {1: "CROSSCODER", 2: "SAE", 3: "MIXED", 4: "NONE", 5: "DECOUPLED"}
CKPTS = {}


def make_checkpoint(model):
    """A short run of `model` fed by xcoder synth; its model file's path."""
    if model in CKPTS:
        return CKPTS[model]
    base = os.path.join(TMP, model)
    run, state = os.path.join(base, "run"), os.path.join(base, "state")
    os.makedirs(base)
    log = open(os.path.join(base, "daemon.log"), "w+")
    p = subprocess.Popen([XCODERD, "--run_dir", run, "--state_dir", state, "--name", "hf%d%s" % (os.getpid(), model),
                          "--d", str(D), "--dict_size", str(F), "--k", str(K), "--batch_size", "64", "--threads", "1",
                          "--model", model, "--checkpoint_interval", "0", "--threshold_start_step", "20"],
                         stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: os.path.exists(os.path.join(run, "control.sock")) or p.poll() is not None,
                 what="control socket")
        check(p.poll() is None, "daemon exited at start")
        r = subprocess.run([XCODER, "--run-dir", run, "synth", "--tokens", "20000", "--quiet"], capture_output=True,
                           text=True, timeout=120)
        check(r.returncode == 0, "synth: %s" % r.stderr)
    finally:
        p.terminate()
        p.wait(timeout=60)
        log.close()
    files = sorted(f for f in os.listdir(state) if f.endswith(".safetensors") and ".resume." not in f)
    check(files, "no checkpoint written")
    CKPTS[model] = os.path.join(state, files[-1])
    return CKPTS[model]


def export(ckpt, tag):
    out = os.path.join(TMP, "hf-" + tag)
    r = subprocess.run([XCODER, "export", "--hf", out, ckpt], capture_output=True, text=True, timeout=60)
    check(r.returncode == 0, "xcoder export --hf: %s %s" % (r.stdout, r.stderr))
    return out


def same_arrays(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def check_dir(ckpt, out, cls):
    tensors, meta = xcoder.load_checkpoint(ckpt)
    got, _ = xcoder.load_checkpoint(os.path.join(out, "model.safetensors"))
    check(sorted(got) == sorted(tensors), "model.safetensors tensors %s, checkpoint %s" % (sorted(got), sorted(tensors)))
    for name in tensors:
        check(same_arrays(got[name], tensors[name]), "tensor %s differs from the checkpoint's" % name)
    with open(os.path.join(out, "config.json")) as fh:
        cfg = json.load(fh)
    want = {"activation_dim": int(meta["d"]), "dict_size": int(meta["dict_size"]), "num_layers": 2,
            "code_normalization": CODE_NORMS[int(tensors["code_normalization_id"])]}
    if cls == "BatchTopKCrossCoder":
        want["k"] = int(meta["k"])
        check(int(tensors["k"]) == want["k"], "k tensor %r vs metadata %r" % (tensors["k"], meta["k"]))
    check(cfg == want, "config.json %r, want %r" % (cfg, want))
    check(tensors["encoder.weight"].shape == (2, cfg["activation_dim"], cfg["dict_size"]),
          "encoder.weight shape %s vs config" % (tensors["encoder.weight"].shape,))
    with open(os.path.join(out, "README.md")) as fh:
        card = fh.read()
    check("%s.from_pretrained(" % cls in card and "from_hub=True" in card, "README.md does not say how to load it")


def test_config_matches_checkpoint():
    """config.json keys and values, model.safetensors equal to the checkpoint's tensors."""
    ck = make_checkpoint("batchtopk")
    check_dir(ck, export(ck, "btk"), "BatchTopKCrossCoder")
    ck = make_checkpoint("l1")
    check_dir(ck, export(ck, "l1"), "CrossCoder")
    r = subprocess.run([XCODER, "export", "--hf", os.path.join(TMP, "x"), ck, "extra"], capture_output=True,
                       text=True, timeout=30)
    check(r.returncode == 2 and "--hf DIR CKPT" in r.stderr, "--hf with two files: %d %s" % (r.returncode, r.stderr))


# ------------------------------------------------------------- reference --
def load_reference(path):
    return xc_integ.load_reference_dictionary(path, TMP)


def test_reference_from_pretrained():
    """The reference class loads the directory and its forward equals ours."""
    ref = os.environ.get("XC_REFERENCE_DICTIONARY")
    if not ref:
        print("# reference absent: XC_REFERENCE_DICTIONARY is not set, so from_pretrained and the forward pass of "
              "dictionary_learning were NOT checked (only config.json and model.safetensors against the checkpoint)",
              flush=True)
        return
    check(os.path.isfile(ref), "XC_REFERENCE_DICTIONARY=%s is not a file" % ref)
    import torch
    mod = load_reference(ref)
    rng = np.random.default_rng(3)
    for model, cls in (("batchtopk", "BatchTopKCrossCoder"), ("l1", "CrossCoder")):
        ck = make_checkpoint(model)
        out = export(ck, model + "-ref")
        m = getattr(mod, cls).from_pretrained(out, from_hub=True)
        tensors, _ = xcoder.load_checkpoint(os.path.join(out, "model.safetensors"))
        sd = m.state_dict()
        check(sorted(sd) == sorted(tensors), "%s state dict %s vs file %s" % (cls, sorted(sd), sorted(tensors)))
        for k, v in tensors.items():
            check(tuple(sd[k].shape) == v.shape and np.array_equal(sd[k].numpy(), v, equal_nan=v.dtype.kind == "f"),
                  "%s: %s not loaded as in the file" % (cls, k))
        check(int(m.code_normalization_id) == int(tensors["code_normalization_id"]), "code normalisation differs")
        x = (rng.standard_normal((128, 2, D)) * 2).astype(np.float32)
        with torch.no_grad():
            theirs = m(torch.from_numpy(x)).numpy()
        ours = xcoder.reconstruct(ck, x)
        err = np.abs(theirs - ours).max() / max(1e-12, np.abs(ours).max())
        check(err <= 1e-5, "%s forward differs from ours: max relative %.3g" % (cls, err))
        print("# reference %s loaded from %s with from_pretrained(DIR, from_hub=True); forward max rel diff %.2g"
              % (cls, ref, err), flush=True)


def main():
    for c in (test_config_matches_checkpoint, test_reference_from_pretrained):
        run_case(c)
    shutil.rmtree(TMP, ignore_errors=True)
    n = failed()
    print("%d failed" % n if n else "all passed")
    return 1 if n else 0


if __name__ == "__main__":
    sys.exit(main())
