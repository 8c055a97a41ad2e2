"""The client against a real build/xcoderd (temp dir, ipc:// endpoints): produce,
backpressure, refusals, control, events, checkpoints."""

import json
import os
import re
import subprocess
import time

import numpy as np
import pytest

import xcoder
from xcoder import XcoderError, XcoderNack, XcoderTimeout, wire
from conftest import B, D, F, K, XCODERD


def dm_exe():
    return XCODERD


def batch(n=B, d=D, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 2, d)).astype(np.float32)


def test_produce_every_dtype(daemon):
    n_sent = 0
    with xcoder.Producer(daemon.run_dir, producer="pytest") as p:
        for i in range(6):
            p.send(batch(seed=i), token_ids=np.arange(B), positions=np.stack(
                [np.full(B, i), np.arange(B)], axis=1))
            n_sent += B
        p.send(batch(seed=10).astype(np.float16))
        p.send(wire.f32_to_bf16(batch(seed=11)), dtype="bf16")
        p.send(batch(n=5, seed=12))               # n need not equal batch_size
        p.send(batch(seed=13).astype(np.float64))  # converted to f32
        n_sent += 3 * B + 5
        p.flush()
        assert p.stats["batches_acked"] == 10 and p.stats["tokens_acked"] == n_sent
        assert p.stats["batches_nacked"] == 0 and p.in_flight == 0
    st = daemon.wait_status(lambda s: s["step"] >= 1, what="a training step")
    assert st["tokens_acked"] == n_sent and st["batches_acked"] == 10
    assert st["tokens_acked"] == st["tokens_trained"] + st["tokens_buffered"] + \
        st["tokens_queued"] + st.get("tokens_failed", 0)
    assert st["counters"]["batches_refused"] == 0


def test_backpressure_then_resume(start_daemon):
    # a paused trainer with a 2-batch queue: the daemon stops reading, the
    # producer's window fills and send() waits; nothing is dropped
    dm = start_daemon(queue_size=2, ingest_hwm=1, mix_tokens=B)
    c = dm.client
    assert c.pause()["paused"] is True
    p = xcoder.Producer(dm.run_dir, window=4, timeout=0.5)
    sent = 0
    with pytest.raises(XcoderTimeout):
        for i in range(64):
            p.send(batch(seed=i))
            sent += 1
    assert sent < 64 and p.in_flight == 4
    st = c.status()
    assert st["tokens_acked"] < sent * B  # replies were held back
    assert c.resume()["paused"] is False
    p.timeout = 20
    p.flush()
    assert p.stats["tokens_acked"] == sent * B
    st = dm.wait_status(lambda s: s["tokens_trained"] == sent * B, what="all tokens trained")
    assert st["tokens_acked"] == sent * B
    p.close()


def test_refusals_raise_with_code_and_reason(start_daemon):
    dm = start_daemon(max_msg_bytes=1 << 16)
    p = xcoder.Producer(dm.run_dir)
    cases = []

    def refused(code, send):
        with pytest.raises(XcoderNack) as e:
            send()
            p.flush()
        assert e.value.code == code, e.value
        assert e.value.reason and isinstance(e.value, XcoderError)
        cases.append(code)
        return e.value

    e = refused("XC_ESHAPE", lambda: p.send(batch(d=D + 1)))
    assert f"d = {D + 1}" in e.reason and f"d = {D}" in e.reason
    x = batch()
    x[1, 1, 2] = np.nan
    e = refused("XC_ENONFINITE", lambda: p.send(x))
    assert e.reason == "token 1, chat, dim 2: NaN"
    refused("XC_ENONFINITE", lambda: p.send(np.full((2, 2, D), np.inf, np.float16)))
    refused("XC_EDTYPE", lambda: p.send_raw(wire.batch_header(0, 1, D, "f64"), [b"\0" * 16 * D]))
    refused("XC_EVERSION", lambda: p.send_raw(dict(wire.batch_header(0, 1, D, "f32"), v=2),
                                              [b"\0" * 8 * D]))
    e = refused("XC_ELENGTH", lambda: p.send_raw(wire.batch_header(0, 2, D, "f32"),
                                                 [b"\0" * (16 * D - 4)]))
    assert "needs" in e.reason
    refused("XC_EPROTO", lambda: p.send_raw(dict(wire.batch_header(0, 1, D, "f32"),
                                                 has_tokens=True), [b"\0" * 8 * D]))
    # 300 x 2 x 32 x 4 = 76800 bytes > max_msg_bytes (the daemon drops a peer whose
    # frame exceeds twice that, so stay below)
    e = refused("XC_ETOOBIG", lambda: p.send(batch(n=300)))
    assert "max_msg_bytes" in e.reason
    # the client-side limit refuses before sending anything
    q = xcoder.Producer(dm.run_dir, max_msg_bytes=1 << 16)
    with pytest.raises(ValueError, match="max_msg_bytes"):
        q.send(batch(n=300))
    assert q.stats["batches_sent"] == 0
    q.close()
    # the producer keeps working after refusals
    p.send(batch())
    p.flush()
    counters = dm.client.status()["counters"]
    for code in set(cases):
        assert counters[code] == cases.count(code), (code, counters)
    assert counters["batches_refused"] == len(cases)
    p.close()


