"""Checkpoints: safetensors files read with numpy alone, and the crosscoder's
forward pass (encode / reconstruct) in numpy.

safetensors layout: 8-byte little-endian header length H, H bytes of JSON
({name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
{str: str}}), then the tensor bytes (little-endian, row-major); offsets are
relative to the end of the header and together cover the data exactly.

xcoderd writes the tensors of the reference BatchTopKCrossCoder state dict
(science-of-finetuning/dictionary_learning): encoder.weight [2, d, F],
encoder.bias [F], decoder.weight [2, F, d], decoder.bias [2, d], threshold
(f32 scalar), k (i32 scalar), code_normalization_id (scalar); index 0 of the
leading axis is the base model, 1 the chat model.
"""

import json
import mmap as _mmap
import os
import re
import zlib

import numpy as np

from .errors import CheckpointError
from .wire import bf16_to_f32

# safetensors dtype -> numpy dtype (little-endian). BF16 is read as its uint16
# bit pattern and converted to float32 unless raw_bf16.
ST_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}
HEADER_MAX = 100 * 1024 * 1024  # the safetensors library's own limit


def _parse(buf, size, where):
    if size < 8:
        raise CheckpointError(f"{where}: {size} bytes, too short for a safetensors file "
                              f"(needs an 8-byte header length)")
    hlen = int.from_bytes(bytes(buf[:8]), "little")
    if hlen < 2 or hlen > HEADER_MAX:
        raise CheckpointError(f"{where}: header length {hlen} is implausible; "
                              f"not a safetensors file")
    if 8 + hlen > size:
        raise CheckpointError(f"{where}: truncated: header says {hlen} header bytes "
                              f"but the file has {size - 8} after the length")
    try:
        header = json.loads(bytes(buf[8:8 + hlen]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{where}: header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{where}: header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                             for k, v in meta.items()):
        raise CheckpointError(f"{where}: __metadata__ must map strings to strings")
    data_len = size - 8 - hlen
    spans = []
    entries = {}
    for name, t in header.items():
        if not isinstance(t, dict) or not {"dtype", "shape", "data_offsets"} <= t.keys():
            raise CheckpointError(f"{where}: tensor {name!r}: malformed entry "
                                  f"(needs dtype, shape, data_offsets)")
        dt, shape, offs = t["dtype"], t["shape"], t["data_offsets"]
        if dt not in ST_DTYPES:
            raise CheckpointError(f"{where}: tensor {name!r}: unknown dtype {dt!r}")
        if (not isinstance(shape, list)
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                           for s in shape)):
            raise CheckpointError(f"{where}: tensor {name!r}: bad shape {shape!r}")
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
                or not 0 <= offs[0] <= offs[1]):
            raise CheckpointError(f"{where}: tensor {name!r}: bad data_offsets {offs!r}")
        need = int(np.prod(shape, dtype=np.int64)) * np.dtype(ST_DTYPES[dt]).itemsize
        if offs[1] - offs[0] != need:
            raise CheckpointError(f"{where}: tensor {name!r}: {offs[1] - offs[0]} bytes but "
                                  f"{dt} x {shape} needs {need}")
        if offs[1] > data_len:
            raise CheckpointError(f"{where}: truncated: tensor {name!r} ends at byte "
                                  f"{offs[1]} of the data but the file holds {data_len}")
        spans.append((offs[0], offs[1], name))
        entries[name] = (dt, shape, offs[0])
    pos = 0
    for b, e, name in sorted(spans):
        if b != pos:
            what = "overlaps another tensor" if b < pos else f"leaves a gap at byte {pos}"
            raise CheckpointError(f"{where}: tensor {name!r} {what}")
        pos = e
    if pos != data_len:
        raise CheckpointError(f"{where}: {data_len - pos} bytes after the last tensor; "
                              f"corrupt or not a safetensors file")
    return entries, meta, 8 + hlen


_CRC_PAT = b'"checksum":"crc32:'


