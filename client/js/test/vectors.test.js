"use strict";
// proto/vectors.json: every vector decodes to its value, and this client's
// encoder writes the C codec's exact bytes for what it sends.

const test = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const { wire, XcoderError, CODES } = require("..");

const ROOT = path.resolve(__dirname, "..", "..", "..");
const VECTORS = JSON.parse(fs.readFileSync(path.join(ROOT, "proto", "vectors.json"), "utf8"));
const byName = Object.fromEntries(VECTORS.vectors.map((v) => [v.name, v]));

/** A vector's JSON value with bins ({"$bin": hex}) as Uint8Array. */
function value(v) {
  if (Array.isArray(v)) return v.map(value);
  if (v !== null && typeof v === "object") {
    const keys = Object.keys(v);
    if (keys.length === 1 && keys[0] === "$bin") return Buffer.from(v.$bin, "hex"); // bins decode as views of the (Buffer) frame
    return Object.fromEntries(keys.map((k) => [k, value(v[k])]));
  }
  return v;
}

function keyOrder(v) {
  if (Array.isArray(v)) return v.map(keyOrder);
  if (v !== null && typeof v === "object" && !(ArrayBuffer.isView(v)))
    return Object.keys(v).map((k) => [k, keyOrder(v[k])]);
  return null;
}

test("vector file: protocol version and kinds", () => {
  assert.equal(VECTORS.protocol, wire.PROTO_VERSION);
  const kinds = new Set(VECTORS.vectors.map((v) => v.kind));
  for (const k of ["ingest.header", "ingest.payload", "ingest.reply", "control.request", "control.reply", "event.body"])
    assert.ok(kinds.has(k), k);
  for (const n of ["req_fetch", "reply_fetch", "req_table", "reply_table", "req_checkpoints", "reply_checkpoints"])
    assert.ok(byName[n], n);
});

test("error codes: every name has the number of include/xc_error.h", () => {
  assert.deepEqual({ ...CODES }, VECTORS.error_codes);
  for (const [name, num] of Object.entries(VECTORS.error_codes)) assert.equal(new XcoderError(name, "x").errno, num);
});

for (const vec of VECTORS.vectors.filter((v) => "value" in v)) {
  test(`vector ${vec.name}: decodes to its value, in wire key order`, () => {
    const m = wire.unpackMap(Buffer.from(vec.hex, "hex"));
    const want = value(vec.value);
    assert.deepEqual(m, want);
    assert.deepEqual(keyOrder(m), keyOrder(want));
    if ("code" in m) {
      assert.ok(m.code in CODES);
      assert.equal(CODES[m.code], VECTORS.error_codes[m.code]); // the number, not only the name
    }
  });
  test(`vector ${vec.name}: encodes to the C codec's bytes`, () => {
    assert.equal(wire.pack(value(vec.value)).toString("hex"), vec.hex);
  });
}

for (const vec of VECTORS.vectors.filter((v) => v.kind === "ingest.header")) {
  test(`vector ${vec.name}: batchHeader builds it`, () => {
    const v = vec.value;
    const h = wire.batchHeader(v.seq, v.n, v.d, v.dtype, v.producer, v.has_tokens, v.has_pos, v.stream);
    assert.equal(wire.pack(h).toString("hex"), vec.hex);
  });
}

for (const vec of VECTORS.vectors.filter((v) => v.kind === "control.request")) {
  test(`vector ${vec.name}: request() builds it`, () => {
    const { v, op, id, ...args } = value(vec.value);
    assert.equal(wire.pack(wire.request(op, id, args)).toString("hex"), vec.hex);
  });
}

