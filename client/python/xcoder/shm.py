"""SharedStats: the daemon's per-latent statistics straight from POSIX shared
memory (proto/SHM.md, include/xc_shm.h, layout version 1), read-only.

    s = SharedStats("default")          # /dev/shm/xcoderd.default
    snap = s.snapshot()                 # consistent copy, checksum verified
    snap.delta_norm, snap["nu_err"], snap.header["step"]
    live = s.views["freq"]              # zero-copy numpy view (may change under you)
    top = s.consistent(lambda v: np.argsort(v["delta_norm"])[-10:])  # zero-copy, seqlock-checked

The daemon writes the object between training steps under a seqlock (`seq` odd
while writing) and stores an FNV-1a 64 checksum of the array region with every
update; snapshot() copies between two equal even reads of `seq` and verifies
the checksum, so a torn copy is never returned. Reads rely on x86's ordered
loads (Python cannot issue fences); on weakly ordered CPUs the checksum still
catches a torn copy.
"""

import mmap as _mmap
import os
import time

import numpy as np

from .remote import class_names

from . import _generated as _gen
from .errors import XcoderError

MAGIC = 0x4D485358  # "XSHM"
LAYOUT_VERSION = 2
HEADER_SIZE = 1024
MAX_ARRAYS = 32

# Per-latent arrays, in the object's order, with their dtype (proto/SHM.md);
# from the C schema (_generated.py, proto/xc_schema.h), like the class names.
ARRAYS = [tuple(a) for a in _gen.SHM_ARRAYS]
_SHM_DTYPE_CODE = {np_dt: code for np_dt, code, _size in _gen.DTYPES.values()}
CLASS_NAMES = list(_gen.CLASS_NAMES)
CLASS_OTHER, CLASS_SHARED, CLASS_CHAT_ONLY, CLASS_BASE_ONLY, CLASS_DEAD = range(5)
FLAG_CHAT_SPECIFIC = 0x01
FLAG_SCALING_EXACT = 0x02  # the chat-specific test used the exact pass's nu

_METRICS = ["loss", "recon_l2", "recon_mse", "aux", "fve_base", "fve_chat", "l0",
            "dead_fraction", "theta", "tokens_per_s"]
_fields = [("magic", "<u4", 0), ("layout_version", "<u4", 4), ("header_size", "<u4", 8),
           ("n_arrays", "<u4", 12), ("total_size", "<u8", 16), ("n_latents", "<u4", 24),
           ("d", "<u4", 28), ("model", "<u4", 32), ("writer_pid", "<u4", 36),
           ("seq", "<u8", 40), ("gen", "<u8", 48), ("checksum", "<u8", 56),
           ("step", "<i8", 64), ("tokens", "<u8", 72), ("updated_unix", "<f8", 80)]
_fields += [(m, "<f8", 88 + 8 * i) for i, m in enumerate(_METRICS)]
_fields += [("scaling_step", "<i8", 168), ("scaling_tokens", "<u8", 176),
            ("class_counts", ("<u4", 8), 184), ("alive", "<u4", 216),
            ("thresholds", ("<f4", 6), 224),
            ("arrays", (np.dtype([("offset", "<u8"), ("dtype", "<u4"), ("elem_size", "<u4")]),
                        MAX_ARRAYS), 256)]
HEADER_DTYPE = np.dtype({"names": [f[0] for f in _fields], "formats": [f[1] for f in _fields],
                         "offsets": [f[2] for f in _fields], "itemsize": HEADER_SIZE})
THRESHOLD_NAMES = ["chat_only_min", "base_only_max", "shared_lo", "shared_hi", "nu_err_max",
                   "nu_rec_max"]

_FNV_OFFSET, _FNV_PRIME, _M64 = 0xCBF29CE484222325, 0x100000001B3, (1 << 64) - 1


def checksum(buf):
    """FNV-1a 64 over 8-byte little-endian words, then the tail bytes one at a
    time (the C xc_shm_checksum)."""
    b = memoryview(buf).cast("B")
    n8 = len(b) // 8
    h = _FNV_OFFSET
    for w in np.frombuffer(b, "<u8", n8).tolist():
        h = ((h ^ w) * _FNV_PRIME) & _M64
    for c in b[n8 * 8:].tolist():
        h = ((h ^ c) * _FNV_PRIME) & _M64
    return h