def _verify_crc(buf, size, meta, where):
    """xcoderd's whole-file checksum: metadata "checksum" = "crc32:" + 8 hex
    digits, the zlib CRC-32 of the file with those 8 digits read as "00000000"."""
    v = meta.get("checksum")
    if v is None:
        fv = meta.get("format_version", "")
        if meta.get("format", "").startswith("xcoderd") and fv.isdigit() and int(fv) >= 2:
            raise CheckpointError(f"{where}: an xcoderd file (format version {fv}) with no "
                                  f"checksum in its metadata: corrupt")
        return
    if not v.startswith("crc32:"):
        return
    hlen = int.from_bytes(bytes(buf[:8]), "little")
    at = bytes(buf[8:8 + hlen]).find(_CRC_PAT)
    if not re.fullmatch(r"crc32:[0-9a-f]{8}", v) or at < 0:
        raise CheckpointError(f"{where}: malformed checksum entry {v[:40]!r}")
    pos = 8 + at + len(_CRC_PAT)
    if bytes(buf[pos:pos + 9]) != v[6:].encode() + b'"':
        raise CheckpointError(f"{where}: malformed checksum entry {v[:40]!r}")
    crc = zlib.crc32(memoryview(buf)[:pos])
    crc = zlib.crc32(b"00000000", crc)
    crc = zlib.crc32(memoryview(buf)[pos + 8:size], crc)
    if f"{crc:08x}" != v[6:]:
        raise CheckpointError(f"{where}: checksum mismatch: the file says {v}, its content "
                              f"gives crc32:{crc:08x} (corrupt or modified)")


def load_checkpoint(path, mmap=False, raw_bf16=False, verify=True):
    """Reads a safetensors file with numpy alone.

    Returns (tensors, metadata): tensors maps each name to a numpy array of its
    shape (scalars as 0-d arrays; BF16 converted to float32 unless raw_bf16,
    then its uint16 bit pattern); metadata is the __metadata__ map of strings.
    mmap=True returns read-only views of the mapped file instead of copies.
    verify: when the metadata carries xcoderd's "checksum" ("crc32:..."),
    check it (files without one are read as plain safetensors).
    Raises CheckpointError naming the problem for a truncated, corrupt or
    foreign file, OSError when it cannot be read."""
    where = os.fspath(path)
    with open(where, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if mmap and size:
            buf = _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_READ)
        else:
            buf = f.read()
            size = len(buf)
    entries, meta, base = _parse(buf, size, where)
    if verify:
        _verify_crc(buf, size, meta, where)
    tensors = {}
    for name, (dt, shape, off) in entries.items():
        npdt = np.dtype(ST_DTYPES[dt])
        count = int(np.prod(shape, dtype=np.int64))
        a = np.frombuffer(buf, dtype=npdt, count=count, offset=base + off).reshape(shape)
        if dt == "BF16" and not raw_bf16:
            a = bf16_to_f32(a)
        elif not mmap:
            a = a.astype(npdt.newbyteorder("="), copy=True)
        tensors[name] = a
    return tensors, dict(meta)


