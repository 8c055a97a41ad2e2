"""Payload conversion and argument checking, no daemon needed."""

import numpy as np
import pytest

from xcoder import wire


def test_f32_and_f16_pass_through():
    x = np.random.default_rng(0).standard_normal((5, 2, 7)).astype(np.float32)
    out, dt, n, d = wire.as_payload(x)
    assert (dt, n, d) == ("f32", 5, 7) and out.dtype == np.dtype("<f4")
    np.testing.assert_array_equal(wire.decode_payload(out.tobytes(), "f32", n, d), x)
    h = x.astype(np.float16)
    out, dt, *_ = wire.as_payload(h)
    assert dt == "f16"
    np.testing.assert_array_equal(wire.decode_payload(out.tobytes(), "f16", 5, 7),
                                  h.astype(np.float32))


def test_float64_and_noncontiguous_and_bigendian():
    x = np.random.default_rng(1).standard_normal((4, 2, 6))
    out, dt, *_ = wire.as_payload(x)
    assert dt == "f32" and out.flags.c_contiguous
    np.testing.assert_array_equal(out, x.astype(np.float32))
    t = np.asfortranarray(x.astype(">f4"))
    out, dt, *_ = wire.as_payload(t)
    assert out.dtype.str == "<f4" and out.flags.c_contiguous
    np.testing.assert_array_equal(out, x.astype(np.float32))
    sliced = x.astype(np.float32)[::2]
    out, _, n, _ = wire.as_payload(sliced)
    assert n == 2 and out.flags.c_contiguous


def test_bf16_round_trip_and_rounding():
    x = np.array([1.0, -2.0, 0.5, 3.14159, 1e-40, -0.0, np.inf, 65504.0],
                 dtype=np.float32).reshape(2, 2, 2)
    bits = wire.f32_to_bf16(x)
    back = wire.bf16_to_f32(bits).reshape(x.shape)
    # rounding to nearest: error at most half a bf16 ulp (8 bits of mantissa)
    fin = np.isfinite(x)
    assert np.all(np.abs(back[fin] - x[fin]) <= np.abs(x[fin]) * 2.0 ** -8 + 1e-38)
    assert np.isinf(back[~fin]).all()
    # a uint16 view is taken as bf16 bit patterns when asked
    out, dt, *_ = wire.as_payload(bits, dtype="bf16")
    assert dt == "bf16" and out.tobytes() == bits.astype("<u2").tobytes()
    out, dt, *_ = wire.as_payload(bits.view(np.int16), dtype="bf16")
    assert out.tobytes() == bits.astype("<u2").tobytes()
    # float input converted on request
    out, dt, *_ = wire.as_payload(x, dtype="bf16")
    assert dt == "bf16" and out.tobytes() == bits.tobytes()
    nan = wire.f32_to_bf16(np.array([np.nan], dtype=np.float32))
    assert np.isnan(wire.bf16_to_f32(nan)).all()


@pytest.mark.parametrize("shape", [(4, 3), (4, 3, 8), (2, 2, 2, 2), (0, 2, 4), (3, 2, 0)])
def test_bad_shapes(shape):
    with pytest.raises(ValueError, match="shape"):
        wire.as_payload(np.zeros(shape, dtype=np.float32))


def test_bad_dtypes():
    with pytest.raises(TypeError, match="bf16"):
        wire.as_payload(np.zeros((1, 2, 3), dtype=np.uint16))
    with pytest.raises(TypeError, match="float32"):
        wire.as_payload(np.zeros((1, 2, 3), dtype=np.int32))
    with pytest.raises(ValueError, match="dtype"):
        wire.as_payload(np.zeros((1, 2, 3), dtype=np.float32), dtype="f64")
    with pytest.raises(TypeError):
        wire.as_payload(np.zeros((1, 2, 3), dtype=np.uint16), dtype="f32")


