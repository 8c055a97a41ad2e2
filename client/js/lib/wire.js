"use strict";
// The wire format of proto/PROTOCOL.md (version 1), without sockets.
//
// Encoding writes every map as map32 and every array as array32, keys in
// insertion order, like the C codec (proto/proto.c), so the bytes match
// proto/vectors.json; scalars use MessagePack's shortest encodings (via
// @msgpack/msgpack): integers as ints, other numbers as float64, strings as
// str, Uint8Array/Buffer as bin. Decoding accepts any encoding and checks `v`
// first.

const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const { encode, decode } = require("@msgpack/msgpack");
const { XcoderError } = require("./errors");

const PROTO_VERSION = 1;
const REQUEST_MAX = 65536; // bytes in a control request frame
const PRODUCER_MAX = 64;   // bytes in a producer id
const LITTLE_ENDIAN = os.endianness() === "LE";

function packInto(out, v) {
  if (v instanceof Map) {
    const h = Buffer.alloc(5);
    h[0] = 0xdf;
    h.writeUInt32BE(v.size, 1);
    out.push(h);
    for (const [k, x] of v) { packInto(out, k); packInto(out, x); }
  } else if (Array.isArray(v)) {
    const h = Buffer.alloc(5);
    h[0] = 0xdd;
    h.writeUInt32BE(v.length, 1);
    out.push(h);
    for (const x of v) packInto(out, x);
  } else if (v !== null && typeof v === "object" && !ArrayBuffer.isView(v) && !(v instanceof ArrayBuffer)) {
    const keys = Object.keys(v).filter((k) => v[k] !== undefined);
    const h = Buffer.alloc(5);
    h[0] = 0xdf;
    h.writeUInt32BE(keys.length, 1);
    out.push(h);
    for (const k of keys) { packInto(out, k); packInto(out, v[k]); }
  } else if (v instanceof ArrayBuffer) {
    out.push(Buffer.from(encode(new Uint8Array(v))));
  } else if (ArrayBuffer.isView(v) && !(v instanceof Uint8Array)) {
    out.push(Buffer.from(encode(new Uint8Array(v.buffer, v.byteOffset, v.byteLength))));
  } else if (v === undefined) {
    out.push(Buffer.from([0xc0]));
  } else {
    out.push(Buffer.from(encode(v, { useBigInt64: typeof v === "bigint" })));
  }
}

/** One MessagePack value as a Buffer; maps and arrays in their 32-bit forms. */
function pack(v) {
  const out = [];
  packInto(out, v);
  return Buffer.concat(out);
}

/** Decodes one MessagePack value filling buf; XcoderError XC_EPROTO if it is not one. */
function unpack(buf) {
  try {
    return decode(buf);
  } catch (e) {
    throw new XcoderError("XC_EPROTO", `not valid MessagePack (${buf.length} bytes): ${e.message}`);
  }
}

/** A frame that must be one map carrying v = 1 (checked before anything else). */
function unpackMap(buf, what = "message") {
  const m = unpack(buf);
  if (m === null || typeof m !== "object" || Array.isArray(m) || ArrayBuffer.isView(m))
    throw new XcoderError("XC_EPROTO", `${what} is not a MessagePack map`);
  if (m.v !== PROTO_VERSION)
    throw new XcoderError("XC_EVERSION", `${what} has protocol version ${JSON.stringify(m.v)}; this client speaks ${PROTO_VERSION}`);
  return m;
}

/**
 * The daemon's run directory when none is given; the one rule of every client
 * (libxcoder's xc_client_default_run_dir, Python's wire.run_dir_default):
 * $XCODER_RUN_DIR if set; else where xcoderd puts it when started without
 * --run_dir, $XDG_RUNTIME_DIR/xcoderd-NAME (/tmp/xcoderd-NAME without
 * XDG_RUNTIME_DIR); but when no daemon listens there and one run by systemd
 * does, /run/xcoderd (instance "default") or /run/xcoderd-NAME.
 */
