"""The C shared-memory writer of libxcoder (proto/shm.c, include/xc_shm.h) driven
through ctypes, so the Python reader is tested against the real layout code.
Run as a script, it hammers an object with updates (for the torn-read test)."""

import ctypes
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
LIB = os.environ.get("XCODER_LIB", os.path.join(ROOT, "build", "libxcoder.so"))

F32_ARRAYS = [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 15, 16, 17, 18, 19, 20, 24, 25, 26, 27]  # every f32
LAST_STEP, ACTIVE, EXACT_ACTIVE, CLASS, FLAGS = 7, 14, 21, 22, 23


def lib():
    if not os.path.exists(LIB):
        raise RuntimeError(f"{LIB} is missing: run `make build/libxcoder.so`")
    L = ctypes.CDLL(LIB)
    L.xc_shm_writer_open.restype = ctypes.c_void_p
    L.xc_shm_writer_open.argtypes = [ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32,
                                     ctypes.c_uint32, ctypes.c_uint32, ctypes.c_char_p,
                                     ctypes.POINTER(ctypes.c_int), ctypes.c_char_p,
                                     ctypes.c_size_t]
    L.xc_shm_writer_header.restype = ctypes.c_void_p
    L.xc_shm_writer_header.argtypes = [ctypes.c_void_p]
    L.xc_shm_writer_array.restype = ctypes.c_void_p
    L.xc_shm_writer_array.argtypes = [ctypes.c_void_p, ctypes.c_int]
    L.xc_shm_writer_begin.argtypes = [ctypes.c_void_p]
    L.xc_shm_writer_end.argtypes = [ctypes.c_void_p]
    L.xc_shm_writer_close.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
    L.xc_shm_checksum.restype = ctypes.c_uint64
    L.xc_shm_checksum.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    return L


class Writer:
    def __init__(self, instance, n_latents, d=32, model=0, mode=0o640):
        self.L = lib()
        err = ctypes.c_int(0)
        why = ctypes.create_string_buffer(256)
        self.w = ctypes.c_void_p(self.L.xc_shm_writer_open(instance.encode(), n_latents, d, model,
                                                           mode, b"cwriter", ctypes.byref(err), why,
                                                           256))
        if not self.w.value:
            raise RuntimeError(f"xc_shm_writer_open: {err.value}: {why.value.decode()}")
        self.n = n_latents
        hp = self.L.xc_shm_writer_header(self.w)
        self.header = (ctypes.c_uint8 * 1024).from_address(hp)
        self.step = ctypes.c_int64.from_address(hp + 64)
        self.tokens = ctypes.c_uint64.from_address(hp + 72)
        self.loss = ctypes.c_double.from_address(hp + 88)
        self.class_counts = (ctypes.c_uint32 * 8).from_address(hp + 184)

    def array(self, idx):
        p = self.L.xc_shm_writer_array(self.w, idx)
        ct = {LAST_STEP: ctypes.c_int64, ACTIVE: ctypes.c_double, EXACT_ACTIVE: ctypes.c_double,
              CLASS: ctypes.c_uint8, FLAGS: ctypes.c_uint8}.get(idx, ctypes.c_float)
        return np.ctypeslib.as_array((ct * self.n).from_address(p))

    def update(self, g):
        """One update where every value derives from g (the invariant readers check)."""
        self.L.xc_shm_writer_begin(self.w)
        self.step.value = g
        self.tokens.value = 64 * g
        for a in F32_ARRAYS:
            self.array(a)[:] = g
        self.array(LAST_STEP)[:] = g
        self.array(ACTIVE)[:] = g
        self.array(EXACT_ACTIVE)[:] = g
        self.array(CLASS)[:] = g % 5
        self.array(FLAGS)[:] = g % 4
        self.L.xc_shm_writer_end(self.w)

    def close(self, unlink=True):
        if self.w.value:
            self.L.xc_shm_writer_close(ctypes.byref(self.w), 1 if unlink else 0)


if __name__ == "__main__":
    # cwriter.py INSTANCE N_LATENTS SECONDS [PAUSE]: update every PAUSE seconds
    # (default 0: flat out) for SECONDS, then close once stdin closes
    inst, n, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    pause = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    w = Writer(inst, n)
    w.update(1)
    print("ready", flush=True)
    g, t_end = 1, time.monotonic() + secs
    while time.monotonic() < t_end:
        g += 1
        w.update(g)
        if pause:
            time.sleep(pause)
    print(f"updates {g}", flush=True)
    sys.stdin.read()  # wait for the reader before unlinking
    w.close()
