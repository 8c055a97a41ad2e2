#!/usr/bin/env python3
"""Checkpoints against a real xcoderd (proto/CHECKPOINT.md).

- The model file read by the public format with numpy alone (safetensors
  parsed here, CRC-32 checked with zlib) reproduces the daemon engine's
  reconstruction of a batch (build/tests/test_ckpt --reconstruct runs the C
  engine on the loaded pair); the training file holds the same parameters.
- The model file loads with strict=True into the reference BatchTopKCrossCoder
  and CrossCoder (science-of-finetuning/dictionary_learning: its
  dictionary_learning/dictionary.py, read only from the path that
  $XC_REFERENCE_DICTIONARY names) or else a replica of their registrations, and
  its forward pass matches numpy. The test's "ok" line says which it was.
- kill -9 during a checkpoint write (several points) and during the final
  checkpoint: the restarted daemon resumes from the newest complete pair.
- XC_CKPT_FAULT_AFTER makes writes fail part-way: the request fails, the
  previous pair stays the one a restart resumes from.
- Corrupt (bit flip, truncation, garbage) newest pairs are skipped with a log
  line; a checkpoint of another shape is refused with exit 2 unless --fresh;
  --resume PATH picks a pair; --resume of a corrupt file is refused.
- xcoder inspect / export.
Prints "ok - NAME" / "not ok - NAME: why"."""

import glob
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zlib

import msgpack
import numpy as np
import zmq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
XCODERD = os.path.join(ROOT, "build", "xcoderd")
XCODER = os.path.join(ROOT, "build", "xcoder")
HELPER = os.path.join(ROOT, "build", "tests", "test_ckpt")
REF_ENV = "XC_REFERENCE_DICTIONARY"  # path of the reference's dictionary_learning/dictionary.py
TMP = tempfile.mkdtemp(prefix="xcd-ckpt-")
FAILED = []
PROCS = []  # every process started, killed at the end whatever happened


class Fail(Exception):
    pass


def check(cond, why):
    if not cond:
        raise Fail(why)


# ------------------------------------------------------------- the format --
ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
             "U64": "<u8", "U32": "<u4", "U8": "u1"}


def read_st(path):
    """A safetensors file by the public format: (tensors, metadata, raw bytes)."""
    raw = open(path, "rb").read()
    (hl,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + hl])
    meta = header.pop("__metadata__", {})
    base = 8 + hl
    out = {}
    for name, t in header.items():
        b, e = t["data_offsets"]
        a = np.frombuffer(raw[base + b:base + e], dtype=ST_DTYPES[t["dtype"]]).reshape(t["shape"])
        if t["dtype"] == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        out[name] = a
    return out, meta, raw


def crc_ok(raw, meta):
    """The xcoderd checksum: CRC-32 of the file with its own 8 hex digits read as '0'."""
    pat = b'"checksum":"crc32:'
    i = raw.index(pat) + len(pat)
    digits = raw[i:i + 8].decode()
    zeroed = raw[:i] + b"00000000" + raw[i + 8:]
    return meta["checksum"] == "crc32:" + digits and "%08x" % zlib.crc32(zeroed) == digits