function runDirDefault(name) {
  const env = process.env.XCODER_RUN_DIR;
  if (env) return env;
  const n = name || "default";
  const user = path.join(process.env.XDG_RUNTIME_DIR || "/tmp", `xcoderd-${n}`);
  if (fs.existsSync(path.join(user, "control.sock"))) return user;
  const root = process.env.XCODER_SYSTEM_RUN_ROOT || "/run";
  const sys = path.join(root, n === "default" ? "xcoderd" : `xcoderd-${n}`);
  if (fs.existsSync(path.join(sys, "control.sock"))) return sys;
  return user;
}

/**
 * A ZeroMQ endpoint for socket `which` ("ingest", "control", "events"): a URI
 * is used as is; a directory means the daemon's ipc sockets DIR/<which>.sock;
 * undefined means the run directory of instance `name` (runDirDefault).
 */
function endpointFor(endpoint, which, name) {
  const e = endpoint == null ? runDirDefault(name) : String(endpoint);
  if (e.includes("://")) return e;
  return `ipc://${path.resolve(e)}/${which}.sock`;
}

/**
 * An ipc endpoint whose socket file does not exist has no daemon behind it:
 * throws XcoderError XC_ENOTFOUND at once instead of waiting for the timeout
 * (tcp endpoints, and socket files nobody answers on, still wait).
 */
function checkIpcPresent(endpoint) {
  if (endpoint.startsWith("ipc://") && !fs.existsSync(endpoint.slice(6)))
    throw new XcoderError("XC_ENOTFOUND", `no daemon is listening: ${endpoint.slice(6)} does not exist (start xcoderd, or pass the run directory or name it uses)`);
}

/** The batch header map (PROTOCOL.md 1.1), keys in the C codec's order. */
const STREAM_MAX = 31;   // bytes in a stream tag ([A-Za-z0-9._:/-])
const PIECE_MAX = 1024;  // bytes in one vocabulary piece

/** A stream tag ("web", "chat"): "" for none, else 1-31 bytes of [A-Za-z0-9._:/-]. */
function checkStream(stream) {
  if (stream == null || stream === "") return "";
  if (typeof stream !== "string" || !/^[A-Za-z0-9._:/-]{1,31}$/.test(stream))
    throw new RangeError(`stream tag must be at most ${STREAM_MAX} bytes of [A-Za-z0-9._:/-]; got ${JSON.stringify(stream)}`);
  return stream;
}

function batchHeader(seq, n, d, dtype, producer = "", hasTokens = false, hasPos = false, stream = "") {
  const h = { v: PROTO_VERSION, type: "batch", producer, seq, n, d, dtype, layout: "n2d", has_tokens: !!hasTokens, has_pos: !!hasPos };
  if (stream) h.stream = checkStream(stream); // last and only when set, as the C codec writes it
  return h;
}

/** A control request map: v, op, id, then the arguments (undefined/null ones left out). */
function request(op, id, args = {}) {
  const m = { v: PROTO_VERSION, op };
  if (id !== undefined && id !== null) m.id = id;
  for (const [k, x] of Object.entries(args)) if (x !== undefined && x !== null) m[k] = x;
  return m;
}

/** float32 -> bfloat16 bit pattern, round to nearest even (NaN stays NaN). */
function f32ToBf16(x) {
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  f[0] = x;
  const b = u[0];
  if (Number.isNaN(x)) return ((b >>> 16) | 0x40) & 0xffff;
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

/** float32 -> IEEE binary16 bit pattern, round to nearest even. */
function f32ToF16(x) {
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  f[0] = x;
  const b = u[0];
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  let mant = b & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let h = mant >>> shift;
    const rem = mant & ((1 << shift) - 1), half = 1 << (shift - 1);
    if (rem > half || (rem === half && (h & 1))) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) h++;
  return sign | h;
}

/**
 * Activations -> {payload (Buffer, little-endian), dtype, n, d}.
 * data: Float32Array / Float64Array (sent as f32, or f16/bf16 when dtype says
 * so) or Uint16Array of f16/bf16 bit patterns (dtype required), holding
 * [n, 2, d] row-major: per token the base model's d values, then the chat
 * model's. shape: [n, 2, d], or give d (n = length / 2d).
 */