def shm_path(instance):
    """The file of the object /xcoderd.<instance> (Linux: under /dev/shm)."""
    if not instance or "/" in instance or len(instance.encode()) > 200 \
            or any(ord(c) < 0x20 for c in instance):
        raise ValueError(f"instance name {instance!r} cannot name a shared-memory object "
                         f"(no '/', 1-200 bytes)")
    return f"/dev/shm/xcoderd.{instance}"


def _header_dict(h):
    out = {}
    for name in HEADER_DTYPE.names:
        v = h[name]
        if name == "arrays":
            continue
        out[name] = v.tolist() if isinstance(v, np.ndarray) else v.item()
    out["thresholds"] = dict(zip(THRESHOLD_NAMES, out["thresholds"]))
    out["class_counts"] = dict(zip(CLASS_NAMES + [_gen.COUNT_CHAT_SPECIFIC_NAME, "_6", "_7"],
                                   out["class_counts"]))
    del out["class_counts"]["_6"], out["class_counts"]["_7"]
    out["model"] = {0: "batchtopk", 1: "l1"}.get(out["model"], out["model"])
    return out


class Snapshot:
    """A consistent copy of the object: header (dict) and arrays (name ->
    numpy array of n_latents, owned; SHM.md's raw layout). Arrays are also
    attributes and items: snap.delta_norm, snap["nu_err"]; snap["class"] is the
    class names (as Client.latent/top/table give them), snap.class_code the
    u8 codes. retries: seqlock retries it needed."""

    def __init__(self, header, arrays, retries):
        self.header = header
        self.arrays = arrays
        self.retries = retries

    def __getitem__(self, name):
        if name == "class":
            return class_names(self.arrays["class"])
        if name == "class_code":
            return self.arrays["class"]
        return self.arrays[name]

    def __getattr__(self, name):
        try:
            if name == "class_code":
                return self.__dict__["arrays"]["class"]
            return self.__dict__["arrays"][name]
        except KeyError:
            raise AttributeError(name) from None

    def classes(self):
        """Class names per latent (list of str)."""
        return [CLASS_NAMES[c] if c < len(CLASS_NAMES) else "unknown"
                for c in self.arrays["class"].tolist()]

    def chat_specific(self):
        """Indices of the latents flagged chat-specific."""
        return np.flatnonzero(self.arrays["flags"] & FLAG_CHAT_SPECIFIC)