def test_control_ops(daemon):
    c = daemon.client
    ping = c.ping()
    assert ping["proto"] == 1 and ping["name"] == daemon.name
    cfg = c.config()
    assert (cfg["d"], cfg["dict_size"], cfg["k"], cfg["batch_size"]) == (D, F, K, B)
    assert c.config("dict_size") == F
    with pytest.raises(XcoderError) as e:
        c.config("no_such_key")
    assert e.value.code == "XC_ENOTFOUND"
    with xcoder.Producer(daemon.run_dir) as p:
        for i in range(16):
            p.send(batch(seed=i))
    daemon.wait_status(lambda s: s["step"] >= 2, what="two steps")
    st = c.status()
    for key in ("state", "step", "tokens", "loss", "fve", "l0", "theta", "counters", "config"):
        assert key in st, key
    assert st["config"]["d"] == D
    lat = c.latent(7)
    assert lat["j"] == 7
    for key in ("norm_base", "norm_chat", "delta_norm", "cosine", "freq", "dead"):
        assert key in lat, key
    with pytest.raises(XcoderError) as e:
        c.latent(F)
    assert e.value.code == "XC_ENOTFOUND"
    top = c.top("freq", 5)
    assert len(top) == 5 and all("j" in t for t in top)
    assert [t["freq"] for t in top] == sorted((t["freq"] for t in top), reverse=True)
    asc = c.top("delta_norm", 3, order="asc", alive_only=True)
    assert [t["delta_norm"] for t in asc] == sorted(t["delta_norm"] for t in asc)
    with pytest.raises(XcoderError) as e:
        c.top("no_such_field")
    assert e.value.code == "XC_EINVAL"
    text = c.metrics()
    assert f'name="{daemon.name}"' in text and "# TYPE" in text
    with pytest.raises(XcoderError) as e:
        c.request("frobnicate")
    assert e.value.code == "XC_EUNKNOWN" and "frobnicate" in e.value.message
    assert c.pause()["paused"] is True
    assert daemon.wait_status(lambda s: s["paused"], what="paused")["state"] == "paused"
    assert c.resume()["paused"] is False
    daemon.wait_status(lambda s: not s["paused"], what="resumed")


def _nan(x):
    return np.nan if x is None else x


