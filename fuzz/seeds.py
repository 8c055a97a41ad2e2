#!/usr/bin/python3
"""Writes the libFuzzer seed corpora into DIR/<harness>/: the shared wire
vectors (proto/vectors.json) in each harness's input layout, plus the inputs
of past defects kept as regressions (a 53-byte map whose keys are maps nested
26 deep, which once rendered 134 MB of JSON; a bf16 batch holding the finite
0x7f7f; a producer id that is not UTF-8; a truncated safetensors header; a
.npy with a lying shape). Usage: fuzz/seeds.py DIR"""
import json
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def frames(*fs):
    """The harnesses' multipart layout (fuzz/fuzz_common.h)."""
    out = bytes([len(fs) - 1])
    for f in fs[:-1]:
        out += struct.pack("<H", len(f))
    return out + b"".join(fs)


def mp_map(d):
    """A tiny MessagePack encoder for str/int/bytes maps (seeds only)."""
    out = bytes([0x80 | len(d)])
    for k, v in d.items():
        kb = k.encode()
        out += bytes([0xa0 | len(kb)]) + kb
        if isinstance(v, int):
            out += bytes([0xce]) + struct.pack(">I", v)
        else:
            vb = v if isinstance(v, bytes) else v.encode()
            out += bytes([0xd9, len(vb)]) + vb
    return out


def main(out):
    vec = json.load(open(os.path.join(ROOT, "proto", "vectors.json")))["vectors"]
    by = {v["name"]: bytes.fromhex(v["hex"]) for v in vec}
    seeds = {"fuzz_batch": [], "fuzz_request": [], "fuzz_json": [], "fuzz_safetensors": [], "fuzz_npy": []}
    for v in vec:
        b = bytes.fromhex(v["hex"])
        seeds["fuzz_json"].append(b)
        if v["kind"] == "control.request":
            seeds["fuzz_request"].append(b)
    for h in ("batch_header_f32", "batch_header_bf16_tokens_pos", "batch_header_stream"):
        if h in by:
            seeds["fuzz_batch"].append(frames(by[h], by.get("payload_f32", b"")))
    if "vocab_header" in by:
        seeds["fuzz_batch"].append(frames(by["vocab_header"], b"\x00" * 8, b"ab"))
    # regressions
    seeds["fuzz_json"].append(b"\x81" * 26 + b"\xc0" + b"\x00" * 26)
    seeds["fuzz_json"].append(b"\xa0")  # an empty string: once a NULL-pointer offset in the renderer
    hdr = dict(v=1, type="batch", producer="p", seq=1, n=1, d=16, dtype="bf16", layout="n2d")
    seeds["fuzz_batch"].append(frames(mp_map(hdr), struct.pack("<H", 0x7f7f) * 32))
    bad = dict(hdr, producer=b"\xff\xfe\n")
    seeds["fuzz_batch"].append(frames(mp_map(bad), b"\x00" * 64))
    st = b'{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"__metadata__":{"a":"b"}}'
    st += b" " * (-len(st) % 8)
    seeds["fuzz_safetensors"] += [struct.pack("<Q", len(st)) + st + b"\x00" * 16,
                                  struct.pack("<Q", 1 << 40) + st[:10]]
    npy = b"{'descr': '<f4', 'fortran_order': False, 'shape': (4, 2, 8), }"
    npy += b" " * (-(len(npy) + 11) % 64) + b"\n"
    seeds["fuzz_npy"] += [b"\x93NUMPY\x01\x00" + struct.pack("<H", len(npy)) + npy,
                          b"\x93NUMPY\x01\x00" + struct.pack("<H", 60000) + npy]
    for name, items in seeds.items():
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        for i, b in enumerate(items):
            with open(os.path.join(d, "seed-%03d" % i), "wb") as f:
                f.write(b)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
