#!/usr/bin/python3
"""Stream paired residual activations from a "model server" to xcoderd.

The model pair here is a tiny transformer (embedding, 2 TransformerEncoder layers,
d_model 32) and a perturbed copy standing in for its chat fine-tune, so the example
runs anywhere with torch and no downloads. With real models the call is the same:

    base = AutoModelForCausalLM.from_pretrained("google/gemma-2-2b").eval()
    chat = AutoModelForCausalLM.from_pretrained("google/gemma-2-2b-it").eval()
    with xcoder.Producer(run_dir, producer="gemma-2-2b/l13") as p:
        xcoder.stream_from_models(base, chat, "model.layers.13", batches, p)

where batches yields {"input_ids": ..., "attention_mask": ...} dicts (padding is
dropped) and the daemon runs with --d 2304.

    /usr/bin/python3 stream_model.py --spawn           # start a daemon in a temp dir too
    /usr/bin/python3 stream_model.py --run-dir DIR     # a running daemon (d = 32)
"""

import argparse
import copy
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the xcoder package beside examples/

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import xcoder  # noqa: E402

VOCAB, D = 100, 32


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, D)
        layer = nn.TransformerEncoderLayer(D, nhead=4, dim_feedforward=4 * D, dropout=0.0,
                                           batch_first=True)
        self.layers = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(D, VOCAB)

    def forward(self, input_ids, attention_mask=None):
        pad = None if attention_mask is None else attention_mask == 0
        return self.head(self.layers(self.emb(input_ids), src_key_padding_mask=pad))


def model_pair(seed=0):
    torch.manual_seed(seed)
    base = TinyLM().eval()
    chat = copy.deepcopy(base)
    with torch.no_grad():  # "fine-tuning": a small perturbation of every weight
        for p in chat.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return base, chat


def batches(n, rows=8, seq=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (rows, seq), generator=g)
        mask = torch.ones_like(ids)
        lengths = torch.randint(seq // 2, seq + 1, (rows,), generator=g)
        for r, L in enumerate(lengths.tolist()):
            mask[r, L:] = 0  # ragged documents, right-padded
        yield {"input_ids": ids, "attention_mask": mask}


def spawn_daemon(tmp):
    root = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
    exe = os.path.join(root, "build", "xcoderd")
    if not os.access(exe, os.X_OK):
        sys.exit(f"{exe} is missing: run `make` first")
    run_dir = os.path.join(tmp, "run")
    proc = subprocess.Popen([exe, "--run_dir", run_dir, "--state_dir", os.path.join(tmp, "state"),
                             "--name", f"example{os.getpid()}", "--d", str(D), "--dict_size", "512", "--k", "8",
                             "--batch_size", "256", "--log_level", "warn"])
    c = xcoder.Client(run_dir, timeout=0.2)
    for _ in range(100):
        try:
            c.ping()
            return proc, run_dir
        except xcoder.XcoderError as e:  # not listening yet (no socket file, or no answer)
            if e.code not in ("XC_ENOTFOUND", "XC_ETIMEDOUT"):
                raise
            time.sleep(0.05)
    proc.kill()
    sys.exit("the daemon did not start")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--run-dir", help="the daemon's run directory (or an ingest URI)")
    ap.add_argument("--spawn", action="store_true", help="start build/xcoderd in a temp dir")
    ap.add_argument("--layer", default="layers.layers.0", help="submodule to hook")
    ap.add_argument("--batches", type=int, default=20)
    args = ap.parse_args()
    proc = tmp = None
    if args.spawn:
        tmp = tempfile.mkdtemp(prefix="xcex.")
        proc, args.run_dir = spawn_daemon(tmp)
    try:
        base, chat = model_pair()
        t0 = time.monotonic()
        with xcoder.Producer(args.run_dir, producer="tinylm/l0") as p:
            sent = xcoder.stream_from_models(base, chat, args.layer, batches(args.batches), p)
        dt = time.monotonic() - t0
        print(f"sent {sent['tokens']} paired tokens in {sent['messages']} messages "
              f"({sent['tokens'] / dt:.0f} tokens/s, every one acked)")
        c = xcoder.Client(args.run_dir.replace("ingest", "control") if "://" in args.run_dir
                          else args.run_dir)
        st = c.status()
        print(f"daemon: step {st['step']}, tokens acked {st['tokens_acked']}, trained "
              f"{st['tokens_trained']}, buffered {st['tokens_buffered']}, loss {st['loss']:.4f}")
        if proc is not None:
            ck = c.checkpoint()
            t, meta = xcoder.load_checkpoint(ck["path"])
            print(f"checkpoint {ck['path']} (step {meta['step']}): "
                  f"decoder.weight {list(t['decoder.weight'].shape)}")
            c.shutdown()
    finally:
        if proc is not None:
            proc.wait(30)
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
