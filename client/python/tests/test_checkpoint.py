"""load_checkpoint (safetensors with numpy alone) and the numpy crosscoder."""

import json
import struct

import numpy as np
import pytest

from xcoder import (CheckpointError, load_checkpoint, reconstruct, encode, decoder_stats,
                    latent_scaling)
from xcoder.checkpoint import save_safetensors


def _model(d=6, F=16, seed=0, threshold=0.3, k=2):
    rng = np.random.default_rng(seed)
    return {
        "encoder.weight": rng.standard_normal((2, d, F)).astype(np.float32) * 0.5,
        "encoder.bias": rng.standard_normal(F).astype(np.float32) * 0.1,
        "decoder.weight": rng.standard_normal((2, F, d)).astype(np.float32) * 0.3,
        "decoder.bias": rng.standard_normal((2, d)).astype(np.float32),
        "threshold": np.array(threshold, dtype=np.float32),
        "k": np.array(k, dtype=np.int32),
        "code_normalization_id": np.array(1, dtype=np.int64),
    }


def test_round_trip(tmp_path):
    t = _model()
    p = tmp_path / "m.safetensors"
    save_safetensors(p, t, {"format": "xcoderd-crosscoder", "step": "12"})
    got, meta = load_checkpoint(p)
    assert meta == {"format": "xcoderd-crosscoder", "step": "12"}
    assert set(got) == set(t)
    for name in t:
        assert got[name].dtype == t[name].dtype and got[name].shape == t[name].shape
        np.testing.assert_array_equal(got[name], t[name])
    assert got["threshold"].shape == () and float(got["threshold"]) == pytest.approx(0.3)
    mm, _ = load_checkpoint(p, mmap=True)
    np.testing.assert_array_equal(mm["decoder.weight"], t["decoder.weight"])
    assert not mm["decoder.weight"].flags.writeable


def test_checksum(tmp_path):
    p = tmp_path / "c.safetensors"
    save_safetensors(p, _model(), {"format": "xcoderd-crosscoder"}, checksum=True)
    t, meta = load_checkpoint(p)
    assert meta["checksum"].startswith("crc32:") and meta["checksum"] != "crc32:00000000"
    good = p.read_bytes()
    for at in (good.find(b"encoder.weight"), len(good) // 2, len(good) - 1):  # header, data
        bad = bytearray(good)
        bad[at] ^= 0x01
        p.write_bytes(bytes(bad))
        with pytest.raises(CheckpointError):
            load_checkpoint(p)
    bad = bytearray(good)
    bad[-1] ^= 0x01
    p.write_bytes(bytes(bad))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(p)
    load_checkpoint(p, verify=False)  # still a readable safetensors file
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(p, mmap=True)
    p.write_bytes(good.replace(meta["checksum"].encode(), b"crc32:XYZ01234"))
    with pytest.raises(CheckpointError, match="malformed checksum"):
        load_checkpoint(p)
    # an xcoderd file of format version 2 or later without its checksum is refused
    p.write_bytes(good.replace(b'"checksum"', b'"chebksum"'))
    load_checkpoint(p)  # (format unknown here: a plain safetensors file)
    q = tmp_path / "v2.safetensors"
    save_safetensors(q, _model(), {"format": "xcoderd-crosscoder", "format_version": "2"})
    with pytest.raises(CheckpointError, match="no checksum"):
        load_checkpoint(q)


def _write_raw(path, header, data, hlen=None):
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h) if hlen is None else hlen) + h + data)


