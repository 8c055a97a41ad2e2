#!/usr/bin/python3
"""The report of a crosscoder trained on the language-model pair (`make demo-lm`):

  training   FVE (base, chat), L0, dead fraction, steps and tokens (daemon status)
  loss       the spliced-in loss on held-out chat and web text (models/evaluate.py)
  Δnorm      histogram of the relative decoder norm over the live latents
  latents    chat-only (Δ ≥ 0.9) and chat-specific (chat-only with the exact Latent
             Scaling pass's ν^ε < 0.2 and ν^r < 0.5) latents, each with its
             max-activating examples
  template   the share of chat-specific latents whose top examples sit on chat-template
             tokens (<bos>, <start_of_turn>, the role word, <end_of_turn>), the paper's
             headline pattern, beside the same share for all live latents and the
             template tokens' share of all tokens

Max-activating examples: the daemon's (op "examples", collected while it trained, with
the stream tag), where the daemon has them; and, always, computed here: both models
run on the held-out eval text
(web documents and chat dialogues, models/data.py), the checkpoint encodes their
residuals (threshold mode, as the daemon's analyses), and each latent's largest
activations are shown in context, the token itself in [[ ]].

    /usr/bin/python3 models/report.py --run-dir RUN --checkpoint CK.safetensors
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from models import evaluate, lm  # noqa: E402
import xcoder  # noqa: E402

FIELDS = ["delta_norm", "cosine", "freq", "class", "flags", "dead", "exact_nu_err",
          "exact_nu_rec", "exact_active"]
CLASS_NAMES = ["other", "shared", "chat-only", "base-only", "dead"]


def example_corpus(tok, split, rows):
    """Held-out eval text as (ids [n, T], mask, kind per row ("web"/"chat"),
    template mask [n, T])."""
    sets = evaluate.eval_sets(tok, split, rows)
    ids, mask, kind = [], [], []
    for k in ("chat", "web"):
        r, m = sets[k]
        ids.append(r)
        mask.append(m)
        kind += [k] * len(r)
    ids, mask = np.concatenate(ids), np.concatenate(mask)
    tmpl = np.array([tok.template_mask(row) for row in ids]) & mask
    return ids, mask, np.array(kind), tmpl


def latent_acts(base, chat, ck, ids, batch=32):
    """f [n, T, F]: the checkpoint's latent activations on both models' residuals."""
    out = []
    for i in range(0, len(ids), batch):
        x = torch.as_tensor(ids[i:i + batch])
        _, _, acts = evaluate.residual_pairs(base, chat, x)
        B, T, _, d = acts.shape
        out.append(xcoder.encode(ck, acts.reshape(B * T, 2, d)).reshape(B, T, -1))
    return np.concatenate(out)


def top_examples(f, mask, j, n):
    """[(row, pos, value)] of latent j's n largest activations (> 0) at real tokens."""
    a = np.where(mask, f[:, :, j], 0).ravel()
    idx = np.argsort(-a, kind="stable")[:n]
    T = f.shape[1]
    return [(int(i // T), int(i % T), float(a[i])) for i in idx if a[i] > 0]


def show(tok, ids, row, pos, width=8):
    lo = max(0, pos - width)
    left = tok.decode(ids[row, lo:pos].tolist()) if pos > lo else ""
    right = tok.decode(ids[row, pos + 1:pos + 1 + width // 2].tolist())
    piece = tok.piece(ids[row, pos])
    s = f"{left} [[{piece}]] {right}".replace("\n", " ")
    return s[-90:] if len(s) > 90 else s


def daemon_examples(client, tok, j, n):
    """Latent j's top examples as the daemon collected them during training (op
    "examples"): [(act, stream, text, on_template)], or None when the client or the
    daemon has no examples op."""
    if not hasattr(client, "examples"):
        return None
    try:
        r = client.examples(j, n=n)
    except xcoder.XcoderError:
        return None
    out = []
    for ex in r.get("top", [])[:n]:
        ids, at = ex.get("tokens") or [ex.get("token")], int(ex.get("at", 0))
        left = tok.decode(ids[max(0, at - 8):at])
        right = tok.decode(ids[at + 1:at + 5])
        text = f"{left} [[{tok.piece(ids[at])}]] {right}"
        out.append((float(ex["act"]), str(ex.get("stream", "")), text[-90:],
                    bool(tok.template_mask(ids)[at])))
    return out


def histogram(values, bins=10, width=40):
    h, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    top = max(1, h.max())
    return "\n".join(f"  {edges[i]:.1f}-{edges[i + 1]:.1f} {h[i]:6d} "
                     f"{'#' * int(round(width * h[i] / top))}" for i in range(bins))


def fmt(x):
    return "  nil" if x is None or not np.isfinite(x) else f"{x:5.2f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", required=True, help="the daemon's run directory")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--rows", type=int, default=96, help="held-out sequences per text kind")
    ap.add_argument("--top", type=int, default=8, help="latents listed per group")
    ap.add_argument("--examples", type=int, default=4, help="examples shown per latent")
    ap.add_argument("--template-top", type=int, default=10,
                    help="top examples per latent judged for the template share")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    c = xcoder.Client(a.run_dir, timeout=60)
    st = c.status()
    tb = c.table(fields=FIELDS)
    ck = xcoder.load_checkpoint(a.checkpoint)
    tok = lm.Tokenizer()
    base, chat = lm.load("base"), lm.load("chat")

    cfg = st.get("config", {})
    cc_kind = str(cfg.get("model", "batchtopk"))
    print(f"crosscoder: {cc_kind}" + (f" (μ = l1_coef {float(cfg.get('l1_coef', 0)):g})" if cc_kind == "l1" else
                                   f" (k {cfg.get('k')})") + f", {cfg.get('dict_size')} latents, "
          f"d {cfg.get('d')}, batch {cfg.get('batch_size')}, lr {float(cfg.get('lr', 0)):g}")
    fve = st.get("fve", [float("nan")] * 2)
    print(f"training: step {st['step']}, {st['tokens']} tokens; FVE base {fve[0]:.3f}, "
          f"chat {fve[1]:.3f}; L0 {st['l0']:.1f}; dead fraction {st['dead_fraction']:.3f}")
    F_ = len(tb["delta_norm"])
    cls = np.asarray(getattr(tb, "class_code", None) if getattr(tb, "class_code", None)
                     is not None else tb["class"]).astype(int)
    alive = cls != 4
    counts = {CLASS_NAMES[i]: int((cls == i).sum()) for i in range(5)}
    chat_spec = (tb["flags"] & 1).astype(bool)
    exact = (tb["flags"] & 2).astype(bool)
    print(f"latents: {F_}; " + ", ".join(f"{k} {v}" for k, v in counts.items())
          + f"; chat-specific {int(chat_spec.sum())} (exact pass: {tb.scaling_tokens} tokens, "
          f"dictionary of step {tb.scaling_step})")

    print("\nspliced-in loss (held-out, nats/token; recovered = share of the zero-ablation "
          "loss increase undone):")
    sets = evaluate.eval_sets(tok, "eval", min(a.rows, 48))
    res = {k: evaluate.spliced_loss(base, chat, r, m, lambda x: xcoder.reconstruct(ck, x))
           for k, (r, m) in sets.items()}
    print(evaluate.format_table(res))

    print(f"\nrelative decoder norm Δ of the {int(alive.sum())} live latents "
          f"(0 base-only … 0.5 shared … 1 chat-only):")
    print(histogram(tb["delta_norm"][alive]))

    ids, mask, kind, tmpl = example_corpus(tok, "eval", a.rows)
    f = latent_acts(base, chat, ck, ids)
    fired = (f > 0) & mask[:, :, None]
    n_fire = fired.reshape(-1, fired.shape[-1]).sum(axis=0)
    print(f"\nmax-activating examples over {int(mask.sum())} held-out tokens "
          f"({int(mask[kind == 'chat'].sum())} chat, {int(mask[kind == 'web'].sum())} web; "
          f"{tmpl.sum() / mask.sum():.1%} of them template tokens): L0 "
          + ("(ReLU, as the L1 model encodes)" if cc_kind == "l1" else "at the inference threshold")
          + f" {fired.sum() / mask.sum():.1f}, {int((n_fire > 0).sum())} latents fire")

    # the daemon collects examples from BatchTopK's selection; an L1 model selects none
    has_daemon_ex = cc_kind != "l1" and daemon_examples(c, tok, 0, 1) is not None
    print("examples: " + ("the daemon's (collected while training, op \"examples\"; stream tag "
                          "shown) and, below them, the held-out text's" if has_daemon_ex else
                          "from the held-out text (the daemon collects examples while training "
                          "BatchTopK models only)" if cc_kind == "l1" else
                          "from the held-out text (this daemon has no examples op)"))

    def on_template(j, source="local"):
        if source == "daemon":
            ex = daemon_examples(c, tok, j, a.template_top) or []
            return sum(t for *_, t in ex) / len(ex) if ex else None
        ex = top_examples(f, mask, j, a.template_top)
        if not ex:
            return None
        return sum(tmpl[r, p] for r, p, _ in ex) / len(ex)

    def listing(title, js):
        print(f"\n{title}")
        if not len(js):
            print("  (none)")
        for j in js[:a.top]:
            ex = top_examples(f, mask, j, a.examples)
            n_chat = int(fired[kind == "chat", :, j].sum())
            n_web = int(fired[kind == "web", :, j].sum())
            print(f"  latent {j}: Δ {tb['delta_norm'][j]:.2f}, cos {tb['cosine'][j]:+.2f}, "
                  f"ν^ε {fmt(tb['exact_nu_err'][j])}, ν^r {fmt(tb['exact_nu_rec'][j])}, "
                  f"freq {tb['freq'][j]:.4f}; fires on {n_chat} chat / {n_web} web tokens")
            for v, stream, text, t in ((daemon_examples(c, tok, j, a.examples) or [])
                                       if has_daemon_ex else []):
                print(f"    d {v:6.2f} {stream[:4]:4} {'T' if t else ' '} {text}")
            for r, p, v in ex:
                tag = "chat" if kind[r] == "chat" else "web "
                t = "T" if tmpl[r, p] else " "
                print(f"      {v:6.2f} {tag} {t} {show(tok, ids, r, p)}")

    chat_only = np.flatnonzero((cls == 2))
    chat_only = chat_only[np.argsort(-tb["freq"][chat_only], kind="stable")]
    cs = np.flatnonzero(chat_spec)
    cs = cs[np.argsort(np.nan_to_num(tb["exact_nu_err"][cs], nan=9), kind="stable")]
    lean = np.flatnonzero(alive)
    lean = lean[np.argsort(-tb["delta_norm"][lean], kind="stable")][:a.top]
    listing("the most chat-leaning live latents (highest Δ)", lean)
    listing(f"chat-only latents (Δ ≥ 0.9): {len(chat_only)}, most frequent first", chat_only)
    listing(f"chat-specific latents (chat-only, ν^ε < 0.2, ν^r < 0.5): {len(cs)}, "
            f"lowest ν^ε first", cs)

    def share(js, source):
        v = [on_template(j, source) for j in js]
        v = [x for x in v if x is not None]
        return (sum(x >= 0.5 for x in v), len(v))

    sources = [("local", "held-out text")] + ([("daemon", "daemon's examples")]
                                               if has_daemon_ex else [])
    print(f"\ntemplate: latents whose top {a.template_top} examples sit mostly (≥ half) on "
          f"template tokens:")
    for src, what in sources:
        top_lean = np.flatnonzero(alive)
        top_lean = top_lean[np.argsort(-tb["delta_norm"][top_lean], kind="stable")][:20]
        groups = [("chat-specific", cs), ("chat-only", chat_only), ("top-20 Δ", top_lean)]
        if src == "local":
            groups.append(("all live", np.flatnonzero(alive)))
        for name, js in groups:
            k, n = share(js, src)
            print(f"  {name:13} {k:5d} of {n:5d}" + (f"  ({k / n:.0%})" if n else "  (none with "
                                                     "examples)") + f"   [{what}]")
    print(f"  (chat-specific latents judged on the exact pass's ν: {int((chat_spec & exact).sum())})")


if __name__ == "__main__":
    main()