for (const vec of VECTORS.vectors.filter((v) => v.kind === "ingest.payload")) {
  test(`vector ${vec.name}: payload encode and decode`, () => {
    const src = new Float32Array([1.0, -2.0, 0.5, 65504.0]);
    const { payload, dtype, n, d } = wire.asPayload(src, { shape: [1, 2, 2], dtype: vec.dtype });
    assert.deepEqual([dtype, n, d], [vec.dtype, 1, 2]);
    assert.equal(payload.toString("hex"), vec.hex);
    assert.deepEqual([...wire.decodePayload(Buffer.from(vec.hex, "hex"), vec.dtype)], vec.values);
  });
}

test("encodeBatch: frames of the f32 vector, with token and position frames", () => {
  const hv = byName.batch_header_f32.value;
  const x = new Float32Array(hv.n * 2 * hv.d).map((_, i) => i);
  const { frames, n, d, dtype } = wire.encodeBatch(0, x, { d: hv.d, producer: "p0" });
  assert.equal(frames[0].toString("hex"), byName.batch_header_f32.hex);
  assert.deepEqual([frames[1].length, n, d, dtype], [48, 2, 3, "f32"]);
  const bf = byName.batch_header_bf16_tokens_pos;
  const b = wire.encodeBatch(7, new Uint16Array(4), { shape: [1, 2, 2], dtype: "bf16", producer: "gemma-2-2b/l13", tokenIds: [5], positions: [[0, 3]] });
  assert.equal(b.frames[0].toString("hex"), bf.hex);
  assert.equal(b.frames.length, 4);
  assert.equal(b.frames[2].toString("hex"), "05000000");
  assert.equal(b.frames[3].toString("hex"), "0000000003000000");
});

test("table columns: little-endian bins become typed arrays", () => {
  const r = wire.unpackMap(Buffer.from(byName.reply_table.hex, "hex"));
  const cols = Object.fromEntries(r.fields.map((f) => [f, wire.column(r.columns[f], r.dtypes[f])]));
  assert.deepEqual([...cols.delta_norm], [0.5, 0.9375]);
  assert.deepEqual([...cols.last_step], [-1n, 998n]);
  assert.deepEqual([...cols.class].map((c) => wire.CLASS_NAMES[c]), ["shared", "chat_only"]);
  assert.ok(cols.delta_norm instanceof Float32Array && cols.last_step instanceof BigInt64Array);
});

test("fetch reply: data is bytes, checksum is sha256", () => {
  const r = wire.unpackMap(Buffer.from(byName.reply_fetch.hex, "hex"));
  assert.ok(r.data instanceof Uint8Array && r.data.length === 8 && r.eof === true);
  assert.match(r.checksum, /^sha256:[0-9a-f]{64}$/);
  assert.equal(r.offset + r.data.length, r.size);
});

test("wrong version and malformed frames are refused", () => {
  assert.throws(() => wire.unpackMap(wire.pack({ v: 2, type: "ack" })), (e) => e instanceof XcoderError && e.code === "XC_EVERSION");
  assert.throws(() => wire.unpackMap(Buffer.from("df000000", "hex")), (e) => e.code === "XC_EPROTO");
  assert.throws(() => wire.unpackMap(wire.pack([1, 2])), (e) => e.code === "XC_EPROTO");
});

test("vocab vector: encodeVocab writes its three frames", () => {
  const vec = byName.vocab_header, h = vec.value;
  const { frames, n } = wire.encodeVocab(h.seq, vec.pieces, { first: h.first, stream: h.stream, producer: h.producer });
  assert.equal(n, h.n);
  assert.equal(frames[0].toString("hex"), vec.hex);
  assert.equal(frames[1].toString("hex"), vec.lengths_hex);
  assert.equal(frames[2].toString("hex"), vec.bytes_hex);
  assert.throws(() => wire.checkStream("with space"), RangeError);
});

for (const vec of VECTORS.vectors.filter((v) => "rendered" in v)) {
  test(`vector ${vec.name}: renderExample gives the same lines as C and Python`, () => {
    const m = wire.unpackMap(Buffer.from(vec.hex, "hex"));
    assert.deepEqual([...m.top, ...m.random].map(wire.renderExample), vec.rendered);
  });
}