def test_dtypes(tmp_path):
    p = tmp_path / "d.safetensors"
    bf = np.array([0x3F80, 0xC000, 0x3F00, 0x4780], dtype="<u2")  # 1, -2, .5, 65536
    i64 = np.array([-5, 7], dtype="<i8")
    u8 = np.array([1, 2, 255], dtype=np.uint8)
    f16 = np.array([1.5, -0.25], dtype="<f2")
    data = bf.tobytes() + i64.tobytes() + u8.tobytes() + f16.tobytes()
    hdr = {"__metadata__": {"a": "b"},
           "bf": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]},
           "i": {"dtype": "I64", "shape": [2], "data_offsets": [8, 24]},
           "u": {"dtype": "U8", "shape": [3], "data_offsets": [24, 27]},
           "h": {"dtype": "F16", "shape": [2], "data_offsets": [27, 31]}}
    _write_raw(p, hdr, data)
    t, meta = load_checkpoint(p)
    assert meta == {"a": "b"}
    assert t["bf"].dtype == np.float32
    np.testing.assert_array_equal(t["bf"], [[1, -2], [0.5, 65536]])
    np.testing.assert_array_equal(t["i"], [-5, 7])
    np.testing.assert_array_equal(t["u"], [1, 2, 255])
    np.testing.assert_array_equal(t["h"], f16)
    raw, _ = load_checkpoint(p, raw_bf16=True)
    assert raw["bf"].dtype == np.uint16 and raw["bf"].reshape(-1).tolist() == bf.tolist()


