"""Remote access over the control socket (PROTOCOL.md 2.1, 2.2): checkpoint
files in chunks and per-latent tables, for a client that cannot open the
daemon's state_dir or map its shared memory. These are methods of Client
(client.py binds them): Client.checkpoints(), Client.fetch_checkpoint(...),
Client.table(...)."""

import hashlib
import os

import numpy as np

from . import _generated as _gen
from .errors import XcoderError

CHUNK_MAX = 1 << 20            # the daemon's cap on one fetch reply's data
# from the C schema (_generated.py, proto/xc_schema.h)
TABLE_DTYPES = {name: np.dtype(np_dt) for name, (np_dt, _code, _size) in _gen.DTYPES.items()}
CLASS_NAMES = tuple(_gen.CLASS_NAMES)


def checkpoints(self):
    """The checkpoint files the daemon retains, oldest first: a list of dicts
    {name, size, step, kind, mtime[, checksum]} (op "checkpoints")."""
    return self.request("checkpoints").get("checkpoints", [])


def _hash_file(path, limit):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = limit
        while left > 0:
            b = f.read(min(left, CHUNK_MAX))
            if not b:
                break
            h.update(b)
            left -= len(b)
    return h


def fetch_checkpoint(self, out_path, name=None, resume=True, chunk=CHUNK_MAX, progress=None):
    """Downloads a checkpoint file over the control socket into out_path.

    name: a file name from checkpoints() or a checkpoint event's path (its
    basename is used); None = the newest. Bytes go to out_path + ".part" and
    the file is renamed to out_path only after its SHA-256 matched the
    daemon's checksum. resume=True continues an earlier, interrupted transfer
    from the size of the .part file (False starts over). One chunk (at most
    1 MiB) is in memory at a time. progress(done, size), if given, is called
    after every chunk.

    If the file is replaced under its name during the transfer (its announced
    size or checksum changes) or a resumed .part turns out not to belong to
    it, the transfer starts over once; a second mismatch raises XcoderError
    XC_ECORRUPT. A file the daemon no longer has raises XC_ENOTFOUND.

    Returns {path, name, size, checksum, step, resumed_from, fetched} where
    resumed_from is the offset this call started at and fetched the bytes it
    transferred."""
    if name is not None:
        name = os.path.basename(str(name))
    chunk = max(1, min(int(chunk), CHUNK_MAX))
    part = str(out_path) + ".part"
    fetched = 0
    for attempt in range(2):
        ann = self.request("fetch", file=name, length=0)
        name, size, checksum = ann["name"], int(ann["size"]), ann["checksum"]
        start = 0
        if resume and attempt == 0 and os.path.exists(part):
            start = os.path.getsize(part)
            if start > size:
                start = 0
        mode = "r+b" if start > 0 else "wb"
        h = _hash_file(part, start) if start > 0 else hashlib.sha256()
        resumed_from = start
        changed = False
        with open(part, mode) as f:
            f.truncate(start)
            f.seek(start)
            off = start
            while off < size:
                r = self.request("fetch", file=name, offset=off, length=chunk)
                if r.get("name") != name or int(r.get("size", -1)) != size \
                        or r.get("checksum") != checksum:
                    changed = True
                    break
                data = r.get("data", b"")
                if int(r.get("offset", -1)) != off or not data:
                    raise XcoderError("XC_EPROTO", f"fetch of {name!r} at {off}: reply with "
                                      f"offset {r.get('offset')} and {len(data)} bytes")
                f.write(data)
                h.update(data)
                off += len(data)
                fetched += len(data)
                if progress:
                    progress(off, size)
            f.flush()
            os.fsync(f.fileno())
        got = "sha256:" + h.hexdigest()
        if not changed and got == checksum:
            os.replace(part, out_path)
            return {"path": str(out_path), "name": name, "size": size, "checksum": checksum,
                    "step": ann.get("step"), "resumed_from": resumed_from, "fetched": fetched}
        if attempt == 0:
            resume = False  # the .part was not this file, or the file changed: start over
            continue
        raise XcoderError("XC_ECORRUPT", f"checkpoint {name!r}: "
                          + ("it changed during the transfer" if changed else
                             f"SHA-256 of the download is {got}, the daemon announced {checksum}"))


def class_names(codes):
    """Class codes (SHM.md's u8 `class`) as a numpy array of names ("other",
    "shared", "chat_only", "base_only", "dead"; "unknown" for any other code):
    in this client `class` is always the name, as in latent() and top()."""
    names = np.array(CLASS_NAMES + ("unknown",))
    codes = np.asarray(codes)
    return names[np.where(codes < len(CLASS_NAMES), codes, len(CLASS_NAMES))]


class Table(dict):
    """Column name -> numpy array (one row per latent), plus the reply's
    snapshot_step, dict_size, start (None for a js selection), n,
    scaling_step and scaling_tokens as attributes. The `class` column holds
    class names, as latent() and top() do; its u8 codes (SHM.md) are the
    attribute class_code."""

    def __repr__(self):
        return (f"Table(n={self.n}, snapshot_step={self.snapshot_step}, "
                f"fields={list(self)})")


def table(self, fields=None, start=0, count=None, js=None):
    """Per-latent columns from the daemon's snapshot (op "table"): a Table
    (dict) of numpy arrays with SHM.md's names and dtypes (float32 statistics,
    int64 last_step/fired/tokens_since_fired, float64 active, uint8
    flags/dead, int64 j on request; `class` as names, codes in .class_code). fields: names (default all but
    j); rows: start/count (default all latents) or js, a list of indices.
    Undefined beta/nu are NaN. Equal, for the same snapshot_step, to the
    shared-memory arrays."""
    args = {}
    if fields is not None:
        args["fields"] = fields.split(",") if isinstance(fields, str) else [str(f) for f in fields]
    if js is not None:
        args["js"] = [int(j) for j in js]
    else:
        if start:
            args["start"] = int(start)
        if count is not None:
            args["count"] = int(count)
    r = self.request("table", **args)
    out = Table()
    dtypes = r.get("dtypes", {})
    cols = r.get("columns", {})
    for f in r.get("fields", []):
        dt = TABLE_DTYPES.get(dtypes.get(f))
        if dt is None:
            raise XcoderError("XC_EPROTO", f"table column {f!r} has unknown dtype {dtypes.get(f)!r}")
        out[f] = np.frombuffer(cols[f], dtype=dt).copy()
    out.class_code = None
    if "class" in out:
        out.class_code = out["class"]
        out["class"] = class_names(out.class_code)
    out.snapshot_step = r.get("snapshot_step")
    out.dict_size = r.get("dict_size")
    out.start = r.get("start")
    out.n = r.get("n")
    out.scaling_step = r.get("scaling_step")
    out.scaling_tokens = r.get("scaling_tokens")
    return out
