"""SharedStats against the C writer of libxcoder (include/xc_shm.h, proto/SHM.md)."""

import os
import subprocess
import time
import sys

import numpy as np
import pytest

import xcoder
from xcoder import XcoderError
from xcoder.shm import ARRAYS, CLASS_NAMES, HEADER_DTYPE, checksum
import cwriter


def unique(tag):
    return f"pytest-{tag}-{os.getpid()}"


def test_header_layout_matches_c():
    assert HEADER_DTYPE.itemsize == 1024
    assert HEADER_DTYPE.fields["seq"][1] == 40
    assert HEADER_DTYPE.fields["class_counts"][1] == 184
    assert HEADER_DTYPE.fields["thresholds"][1] == 224
    assert HEADER_DTYPE.fields["arrays"][1] == 256
    assert len(ARRAYS) == 28


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 1000, 4099])
def test_checksum_matches_c(n):
    L = cwriter.lib()
    buf = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    assert checksum(buf) == L.xc_shm_checksum(buf, n)


def test_reads_what_the_c_writer_wrote():
    inst = unique("read")
    w = cwriter.Writer(inst, 300, d=48, model=1)
    try:
        w.L.xc_shm_writer_begin(w.w)
        w.step.value, w.tokens.value, w.loss.value = 42, 4200, 1.5
        w.class_counts[2] = 7
        w.array(0)[:] = np.linspace(0, 1, 300, dtype=np.float32)
        w.array(7)[:] = np.arange(300) - 1
        w.array(12)[:] = np.nan
        w.array(19)[:] = 0.25
        w.array(cwriter.CLASS)[:] = np.arange(300) % 5
        w.array(cwriter.FLAGS)[:5] = 1
        w.L.xc_shm_writer_end(w.w)
        with xcoder.SharedStats(inst) as s:
            assert (s.n_latents, s.d) == (300, 48)
            assert s.writer_alive()
            snap = s.snapshot()
            h = snap.header
            assert (h["step"], h["tokens"], h["loss"], h["model"]) == (42, 4200, 1.5, "l1")
            assert h["gen"] == 2 and h["alive"] == 1 and h["scaling_step"] == -1
            assert h["class_counts"]["chat_only"] == 7
            np.testing.assert_array_equal(snap.delta_norm, np.linspace(0, 1, 300,
                                                                       dtype=np.float32))
            assert snap["last_step"].dtype == np.int64 and snap.last_step[0] == -1
            assert np.isnan(snap.nu_err).all() and (snap.exact_nu_err == 0.25).all()
            assert snap.classes()[:5] == CLASS_NAMES
            assert snap.chat_specific().tolist() == [0, 1, 2, 3, 4]
            # zero-copy views see the next update without a new snapshot
            v = s.views["delta_norm"]
            assert not v.flags.writeable
            w.update(9)
            assert v[0] == 9 and snap.delta_norm[0] == 0  # the snapshot is a copy
            top = s.consistent(lambda a: int(a["last_step"].max()))
            assert top == 9
        w.close()
        with pytest.raises(XcoderError) as e:
            xcoder.SharedStats(inst)
        assert e.value.code == "XC_ENOTFOUND"
    finally:
        w.close()


def test_stale_object_after_clean_exit():
    inst = unique("stale")
    w = cwriter.Writer(inst, 16)
    s = xcoder.SharedStats(inst)
    assert s.writer_alive()
    w.close()  # clean exit: alive = 0 and the name is gone
    assert not s.writer_alive()
    s.close()


def test_never_torn_while_c_writer_hammers():
    """A writer process updates a 100k-latent object every millisecond (each
    update takes about as long again, so reads collide with writes); every
    snapshot this process takes is internally consistent and its checksum
    verifies."""
    inst = unique("hammer")
    n = 100_000
    # the writer runs up to 8 s; the reader stops once it has 400 snapshots over
    # more than 5 generations (a loaded machine may starve either process a while)
    proc = subprocess.Popen([sys.executable, cwriter.__file__, inst, str(n), "8.0", "0.001"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        s = xcoder.SharedStats(inst)
        snaps = retries = 0
        verified = 0
        gens = set()
        t_end = time.monotonic() + 7.5
        while proc.poll() is None and (snaps < 400 or len(gens) <= 5) and time.monotonic() < t_end:
            verify = snaps % 20 == 0  # the pure-Python checksum is slow: some of them
            snap = s.snapshot(verify=verify)
            verified += verify
            g = snap.header["step"]
            retries += snap.retries
            gens.add(g)
            for name, _ in ARRAYS:
                a = snap.arrays[name]
                if name == "class":
                    assert (a == g % 5).all(), f"torn class array at gen {g}"
                elif name == "flags":
                    assert (a == g % 4).all(), f"torn flags array at gen {g}"
                else:
                    assert (a == g).all(), f"torn {name} array at gen {g}"
            assert snap.header["tokens"] == 64 * g
            snaps += 1
            # zero-copy reads under the seqlock are consistent too
            lo, hi = s.consistent(lambda v: (float(v["freq"].min()), float(v["freq"].max())))
            assert lo == hi
        assert snaps >= 20 and verified >= 1
        assert len(gens) > 5, "the writer did not make progress during the reads"
        print(f"{snaps} snapshots ({verified} checksummed) of {len(gens)} generations, "
              f"{retries} seqlock retries")
        s.close()
    finally:
        proc.stdin.close()
        proc.wait(20)


def test_missing_and_corrupt(tmp_path):
    with pytest.raises(XcoderError) as e:
        xcoder.SharedStats(unique("absent"))
    assert e.value.code == "XC_ENOTFOUND" and "running" in e.value.message
    with pytest.raises(ValueError):
        xcoder.SharedStats("a/b")
    p = tmp_path / "obj"
    p.write_bytes(b"\0" * 100)
    with pytest.raises(XcoderError) as e:
        xcoder.SharedStats("x", path=str(p))
    assert e.value.code == "XC_ECORRUPT"
    p.write_bytes(b"\xff" * 4096)
    with pytest.raises(XcoderError, match="magic") as e:
        xcoder.SharedStats("x", path=str(p))
    # a real object copied, then cut short
    inst = unique("cut")
    w = cwriter.Writer(inst, 1000)
    try:
        blob = open(f"/dev/shm/xcoderd.{inst}", "rb").read()
    finally:
        w.close()
    p.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(XcoderError, match="total_size"):
        xcoder.SharedStats("x", path=str(p))
    # a flipped bit in the arrays is caught by the checksum
    bad = bytearray(blob)
    bad[2000] ^= 1
    p.write_bytes(bytes(bad))
    s = xcoder.SharedStats("x", path=str(p))
    with pytest.raises(XcoderError) as e:
        s.snapshot()
    assert e.value.code == "XC_ECORRUPT" and "checksum" in e.value.message
    assert s.snapshot(verify=False).header["n_latents"] == 1000
    s.close()
