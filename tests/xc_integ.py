"""Helpers shared by the Python integration tests (tests/integ_*.py): checks, one
"ok - name" / "not ok - name: why" line per case (what tests/run.sh counts), and
polling with a timeout. Not a test itself."""
import sys
import time
import traceback

FAILED = 0


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def run_case(fn, width=500):
    """Runs one case; a failure is reported and counted, never hides the next case."""
    global FAILED
    try:
        fn()
        print("ok - %s" % fn.__name__, flush=True)
    except Exception as e:
        FAILED += 1
        why = ("%s: %s" % (type(e).__name__, e)).replace("\n", " ")
        print("not ok - %s: %s" % (fn.__name__, why[:width]), flush=True)
        traceback.print_exc(file=sys.stdout)


def failed():
    return FAILED


def wait_for(pred, timeout=10.0, step=0.02, what="condition"):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))


class Daemon:
    """A real xcoderd for one case: its own run_dir and state_dir under `base`,
    its log in base/daemon-TAG.log, started with `args` after the directories and
    the name, and a connected xcoder.Client (the package must be importable: the
    test puts client/python on sys.path). Waits until the daemon answers a ping;
    a daemon that exits at start fails the case with its log. The caller stops it
    with stop() (SIGTERM, then waits), which returns the exit status."""

    def __init__(self, xcoderd, base, name, args=(), tag="", run_dir=None, state_dir=None, timeout=10.0,
                 env=None):
        import os
        import subprocess

        import xcoder

        self.name = name
        self.dir = base
        self.run_dir = run_dir or os.path.join(base, "run" + ("-" + tag if tag else ""))
        self.state_dir = state_dir or os.path.join(base, "state")
        os.makedirs(base, exist_ok=True)
        self.log = open(os.path.join(base, "daemon%s.log" % ("-" + tag if tag else "")), "w+")
        cmd = [xcoderd, "--run_dir", self.run_dir, "--state_dir", self.state_dir, "--name", name] + list(args)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        wait_for(lambda: os.path.exists(os.path.join(self.run_dir, "control.sock")) or
                 self.proc.poll() is not None, timeout=timeout, what="control socket")
        check(self.proc.poll() is None, "daemon exited at start: " + self.logtext())
        self.client = xcoder.Client(self.run_dir, timeout=10)
        wait_for(lambda: self.client.ping(), timeout=timeout, what="ping")

    def logtext(self, tail=3000):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-tail:]

    def cli(self, xcoder_bin, *args, timeout=60):
        """Runs the CLI against this daemon; the CompletedProcess (text)."""
        import subprocess
        return subprocess.run([xcoder_bin, "--run-dir", self.run_dir] + list(args), capture_output=True,
                              text=True, timeout=timeout)

    def stop(self, timeout=60):
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=timeout)
        self.log.close()
        return self.proc.returncode


def load_reference_dictionary(path, tmp):
    """The authors' dictionary.py (at `path`, which a test takes from the
    environment variable XC_REFERENCE_DICTIONARY) imported as
    dictionary_learning.dictionary, with stand-ins, under tmp, for what it imports
    and this machine may lack: huggingface_hub (the hub mixin's local-directory
    route, strict: config.json's keys to __init__, model.safetensors into
    load_state_dict(strict=True)), einops (plain axis permutations, all __init__
    uses) and the package's utils (used only in training). Returns the module."""
    import importlib.util
    import json
    import os
    import shutil
    import types

    import numpy as np
    import torch
    import xcoder
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        hub = types.ModuleType("huggingface_hub")

        class PyTorchModelHubMixin:
            _hub_mixin_config = {}

            @classmethod
            def from_pretrained(cls, path, **kwargs):
                with open(os.path.join(path, "config.json")) as fh:
                    config = json.load(fh)
                model = cls(**config)
                tensors, _ = xcoder.load_checkpoint(os.path.join(path, "model.safetensors"))
                model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}, strict=True)
                return model
        hub.PyTorchModelHubMixin = PyTorchModelHubMixin
        sys.modules["huggingface_hub"] = hub
    try:
        import einops  # noqa: F401
    except ImportError:
        ein = types.ModuleType("einops")

        def rearrange(t, pattern):
            src, dst = [s.split() for s in pattern.split("->")]
            return t.permute(*[src.index(a) for a in dst])
        ein.rearrange = rearrange
        sys.modules["einops"] = ein
    pkg = os.path.join(tmp, "dictionary_learning")
    os.makedirs(pkg, exist_ok=True)
    open(os.path.join(pkg, "__init__.py"), "w").close()
    with open(os.path.join(pkg, "utils.py"), "w") as fh:
        fh.write("def set_decoder_norm_to_unit_norm(*a, **k):\n    raise NotImplementedError\n")
    shutil.copy(path, os.path.join(pkg, "dictionary.py"))
    if tmp not in sys.path:
        sys.path.insert(0, tmp)
    spec = importlib.util.spec_from_file_location("dictionary_learning.dictionary", os.path.join(pkg, "dictionary.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["dictionary_learning.dictionary"] = mod
    spec.loader.exec_module(mod)
    return mod