def test_truncated_and_garbage(tmp_path):
    p = tmp_path / "m.safetensors"
    save_safetensors(p, _model(), {"format": "xcoderd-crosscoder"})
    good = p.read_bytes()
    bad = tmp_path / "bad.safetensors"
    cases = {
        "empty": b"",
        "short": good[:5],
        "header cut": good[:20],
        "data cut": good[:-3],
        "trailing": good + b"\0\0\0\0",
        "garbage": bytes(range(256)) * 4,
        "huge header": struct.pack("<Q", 1 << 40) + b"{}",
        "not json": struct.pack("<Q", 8) + b"not json" + b"x" * 16,
        "json list": struct.pack("<Q", 8) + b"[1,2,3] ",
    }
    for what, blob in cases.items():
        bad.write_bytes(blob)
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(bad)
        assert str(bad) in str(e.value), what
    with pytest.raises(CheckpointError, match="truncated"):
        bad.write_bytes(good[:-3])
        load_checkpoint(bad)
    with pytest.raises(OSError):
        load_checkpoint(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("entry,msg", [
    ({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}, "needs 12"),
    ({"dtype": "Q8", "shape": [2], "data_offsets": [0, 8]}, "unknown dtype"),
    ({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}, "bad shape"),
    ({"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}, "bad data_offsets"),
    ({"dtype": "F32", "shape": [2]}, "malformed"),
])
def test_bad_entries(tmp_path, entry, msg):
    p = tmp_path / "e.safetensors"
    _write_raw(p, {"x": entry}, b"\0" * 8)
    with pytest.raises(CheckpointError, match=msg):
        load_checkpoint(p)


def test_overlap_and_bad_metadata(tmp_path):
    p = tmp_path / "o.safetensors"
    _write_raw(p, {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                   "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12)
    with pytest.raises(CheckpointError, match="overlaps"):
        load_checkpoint(p)
    _write_raw(p, {"__metadata__": {"step": 5}}, b"")
    with pytest.raises(CheckpointError, match="__metadata__"):
        load_checkpoint(p)


def _by_hand(t, x, use_threshold=True):
    """The reference forward pass, token by token, latent by latent, in float64."""
    We, be = t["encoder.weight"].astype(np.float64), t["encoder.bias"].astype(np.float64)
    Wd, bd = t["decoder.weight"].astype(np.float64), t["decoder.bias"].astype(np.float64)
    th = float(t["threshold"])
    N, _, d = x.shape
    F = be.shape[0]
    out = np.zeros((N, 2, d))
    for b in range(N):
        f = np.zeros(F)
        for j in range(F):
            pre = be[j] + sum(x[b, m] @ We[m, :, j] for m in range(2))
            u = max(pre, 0.0)
            s = np.sqrt((Wd[0, j] ** 2).sum()) + np.sqrt((Wd[1, j] ** 2).sum())
            f[j] = u if (not use_threshold or u * s > th) else 0.0
        for m in range(2):
            out[b, m] = bd[m] + sum(f[j] * Wd[m, j] for j in range(F))
    return out


def test_reconstruct_matches_by_hand(tmp_path):
    t = _model()
    x = np.random.default_rng(5).standard_normal((9, 2, 6)).astype(np.float32)
    p = tmp_path / "m.safetensors"
    save_safetensors(p, t, {"model": "batchtopk"})
    ck = load_checkpoint(p)
    got = reconstruct(ck, x)
    want = _by_hand(t, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # the threshold really removed something, and -1 (unset) keeps every u > 0
    assert not np.allclose(got, _by_hand(t, x, use_threshold=False), atol=1e-4)
    t2 = dict(t, threshold=np.array(-1, dtype=np.float32))
    np.testing.assert_allclose(reconstruct(t2, x), _by_hand(t2, x, use_threshold=False),
                               rtol=1e-5, atol=1e-5)
    # L1 checkpoints: f = u
    np.testing.assert_allclose(reconstruct((t, {"model": "l1"}), x),
                               _by_hand(t, x, use_threshold=False), rtol=1e-5, atol=1e-5)
    # path form
    np.testing.assert_allclose(reconstruct(p, x), got, rtol=0, atol=0)


def test_batchtopk_encode_keeps_k_per_token():
    t = _model(F=32, threshold=0.0, k=3)
    t["encoder.bias"][:] = 1.0  # every u > 0, so exactly k*N survive
    x = np.random.default_rng(2).standard_normal((7, 2, 6)).astype(np.float32)
    f = encode(t, x, mode="batchtopk")
    assert (f > 0).sum() == 3 * 7
    u = encode(t, x, mode="relu")
    s = decoder_stats(t)["norm_base"] + decoder_stats(t)["norm_chat"]
    kept = (u * s)[f > 0]
    dropped = (u * s)[f == 0]
    assert kept.min() >= dropped.max()


def test_decoder_stats():
    t = _model()
    t["decoder.weight"][0, 0] = 0  # chat-only latent 0
    st = decoder_stats(t)
    assert st["delta_norm"][0] == pytest.approx(1.0)
    nb = np.linalg.norm(t["decoder.weight"][0, 1])
    nc = np.linalg.norm(t["decoder.weight"][1, 1])
    assert st["delta_norm"][1] == pytest.approx(0.5 * ((nc - nb) / max(nb, nc) + 1), rel=1e-6)


def test_wrong_shapes_rejected():
    t = _model()
    with pytest.raises(ValueError, match="shape"):
        reconstruct(t, np.zeros((3, 2, 5), dtype=np.float32))
    bad = dict(t)
    bad["decoder.weight"] = bad["decoder.weight"][:, :8]
    with pytest.raises(CheckpointError, match="inconsistent"):
        reconstruct(bad, np.zeros((3, 2, 6), dtype=np.float32))
    del bad["encoder.bias"]
    with pytest.raises(CheckpointError, match="encoder.bias"):
        reconstruct(bad, np.zeros((3, 2, 6), dtype=np.float32))


def test_latent_scaling_by_hand():
    t = _model(F=12, threshold=0.2)
    x = np.random.default_rng(3).standard_normal((30, 2, 6)).astype(np.float32)
    got = latent_scaling(t, x, chunk=7)  # chunking must not change the sums
    f = encode(t, x).astype(np.float64)
    Wd = t["decoder.weight"].astype(np.float64)
    xh = _by_hand(t, x)
    for j in range(12):
        v = Wd[1, j]
        fj = f[:, j]
        if not (fj > 0).any():
            assert np.isnan(got["beta_err_base"][j]) and np.isnan(got["nu_rec"][j])
            continue
        den = (fj ** 2).sum() * (v @ v)
        for m, name in enumerate(["base", "chat"]):
            y_err = x[:, m] - xh[:, m] + fj[:, None] * Wd[m, j]
            y_rec = xh[:, m]
            assert got[f"beta_err_{name}"][j] == pytest.approx((fj * (y_err @ v)).sum() / den,
                                                               rel=1e-4, abs=1e-6)
            assert got[f"beta_rec_{name}"][j] == pytest.approx((fj * (y_rec @ v)).sum() / den,
                                                               rel=1e-4, abs=1e-6)
        assert got["active"][j] == (fj > 0).sum()
    np.testing.assert_allclose(got["nu_err"], got["beta_err_base"] / got["beta_err_chat"])
    assert np.isfinite(got["nu_rec"]).sum() >= 6
    few = latent_scaling(t, x, min_active=1000)
    assert np.isnan(few["nu_err"]).all()


def _normalised(t, mode="global"):
    """t with a normaliser: mean, std per model and dimension, a per model."""
    rng = np.random.default_rng(9)
    d = t["decoder.bias"].shape[1]
    n = dict(t)
    n["activation_mean"] = rng.standard_normal((2, d)).astype(np.float32) * 5
    n["activation_std"] = (rng.random((2, d)) * 3 + 0.5).astype(np.float32)
    n["activation_global_scale"] = (np.array([0.01, 4.0], np.float32) if mode == "global"
                                    else np.ones(2, np.float32))
    n["target_rms"] = np.array(100.0, np.float32)
    return n, {"config": json.dumps({"normalize": mode})}


def test_normalizer_formulas_and_original_units():
    """normalize/denormalize are the reference's float32 formulas; encode, decode and
    reconstruct take and give original units (the normalised model applied in between)."""
    from xcoder import denormalize, normalize, normalizer
    t = _model()
    assert normalizer(t) is None  # no activation_mean: no normaliser
    x = (np.random.default_rng(4).standard_normal((9, 2, 6)) * 30 + 7).astype(np.float32)
    for mode in ("global", "neuron"):
        n, meta = _normalised(t, mode)
        z = normalizer((n, meta))
        assert z["mode"] == mode
        mu, sd, a = n["activation_mean"], n["activation_std"], n["activation_global_scale"]
        want = (x - mu) * a[None, :, None] if mode == "global" else (x - mu) / (sd + np.float32(1e-8))
        assert np.array_equal(normalize((n, meta), x), want)
        back = denormalize((n, meta), want)
        np.testing.assert_allclose(back, x, rtol=1e-5, atol=1e-4)
        got = reconstruct((n, meta), x)
        np.testing.assert_allclose(got, denormalize((n, meta), _by_hand(t, want)), rtol=1e-4, atol=1e-4)
    nan = dict(_normalised(t)[0])
    nan["activation_mean"] = np.full((2, 6), np.nan, np.float32)
    assert normalizer(nan) is None  # NaN buffers: the reference's "no normaliser"
    assert np.array_equal(reconstruct(nan, x), reconstruct(t, x))


def test_latent_scaling_units():
    """A global normaliser: betas x a_chat / a_m and nu x a_chat / a_base of the
    normalised model's (the identity README states); neuron mode stays normalised."""
    from xcoder import normalize
    t = _model(F=12, threshold=0.2)
    x = (np.random.default_rng(3).standard_normal((40, 2, 6)) * 10).astype(np.float32)
    n, meta = _normalised(t)
    a = n["activation_global_scale"].astype(np.float64)
    got = latent_scaling((n, meta), x)
    assert got["units"] == "original"
    base = latent_scaling(t, normalize((n, meta), x))  # the same model on normalised data, no conversion
    assert base["units"] == "original"
    ok = np.isfinite(base["nu_err"])
    assert ok.sum() >= 4
    np.testing.assert_allclose(got["nu_err"][ok], base["nu_err"][ok] * a[1] / a[0], rtol=1e-5)
    np.testing.assert_allclose(got["beta_err_base"][ok], base["beta_err_base"][ok] * a[1] / a[0], rtol=1e-5)
    np.testing.assert_allclose(got["beta_rec_chat"][ok], base["beta_rec_chat"][ok], rtol=1e-5)
    n2, meta2 = _normalised(t, "neuron")
    assert latent_scaling((n2, meta2), x)["units"] == "normalised"
