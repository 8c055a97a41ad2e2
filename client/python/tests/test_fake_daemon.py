"""Producer, Client and subscribe against a scripted stand-in daemon (a ROUTER
and a PUB socket in a thread speaking PROTOCOL.md), to pin down the client's
window, nack, timeout and stale-reply handling independently of the real one."""

import threading
import time

import numpy as np
import pytest
import zmq

import xcoder
from xcoder import wire, XcoderError, XcoderNack, XcoderTimeout
from fakes import FakeIngest, FakeControl


@pytest.fixture
def fake(tmp_path):
    f = FakeIngest(f"ipc://{tmp_path}/ingest.sock")
    yield f, str(tmp_path)
    f.close()


def acts(n=3, d=4, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 2, d)).astype(np.float32)


def test_send_and_flush(fake):
    f, run = fake
    with xcoder.Producer(run, producer="t") as p:
        for i in range(20):
            assert p.send(acts(seed=i), token_ids=np.arange(3)) == i
        p.flush()
        assert p.in_flight == 0
        assert p.stats["batches_acked"] == 20 and p.stats["tokens_acked"] == 60
        assert p.stats["credit"] == 3
    h, frames = f.received[0]
    assert h["producer"] == "t" and h["has_tokens"] and not h["has_pos"]
    np.testing.assert_array_equal(wire.decode_payload(frames[0], "f32", 3, 4), acts(seed=0))
    assert np.frombuffer(frames[1], "<u4").tolist() == [0, 1, 2]


def test_window_blocks_then_times_out(fake):
    f, run = fake
    f.hold.set()
    p = xcoder.Producer(run, window=3, timeout=0.3)
    for _ in range(3):
        p.send(acts())
    assert p.in_flight == 3
    t0 = time.monotonic()
    with pytest.raises(XcoderTimeout) as e:
        p.send(acts())
    assert e.value.code == "XC_ETIMEDOUT"
    assert 0.25 < time.monotonic() - t0 < 2
    assert p.in_flight == 3  # the fourth was not sent
    # the daemon drains: the window opens again, nothing was lost
    f.hold.clear()
    p.send(acts())
    p.flush()
    assert p.stats["batches_acked"] == 4
    assert [h["seq"] for h, _ in f.received] == [0, 1, 2, 3]
    p.close()


def test_backpressure_waits_not_fails(fake):
    f, run = fake
    f.hold.set()
    threading.Timer(0.3, f.hold.clear).start()
    p = xcoder.Producer(run, window=2, timeout=5)
    t0 = time.monotonic()
    for _ in range(5):
        p.send(acts())
    assert time.monotonic() - t0 >= 0.25  # it waited for the daemon
    p.flush()
    p.close()


def test_nack_raises_with_code_and_reason(fake):
    f, run = fake
    f.nack_seqs[1] = ("XC_ENONFINITE", "token 1, chat, dim 2: NaN")
    p = xcoder.Producer(run, window=8)
    p.send(acts())
    p.send(acts())
    with pytest.raises(XcoderNack) as e:
        p.flush()
    assert (e.value.code, e.value.seq, e.value.reason) == \
        ("XC_ENONFINITE", 1, "token 1, chat, dim 2: NaN")
    assert isinstance(e.value, XcoderError) and e.value.errno == -4
    assert "token 1, chat, dim 2: NaN" in str(e.value)
    # the refusal is reported once; the producer goes on
    p.send(acts())
    p.flush()
    # a nack of an earlier batch surfaces on the next send, and that batch is not sent
    p.send(np.zeros((2, 2, 5), np.float32))  # wrong d
    time.sleep(0.2)
    n = len(f.received)
    with pytest.raises(XcoderNack) as e:
        p.send(acts())
    assert e.value.code == "XC_ESHAPE" and "d = 5" in e.value.reason
    assert len(f.received) == n
    p.close()


def test_send_raw(fake):
    f, run = fake
    f.nack_seqs[0] = ("XC_EDTYPE", 'dtype "f64" is not supported; send f32, f16 or bf16')
    p = xcoder.Producer(run)
    p.send_raw(wire.batch_header(0, 1, 4, "f64"), [b"\0" * 64])
    with pytest.raises(XcoderNack) as e:
        p.flush()
    assert e.value.code == "XC_EDTYPE"
    p.close()


