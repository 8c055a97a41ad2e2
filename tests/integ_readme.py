#!/usr/bin/python3
"""The README tells the truth a new user relies on:
- one figure for the running Latent Scaling cost: `xcoderd --help` gives the
  README's measured figure (make bench, scaling_cost_fraction), not another;
- "Your own model pair", executed literally: the blocks marked
  `<!-- smoke: NAME -->` run as written (install: make, a venv with
  --system-site-packages and pip install of the client; the daemon; the Python
  streaming snippet with a tiny Hugging-Face-shaped torch model pair; watch,
  checkpoint, report, shutdown), with HOME, XDG_RUNTIME_DIR and D set to test
  values.
Prints "ok - name" / "not ok - name: why" lines; exits non-zero on failure."""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from xc_integ import check, failed, run_case  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
XCODERD = os.path.join(ROOT, "build", "xcoderd")
README = open(os.path.join(ROOT, "README.md")).read()


def test_scaling_cost_one_figure():
    m = re.search(r"`scaling_cost_fraction`\): ([0-9.]+)% of a reference step", README)
    check(m, "README does not state the running Latent Scaling cost")
    readme = m.group(1)
    h = subprocess.run([XCODERD, "--help"], capture_output=True, text=True, timeout=30).stdout
    line = " ".join(h[h.index("scaling_running"):].split("\n\n")[0].split())
    figures = re.findall(r"([0-9.]+)% of a step", line)
    check(figures == [readme], "xcoderd --help says %r for scaling_running, README says %s%%: %s"
          % (figures, readme, line))


def smoke_block(name):
    m = re.search(r"<!-- smoke: %s -->\n```(\w+)\n(.*?)```" % name, README, re.S)
    check(m, "README has no block marked smoke: %s" % name)
    return m.group(2)


# What the test binds before the README's Python block: a tiny pair shaped like
# Hugging Face causal LMs (model.layers.N, config.hidden_size), a tokenizer
# returning input_ids / attention_mask, and some texts.
PRELUDE = """
import torch
D = int(__import__("os").environ["D"])
class Cfg:
    hidden_size = D
class Inner(torch.nn.Module):
    def __init__(self, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed = torch.nn.Embedding(97, D)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(D, D) for _ in range(14))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    def forward(self, input_ids):
        h = self.embed(input_ids)
        for layer in self.layers:
            h = h + torch.tanh(layer(h))
        return h
class CausalLM(torch.nn.Module):
    def __init__(self, seed):
        super().__init__()
        self.config = Cfg()
        self.model = Inner(seed)
    def forward(self, input_ids, attention_mask=None):
        return self.model(input_ids)
base, chat = CausalLM(1).eval(), CausalLM(2).eval()
def tok(batch, return_tensors="pt", padding=True):
    ids = [[(ord(c) % 96) + 1 for c in t] for t in batch]
    n = max(len(i) for i in ids)
    return {"input_ids": torch.tensor([i + [0] * (n - len(i)) for i in ids]),
            "attention_mask": torch.tensor([[1] * len(i) + [0] * (n - len(i)) for i in ids])}
texts = ["document number %d, about crosscoders and chat tuning" % i for i in range(1024)]
"""


def test_readme_quickstart_literally():
    tmp = tempfile.mkdtemp(prefix="xc-readme-")
    env = dict(os.environ, HOME=os.path.join(tmp, "home"), XDG_RUNTIME_DIR=os.path.join(tmp, "xdg"), D="16")
    env.pop("XCODER_RUN_DIR", None)
    env.pop("PYTHONPATH", None)
    os.makedirs(env["HOME"])
    os.makedirs(env["XDG_RUNTIME_DIR"], mode=0o700)
    daemon = None
    try:
        r = subprocess.run(["bash", "-euc", smoke_block("install")], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=600)
        check(r.returncode == 0, "install block: %s" % (r.stdout + r.stderr)[-800:])
        py = os.path.join(env["HOME"], ".venvs", "xcoder", "bin", "python")
        r = subprocess.run([py, "-c", "import xcoder, sys; print(xcoder.__file__)"], cwd=tmp, env=env,
                           capture_output=True, text=True, timeout=60)
        check(r.returncode == 0 and env["HOME"] in r.stdout, "the venv does not import its xcoder: %s"
              % (r.stdout + r.stderr)[-400:])
        log = open(os.path.join(tmp, "daemon.log"), "w+")
        daemon = subprocess.Popen(["bash", "-euc", smoke_block("daemon")], cwd=ROOT, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        sock = os.path.join(env["XDG_RUNTIME_DIR"], "xcoderd-mypair", "control.sock")
        t0 = time.time()
        while not os.path.exists(sock) and daemon.poll() is None and time.time() - t0 < 30:
            time.sleep(0.05)
        log.seek(0)
        check(os.path.exists(sock), "daemon block did not start a daemon: %s" % log.read()[-600:])
        r = subprocess.run([py, "-c", PRELUDE + smoke_block("python")], cwd=tmp, env=env, capture_output=True,
                           text=True, timeout=300)
        check(r.returncode == 0 and re.search(r"^\d+ tokens streamed$", r.stdout, re.M),
              "python block: %s" % (r.stdout + r.stderr)[-800:])
        n = int(r.stdout.split()[0])
        check(n == sum(len("document number %d, about crosscoders and chat tuning" % i) for i in range(1024)),
              "streamed %d tokens" % n)
        r = subprocess.run(["bash", "-euc", smoke_block("after")], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
        out = r.stdout + r.stderr
        check(r.returncode == 0, "after block: %s" % out[-800:])
        check("checkpoint written" in out and "latents by relative decoder norm" in out and
              "planted feature" not in out and "daemon shutting down: stopped" in out and
              not re.search(r"\(step 0[,)]", out), "after block output: %s" % out[-800:])
        check(True,
              "after block output: %s" % out[-800:])
        daemon.wait(60)
        check(daemon.returncode == 0, "daemon exit %r" % daemon.returncode)
    finally:
        if daemon is not None and daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    for t in (test_scaling_cost_one_figure, test_readme_quickstart_literally):
        run_case(t)
    return 1 if failed() else 0


if __name__ == "__main__":
    sys.exit(main())
