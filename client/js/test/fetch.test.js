"use strict";
// fetchCheckpoint against a fake control socket: a file replaced under its
// name mid-transfer is noticed (checksum/size change) and fetched again; one
// that keeps changing is refused with XC_ECORRUPT.

const test = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const crypto = require("node:crypto");
const { Client } = require("..");

function fakeFiles(data, { swapTo, swapAfter, mutate } = {}) {
  const fake = { chunks: 0, data };
  fake.request = async (op, args) => {
    assert.equal(op, "fetch");
    const length = args.length ?? 1 << 20, offset = args.offset ?? 0;
    if (length && mutate) fake.data = crypto.randomBytes(fake.data.length);
    if (length && swapTo && fake.chunks >= swapAfter) { fake.data = swapTo; swapTo = null; }
    if (length) fake.chunks++;
    const d = fake.data;
    return { name: "f-000000001.safetensors", size: d.length, checksum: "sha256:" + crypto.createHash("sha256").update(d).digest("hex"),
      step: 1, offset, eof: offset + length >= d.length, data: d.subarray(offset, offset + length) };
  };
  return fake;
}

test("fetchCheckpoint: a file replaced mid-transfer is fetched again; one that keeps changing is refused", async () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "xcjsfake."));
  try {
    const oldData = crypto.randomBytes(10000), newData = crypto.randomBytes(12000);
    const fake = fakeFiles(oldData, { swapTo: newData, swapAfter: 3 });
    const r = await Client.prototype.fetchCheckpoint.call(fake, path.join(tmp, "x"), { chunk: 1000 });
    assert.ok(fs.readFileSync(path.join(tmp, "x")).equals(newData));
    assert.equal(r.fetched, 3000 + newData.length);
    await assert.rejects(Client.prototype.fetchCheckpoint.call(fakeFiles(crypto.randomBytes(5000), { mutate: true }), path.join(tmp, "y"), { chunk: 1000 }),
      (e) => e.code === "XC_ECORRUPT");
    assert.ok(!fs.existsSync(path.join(tmp, "y")));
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});