def test_bad_arguments_send_nothing(fake):
    f, run = fake
    p = xcoder.Producer(run)
    with pytest.raises(ValueError):
        p.send(np.zeros((3, 4), np.float32))
    with pytest.raises(TypeError):
        p.send(np.zeros((3, 2, 4), np.int32))
    with pytest.raises(ValueError):
        p.send(acts(), token_ids=[1, 2])
    with pytest.raises(ValueError):
        xcoder.Producer(run, producer="x" * 65)
    p.flush()
    assert f.received == [] and p.in_flight == 0
    p.close()


def test_timeout_without_daemon(tmp_path):
    """Socket files nobody answers on: the timeout applies (a missing file fails
    at once, see test_wire.py)."""
    for s in ("ingest", "control"):
        (tmp_path / f"{s}.sock").write_text("")
    p = xcoder.Producer(str(tmp_path), timeout=0.2)
    p.send(acts())
    with pytest.raises(XcoderTimeout):
        p.flush()
    p.close(flush=False)
    c = xcoder.Client(str(tmp_path), timeout=0.2)
    with pytest.raises(XcoderTimeout):
        c.status()
    c.close()


def test_client_against_fake(tmp_path):
    srv = FakeControl(f"ipc://{tmp_path}/control.sock")
    try:
        c = xcoder.Client(str(tmp_path), timeout=2)
        assert c.status()["step"] == 1
        assert c.latent(3) == {"delta_norm": 0.5, "dead": False, "j": 3}
        with pytest.raises(XcoderError) as e:
            c.latent(99)
        assert e.value.code == "XC_ENOTFOUND" and "99" in e.value.message
        assert c.top("freq", 1) == [{"j": 3, "freq": 1.0}]
        assert srv.requests[-1] == {"v": 1, "op": "top", "id": 4, "by": "freq", "n": 1,
                                    "order": "desc", "alive_only": False}
        assert c.config() == {"d": 4, "k": 2} and c.config("d") == 4
        assert srv.requests[-1]["key"] == "d"
        with pytest.raises(XcoderError) as e:
            c.scaling(1000)
        assert e.value.code == "XC_EUNKNOWN"
        assert srv.requests[-1]["tokens"] == 1000
        # a timed-out request's late reply is dropped, not taken for the next one
        with pytest.raises(XcoderTimeout):
            c.request("slow", timeout=0.05)
        assert c.pause()["op"] == "pause"
        c.close()
    finally:
        srv.close()


def test_subscribe_against_fake(tmp_path):
    ep = f"ipc://{tmp_path}/events.sock"
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(ep)
    try:
        with xcoder.subscribe(str(tmp_path), ["stats", "checkpoint"], timeout=2) as sub:
            body = {"v": 1, "type": "stats", "name": "t", "time": 1.0, "step": 3}
            got, bad = None, []
            for _ in range(100):  # until the subscription has propagated
                pub.send_multipart([b"alert", wire.pack(dict(body, type="alert"))])
                pub.send_multipart([b"stats", b"\xc1garbage"])
                pub.send_multipart([b"stats", wire.pack(body)])
                try:
                    while True:  # garbage surfaces as "malformed", never dropped silently
                        t, b = sub.next(timeout=0.05)
                        if t != "malformed":
                            got = (t, b)
                            break
                        bad.append(b)
                    break
                except XcoderTimeout:
                    pass
            assert got == ("stats", body)
            assert bad and bad[0]["type"] == "malformed" and bad[0]["raw"][1] == b"\xc1garbage"
            assert sub.malformed >= 1
            with pytest.raises(XcoderTimeout):
                while True:
                    t, b = sub.next(timeout=0.1)
                    assert t in ("stats", "malformed")
            # strings that are not UTF-8 (a producer id echoed in an alert): surfaced with U+FFFD
            raw = b"\x85\xa1v\x01\xa4type\xa5alert\xa4name\xa1t\xa4time\xcb" + bytes(8) + \
                b"\xa8producer\xa2\xff\xfe"
            pub.send_multipart([b"stats", raw])
            t, b = sub.next(timeout=2)
            assert t == "stats" and b["producer"] == "\ufffd\ufffd" and b["type"] == "alert"
    finally:
        pub.close(0)
