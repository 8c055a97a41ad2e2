"""proto/vectors.json: every vector decodes to its value, and the client's
encoder writes the exact bytes of the C codec for everything it sends."""

import json
import math
import os

import numpy as np
import pytest

from xcoder import wire, XcoderError
from xcoder.errors import CODES

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
with open(os.path.join(ROOT, "proto", "vectors.json")) as f:
    VECTORS = json.load(f)
BY_KIND = {}
for _v in VECTORS["vectors"]:
    BY_KIND.setdefault(_v["kind"], []).append(_v)


def _value(v):
    """A vector's JSON value with bins ({"$bin": "<hex>"}) as bytes."""
    if isinstance(v, dict):
        if list(v) == ["$bin"]:
            return bytes.fromhex(v["$bin"])
        return {k: _value(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_value(x) for x in v]
    return v


def test_vector_file_protocol_version():
    assert VECTORS["protocol"] == wire.PROTO_VERSION
    assert len(VECTORS["vectors"]) >= 20
    kinds = set(BY_KIND)
    assert {"ingest.header", "ingest.payload", "ingest.reply", "control.request",
            "control.reply", "event.body"} <= kinds


@pytest.mark.parametrize("vec", [v for v in VECTORS["vectors"] if "value" in v],
                         ids=lambda v: v["name"])
def test_decode_vector(vec):
    m = wire.unpack_map(bytes.fromhex(vec["hex"]))
    assert m == _value(vec["value"])
    # key order is the wire order, as the C codec wrote it
    assert list(m) == list(vec["value"])
    if "code" in m:
        assert m["code"] in CODES
        # the number, not only the name: as include/xc_error.h says
        assert CODES[m["code"]] == VECTORS["error_codes"][m["code"]]


def test_error_code_numbers():
    """Every code of include/xc_error.h has the same number here (names and
    numbers both: a renumbered or missing code fails)."""
    assert VECTORS["error_codes"] == CODES
    for name, num in VECTORS["error_codes"].items():
        assert XcoderError(name, "x").errno == num


@pytest.mark.parametrize("vec", [v for v in VECTORS["vectors"] if "value" in v],
                         ids=lambda v: v["name"])
def test_encode_vector_bytes(vec):
    assert wire.pack(_value(vec["value"])).hex() == vec["hex"]


@pytest.mark.parametrize("vec", BY_KIND["ingest.header"], ids=lambda v: v["name"])
def test_batch_header_builder(vec):
    v = vec["value"]
    h = wire.batch_header(v["seq"], v["n"], v["d"], v["dtype"], v["producer"],
                          v["has_tokens"], v["has_pos"], v.get("stream", ""))
    assert wire.pack(h).hex() == vec["hex"]


def test_encode_batch_matches_vector_f32():
    vec = {v["name"]: v for v in VECTORS["vectors"]}
    hdr = vec["batch_header_f32"]["value"]
    acts = np.arange(hdr["n"] * 2 * hdr["d"], dtype=np.float32).reshape(hdr["n"], 2, hdr["d"])
    frames, n, d, dt = wire.encode_batch(0, acts, producer="p0")
    assert bytes(frames[0]).hex() == vec["batch_header_f32"]["hex"]
    assert len(bytes(frames[1])) == 48 and (n, d, dt) == (2, 3, "f32")

    hdr = vec["batch_header_bf16_tokens_pos"]["value"]
    bf = np.zeros((1, 2, 2), dtype=np.uint16)
    frames, *_ = wire.encode_batch(7, bf, token_ids=[5], positions=[[0, 3]], dtype="bf16",
                                   producer="gemma-2-2b/l13")
    assert bytes(frames[0]).hex() == vec["batch_header_bf16_tokens_pos"]["hex"]
    assert len(frames) == 4
    assert bytes(frames[2]) == (5).to_bytes(4, "little")
    assert bytes(frames[3]) == (0).to_bytes(4, "little") + (3).to_bytes(4, "little")


@pytest.mark.parametrize("vec", BY_KIND["ingest.payload"], ids=lambda v: v["name"])
def test_payload_vector(vec):
    raw = bytes.fromhex(vec["hex"])
    got = wire.decode_payload(raw, vec["dtype"], 1, 2)
    np.testing.assert_array_equal(got.reshape(-1), np.array(vec["values"], dtype=np.float32))
    # encoding: the values as written in the note (65504 for every dtype; bf16
    # rounds it to 65536) produce the vector's bytes
    src = np.array([1.0, -2.0, 0.5, 65504.0], dtype=np.float32).reshape(1, 2, 2)
    if vec["dtype"] == "f16":
        src = src.astype(np.float16)
    out, dt, n, d = wire.as_payload(src, dtype=vec["dtype"])
    assert (dt, n, d) == (vec["dtype"], 1, 2)
    assert out.tobytes().hex() == vec["hex"]


def test_payload_bf16_from_torch():
    import torch
    vec = {v["name"]: v for v in VECTORS["vectors"]}["payload_bf16"]
    t = torch.tensor([1.0, -2.0, 0.5, 65504.0]).reshape(1, 2, 2).to(torch.bfloat16)
    out, dt, n, d = wire.as_payload(t)
    assert dt == "bf16" and out.tobytes().hex() == vec["hex"]


def test_nack_vectors_carry_reasons():
    for vec in BY_KIND["ingest.reply"]:
        m = wire.unpack_map(bytes.fromhex(vec["hex"]))
        if m["type"] == "nack":
            assert m["code"].startswith("XC_E") and m["reason"]


def test_wrong_version_rejected():
    with pytest.raises(XcoderError) as e:
        wire.unpack_map(wire.pack({"v": 2, "type": "ack"}))
    assert e.value.code == "XC_EVERSION"
    with pytest.raises(XcoderError) as e:
        wire.unpack_map(b"\xdf\x00\x00\x00")  # truncated map32
    assert e.value.code == "XC_EPROTO"
    with pytest.raises(XcoderError) as e:
        wire.unpack_map(wire.pack([1, 2]))
    assert e.value.code == "XC_EPROTO"


def test_vocab_vector_frames():
    vec = {v["name"]: v for v in VECTORS["vectors"]}["vocab_header"]
    h = vec["value"]
    frames, n = wire.encode_vocab(h["seq"], vec["pieces"], first=h["first"], stream=h["stream"],
                                  producer=h["producer"])
    assert n == h["n"] == len(vec["pieces"])
    assert bytes(frames[0]).hex() == vec["hex"]
    assert bytes(frames[1]).hex() == vec["lengths_hex"]
    assert bytes(frames[2]).hex() == vec["bytes_hex"]


def test_stream_tag_rules():
    vec = {v["name"]: v for v in VECTORS["vectors"]}["batch_header_stream"]
    acts = np.zeros((4, 2, 2), np.float32)
    frames, *_ = wire.encode_batch(3, acts, token_ids=[1, 2, 3, 4], positions=[[0, i] for i in range(4)],
                                   producer="lm-server", stream="chat")
    assert bytes(frames[0]).hex() == vec["hex"]
    for bad in ("with space", "x" * 32, "é"):
        with pytest.raises(ValueError):
            wire.check_stream(bad)


@pytest.mark.parametrize("vec", [v for v in VECTORS["vectors"] if "rendered" in v],
                         ids=lambda v: v["name"])
def test_render_examples_vector(vec):
    m = wire.unpack_map(bytes.fromhex(vec["hex"]))
    got = [wire.render_example(ex) for ex in m["top"] + m["random"]]
    assert got == vec["rendered"]