function asPayload(data, { shape, d, dtype } = {}) {
  if (!ArrayBuffer.isView(data) || data instanceof DataView)
    throw new TypeError("activations must be a Float32Array, Float64Array or Uint16Array (f16/bf16 bits)");
  let n;
  if (shape) {
    if (shape.length !== 3 || shape[1] !== 2) throw new RangeError(`shape must be [n, 2, d]; got [${shape}]`);
    [n, , d] = shape;
  } else if (d) {
    n = data.length / (2 * d);
  } else {
    throw new TypeError("give shape [n, 2, d] or d");
  }
  if (!Number.isInteger(n) || !Number.isInteger(d) || n < 1 || d < 1 || n * 2 * d !== data.length)
    throw new RangeError(`activations of length ${data.length} do not have shape [n, 2, d] with n = ${n}, d = ${d}`);
  const count = data.length;
  if (data instanceof Uint16Array) {
    if (dtype !== "f16" && dtype !== "bf16") throw new TypeError('a Uint16Array is read as f16 or bf16 bit patterns: pass dtype "f16" or "bf16"');
    return { payload: toLE(data, 2), dtype, n, d };
  }
  if (!(data instanceof Float32Array || data instanceof Float64Array))
    throw new TypeError(`activations must be float32/float64 (or Uint16Array bits); got ${data.constructor.name}`);
  dtype = dtype || "f32";
  if (dtype === "f32") {
    const f = data instanceof Float32Array ? data : Float32Array.from(data);
    return { payload: toLE(f, 4), dtype, n, d };
  }
  if (dtype !== "f16" && dtype !== "bf16") throw new TypeError(`dtype must be f32, f16 or bf16; got ${dtype}`);
  const out = Buffer.alloc(2 * count);
  const conv = dtype === "f16" ? f32ToF16 : f32ToBf16;
  for (let i = 0; i < count; i++) out.writeUInt16LE(conv(data[i]), 2 * i);
  return { payload: out, dtype, n, d };
}

/** The bytes of a typed array, little-endian (a view when the host is). */
function toLE(ta, size) {
  const b = Buffer.from(ta.buffer, ta.byteOffset, ta.byteLength);
  if (LITTLE_ENDIAN) return b;
  const out = Buffer.from(b);
  if (size === 2) out.swap16(); else if (size === 4) out.swap32(); else if (size === 8) out.swap64();
  return out;
}

/** The frames of one batch message: [header, payload, (tokens), (positions)]. */
function encodeBatch(seq, data, { shape, d, dtype, producer = "", tokenIds, positions, stream = "" } = {}) {
  checkStream(stream);
  const p = asPayload(data, { shape, d, dtype });
  const frames = [null, p.payload];
  if (tokenIds != null) {
    const t = Uint32Array.from(tokenIds);
    if (t.length !== p.n) throw new RangeError(`tokenIds must have ${p.n} entries; got ${t.length}`);
    frames.push(toLE(t, 4));
  }
  if (positions != null) {
    const q = Uint32Array.from(positions.flat ? positions.flat() : positions);
    if (q.length !== 2 * p.n) throw new RangeError(`positions must have ${p.n} (doc, pos) pairs`);
    frames.push(toLE(q, 4));
  }
  frames[0] = pack(batchHeader(seq, p.n, p.d, p.dtype, producer, tokenIds != null, positions != null, stream));
  return { frames, n: p.n, d: p.d, dtype: p.dtype };
}

/** The vocab message header (PROTOCOL.md 1.5), keys in the C codec's order. */
function vocabHeader(seq, n, { first = 0, stream = "", producer = "" } = {}) {
  return { v: PROTO_VERSION, type: "vocab", producer, seq, stream: checkStream(stream), first, n };
}