def test_token_and_position_frames():
    f = wire.token_frame(np.array([1, 2, 70000]), 3)
    assert f.dtype.str == "<u4" and f.tolist() == [1, 2, 70000]
    with pytest.raises(ValueError):
        wire.token_frame([1, 2], 3)
    with pytest.raises(ValueError):
        wire.token_frame([-1, 2, 3], 3)
    with pytest.raises(TypeError):
        wire.token_frame([1.5, 2, 3], 3)
    p = wire.position_frame([[0, 0], [0, 1]], 2)
    assert p.tobytes() == bytes.fromhex("00000000" "00000000" "00000000" "01000000")
    with pytest.raises(ValueError):
        wire.position_frame([0, 1], 2)


def test_endpoints(monkeypatch):
    assert wire.endpoint_for("tcp://127.0.0.1:5555", "ingest") == "tcp://127.0.0.1:5555"
    assert wire.endpoint_for("/tmp/x", "control") == "ipc:///tmp/x/control.sock"
    monkeypatch.setenv("XCODER_RUN_DIR", "/tmp/run7")
    assert wire.endpoint_for(None, "events") == "ipc:///tmp/run7/events.sock"
    monkeypatch.delenv("XCODER_RUN_DIR")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/tmp/xdg7")
    assert wire.endpoint_for(None, "ingest") == "ipc:///tmp/xdg7/xcoderd-default/ingest.sock"
    assert wire.endpoint_for(None, "control", name="lab") == "ipc:///tmp/xdg7/xcoderd-lab/control.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert wire.endpoint_for(None, "ingest") == "ipc:///tmp/xcoderd-default/ingest.sock"


def test_default_run_dir_prefers_a_listening_systemd_instance(monkeypatch, tmp_path):
    """As libxcoder: the user run dir unless only the systemd one has a socket."""
    monkeypatch.delenv("XCODER_RUN_DIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    monkeypatch.setenv("XCODER_SYSTEM_RUN_ROOT", str(tmp_path / "run"))
    (tmp_path / "run" / "xcoderd").mkdir(parents=True)
    (tmp_path / "run" / "xcoderd" / "control.sock").write_text("")
    assert wire.run_dir_default() == str(tmp_path / "run" / "xcoderd")
    assert wire.run_dir_default("lab") == str(tmp_path / "xdg" / "xcoderd-lab")
    (tmp_path / "xdg" / "xcoderd-default").mkdir(parents=True)
    (tmp_path / "xdg" / "xcoderd-default" / "control.sock").write_text("")
    assert wire.run_dir_default() == str(tmp_path / "xdg" / "xcoderd-default")


def test_missing_ipc_socket_fails_at_once(tmp_path):
    import time
    from xcoder import Client, Producer, XcoderError
    for make, call in ((lambda: Client(str(tmp_path), timeout=20), lambda c: c.ping()),
                       (lambda: Producer(str(tmp_path), timeout=20), lambda p: p.send(np.zeros((1, 2, 4), np.float32)))):
        obj = make()
        t0 = time.monotonic()
        with pytest.raises(XcoderError) as ei:
            call(obj)
        assert ei.value.code == "XC_ENOTFOUND" and "does not exist" in str(ei.value)
        assert time.monotonic() - t0 < 5, "waited for the timeout"
        obj.close(**({"flush": False} if isinstance(obj, Producer) else {}))


def test_torch_tensors_accepted():
    import torch
    t = torch.randn(3, 2, 5, requires_grad=True)
    out, dt, n, d = wire.as_payload(t)
    assert (dt, n, d) == ("f32", 3, 5)
    np.testing.assert_array_equal(out, t.detach().numpy())
    out, dt, *_ = wire.as_payload(t.half())
    assert dt == "f16"
    b = t.detach().to(torch.bfloat16)
    out, dt, *_ = wire.as_payload(b)
    assert dt == "bf16"
    np.testing.assert_array_equal(wire.bf16_to_f32(out), b.float().numpy())
