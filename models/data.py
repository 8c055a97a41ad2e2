"""The checked-in held-out text (models/data/, written by models/train.py): web
documents and chat dialogues the models never trained on, split once more into
"feed" (what the feeder streams to the crosscoder) and "eval" (every fifth item:
spliced-in loss, the exact Latent Scaling pass, max-activating examples, tests).
"""

import gzip
import json
import os

import numpy as np

from models import lm

DATA = os.path.join(lm.HERE, "data")
SPLITS = ("feed", "eval", "all")


def _read(name):
    path = os.path.join(DATA, name)
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _pick(items, split):
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    if split == "all":
        return items
    return [x for i, x in enumerate(items) if (i % 5 == 0) == (split == "eval")]


def web_docs(split="all"):
    """[(name, text)] held-out documentation pages."""
    return [(x["name"], x["text"]) for x in _pick(_read("web.jsonl.gz"), split)]


def chat_dialogues(split="all"):
    """[(name, [(role, text), …])] held-out dialogues."""
    return [(x["name"], [tuple(t) for t in x["turns"]])
            for x in _pick(_read("chat.jsonl.gz"), split)]


def chat_rows(tok, dialogues, ctx=lm.CTX):
    """([n, ctx] int64 ids padded with 3, [n, ctx] bool mask of real tokens)."""
    rows = np.full((len(dialogues), ctx), 3, dtype=np.int64)
    mask = np.zeros((len(dialogues), ctx), dtype=bool)
    for i, (_, turns) in enumerate(dialogues):
        ids = tok.encode_chat(turns)[:ctx]
        rows[i, :len(ids)] = ids
        mask[i, :len(ids)] = True
    return rows, mask


def web_rows(tok, docs, max_rows=None, ctx=lm.CTX):
    """Documents as <bos> text windows of ctx tokens (the last partial window of a
    document dropped): ([n, ctx] ids, [n, ctx] mask, all true)."""
    rows = []
    for _, text in docs:
        ids = [tok.bos] + tok.encode(text)
        for i in range(0, len(ids) - ctx + 1, ctx):
            rows.append(ids[i:i + ctx])
            if max_rows and len(rows) >= max_rows:
                break
        if max_rows and len(rows) >= max_rows:
            break
    a = np.asarray(rows, dtype=np.int64).reshape(-1, ctx)
    return a, np.ones_like(a, dtype=bool)