/** The frames of one vocab message: [header, lengths (n u32 LE), bytes]; pieces[i] is the text of id first + i. */
function encodeVocab(seq, pieces, { first = 0, stream = "", producer = "" } = {}) {
  if (!pieces.length) throw new RangeError("a vocabulary needs at least one piece");
  const raw = pieces.map((p) => Buffer.from(p == null ? "" : String(p), "utf8"));
  raw.forEach((b, i) => { if (b.length > PIECE_MAX) throw new RangeError(`piece ${first + i} is ${b.length} bytes; at most ${PIECE_MAX}`); });
  const lens = Buffer.alloc(4 * raw.length);
  raw.forEach((b, i) => lens.writeUInt32LE(b.length, 4 * i));
  return { frames: [pack(vocabHeader(seq, raw.length, { first, stream, producer })), lens, Buffer.concat(raw)], n: raw.length };
}

function escapePiece(p) {
  let out = "";
  for (const ch of p) {
    const o = ch.codePointAt(0);
    if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (o < 0x20 || o === 0x7f) out += "\\x" + o.toString(16).padStart(2, "0");
    else out += ch;
  }
  return out;
}

/**
 * One example of an `examples` reply (PROTOCOL.md 2.3) as one line: its window's
 * pieces joined, the activating token in [[ ]], a token without a piece as <id>
 * (<?> for an unknown id), control characters escaped. The same in every client.
 */
function renderExample(ex) {
  const tokens = ex.tokens || [], pieces = ex.pieces, at = ex.at ?? -1;
  let s = "";
  tokens.forEach((t, i) => {
    let p = pieces && i < pieces.length ? pieces[i] : null;
    p = p == null ? (t == null ? "<?>" : `<${t}>`) : escapePiece(p);
    s += i === at ? `[[${p}]]` : p;
  });
  return s;
}

/** Wire payload bytes -> Float32Array. */
function decodePayload(buf, dtype) {
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  if (dtype === "f32") {
    const out = new Float32Array(b.length / 4);
    for (let i = 0; i < out.length; i++) out[i] = b.readFloatLE(4 * i);
    return out;
  }
  const out = new Float32Array(b.length / 2);
  const f = new Float32Array(1), u = new Uint32Array(f.buffer);
  for (let i = 0; i < out.length; i++) {
    const h = b.readUInt16LE(2 * i);
    if (dtype === "bf16") { u[0] = h << 16; out[i] = f[0]; continue; }
    const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    out[i] = e === 0 ? s * m * 2 ** -24 : e === 0x1f ? (m ? NaN : s * Infinity) : s * (1 + m / 1024) * 2 ** (e - 15);
  }
  return out;
}

// Table columns (PROTOCOL.md 2.2): dtype -> typed array constructor.
const TABLE_DTYPES = Object.freeze({ f32: [Float32Array, 4], f64: [Float64Array, 8], i64: [BigInt64Array, 8], u8: [Uint8Array, 1] });
const CLASS_NAMES = Object.freeze(["other", "shared", "chat_only", "base_only", "dead"]);

/** A little-endian column (Uint8Array of n * size bytes) as an aligned typed array (a copy). */
function column(bytes, dtype) {
  const t = TABLE_DTYPES[dtype];
  if (!t) throw new XcoderError("XC_EPROTO", `unknown table dtype ${JSON.stringify(dtype)}`);
  const [Ctor, size] = t;
  if (bytes.byteLength % size) throw new XcoderError("XC_EPROTO", `a ${dtype} column of ${bytes.byteLength} bytes`);
  const copy = new Uint8Array(bytes); // a fresh ArrayBuffer: aligned, owned
  if (!LITTLE_ENDIAN && size > 1) {
    const b = Buffer.from(copy.buffer);
    if (size === 4) b.swap32(); else b.swap64();
  }
  return new Ctor(copy.buffer, 0, copy.byteLength / size);
}

module.exports = {
  PROTO_VERSION, REQUEST_MAX, PRODUCER_MAX, pack, unpack, unpackMap, endpointFor, runDirDefault, checkIpcPresent,
  batchHeader, request, asPayload, encodeBatch, decodePayload, f32ToBf16, f32ToF16,
  STREAM_MAX, PIECE_MAX, checkStream, vocabHeader, encodeVocab, renderExample,
  TABLE_DTYPES, CLASS_NAMES, column,
};
