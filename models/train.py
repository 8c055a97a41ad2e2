#!/usr/bin/python3
"""Trains the project's language-model pair from Debian's python3-doc and writes
everything checked in under models/:

    weights/tokenizer.model   SentencePiece unigram tokenizer, 2048 pieces
    weights/base.safetensors  the base model (float16), trained on web text
    weights/chat.safetensors  its chat fine-tune (float16), trained on dialogues
    data/web.jsonl.gz         held-out web documents   ({"name", "text"} per line)
    data/chat.jsonl.gz        held-out chat dialogues  ({"name", "turns"} per line)

Needs: apt-get install python3-doc python3-sentencepiece python3-torch (Debian 12).
Corpus and licence: models/corpus.py (the Python 3.11 documentation, PSF License v2).
Seeds are fixed; on the same torch build and thread count the run reproduces the
checked-in files (another build may round differently; the figures below stay close).
Takes ~10-15 minutes on 2 cores (`nice /usr/bin/python3 models/train.py`).

Options: --base-steps N, --chat-steps N, --threads N, --out DIR (default models/).
"""

import argparse
import gzip
import io
import json
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from models import corpus, lm  # noqa: E402

SEED = 1234
BATCH = 32


def log(msg):
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def train_tokenizer(web, chat, path):
    """SentencePiece unigram model over the training split (paragraph per line),
    with the chat template's two special tokens and byte fallback."""
    import sentencepiece as spm
    lines = []
    for _, text in web:
        lines += [ln for ln in text.split("\n") if ln.strip()]
    for _, turns in chat:
        lines += [t for _, t in turns]
    lines += list(lm.ROLES)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=lm.VOCAB,
        model_type="unigram", character_coverage=1.0, byte_fallback=True,
        user_defined_symbols=[lm.SOT, lm.EOT], unk_id=0, bos_id=1, eos_id=2, pad_id=3,
        input_sentence_size=0, shuffle_input_sentence=False, num_threads=1,
        max_sentence_length=8192, minloglevel=2)
    with open(path, "wb") as f:
        f.write(model.getvalue())


def web_stream(tok, docs):
    """One long int32 array: <bos> doc <eos> <bos> doc <eos> …"""
    out = []
    for _, text in docs:
        out += [tok.bos] + tok.encode(text) + [tok.eos]
    return np.asarray(out, dtype=np.int64)


def chat_rows(tok, dialogues):
    """[n, CTX] ids (padded with 3) and [n, CTX] bool mask of real tokens."""
    rows = np.full((len(dialogues), lm.CTX), 3, dtype=np.int64)
    mask = np.zeros((len(dialogues), lm.CTX), dtype=bool)
    for i, (_, turns) in enumerate(dialogues):
        ids = tok.encode_chat(turns)[:lm.CTX]
        rows[i, :len(ids)] = ids
        mask[i, :len(ids)] = True
    return rows, mask


def lr_at(step, steps, peak, warm):
    if step < warm:
        return peak * (step + 1) / warm
    return peak * 0.1 + peak * 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))


def run_steps(model, steps, peak, warm, batch_fn, gen, what):
    opt = torch.optim.AdamW(model.parameters(), lr=peak, betas=(0.9, 0.95), weight_decay=0.1)
    model.train()
    t0 = time.time()
    ema = None
    for step in range(steps):
        ids, mask = batch_fn(gen)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, peak, warm)
        logits = model(ids)
        loss_tok = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                   ids[:, 1:].reshape(-1), reduction="none")
        m = mask[:, 1:].reshape(-1).float()
        loss = (loss_tok * m).sum() / m.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % 25 == 0 or step == steps - 1:
            log(f"{what} step {step}/{steps} loss {ema:.3f} ({time.time() - t0:.0f} s)")
    model.eval()
    return ema


def mean_loss(model, rows, mask):
    tot, n = 0.0, 0
    for i in range(0, len(rows), 64):
        ids = torch.from_numpy(rows[i:i + 64])
        m = torch.from_numpy(mask[i:i + 64])[:, 1:]
        lt = lm.token_losses(model, ids)
        tot += float((lt * m).sum())
        n += int(m.sum())
    return tot / max(1, n)