def np_reconstruct(t, x, model="batchtopk"):
    W_enc, b_enc, W_dec, b_dec = (t[k].astype(np.float64) for k in
                                  ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"))
    u = np.maximum(np.einsum("bmd,mdf->bf", x.astype(np.float64), W_enc) + b_enc, 0)
    margin = np.full(x.shape[0], np.inf)
    if model == "batchtopk":
        s = np.linalg.norm(W_dec, axis=2).sum(axis=0)
        theta = float(t["threshold"])
        score = u * s
        f = u * (score > theta)
        margin = np.where(u > 0, np.abs(score - theta), np.inf).min(axis=1) / max(abs(theta), 1e-12)
    else:
        f = u
    return np.einsum("bf,mfd->bmd", f, W_dec) + b_dec, margin


# ------------------------------------------------------------- the daemon --
class Daemon:
    def __init__(self, name, d, F, k=4, B=64, extra=(), env=None, state=None):
        self.name = name
        self.run_dir = os.path.join(TMP, name + "-run")
        self.state_dir = state or os.path.join(TMP, name + "-state")
        self.args = [XCODERD, "--name", name, "--run_dir", self.run_dir, "--state_dir", self.state_dir,
                     "--d", str(d), "--dict_size", str(F), "--k", str(k), "--batch_size", str(B),
                     "--checkpoint_interval", "0", "--shm", "off", "--threads", "2"] + list(extra)
        self.env = dict(os.environ, **(env or {}))
        self.logpath = os.path.join(TMP, name + ".log")
        self.proc = None
        self.ctx = zmq.Context.instance()

    def start(self, extra=(), wait=True):
        self.log = open(self.logpath, "a")
        self.log.write("==== start %s\n" % " ".join(extra))
        self.log.flush()
        self.mark = os.path.getsize(self.logpath)
        self.proc = subprocess.Popen(self.args + list(extra), stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        PROCS.append(self.proc)
        if wait:
            t0 = time.time()
            while "ready:" not in self.logtext():
                check(self.proc.poll() is None, "daemon exited %s: %s" % (self.proc.returncode, self.logtext()[-600:]))
                check(time.time() - t0 < 20, "daemon not ready: " + self.logtext()[-600:])
                time.sleep(0.05)
        return self

    def logtext(self):
        with open(self.logpath) as f:
            f.seek(self.mark)
            return f.read()

    def req(self, msg, timeout=30):
        s = self.ctx.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        s.connect("ipc://%s/control.sock" % self.run_dir)
        msg = dict(msg, v=1)
        s.send(msgpack.packb(msg))
        check(s.poll(timeout * 1000), "no reply to %r" % msg)
        r = msgpack.unpackb(s.recv())
        s.close()
        return r

    def ok(self, msg, timeout=30):
        r = self.req(msg, timeout)
        check(r.get("ok"), "%r failed: %r" % (msg, r))
        return r

    def feed(self, tokens, wait=True):
        args = [XCODER, "--run-dir", self.run_dir, "synth", "--tokens", str(tokens), "--quiet", "--batch", "512"]
        if wait:
            subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
            return None
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        PROCS.append(p)
        return p

    def wait_step(self, n, timeout=30):
        t0 = time.time()
        while True:
            st = self.ok({"op": "status"})
            if st["step"] >= n:
                return st
            check(time.time() - t0 < timeout, "step %d not reached (at %d)" % (n, st["step"]))
            time.sleep(0.05)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self.log.close()
        return rc

    def run_to_exit(self, extra=(), timeout=30):
        """Starts with extra args and expects an exit (a refusal): (rc, log)."""
        self.start(extra, wait=False)
        rc = self.proc.wait(timeout)
        self.log.close()
        return rc, self.logtext()

    def pairs(self):
        """Steps with a complete pair on disk."""
        out = []
        for m in glob.glob(os.path.join(self.state_dir, "%s-*.safetensors" % self.name)):
            if m.endswith(".resume.safetensors"):
                continue
            if os.path.exists(m[:-len(".safetensors")] + ".resume.safetensors"):
                out.append(int(os.path.basename(m)[len(self.name) + 1:].split(".")[0]))
        return sorted(out)

    def resumed_step(self):
        for line in self.logtext().splitlines():
            if "resumed from" in line:
                return int(line.split("step ")[1].split(",")[0])
        return None


# ------------------------------------------------------------------ tests --
def test_numpy_reads_model_file_and_reproduces_reconstruction():
    dm = Daemon("np", 32, 256, extra=["--threshold_start_step", "3"]).start()
    try:
        dm.feed(6000)
        dm.wait_step(40)
        r = dm.ok({"op": "checkpoint"})
        t, meta, raw = read_st(r["path"])
        check(crc_ok(raw, meta), "model checksum does not verify with zlib")
        check(meta["format"] == "xcoderd-crosscoder" and int(meta["step"]) == r["step"], "meta %r" % meta)
        check(t["encoder.weight"].shape == (2, 32, 256) and t["decoder.weight"].shape == (2, 256, 32), "shapes")
        check(float(t["threshold"]) > 0 and int(t["k"]) == 4 and int(t["code_normalization_id"]) == 1, "scalars")
        tt, tmeta, traw = read_st(r["train_path"])
        check(crc_ok(traw, tmeta) and tmeta["checkpoint_id"] == meta["checkpoint_id"] and
              meta["train_checksum"] == tmeta["checksum"], "training file checksum / pairing")
        # the training file holds the same parameters in the engine layout (F, 2, d)
        check(np.array_equal(tt["w_enc"].reshape(256, 64).T.reshape(2, 32, 256), t["encoder.weight"]), "w_enc")
        check(np.array_equal(tt["w_dec"].transpose(1, 0, 2), t["decoder.weight"]), "w_dec")
        # the C engine on the loaded pair vs numpy on the model file
        rng = np.random.default_rng(3)
        x = rng.standard_normal((200, 2, 32)).astype(np.float32) * 2
        xp, op = os.path.join(TMP, "x.npy"), os.path.join(TMP, "xhat.npy")
        np.save(xp, x)
        p = subprocess.run([HELPER, "--reconstruct", r["path"], xp, op], capture_output=True, text=True, timeout=60)
        check(p.returncode == 0, "helper: %s" % p.stderr)
        xc = np.load(op)
        xn, margin = np_reconstruct(t, x)
        clear = margin > 1e-4  # tokens with a score within 1e-4 of theta may round either way
        err = np.abs(xc[clear] - xn[clear]).max()
        check(clear.sum() >= 190 and err < 1e-4 * max(1.0, np.abs(xn).max()),
              "reconstructions differ by %g on %d tokens" % (err, clear.sum()))
        u = np.maximum(np.einsum("bmd,mdf->bf", x, t["encoder.weight"]) + t["encoder.bias"], 0)
        active = (u * np.linalg.norm(t["decoder.weight"], axis=2).sum(0) > float(t["threshold"])).mean()
        check(0 < active < (u > 0).mean(), "theta does not select (%g of %g active)" % (active, (u > 0).mean()))
    finally:
        dm.stop()


def reference_module():
    """The reference dictionary.py (the file $XC_REFERENCE_DICTIONARY names; nothing
    else is read) with its hub/einops/utils imports stubbed, or None when the
    variable is unset. A path that cannot be read is a failure, never a silent
    fallback."""
    import types
    p = os.environ.get(REF_ENV)
    if not p:
        return None
    try:
        with open(p) as f:
            src = f.read()
    except OSError as e:
        raise Fail("%s=%s cannot be read (%s): point it at dictionary_learning/dictionary.py of "
                   "science-of-finetuning/dictionary_learning, or unset it" % (REF_ENV, p, e.strerror))
    hub = types.ModuleType("huggingface_hub")

    class PyTorchModelHubMixin:
        _hub_mixin_config = {}
    hub.PyTorchModelHubMixin = PyTorchModelHubMixin
    ein = types.ModuleType("einops")

    def rearrange(t, pattern):
        assert pattern == "num_layers activation_dim dict_size -> num_layers dict_size activation_dim", pattern
        return t.transpose(1, 2)
    ein.rearrange = rearrange
    pkg = types.ModuleType("dictionary_learning")
    pkg.__path__ = []
    utils = types.ModuleType("dictionary_learning.utils")
    utils.set_decoder_norm_to_unit_norm = lambda *a, **k: None
    saved = {k: sys.modules.get(k) for k in ("huggingface_hub", "einops", "dictionary_learning",
                                              "dictionary_learning.utils")}
    sys.modules.update({"huggingface_hub": hub, "einops": ein, "dictionary_learning": pkg,
                        "dictionary_learning.utils": utils})
    try:
        mod = types.ModuleType("dictionary_learning.dictionary")
        mod.__package__ = "dictionary_learning"
        exec(compile(src, "dictionary_learning/dictionary.py", "exec"), mod.__dict__)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return mod


def replica(torch, d, F, k, btk):
    """What the reference registers (names, shapes, dtypes), for when its source is absent."""
    nn = torch.nn

    class Enc(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(2, d, F))
            self.bias = nn.Parameter(torch.zeros(F))

    class Dec(nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(2, d))
            self.weight = nn.Parameter(torch.zeros(2, F, d))

    class CC(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("target_rms", torch.tensor(1.0))
            self.register_buffer("activation_mean", torch.full((2, d), float("nan")))
            self.register_buffer("activation_std", torch.full((2, d), float("nan")))
            self.register_buffer("activation_global_scale", torch.ones(2))
            self.encoder, self.decoder = Enc(), Dec()
            self.register_buffer("code_normalization_id", torch.tensor(1))
            if btk:
                self.register_buffer("k", torch.tensor(k, dtype=torch.int))
                self.register_buffer("threshold", torch.tensor(-1.0, dtype=torch.float32))
    return CC()


def test_reference_source_only_from_env():
    """The reference is read from the file the variable names, and from nowhere else."""
    saved = os.environ.pop(REF_ENV, None)
    try:
        check(reference_module() is None, "with %s unset a reference was found elsewhere" % REF_ENV)
        os.environ[REF_ENV] = os.path.join(TMP, "no-such-dictionary.py")
        try:
            reference_module()
            raise AssertionError("a missing %s file was not reported" % REF_ENV)
        except Fail as e:
            check("no-such-dictionary.py" in str(e), "message does not name the path: %s" % e)
        fake = os.path.join(TMP, "fake_dictionary.py")
        with open(fake, "w") as f:
            f.write("MARK = 'read from the env path'\n")
        os.environ[REF_ENV] = fake
        check(getattr(reference_module(), "MARK", None) == "read from the env path", "env path not read")
    finally:
        os.environ.pop(REF_ENV, None)
        if saved is not None:
            os.environ[REF_ENV] = saved


def test_reference_state_dict_strict_load():
    import torch
    ref = reference_module()
    for model in ("batchtopk", "l1"):
        dm = Daemon("ref-" + model, 16, 64, extra=["--model", model, "--threshold_start_step", "2"]).start()
        try:
            dm.feed(3000)
            dm.wait_step(10)
            r = dm.ok({"op": "checkpoint"})
        finally:
            dm.stop()
        t, meta, _ = read_st(r["path"])
        sd = {n: torch.from_numpy(np.array(a)) for n, a in t.items()}
        btk = model == "batchtopk"
        if ref is not None:
            cls = ref.BatchTopKCrossCoder if btk else ref.CrossCoder
            m = cls(16, 64, 2, k=4) if btk else cls(16, 64, 2)
        else:
            m = replica(torch, 16, 64, 4, btk)
        want = {n: (tuple(v.shape), v.dtype) for n, v in m.state_dict().items()}
        got = {n: (tuple(v.shape), v.dtype) for n, v in sd.items()}
        check(want == got, "%s: state dict differs: reference %r, file %r" % (model, want, got))
        m.load_state_dict(sd, strict=True)
        if ref is not None:
            x = np.random.default_rng(5).standard_normal((50, 2, 16)).astype(np.float32)
            with torch.no_grad():
                y = m(torch.from_numpy(x)).numpy()
            xn, margin = np_reconstruct(t, x, model)
            clear = margin > 1e-4
            check(np.abs(y[clear] - xn[clear]).max() < 1e-4, "%s: reference forward differs from numpy" % model)
    if ref is None:
        return "against a replica of the reference's registrations: %s is unset" % REF_ENV
    return "against the reference source %s" % os.environ[REF_ENV]


def big_daemon(extra=(), env=None):
    return Daemon("k9", 256, 16384, k=32, B=512, extra=["--checkpoint_keep", "3"] + list(extra), env=env)


def tmp_files(dm):
    return [f for f in os.listdir(dm.state_dir) if ".tmp." in f]


def test_kill9_during_checkpoint_resumes_newest_valid():
    dm = big_daemon().start(["--fresh"])
    feeder = dm.feed(10 ** 7, wait=False)
    try:
        dm.wait_step(2)
        dm.ok({"op": "checkpoint"})
        for trial, delay in enumerate((0.02, 0.4, 0.85, 3.0)):  # into the ~1 s write (training file, model file), after it
            before = dm.pairs()
            s = dm.ctx.socket(zmq.REQ)  # a checkpoint request whose reply never comes
            s.setsockopt(zmq.LINGER, 0)
            s.connect("ipc://%s/control.sock" % dm.run_dir)
            s.send(msgpack.packb({"v": 1, "op": "checkpoint"}))
            t0 = time.time()
            while not tmp_files(dm) and time.time() - t0 < 10:
                time.sleep(0.002)
            check(tmp_files(dm), "no temp file appeared")
            time.sleep(delay)
            dm.stop(signal.SIGKILL)
            s.close()
            after = dm.pairs()
            feeder.kill()
            dm.start()
            feeder = dm.feed(10 ** 7, wait=False)
            got = dm.resumed_step()
            check(got == after[-1], "trial %d: resumed step %r, newest complete pair %r (before the kill %r)"
                  % (trial, got, after, before))
            st = dm.ok({"op": "status"})
            check(st["step"] >= got, "status step %d < resumed %d" % (st["step"], got))
            check(not tmp_files(dm), "temp files left after restart: %r" % tmp_files(dm))
            dm.wait_step(got + 2)
        # kill -9 during the final (shutdown) checkpoint
        dm.wait_step(dm.ok({"op": "status"})["step"] + 2)
        dm.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        dm.stop(signal.SIGKILL)
        feeder.kill()
        after = dm.pairs()
        dm.start()
        check(dm.resumed_step() == after[-1], "after a killed shutdown: resumed %r, pairs %r" % (dm.resumed_step(), after))
        check(len(after) <= 4, "rotation: %r" % after)
    finally:
        feeder.kill()
        if dm.proc.poll() is None:
            dm.stop()


def test_fault_injection_env_keeps_previous():
    dm = Daemon("fi", 32, 256).start()
    try:
        dm.feed(3000)
        dm.wait_step(5)
        good = dm.ok({"op": "checkpoint"})
    finally:
        dm.stop(signal.SIGKILL)
    size = os.path.getsize(good["path"]) + os.path.getsize(good["train_path"])
    for n in (0, 100, size // 3, size - 50):
        dm.env["XC_CKPT_FAULT_AFTER"] = str(n)
        dm.start()
        check(dm.resumed_step() == good["step"], "n=%d: started from %r" % (n, dm.resumed_step()))
        dm.feed(1000)
        dm.wait_step(good["step"] + 3)
        r = dm.req({"op": "checkpoint"})
        check(not r["ok"] and r["code"] == "XC_EIO" and "fault injection" in r["message"], "n=%d: %r" % (n, r))
        rc = dm.stop(signal.SIGKILL)
        del dm.env["XC_CKPT_FAULT_AFTER"]
        dm.start()
        check(dm.resumed_step() == good["step"], "n=%d: resumed %r, want %d" % (n, dm.resumed_step(), good["step"]))
        dm.stop(signal.SIGKILL)


def corrupt(path, how):
    raw = bytearray(open(path, "rb").read())
    if how == "flip":
        raw[len(raw) // 2] ^= 0x04
    elif how == "truncate":
        raw = raw[:len(raw) - 1000]
    elif how == "garbage":
        raw = bytearray(os.urandom(4096))
    open(path, "wb").write(raw)


def test_corrupt_wrong_shape_fresh_resume():
    dm = Daemon("bad", 32, 256, extra=["--checkpoint_keep", "0"]).start()
    steps = []
    try:
        for i in range(4):
            dm.feed(700)
            st = dm.wait_step((steps[-1] if steps else 0) + 2)
            steps.append(dm.ok({"op": "checkpoint"})["step"])
    finally:
        dm.stop(signal.SIGKILL)
    check(dm.pairs() == steps, "pairs %r vs %r" % (dm.pairs(), steps))
    base = os.path.join(dm.state_dir, "bad-%09d" % steps[-1])
    corrupt(base + ".safetensors", "flip")
    corrupt(os.path.join(dm.state_dir, "bad-%09d.resume.safetensors" % steps[-2]), "truncate")
    garbage = os.path.join(dm.state_dir, "bad-%09d.safetensors" % (steps[-1] + 100))
    shutil.copy(base + ".resume.safetensors", garbage[:-len(".safetensors")] + ".resume.safetensors")
    corrupt(garbage[:-len(".safetensors")] + ".resume.safetensors", "garbage")
    shutil.copy(base + ".resume.safetensors", garbage)
    corrupt(garbage, "garbage")
    dm.start()
    log = dm.logtext()
    check(dm.resumed_step() == steps[-3], "resumed %r, want %d; log: %s" % (dm.resumed_step(), steps[-3], log[-1500:]))
    check("skipping checkpoint at step %d: " % steps[-1] in log and "checksum mismatch" in log, "flip not logged")
    check("skipping checkpoint at step %d: " % steps[-2] in log and "truncated" in log, "truncation not logged")
    check("skipping checkpoint at step %d: " % (steps[-1] + 100) in log, "garbage not logged")
    dm.stop()
    # another shape: refused with exit 2 and a clear message
    wide = Daemon("bad", 64, 256, state=dm.state_dir)
    rc, log = wide.run_to_exit()
    check(rc == 2 and "d = 32" in log and "d = 64" in log and "--fresh" in log, "wrong shape: rc %d: %s" % (rc, log[-600:]))
    l1 = Daemon("bad", 32, 256, extra=["--model", "l1"], state=dm.state_dir)
    rc, log = l1.run_to_exit()
    check(rc == 2 and "batchtopk crosscoder" in log and "l1 crosscoder" in log, "wrong model: rc %d: %s" % (rc, log[-600:]))
    wide.start(["--fresh"])
    check("starting a new model" in wide.logtext() and wide.ok({"op": "status"})["step"] == 0, "--fresh")
    check(wide.stop() == 0, "fresh daemon exit")
    check(os.path.exists(base + ".resume.safetensors"), "--fresh removed old checkpoints")
    # --resume PATH: that pair; a corrupt one is refused
    dm.start(["--resume", os.path.join(dm.state_dir, "bad-%09d.resume.safetensors" % steps[0]), "--lr", "0.003"])
    check(dm.resumed_step() == steps[0], "--resume: %r" % dm.resumed_step())
    check("resuming with lr = 0.003 (the checkpoint was trained with 0.0001)" in dm.logtext(),
          "a changed training key is not reported: %s" % dm.logtext()[-600:])
    dm.stop(signal.SIGKILL)
    rc, log = dm.run_to_exit(["--resume", base + ".safetensors"])
    check(rc == 2 and "checksum mismatch" in log, "--resume corrupt: rc %d %s" % (rc, log[-400:]))


def test_buffered_tokens_survive_shutdown():
    """Tokens acked but still in the mixing buffer at SIGTERM travel with the final
    checkpoint and are trained after the restart; a changed mix_tokens skips them."""
    dm = Daemon("buf", 32, 256, extra=["--mix_tokens", "512"]).start()
    dm.feed(300)  # below mix_tokens: nothing is trained yet
    st = dm.ok({"op": "status"})
    check(st["step"] == 0 and st["tokens_buffered"] + st["tokens_queued"] == 300, "before: %r" % st)
    check(dm.stop() == 0, "exit")
    dm.start()
    st = dm.ok({"op": "status"})
    check(st["tokens_buffered"] == 300 and st["tokens_restored"] == 300, "after restart: %r" % st)
    check("300 buffered tokens restored" in dm.logtext(), "restore not logged")
    dm.feed(212)  # fills the buffer: the restored tokens are trained
    st = dm.wait_step(1)
    check(st["tokens_acked"] + st["tokens_restored"] == st["tokens_trained"] + st["tokens_buffered"] +
          st["tokens_queued"] + st["tokens_failed"], "accounting with restored tokens: %r" % st)
    check(dm.stop() == 0, "second exit")
    dm.start(["--mix_tokens", "1024"])
    st = dm.ok({"op": "status"})
    check(st["tokens_restored"] == 0 and "not restoring trainer.mix_buffer" in dm.logtext(),
          "another mix_tokens: %r %s" % (st, dm.logtext()[-400:]))
    check(dm.stop() == 0, "third exit")


def test_cli_inspect_and_export():
    dm = Daemon("cli", 32, 256).start()
    try:
        dm.feed(2000)
        dm.wait_step(5)
        r = dm.ok({"op": "checkpoint"})
    finally:
        dm.stop()
    p = subprocess.run([XCODER, "inspect", r["path"], "--json"], capture_output=True, text=True)
    j = json.loads(p.stdout)
    check(p.returncode == 0 and j["kind"] == "model" and j["checksum_check"]["valid"] and
          j["pair"]["pairing"]["valid"] and len(j["tensors"]) == 11, "inspect --json: %s %s" % (p.stdout[:300], p.stderr))
    p = subprocess.run([XCODER, "inspect", r["train_path"]], capture_output=True, text=True)
    check(p.returncode == 0 and "training state" in p.stdout and "valid" in p.stdout, "inspect text: %s" % p.stdout)
    bad = os.path.join(TMP, "cli-000000001.safetensors")
    shutil.copy(r["path"], bad)
    corrupt(bad, "flip")
    p = subprocess.run([XCODER, "inspect", bad], capture_output=True, text=True)
    check(p.returncode == 1 and "INVALID" in p.stdout and "checksum mismatch" in p.stdout, "inspect corrupt: %s" % p.stdout)
    out = os.path.join(TMP, "exp", "model.safetensors")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    t, _, _ = read_st(r["path"])
    for src in (r["path"], r["train_path"]):
        p = subprocess.run([XCODER, "export", src, out], capture_output=True, text=True)
        check(p.returncode == 0, "export %s: %s" % (src, p.stderr))
        e, emeta, eraw = read_st(out)
        check(crc_ok(eraw, emeta) and set(e) == set(t) and all(np.array_equal(e[k], t[k], equal_nan=True) for k in t),
              "export of %s differs from the model file" % os.path.basename(src))
    p = subprocess.run([XCODER, "export", r["path"], out, "--dtype", "bf16"], capture_output=True, text=True)
    e, _, _ = read_st(out)
    check(p.returncode == 0 and np.allclose(e["decoder.weight"], t["decoder.weight"], rtol=1e-2, atol=1e-3),
          "bf16 export")
    p = subprocess.run([XCODER, "export", bad, out], capture_output=True, text=True)
    check(p.returncode == 1 and "refusing" in p.stderr, "export of a corrupt file: %s" % p.stderr)


def main():
    for exe in (XCODERD, XCODER, HELPER):
        if not os.access(exe, os.X_OK):
            print("not ok - integ_ckpt: %s not built" % exe)
            return 1
    t0 = time.time()
    tests = [test_numpy_reads_model_file_and_reproduces_reconstruction, test_reference_source_only_from_env,
             test_reference_state_dict_strict_load,
             test_kill9_during_checkpoint_resumes_newest_valid, test_fault_injection_env_keeps_previous,
             test_corrupt_wrong_shape_fresh_resume, test_buffered_tokens_survive_shutdown, test_cli_inspect_and_export]
    for t in tests:
        try:
            note = t()
            print("ok - %s%s" % (t.__name__, " (%s)" % note if note else ""))
        except Exception as e:  # noqa: BLE001 - every failure is reported as a test line
            FAILED.append(t.__name__)
            why = str(e) if isinstance(e, Fail) else "%s: %s" % (type(e).__name__, e)
            print("not ok - %s: %s" % (t.__name__, why.replace("\n", " ")[:800]))
            if not isinstance(e, Fail):
                traceback.print_exc()
        sys.stdout.flush()
    for p in PROCS:
        if p.poll() is None:
            p.kill()
            p.wait()
    print("# integ_ckpt: %.1f s" % (time.time() - t0))
    if not FAILED:
        shutil.rmtree(TMP, ignore_errors=True)
    else:
        print("# logs kept in %s" % TMP)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