def test_exact_scaling_pass_matches_numpy_and_offline(start_daemon, tmp_path):
    """The exact Latent Scaling pass (op "scaling"): the daemon's beta/nu over the
    next N trained tokens, read over the control socket and from shared memory,
    equal xcoder.latent_scaling on the checkpoint of the frozen dictionary and
    the very tokens streamed; and `xcoder scaling --checkpoint --data` (offline,
    the engine's pass code) equals the daemon's pass to 1e-5 relative."""
    dm = start_daemon(mix_tokens=B, threshold_start_step=3, shm_interval=0.1,
                      scaling_min_active=2)
    c = dm.client
    with xcoder.Producer(dm.run_dir) as p:
        for i in range(10):
            p.send(batch(seed=i))
    dm.wait_status(lambda s: s["tokens_trained"] == 10 * B, what="10 steps")
    c.pause()
    ck = c.checkpoint()
    assert ck["step"] == 10
    with pytest.raises(XcoderError) as e:
        c.scaling(0)
    assert e.value.code == "XC_EINVAL"
    with xcoder.subscribe(dm.run_dir, "scaling", timeout=10) as sub:
        time.sleep(0.2)  # let the subscription reach the daemon
        r = c.scaling(10 * B)
        assert r["started"] is True and r["tokens"] == 10 * B
        with pytest.raises(XcoderError) as e:
            c.scaling(10 * B)
        assert e.value.code == "XC_ESTATE"
        assert c.status()["scaling"]["running"] is True
        c.resume()
        acts = np.concatenate([batch(seed=100 + i) for i in range(10)])
        with xcoder.Producer(dm.run_dir) as p:
            for i in range(10):
                p.send(acts[i * B:(i + 1) * B])
        topic, ev = next(sub)
    assert topic == "scaling" and ev["step"] == 10 and ev["tokens"] == 10 * B
    st = c.status()["scaling"]
    assert (st["running"], st["last_step"], st["passes"]) == (False, 10, 1)

    want = xcoder.latent_scaling(ck["path"], acts, min_active=c.config("scaling_min_active"))
    defined = np.isfinite(want["nu_err"])
    assert defined.sum() > F // 4, "too few latents with a defined nu to compare"
    keys = ["beta_err_base", "beta_err_chat", "beta_rec_base", "beta_rec_chat", "nu_err",
            "nu_rec"]
    for j in list(range(0, F, 17)):
        ex = c.latent(j)["scaling_exact"]
        assert ex["active"] == pytest.approx(want["active"][j])
        for k in keys:
            got = _nan(ex[k])
            if np.isnan(want[k][j]):
                assert np.isnan(got), (j, k, got)
            else:
                assert got == pytest.approx(want[k][j], rel=1e-4, abs=1e-6), (j, k)
    s = xcoder.SharedStats(dm.name)
    deadline = time.monotonic() + 5
    while s.snapshot(verify=False).header["scaling_step"] != 10:
        assert time.monotonic() < deadline, "shared memory never showed the exact pass"
        time.sleep(0.05)
    snap = s.snapshot()
    assert snap.header["scaling_tokens"] == 10 * B
    for k in keys:
        a, b = snap["exact_" + k], want[k]
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=k)
        np.testing.assert_allclose(a[~np.isnan(b)], b[~np.isnan(b)], rtol=1e-4, atol=1e-6,
                                   err_msg=k)
        worst = np.nanmax(np.abs(a - b) / np.maximum(np.abs(b), 1e-3))
        print(f"{k}: {int(np.isfinite(b).sum())} latents defined, worst relative error "
              f"{worst:.2e}")
    s.close()

    # offline: the CLI on the checkpoint of the frozen dictionary and the same tokens
    npy = tmp_path / "heldout.npy"
    np.save(npy, acts)
    xc = os.path.join(os.path.dirname(dm_exe()), "xcoder")
    r = subprocess.run([xc, "scaling", "--checkpoint", ck["path"], "--data", str(npy), "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    off = json.loads(r.stdout)
    assert off["tokens"] == 10 * B and off["step"] == 10 and off["dict_size"] == F
    assert off["min_active"] == c.config("scaling_min_active")
    assert off["active"] == snap["exact_active"].tolist()
    py = xcoder.latent_scaling(ck["path"], str(npy), min_active=c.config("scaling_min_active"))
    assert py["active"].tolist() == off["active"]   # the Python equivalent reads the same file
    for k in keys:
        a = snap["exact_" + k].astype(np.float64)
        b = np.array([np.nan if v is None else v for v in off[k]])
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=k)
        np.testing.assert_allclose(b[~np.isnan(a)], a[~np.isnan(a)], rtol=1e-5, atol=0, err_msg=k)


def test_subscribe_events(start_daemon):
    dm = start_daemon(mix_tokens=B)
    with xcoder.subscribe(dm.run_dir, ["stats", "checkpoint", "alert"], timeout=5) as sub:
        topic, body = next(sub)  # stats come every 0.2 s
        assert topic == body["type"] and body["v"] == 1 and body["name"] == dm.name
        with xcoder.Producer(dm.run_dir) as p:
            for i in range(4):
                p.send(batch(seed=i))
            with pytest.raises(XcoderNack):
                p.send(batch(d=3))
                p.flush()
        ck = dm.client.checkpoint()
        seen = {}
        deadline = time.monotonic() + 10
        while not {"stats", "checkpoint", "alert"} <= seen.keys() or seen["stats"]["step"] < 1:
            assert time.monotonic() < deadline, f"events seen: {sorted(seen)}"
            topic, body = next(sub)
            seen[topic] = body
        assert seen["checkpoint"]["path"] == ck["path"]
        assert seen["checkpoint"]["reason"] == "request"
        assert seen["alert"]["kind"] == "refused" and seen["alert"]["code"] == "XC_ESHAPE"
        assert isinstance(seen["stats"]["time"], float)
    # only the topics asked for
    with xcoder.subscribe(dm.run_dir, "checkpoint", timeout=0.6) as sub:
        with pytest.raises(XcoderTimeout):
            next(sub)


def _by_hand(t, x):
    """The reference threshold encode/decode, latent by latent, in float64."""
    We, be = t["encoder.weight"].astype(np.float64), t["encoder.bias"].astype(np.float64)
    Wd, bd = t["decoder.weight"].astype(np.float64), t["decoder.bias"].astype(np.float64)
    th = float(t["threshold"])
    x = x.astype(np.float64)
    pre = x[:, 0] @ We[0] + x[:, 1] @ We[1] + be
    u = np.maximum(pre, 0)
    s = np.sqrt((Wd[0] ** 2).sum(1)) + np.sqrt((Wd[1] ** 2).sum(1))
    f = np.where(u * s > th, u, 0.0)
    return np.stack([f @ Wd[0] + bd[0], f @ Wd[1] + bd[1]], axis=1), f


def test_checkpoint_load_and_reconstruct(start_daemon):
    # theta starts after step 3, so the checkpoint carries a real threshold
    dm = start_daemon(threshold_start_step=3, mix_tokens=B)
    c = dm.client
    with xcoder.Producer(dm.run_dir) as p:
        for i in range(12):
            p.send(batch(seed=i))
    dm.wait_status(lambda s: s["tokens_trained"] == 12 * B, what="all tokens trained")
    c.pause()
    time.sleep(0.5)  # > stats_interval: the latent snapshot is the final model
    ck = c.checkpoint()
    assert os.path.isabs(ck["path"]) and ck["step"] == 12
    # bytes counts what was written (the model file, and any training-state file beside it)
    assert 0 < os.path.getsize(ck["path"]) <= ck["bytes"]
    t, meta = xcoder.load_checkpoint(ck["path"])
    assert t["encoder.weight"].shape == (2, D, F) and t["encoder.weight"].dtype == np.float32
    assert t["encoder.bias"].shape == (F,)
    assert t["decoder.weight"].shape == (2, F, D)
    assert t["decoder.bias"].shape == (2, D)
    assert t["threshold"].shape == () and t["threshold"].dtype == np.float32
    assert t["k"].shape == () and int(t["k"]) == K
    assert int(t["code_normalization_id"]) == 1
    assert meta["model"] == "batchtopk" and int(meta["step"]) == 12
    assert int(meta["tokens"]) == 12 * B
    assert json.loads(meta["config"])["dict_size"] == F
    if "checksum" in meta:  # verified by load_checkpoint; a flipped bit is caught
        blob = bytearray(open(ck["path"], "rb").read())
        blob[-5] ^= 0x10
        bad = os.path.join(os.path.dirname(ck["path"]), "flipped.safetensors")
        with open(bad, "wb") as f:
            f.write(blob)
        with pytest.raises(xcoder.CheckpointError, match="checksum mismatch"):
            xcoder.load_checkpoint(bad)
        os.unlink(bad)
    theta = float(t["threshold"])
    assert theta > 0 and theta == pytest.approx(c.status()["theta"], rel=1e-6)

    x = batch(n=40, seed=99)
    want, f = _by_hand(t, x)
    assert 0 < (f > 0).sum() < f.size  # the threshold keeps some latents, not all
    got = xcoder.reconstruct((t, meta), x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(xcoder.encode((t, meta), x), f, rtol=1e-4, atol=1e-4)

    # the daemon's own per-latent numbers agree with the file
    ds = xcoder.decoder_stats(t)
    for j in (0, 5, F - 1):
        lat = c.latent(j)
        for key in ("norm_base", "norm_chat", "delta_norm", "cosine"):
            assert lat[key] == pytest.approx(float(ds[key][j]), rel=1e-4, abs=1e-6), (j, key)
    c.resume()


def test_shutdown_writes_final_checkpoint(daemon):
    with xcoder.Producer(daemon.run_dir) as p:
        for i in range(10):
            p.send(batch(seed=i))
    daemon.wait_status(lambda s: s["step"] >= 1, what="a step")
    assert daemon.client.shutdown()["shutting_down"] is True
    assert daemon.proc.wait(20) == 0
    files = [f for f in os.listdir(daemon.state_dir)
             if re.fullmatch(re.escape(daemon.name) + r"-\d{9}\.safetensors", f)]
    assert files, f"no checkpoint after shutdown in {os.listdir(daemon.state_dir)}"
    t, meta = xcoder.load_checkpoint(os.path.join(daemon.state_dir, sorted(files)[-1]))
    assert meta.get("reason") == "shutdown" and int(meta["step"]) >= 1
    # a later request fails at once (the socket file is gone) instead of hanging
    with pytest.raises(xcoder.XcoderError) as ei:
        daemon.client.request("ping", timeout=20)
    assert ei.value.code == "XC_ENOTFOUND"


def test_scaling_cancel(start_daemon):
    """A pass under way shows its progress in status and can be cancelled."""
    dm = start_daemon(mix_tokens=B)
    c = dm.client
    assert c.scaling(10 ** 8)["started"] is True
    st = c.status()["scaling"]
    assert st["running"] is True and st["tokens_target"] == 10 ** 8 and st["tokens_done"] >= 0
    r = c.scaling_cancel()
    assert r["cancelled"] is True and r["tokens_target"] == 10 ** 8
    dm.wait_status(lambda s: not s["scaling"]["running"] and s["scaling"]["cancelled"] == 1,
                   what="the pass cancelled")
    with pytest.raises(XcoderError) as e:
        c.scaling_cancel()
    assert e.value.code == "XC_ENOTFOUND"
    assert c.scaling(100)["started"] is True  # a new pass may start