def write_jsonl_gz(path, items):
    raw = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in items).encode()
    with open(path, "wb") as f:
        with gzip.GzipFile(fileobj=f, mode="wb", mtime=0, compresslevel=9) as g:
            g.write(raw)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base-steps", type=int, default=250)
    ap.add_argument("--chat-steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=HERE)
    ap.add_argument("--heldout-web-chars", type=int, default=1_500_000,
                    help="characters of held-out web text written to data/ (for the feeder)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    corpus.check_installed()
    wdir = os.path.join(a.out, "weights")
    ddir = os.path.join(a.out, "data")
    os.makedirs(wdir, exist_ok=True)
    os.makedirs(ddir, exist_ok=True)

    log("reading the corpus (python3-doc)")
    web_tr, web_ho = corpus.split(corpus.web_documents())
    chat_tr, chat_ho = corpus.split(corpus.chat_dialogues())
    log(f"web {len(web_tr)} train / {len(web_ho)} held-out pages; "
        f"chat {len(chat_tr)} train / {len(chat_ho)} held-out dialogues")

    tok_path = os.path.join(wdir, "tokenizer.model")
    log("training the tokenizer")
    train_tokenizer(web_tr, chat_tr, tok_path)
    tok = lm.Tokenizer(tok_path)

    stream = torch.from_numpy(web_stream(tok, web_tr))
    log(f"web training stream: {len(stream)} tokens")
    rows, mask = chat_rows(tok, chat_tr)
    rows_t, mask_t = torch.from_numpy(rows), torch.from_numpy(mask)
    log(f"chat training set: {len(rows)} dialogues, {int(mask.sum())} tokens")

    def web_batch(gen):
        starts = torch.randint(0, len(stream) - lm.CTX, (BATCH,), generator=gen)
        ids = torch.stack([stream[s:s + lm.CTX] for s in starts.tolist()])
        return ids, torch.ones_like(ids, dtype=torch.bool)

    def chat_batch(gen):
        idx = torch.randint(0, len(rows_t), (BATCH,), generator=gen)
        return rows_t[idx], mask_t[idx]

    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    base = lm.LM()
    base.init_weights()
    meta = {"corpus": "Debian python3-doc 3.11 (Python documentation, PSF License v2)",
            "script": "models/train.py", "seed": str(SEED), "vocab": str(lm.VOCAB),
            "ctx": str(lm.CTX), "d_model": str(lm.D_MODEL), "n_layer": str(lm.N_LAYER)}
    log(f"base model: {sum(p.numel() for p in base.parameters())} parameters")
    run_steps(base, a.base_steps, 3e-3, 25, web_batch, gen, "base")
    base_path = os.path.join(wdir, "base.safetensors")
    lm.save(base, base_path, dict(meta, model="base", steps=str(a.base_steps)))

    # the chat model is a fine-tune of the checked-in (float16-rounded) base model
    chat = lm.load(base_path)
    gen = torch.Generator().manual_seed(SEED + 1)
    run_steps(chat, a.chat_steps, 1e-3, 10, chat_batch, gen, "chat")
    lm.save(chat, os.path.join(wdir, "chat.safetensors"),
            dict(meta, model="chat", base="base.safetensors", steps=str(a.chat_steps)))

    # held-out data for tests, the feeder and the demo
    keep, n = [], 0
    for name, text in web_ho:
        if n >= a.heldout_web_chars:
            break
        keep.append({"name": name, "text": text})
        n += len(text)
    write_jsonl_gz(os.path.join(ddir, "web.jsonl.gz"), keep)
    write_jsonl_gz(os.path.join(ddir, "chat.jsonl.gz"),
                   [{"name": nm, "turns": [list(t) for t in turns]} for nm, turns in chat_ho])

    base, chat = lm.load(base_path), lm.load(os.path.join(wdir, "chat.safetensors"))
    wrows = web_stream(tok, web_ho[:40])
    wrows = wrows[:len(wrows) // lm.CTX * lm.CTX].reshape(-1, lm.CTX)[:256]
    wmask = np.ones_like(wrows, dtype=bool)
    crows, cmask = chat_rows(tok, chat_ho)
    for nm, m in (("base", base), ("chat", chat)):
        log(f"held-out loss of {nm}: web {mean_loss(m, wrows, wmask):.3f}, "
            f"chat {mean_loss(m, crows, cmask):.3f} nats/token")
    log("done")


if __name__ == "__main__":
    main()
