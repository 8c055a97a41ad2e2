"""Max-activating examples of a crosscoder on your own data, offline (numpy).

The daemon keeps each latent's examples live while it trains (Client.examples);
this computes them for a frozen dictionary (a checkpoint) over a dataset, in
threshold mode, with the activation of the latent at *every* token of each
window - the view one pastes into a paper.

    ex = offline_examples("model.safetensors", np.load("acts.npy", mmap_mode="r"),
                          np.load("ids.npy"), vocab=pieces)
    for e in ex[123]:
        print(e["act"], render_example(e))

One streaming pass in chunks: memory is O(chunk x F) for the encoding plus
O(F x top_n x (2 window + 1)) for the examples, whatever the dataset's length
(acts may be a memory-mapped .npy).
"""

import numpy as np

from .checkpoint import _params, encode, load_checkpoint


def _positions(docs, n):
    """Position of every token in its document (documents are runs of equal ids)."""
    if docs is None:
        return np.arange(n, dtype=np.int64)
    d = np.asarray(docs)
    start = np.ones(n, dtype=bool)
    start[1:] = d[1:] != d[:-1]
    idx = np.arange(n, dtype=np.int64)
    first = np.maximum.accumulate(np.where(start, idx, 0))
    return idx - first


def offline_examples(ckpt, acts, token_ids, docs=None, top_n=20, window=16, vocab=None,
                     chunk=1024, latents=None, mode=None):
    """Every latent's top_n most activating tokens of acts [N, 2, d] under the
    dictionary ckpt (a path, or load_checkpoint's result), in threshold mode
    for BatchTopK (mode as in xcoder.encode).

    token_ids: [N] ids; docs: optional [N] document ids (a document is a run of
    equal ids; default: one document); vocab: optional list of str (id ->
    text). Returns {j: [example, ...]} for every latent (or those in
    `latents`) that fired, best first (ties: earlier token first). An example
    is a dict like the daemon's (PROTOCOL.md 2.3): act, index (in the data),
    doc, pos, token, tokens (the window, cut at document boundaries), at,
    pieces (with a vocab), and acts: the latent's activation at every window
    token."""
    x = acts
    n = int(x.shape[0])
    ids = np.asarray(token_ids)
    if ids.shape != (n,):
        raise ValueError(f"token_ids must have shape [{n}]; got {list(ids.shape)}")
    if docs is not None and np.asarray(docs).shape != (n,):
        raise ValueError(f"docs must have shape [{n}]")
    if top_n < 1 or window < 0 or chunk < 1:
        raise ValueError("top_n >= 1, window >= 0 and chunk >= 1")
    if not isinstance(ckpt, (tuple, dict)):
        ckpt = load_checkpoint(ckpt)  # once, not per chunk
    params = _params(ckpt)
    F = params[0].shape[2]
    W, WL = int(window), 2 * int(window) + 1
    best_act = np.full((top_n, F), -np.inf, dtype=np.float32)
    best_idx = np.full((top_n, F), -1, dtype=np.int64)
    best_win = np.zeros((top_n, F, WL), dtype=np.float32)
    cols = np.arange(F)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        lo, hi = max(0, s - W), min(n, e + W)  # the chunk and W tokens each side
        f = encode(ckpt, np.asarray(x[lo:hi], dtype=np.float32), mode=mode)
        center = f[s - lo:e - lo]                                  # (C, F)
        k = min(top_n, center.shape[0])
        rows = np.argpartition(-center, k - 1, axis=0)[:k]         # (k, F) rows of the chunk
        vals = np.take_along_axis(center, rows, axis=0)
        gidx = rows + s
        ext = rows + (s - lo)                                      # rows of f
        wi = np.clip(ext[..., None] + np.arange(-W, W + 1), 0, f.shape[0] - 1)
        wins = f[wi, cols[None, :, None]]                          # (k, F, WL)
        # merge with the best so far: by activation, then earlier token
        all_act = np.concatenate([best_act, vals])
        all_idx = np.concatenate([best_idx, gidx])
        order = np.lexsort((np.where(all_idx < 0, np.iinfo(np.int64).max, all_idx), -all_act), axis=0)[:top_n]
        from_new = order >= top_n
        best_win = np.where(from_new[..., None],
                            wins[np.clip(order - top_n, 0, k - 1), cols[None, :]],
                            best_win[np.clip(order, 0, top_n - 1), cols[None, :]])
        best_act = np.take_along_axis(all_act, order, axis=0)
        best_idx = np.take_along_axis(all_idx, order, axis=0)
    pos = _positions(docs, n)
    dd = np.asarray(docs) if docs is not None else np.zeros(n, dtype=np.int64)
    want = range(F) if latents is None else [int(j) for j in latents]
    out = {}
    for j in want:
        lst = []
        for r in range(top_n):
            i, a = int(best_idx[r, j]), float(best_act[r, j])
            if i < 0 or not a > 0:
                continue
            left = 0
            while left < W and i - left - 1 >= 0 and dd[i - left - 1] == dd[i]:
                left += 1
            right = 0
            while right < W and i + right + 1 < n and dd[i + right + 1] == dd[i]:
                right += 1
            toks = [int(t) for t in ids[i - left:i + right + 1]]
            ex = {"act": a, "index": i, "doc": int(dd[i]), "pos": int(pos[i]), "token": int(ids[i]),
                  "tokens": toks, "at": left,
                  "acts": [float(v) for v in best_win[r, j, W - left:W + right + 1]]}
            if vocab is not None:
                ex["pieces"] = [vocab[t] if 0 <= t < len(vocab) else None for t in toks]
            lst.append(ex)
        if lst:
            out[j] = lst
    return out