class SharedStats:
    """Read-only mapping of the daemon's shared-memory statistics.

    instance: the daemon's `name` (object /xcoderd.<instance>); path: the file
    to map instead (default /dev/shm/xcoderd.<instance>). Raises XcoderError
    XC_ENOTFOUND when there is no such object (daemon not running here, or
    another name) and XC_ECORRUPT for a foreign, incompatible or truncated one.

    views: name -> zero-copy read-only numpy view of each per-latent array
    (live: values change as the daemon writes). Use snapshot() for a
    consistent, checksum-verified copy, or consistent(fn) to run fn on the
    live views and retry until no update happened meanwhile."""

    def __init__(self, instance="default", path=None, wait=0.0):
        self.instance = instance
        self.path = path or shm_path(instance)
        self._mm = None
        deadline = time.monotonic() + wait
        while True:
            try:
                self._open()
                return
            except XcoderError as e:
                if e.code != "XC_ENOTFOUND" or time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)

    def _open(self):
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise XcoderError("XC_ENOTFOUND",
                              f"no shared-memory statistics at {self.path}: is xcoderd "
                              f"'{self.instance}' running on this machine?") from None
        except PermissionError as e:
            raise XcoderError("XC_ESYS", f"cannot open {self.path}: {e.strerror} (the object "
                                         f"is mode 0640: join the daemon's group)") from None
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_SIZE:
                raise XcoderError("XC_ECORRUPT", f"{self.path}: {size} bytes, smaller than "
                                                 f"the {HEADER_SIZE}-byte header")
            mm = _mmap.mmap(fd, size, access=_mmap.ACCESS_READ)
        finally:
            os.close(fd)
        try:
            self._validate(mm, size)
        except XcoderError:
            mm.close()
            raise
        self._mm, self.size = mm, size

    def _validate(self, mm, size):
        h = np.frombuffer(mm[:HEADER_SIZE], HEADER_DTYPE, 1)[0]  # a copy: mm stays closable
        where = self.path
        if int(h["magic"]) != MAGIC:
            raise XcoderError("XC_ECORRUPT", f"{where}: bad magic {int(h['magic']):#x} (not an "
                                             f"xcoderd object, or still being created)")
        if int(h["layout_version"]) != LAYOUT_VERSION:
            raise XcoderError("XC_ECORRUPT", f"{where}: layout version {int(h['layout_version'])}"
                                             f"; this client reads {LAYOUT_VERSION}")
        # arrays beyond the ones this client knows would be additions: ignored
        if int(h["header_size"]) != HEADER_SIZE or not len(ARRAYS) <= int(h["n_arrays"]) \
                <= MAX_ARRAYS:
            raise XcoderError("XC_ECORRUPT", f"{where}: header_size {int(h['header_size'])}, "
                                             f"n_arrays {int(h['n_arrays'])}: incompatible")
        total, n = int(h["total_size"]), int(h["n_latents"])
        if total > size:
            raise XcoderError("XC_ECORRUPT", f"{where}: total_size {total} > object size {size}")
        layout = []
        for i, (name, dt) in enumerate(ARRAYS):
            a = h["arrays"][i]
            off, code, es = int(a["offset"]), int(a["dtype"]), int(a["elem_size"])
            if code != _SHM_DTYPE_CODE[dt] or es != np.dtype(dt).itemsize:
                raise XcoderError("XC_ECORRUPT", f"{where}: array {name} has dtype code {code} "
                                                 f"and element size {es}; expected {dt}")
            if off < HEADER_SIZE or off + n * es > total:
                raise XcoderError("XC_ECORRUPT", f"{where}: array {name} at {off} "
                                                 f"(+{n * es}) lies outside the object")
            layout.append((name, dt, off))
        self.n_latents, self.d, self.total_size = n, int(h["d"]), total
        self._layout = layout
        self._hview = np.frombuffer(mm, HEADER_DTYPE, 1)
        self._seq = np.frombuffer(mm, "<u8", 1, offset=40)
        self.views = {name: np.frombuffer(mm, dt, n, offset=off) for name, dt, off in layout}

    # ----------------------------------------------------------------------

    @property
    def header(self):
        """The live header as a dict (not a consistent read; see snapshot())."""
        return _header_dict(self._hview[0])

    @property
    def seq(self):
        return int(self._seq[0])

    def writer_alive(self):
        """True while the daemon that wrote this object runs (alive flag set and
        its pid exists); False after a clean exit or a crash: reopen()."""
        h = self._hview[0]
        if int(h["alive"]) != 1:
            return False
        try:
            os.kill(int(h["writer_pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True

    def snapshot(self, verify=True, max_retries=100000):
        """A consistent copy (Snapshot). Retries while the daemon is mid-update
        (XcoderError XC_EAGAIN after max_retries); with verify, checks the
        checksum and raises XC_ECORRUPT if a stable copy does not match."""
        mm, total = self._mm, self.total_size
        for tries in range(max_retries + 1):
            s1 = int(self._seq[0])
            if s1 & 1:
                time.sleep(0)
                continue
            data = mm[:total]
            if int(self._seq[0]) != s1:
                continue
            hdr = np.frombuffer(data, HEADER_DTYPE, 1)[0]
            if verify and checksum(memoryview(data)[HEADER_SIZE:]) != int(hdr["checksum"]):
                raise XcoderError("XC_ECORRUPT", f"{self.path}: checksum mismatch on a stable "
                                                 f"copy (gen {int(hdr['gen'])}): torn or corrupt")
            arrays = {name: np.frombuffer(data, dt, self.n_latents, offset=off).copy()
                      for name, dt, off in self._layout}
            return Snapshot(_header_dict(hdr), arrays, tries)
        raise XcoderError("XC_EAGAIN", f"{self.path}: the writer kept updating through "
                                       f"{max_retries} retries")

    def consistent(self, fn, max_retries=100000):
        """Runs fn(views) on the zero-copy views and returns its result once no
        update happened during the call (seqlock retry). fn must copy what it
        keeps: the views themselves keep changing."""
        for _ in range(max_retries + 1):
            s1 = int(self._seq[0])
            if s1 & 1:
                time.sleep(0)
                continue
            r = fn(self.views)
            if int(self._seq[0]) == s1:
                return r
        raise XcoderError("XC_EAGAIN", f"{self.path}: the writer kept updating through "
                                       f"{max_retries} retries")

    def reopen(self):
        """Maps the object again by name (after the daemon restarted)."""
        self.close()
        self._open()

    def close(self):
        if self._mm is not None:
            self.views = {}
            self._hview = self._seq = None
            try:
                self._mm.close()
            except BufferError:
                pass  # views still referenced by the caller keep the mapping alive
            self._mm = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