def save_safetensors(path, tensors, metadata=None, checksum=False):
    """Writes a safetensors file (numpy arrays; float32/float16/float64 and
    integer dtypes). checksum: add xcoderd's "checksum" metadata entry
    ("crc32:" + the CRC-32 of the file with its digits as "00000000"). For tests
    and tools; the daemon writes its own."""
    rev = {"<f8": "F64", "<f4": "F32", "<f2": "F16", "<i8": "I64", "<i4": "I32",
           "<i2": "I16", "|i1": "I8", "<u8": "U64", "<u4": "U32", "<u2": "U16",
           "|u1": "U8", "|b1": "BOOL"}
    header, blobs, off = {}, [], 0
    meta = {"checksum": "crc32:00000000"} if checksum else {}
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    if meta:
        header["__metadata__"] = meta
    for name, a in tensors.items():
        a = np.asarray(a)
        le = a.dtype.newbyteorder("<") if a.dtype.byteorder not in "|<" else a.dtype
        if le.str not in rev:
            raise TypeError(f"tensor {name!r}: dtype {a.dtype} has no safetensors name")
        b = np.ascontiguousarray(a, dtype=le).tobytes()
        header[name] = {"dtype": rev[le.str], "shape": list(a.shape),
                        "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    blob = bytearray(len(h).to_bytes(8, "little") + h + b"".join(blobs))
    if checksum:
        pos = 8 + h.find(_CRC_PAT) + len(_CRC_PAT)
        blob[pos:pos + 8] = f"{zlib.crc32(blob):08x}".encode()
    with open(path, "wb") as f:
        f.write(blob)


# ---------------------------------------------------------------- model --

def _params(ckpt):
    if isinstance(ckpt, (str, os.PathLike)):
        ckpt = load_checkpoint(ckpt)
    meta = {}
    if isinstance(ckpt, tuple):
        ckpt, meta = ckpt
    try:
        W_enc = np.asarray(ckpt["encoder.weight"], dtype=np.float32)  # (2, d, F)
        b_enc = np.asarray(ckpt["encoder.bias"], dtype=np.float32)    # (F,)
        W_dec = np.asarray(ckpt["decoder.weight"], dtype=np.float32)  # (2, F, d)
        b_dec = np.asarray(ckpt["decoder.bias"], dtype=np.float32)    # (2, d)
    except KeyError as e:
        raise CheckpointError(f"checkpoint has no tensor {e.args[0]!r}") from None
    if (W_enc.ndim != 3 or W_enc.shape[0] != 2 or W_dec.shape != (2, W_enc.shape[2],
                                                                    W_enc.shape[1])
            or b_enc.shape != (W_enc.shape[2],) or b_dec.shape != (2, W_enc.shape[1])):
        raise CheckpointError(f"inconsistent crosscoder shapes: encoder.weight {W_enc.shape}, "
                              f"encoder.bias {b_enc.shape}, decoder.weight {W_dec.shape}, "
                              f"decoder.bias {b_dec.shape}")
    threshold = None
    if "threshold" in ckpt:  # a scalar; decoupled code normalisation: one per model [2]
        t = np.asarray(ckpt["threshold"], dtype=np.float32)
        threshold = float(t) if t.size == 1 else t.reshape(2)
    k = int(ckpt["k"]) if "k" in ckpt else None
    return W_enc, b_enc, W_dec, b_dec, threshold, k, meta


CODE_NORMALIZATIONS = {1: "CROSSCODER", 2: "SAE", 3: "MIXED", 4: "NONE", 5: "DECOUPLED"}


def code_normalization(ckpt):
    """s_j [F] of a checkpoint, as the reference's get_code_normalization
    (summed over the models for DECOUPLED) names it by code_normalization_id:
    CROSSCODER |d_j^base| + |d_j^chat|, SAE |(d_j^base, d_j^chat)|, MIXED
    alpha_sae SAE + alpha_cc CROSSCODER (weights from the metadata, reference
    defaults 1.0 and 0.1), NONE 1."""
    if isinstance(ckpt, (str, os.PathLike)):
        ckpt = load_checkpoint(ckpt)
    tensors, meta = ckpt if isinstance(ckpt, tuple) else (ckpt, {})
    _, _, W_dec, _, _, _, _ = _params(ckpt)
    cn = int(tensors["code_normalization_id"]) if "code_normalization_id" in tensors else 1
    per_model = np.linalg.norm(W_dec, axis=2)  # (2, F)
    concat = np.sqrt((per_model.astype(np.float64) ** 2).sum(axis=0)).astype(np.float32)
    if cn in (1, 5):
        return per_model.sum(axis=0)
    if cn == 2:
        return concat
    if cn == 3:
        a_sae = float(meta.get("code_normalization_alpha_sae", 1.0))
        a_cc = float(meta.get("code_normalization_alpha_cc", 0.1))
        return (a_sae * concat + a_cc * per_model.sum(axis=0)).astype(np.float32)
    if cn == 4:
        return np.ones(W_dec.shape[1], dtype=np.float32)
    raise CheckpointError(f"code_normalization_id {cn} is not a CodeNormalization value (1-5)")


def normalizer(ckpt):
    """The activation normaliser a model file carries (the reference's
    NormalizableMixin buffers), or None when it has none (NaN
    activation_mean, as files of models trained with normalize = off).
    Returns a dict: mode ("global": x' = (x - mean) * scale, the reference's
    keep_relative_variance; "neuron": x' = (x - mean) / (std + 1e-8)), mean,
    std [2, d], scale [2] (activation_global_scale), target_rms. The mode is
    the daemon's `normalize` key from the file's config metadata; a file
    without one is taken as "global", the reference class's default."""
    if isinstance(ckpt, (str, os.PathLike)):
        ckpt = load_checkpoint(ckpt)
    meta = {}
    if isinstance(ckpt, tuple):
        ckpt, meta = ckpt
    if "activation_mean" not in ckpt or "activation_std" not in ckpt:
        return None
    mean = np.asarray(ckpt["activation_mean"], dtype=np.float32)
    std = np.asarray(ckpt["activation_std"], dtype=np.float32)
    if np.isnan(mean).any() or np.isnan(std).any():
        return None
    mode = "global"
    try:
        mode = json.loads(meta.get("config", "{}")).get("normalize", "global")
    except ValueError:
        pass
    scale = np.asarray(ckpt.get("activation_global_scale", np.ones(2)), dtype=np.float32)
    return {"mode": "neuron" if mode == "neuron" else "global", "mean": mean, "std": std, "scale": scale,
            "target_rms": float(ckpt["target_rms"]) if "target_rms" in ckpt else 1.0}


def normalize(ckpt, acts):
    """acts [N, 2, d] in the units the crosscoder was trained in: the
    reference's normalize_activations, float32 (unchanged without a normaliser)."""
    z = ckpt if isinstance(ckpt, dict) and "mode" in ckpt else normalizer(ckpt)
    x = np.asarray(acts, dtype=np.float32)
    if z is None:
        return x
    x = x - z["mean"]
    if z["mode"] == "global":
        return x * z["scale"][None, :, None]
    return x / (z["std"] + np.float32(1e-8))


def denormalize(ckpt, acts):
    """The inverse, as the reference's denormalize_activations: original units."""
    z = ckpt if isinstance(ckpt, dict) and "mode" in ckpt else normalizer(ckpt)
    x = np.asarray(acts, dtype=np.float32)
    if z is None:
        return x
    if z["mode"] == "global":
        x = x / (z["scale"][None, :, None] + np.float32(1e-8))
    else:
        x = x * (z["std"] + np.float32(1e-8))
    return x + z["mean"]


def _decoupled(ckpt):
    tensors = ckpt[0] if isinstance(ckpt, tuple) else ckpt
    return "code_normalization_id" in tensors and int(tensors["code_normalization_id"]) == 5 and "k" in tensors


def encode_models(ckpt, acts, mode=None, normalize_acts=True):
    """Per-model codes f [N, 2, F]: for a BatchTopK checkpoint with the
    decoupled code normalisation (code_normalization_id 5), model m's own codes,
    as the reference's encode_decoupled: threshold mode f^m = u * (u |d_j^m| >
    threshold[m]), "batchtopk" the k*N largest u |d_j^m| per model. Otherwise
    encode()'s codes for both models. acts as in encode()."""
    if isinstance(ckpt, (str, os.PathLike)):
        ckpt = load_checkpoint(ckpt)
    if not _decoupled(ckpt):
        f = encode(ckpt, acts, mode, normalize_acts)
        return np.stack([f, f], axis=1)
    W_enc, b_enc, W_dec, _, threshold, k, meta = _params(ckpt)
    x = normalize(ckpt, acts) if normalize_acts else np.asarray(acts, dtype=np.float32)
    if x.ndim != 3 or x.shape[1:] != (2, W_enc.shape[1]):
        raise ValueError(f"acts must have shape [N, 2, {W_enc.shape[1]}]; got {list(x.shape)}")
    u = np.maximum(np.einsum("bmd,mdf->bf", x, W_enc) + b_enc, 0)
    per = np.linalg.norm(W_dec, axis=2)  # (2, F)
    out = np.zeros((x.shape[0], 2, u.shape[1]), dtype=np.float32)
    for m in range(2):
        score = u * per[m]
        if mode in (None, "threshold"):
            th = np.broadcast_to(np.asarray(threshold, dtype=np.float32), (2,))[m]
            out[:, m] = u * (score > th)
        elif mode == "batchtopk":
            keep = np.argsort(-score.reshape(-1), kind="stable")[:k * x.shape[0]]
            mask = np.zeros(score.size, dtype=bool)
            mask[keep] = True
            out[:, m] = u * mask.reshape(u.shape)
        else:
            raise ValueError(f"mode must be 'threshold' or 'batchtopk'; got {mode!r}")
    return out


def encode(ckpt, acts, mode=None, normalize_acts=True):
    """Latent activations f [N, F] of acts [N, 2, d] (float32 math).

    ckpt: (tensors, metadata) from load_checkpoint, a tensors dict, or a path.
    u = ReLU(sum_m x^m W_enc[m] + b_enc); s_j the checkpoint's code
    normalisation (code_normalization(): |d_j^base| + |d_j^chat| by default).
    mode "threshold" (BatchTopK default, as the reference's inference encode):
    f = u * (u * s > threshold); "batchtopk": keep the k*N largest u*s of the
    batch (ties to the lower flat index); "relu" (L1 models): f = u. With the
    decoupled code normalisation a latent's code is u where either model's
    rule keeps it (the union; encode_models gives each model's own codes).
    acts are in original units: a checkpoint with an activation normaliser
    (normalizer()) normalises them first, as the reference's encode does;
    normalize_acts=False: they are normalised already."""
    if isinstance(ckpt, (str, os.PathLike)):
        ckpt = load_checkpoint(ckpt)
    W_enc, b_enc, W_dec, _, threshold, k, meta = _params(ckpt)
    x = normalize(ckpt, acts) if normalize_acts else np.asarray(acts, dtype=np.float32)
    if x.ndim != 3 or x.shape[1:] != (2, W_enc.shape[1]):
        raise ValueError(f"acts must have shape [N, 2, {W_enc.shape[1]}]; got {list(x.shape)}")
    if mode is None:
        mode = "relu" if meta.get("model") == "l1" or threshold is None else "threshold"
    u = np.einsum("bmd,mdf->bf", x, W_enc) + b_enc
    u = np.maximum(u, 0, out=u)
    if mode == "relu":
        return u
    if _decoupled(ckpt) and mode in ("threshold", "batchtopk"):
        return encode_models(ckpt, x, mode, normalize_acts=False).max(axis=1)
    s = code_normalization(ckpt)  # (F,)
    score = u * s
    if mode == "threshold":
        return u * (score > threshold)
    if mode == "batchtopk":
        if k is None:
            raise CheckpointError("checkpoint has no k for batchtopk encoding")
        flat = score.reshape(-1)
        keep = np.argsort(-flat, kind="stable")[:k * x.shape[0]]
        mask = np.zeros(flat.shape, dtype=bool)
        mask[keep] = True
        return u * mask.reshape(u.shape)
    raise ValueError(f"mode must be 'threshold', 'batchtopk' or 'relu'; got {mode!r}")


def decode(ckpt, f, denormalize_acts=True):
    """x_hat [N, 2, d] = f @ W_dec[m] + b_dec[m] for both models, denormalised
    into original units when the checkpoint has an activation normaliser
    (denormalize_acts=False: in the units the crosscoder was trained in)."""
    if isinstance(ckpt, (str, os.PathLike)):
        ckpt = load_checkpoint(ckpt)
    _, _, W_dec, b_dec, _, _, _ = _params(ckpt)
    xh = np.einsum("bf,mfd->bmd", np.asarray(f, dtype=np.float32), W_dec) + b_dec
    return denormalize(ckpt, xh) if denormalize_acts else xh


def reconstruct(ckpt, acts, mode=None):
    """The crosscoder's reconstruction x_hat [N, 2, d] of acts [N, 2, d]:
    decode(encode(acts)) (see encode for ckpt and mode)."""
    if isinstance(ckpt, (str, os.PathLike)):
        ckpt = load_checkpoint(ckpt)
    if _decoupled(ckpt) and mode != "relu":  # x-hat^m from model m's own codes
        f = encode_models(ckpt, acts, mode)
        _, _, W_dec, b_dec, _, _, _ = _params(ckpt)
        return denormalize(ckpt, np.einsum("bmf,mfd->bmd", f, W_dec) + b_dec)
    return decode(ckpt, encode(ckpt, acts, mode))


def decoder_stats(ckpt):
    """Per-latent decoder statistics from a checkpoint, as the daemon defines
    them (method.md 3): dict of norm_base, norm_chat, delta_norm, cosine [F]."""
    _, _, W_dec, _, _, _, _ = _params(ckpt)
    nb = np.linalg.norm(W_dec[0], axis=1)
    nc = np.linalg.norm(W_dec[1], axis=1)
    mx = np.maximum(nb, nc)
    with np.errstate(invalid="ignore", divide="ignore"):
        delta = 0.5 * ((nc - nb) / mx + 1)
        cos = np.einsum("fd,fd->f", W_dec[0], W_dec[1]) / (nb * nc)
    return {"norm_base": nb, "norm_chat": nc, "delta_norm": delta, "cosine": cos}


def latent_scaling(ckpt, acts, mode=None, min_active=0, chunk=4096):
    """Latent Scaling (method.md section 4) of a checkpoint's dictionary over
    acts [N, 2, d], exactly, in float64 accumulation (chunks of `chunk` tokens).

    For latent j with v_j = d_j^chat and activations f_ij (encode(), threshold
    mode for BatchTopK): beta_j = sum_i f_ij <v_j, y_i> / (sum_i f_ij^2 |v_j|^2)
    for the targets error y = x^m - x_hat^m + f_ij d_j^m and reconstruction
    y = x_hat^m of each model m; nu_err = beta_err_base / beta_err_chat,
    nu_rec = beta_rec_base / beta_rec_chat. Returns a dict of [F] arrays:
    beta_err_base, beta_err_chat, beta_rec_base, beta_rec_chat, nu_err,
    nu_rec (NaN where undefined: fewer than max(1, min_active) activations or a
    zero denominator) and active (activation counts), and units: "original"
    (no normaliser, or a global one: computed in the trained units, then
    beta_m x a_chat / a_m and nu x a_chat / a_base, README "Activation
    normalisation") or "normalised" (a per-neuron normaliser has no scalar factor).

    ckpt: a checkpoint path or load_checkpoint()'s result; acts: an array or
    the path of a .npy file (memory-mapped, converted chunk by chunk). The
    Python equivalent of `xcoder scaling --checkpoint CKPT --data FILE.npy`
    (which runs the daemon's exact-pass code); both agree to float rounding."""
    if isinstance(ckpt, (str, os.PathLike)):
        ckpt = load_checkpoint(ckpt)
    _, _, W_dec, b_dec, _, _, _ = _params(ckpt)
    x_all = np.load(acts, mmap_mode="r") if isinstance(acts, (str, os.PathLike)) else np.asarray(acts)
    F = W_dec.shape[1]
    v = W_dec[1].astype(np.float64)                   # (F, d) chat decoder rows
    vv = (v * v).sum(axis=1)                          # |v_j|^2
    vd = (v[None] * W_dec.astype(np.float64)).sum(2)  # (2, F) <v_j, d_j^m>
    sff = np.zeros(F)
    active = np.zeros(F)
    num_err = np.zeros((2, F))
    num_rec = np.zeros((2, F))
    for i in range(0, x_all.shape[0], chunk):
        x = normalize(ckpt, np.asarray(x_all[i:i + chunk], dtype=np.float32))
        f = encode(ckpt, x, mode, normalize_acts=False).astype(np.float64)  # (n, F)
        xh = np.einsum("bf,mfd->bmd", f, W_dec.astype(np.float64)) + b_dec
        f2 = f * f
        sff += f2.sum(0)
        active += (f > 0).sum(0)
        for m in range(2):
            err = x[:, m].astype(np.float64) - xh[:, m]
            num_err[m] += (f * (err @ v.T)).sum(0) + f2.sum(0) * vd[m]
            num_rec[m] += (f * (xh[:, m] @ v.T)).sum(0)
    den = sff * vv
    ok = (active >= max(1, min_active)) & (den > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        be = np.where(ok, num_err / np.where(ok, den, 1), np.nan)
        br = np.where(ok, num_rec / np.where(ok, den, 1), np.nan)
        z, units = normalizer(ckpt), "original"
        if z is not None and z["mode"] == "global":  # beta_m x a_chat / a_m
            fac = (float(z["scale"][1]) / np.array([float(z["scale"][0]), float(z["scale"][1])]))[:, None]
            be, br = be * fac, br * fac
        elif z is not None:
            units = "normalised"
        out = {"beta_err_base": be[0], "beta_err_chat": be[1],
               "beta_rec_base": br[0], "beta_rec_chat": br[1],
               "nu_err": be[0] / be[1], "nu_rec": br[0] / br[1], "active": active, "units": units}
    return out
