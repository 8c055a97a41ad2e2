"""Evaluation with the models in the loop: the spliced-in loss.

For each model m (base, chat): run it on held-out text, replace its residual after
blocks.L by the crosscoder's reconstruction x̂^m (the crosscoder sees both models'
residuals of the same tokens, as in training) and let the rest of the model run on
it. Reported per model, over the real (unpadded) next-token targets:
  loss         the unspliced next-token loss (nats/token)
  loss_spliced the loss with the reconstruction spliced in
  delta        loss_spliced - loss
  kl           mean KL(unspliced || spliced) of the next-token distributions
  loss_zero    the loss with the residual zeroed (the reference point)
  recovered    (loss_zero - loss_spliced) / (loss_zero - loss): the "fraction of loss
               recovered" that dictionary-learning tools report (1 = lossless)

    /usr/bin/python3 -m models.evaluate CHECKPOINT [--split eval] [--rows 64]
"""

import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from models import data, lm  # noqa: E402


def _forward(model, ids, layer, replace=None):
    """(logits, residual after blocks[layer]); replace: a [B, T, d] tensor put in
    place of that residual (the later blocks run on it)."""
    box = []

    def hook(_m, _i, out):
        box.append(out.detach())
        return replace if replace is not None else None

    h = model.blocks[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = model(ids)
    finally:
        h.remove()
    return logits, box[0]


def residual_pairs(base, chat, ids, layer=lm.STREAM_LAYER):
    """(logits_base, logits_chat, acts [B, T, 2, d] float32 numpy)."""
    lb, rb = _forward(base, ids, layer)
    lc, rc = _forward(chat, ids, layer)
    return lb, lc, torch.stack([rb, rc], dim=2).numpy()


def spliced_loss(base, chat, rows, mask, reconstruct, layer=lm.STREAM_LAYER, batch=32):
    """The spliced-in loss figures (module doc) of both models on rows [n, T] with
    mask [n, T]; reconstruct maps acts [N, 2, d] (float32 numpy) to x̂ [N, 2, d].
    Returns {"base": {...}, "chat": {...}, "tokens": targets counted}."""
    sums = {m: {"loss": 0.0, "loss_spliced": 0.0, "kl": 0.0, "loss_zero": 0.0}
            for m in ("base", "chat")}
    count = 0
    for i in range(0, len(rows), batch):
        ids = torch.as_tensor(rows[i:i + batch])
        m = torch.as_tensor(mask[i:i + batch])[:, 1:].reshape(-1)
        tgt = ids[:, 1:].reshape(-1)
        lb, lc, acts = residual_pairs(base, chat, ids, layer)
        B, T, _, d = acts.shape
        xh = np.asarray(reconstruct(acts.reshape(B * T, 2, d)), dtype=np.float32)
        xh = torch.from_numpy(xh.reshape(B, T, 2, d))
        for mi, (name, model, logits) in enumerate((("base", base, lb), ("chat", chat, lc))):
            ls, _ = _forward(model, ids, layer, replace=xh[:, :, mi].contiguous())
            lz, _ = _forward(model, ids, layer, replace=torch.zeros(B, T, d))
            V = logits.shape[-1]
            lp = logits[:, :-1].reshape(-1, V).log_softmax(-1)
            lps = ls[:, :-1].reshape(-1, V).log_softmax(-1)
            s = sums[name]
            s["loss"] += float((F.nll_loss(lp, tgt, reduction="none") * m).sum())
            s["loss_spliced"] += float((F.nll_loss(lps, tgt, reduction="none") * m).sum())
            s["loss_zero"] += float((F.cross_entropy(lz[:, :-1].reshape(-1, V), tgt,
                                                     reduction="none") * m).sum())
            kl = (lp.exp() * (lp - lps)).sum(-1)
            s["kl"] += float((kl * m).sum())
        count += int(m.sum())
    out = {"tokens": count}
    for name, s in sums.items():
        r = {k: v / max(1, count) for k, v in s.items()}
        r["delta"] = r["loss_spliced"] - r["loss"]
        den = r["loss_zero"] - r["loss"]
        r["recovered"] = (r["loss_zero"] - r["loss_spliced"]) / den if den > 0 else float("nan")
        out[name] = r
    return out


def identity_crosscoder(d):
    """A crosscoder checkpoint (tensors dict, ReLU encoding) whose reconstruction is
    exactly its input: latents x^m and -x^m per model, decoded by ±I. For tests."""
    F_ = 4 * d
    eye = np.eye(d, dtype=np.float32)
    W_enc = np.zeros((2, d, F_), np.float32)
    W_dec = np.zeros((2, F_, d), np.float32)
    for m in range(2):
        W_enc[m][:, 2 * m * d:(2 * m + 1) * d] = eye
        W_enc[m][:, (2 * m + 1) * d:(2 * m + 2) * d] = -eye
        W_dec[m][2 * m * d:(2 * m + 1) * d] = eye
        W_dec[m][(2 * m + 1) * d:(2 * m + 2) * d] = -eye
    return {"encoder.weight": W_enc, "encoder.bias": np.zeros(F_, np.float32),
            "decoder.weight": W_dec, "decoder.bias": np.zeros((2, d), np.float32)}


def eval_sets(tok, split="eval", rows=64):
    """{"chat": (rows, mask), "web": (rows, mask)} of held-out text."""
    c = data.chat_rows(tok, data.chat_dialogues(split)[:rows])
    w = data.web_rows(tok, data.web_docs(split), max_rows=rows)
    return {"chat": c, "web": w}


def main(argv=None):
    from xcoder import load_checkpoint, reconstruct
    ap = argparse.ArgumentParser(description="spliced-in loss of a crosscoder checkpoint")
    ap.add_argument("checkpoint")
    ap.add_argument("--split", default="eval", choices=data.SPLITS)
    ap.add_argument("--rows", type=int, default=64, help="sequences per text kind")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    ck = load_checkpoint(a.checkpoint)
    tok = lm.Tokenizer()
    base, chat = lm.load("base"), lm.load("chat")
    res = {kind: spliced_loss(base, chat, r, m, lambda x: reconstruct(ck, x))
           for kind, (r, m) in eval_sets(tok, a.split, a.rows).items()}
    if a.json:
        print(json.dumps(res, indent=1))
        return
    print(format_table(res))


def format_table(res):
    lines = [f"{'text':5} {'model':5} {'loss':>7} {'spliced':>8} {'delta':>7} {'KL':>7} "
             f"{'zeroed':>7} {'recovered':>9}"]
    for kind, r in res.items():
        for m in ("base", "chat"):
            x = r[m]
            lines.append(f"{kind:5} {m:5} {x['loss']:7.3f} {x['loss_spliced']:8.3f} "
                         f"{x['delta']:+7.3f} {x['kl']:7.3f} {x['loss_zero']:7.3f} "
                         f"{x['recovered']:9.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
