"""xcoder.offline_examples against a brute-force computation: the top examples
of every latent (threshold mode) over the whole data at once, their windows cut
at document boundaries, the latent's activation at every window token; the
same for any chunk size; rendering with a vocabulary."""

import numpy as np
import pytest

import xcoder


def _ckpt(d=6, F=10, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "encoder.weight": rng.standard_normal((2, d, F)).astype(np.float32) * 0.5,
        "encoder.bias": rng.standard_normal(F).astype(np.float32) * 0.1,
        "decoder.weight": rng.standard_normal((2, F, d)).astype(np.float32),
        "decoder.bias": np.zeros((2, d), np.float32),
        "threshold": np.float32(0.5),
        "k": np.int64(2),
    }


def _data(n=300, d=6, seed=1):
    rng = np.random.default_rng(seed)
    acts = rng.standard_normal((n, 2, d)).astype(np.float32)
    ids = rng.integers(0, 50, n)
    docs = np.repeat(np.arange((n + 36) // 37), 37)[:n]
    return acts, ids, docs


@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_matches_brute_force(chunk):
    ck = _ckpt()
    acts, ids, docs = _data()
    W, N = 3, 5
    got = xcoder.offline_examples(ck, acts, ids, docs=docs, top_n=N, window=W, chunk=chunk)
    f = xcoder.encode(ck, acts)
    n = len(ids)
    for j in range(f.shape[1]):
        col = f[:, j]
        order = sorted((i for i in range(n) if col[i] > 0), key=lambda i: (-col[i], i))[:N]
        if not order:
            assert j not in got
            continue
        ex = got[j]
        assert [e["index"] for e in ex] == order, f"latent {j}"
        for e in ex:
            i = e["index"]
            np.testing.assert_allclose(e["act"], col[i], rtol=1e-6)
            lo, hi = i - e["at"], i - e["at"] + len(e["tokens"])
            assert all(docs[t] == docs[i] for t in range(lo, hi))
            assert lo == max(i - W, int(np.flatnonzero(docs == docs[i])[0]))
            assert hi == min(i + W + 1, int(np.flatnonzero(docs == docs[i])[-1]) + 1)
            assert e["tokens"] == [int(t) for t in ids[lo:hi]]
            np.testing.assert_allclose(e["acts"], col[lo:hi], rtol=1e-6)
            assert e["pos"] == i - int(np.flatnonzero(docs == docs[i])[0])


def test_vocab_and_rendering():
    ck = _ckpt()
    acts, ids, docs = _data()
    vocab = [f"w{i} " for i in range(50)]
    got = xcoder.offline_examples(ck, acts, ids, docs=docs, top_n=2, window=1, vocab=vocab, latents=[0, 1])
    assert set(got) <= {0, 1}
    e = got[min(got)][0]
    line = xcoder.render_example(e)
    assert f"[[w{e['token']} ]]" in line and line.count("[[") == 1


def test_bad_arguments():
    ck = _ckpt()
    acts, ids, _ = _data()
    with pytest.raises(ValueError):
        xcoder.offline_examples(ck, acts, ids[:-1])
    with pytest.raises(ValueError):
        xcoder.offline_examples(ck, acts, ids, top_n=0)
