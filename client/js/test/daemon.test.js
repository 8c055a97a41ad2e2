"use strict";
// The JS client against a real xcoderd bound to tcp://127.0.0.1 (random free
// ports): produce (window, backpressure, nacks), control, subscribe, fetch a
// checkpoint (bytes equal the file on disk, also after an interrupted
// transfer resumed from an offset), and a latent table equal to the shared
// memory and to `latent`.

const test = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const crypto = require("node:crypto");
const { Producer, Client, subscribe, XcoderError, XcoderNack, CLASS_NAMES, wire } = require("..");
const { Daemon, sleep, randomActs, readShm } = require("./helpers");

const D = 32, F = 256, B = 64;

async function withDaemon(keys, fn) {
  const dm = await Daemon.start(keys);
  try {
    await fn(dm);
  } finally {
    const rc = await dm.stop();
    if (rc !== 0) assert.fail(`xcoderd exited with ${rc}:\n${dm.log()}`);
  }
}

test("produce: batches are acked and trained on; stats and accounting", () =>
  withDaemon({}, async (dm) => {
    const p = new Producer(dm.ingest, { window: 4, d: D, producer: "js-test" });
    const seqs = [];
    for (let i = 0; i < 10; i++) seqs.push(await p.send(randomActs(B, D, i + 1)));
    assert.deepEqual(seqs, [...Array(10).keys()]);
    await p.flush();
    assert.equal(p.inFlight, 0);
    assert.equal(p.stats.batchesAcked, 10);
    assert.equal(p.stats.tokensAcked, 10 * B);
    const ack = await p.sendAndWait(randomActs(B, D, 99), { shape: [B, 2, D], dtype: "bf16" });
    assert.equal(ack.seq, 10);
    assert.equal(ack.n, B);
    const f16 = await p.sendAndWait(randomActs(B, D, 98), { dtype: "f16", tokenIds: Array.from({ length: B }, (_, i) => i) });
    assert.equal(f16.seq, 11);
    await p.close();
    const st = await dm.waitStatus((s) => s.step === 12, "12 steps");
    assert.equal(st.tokens_acked, 12 * B);
    assert.equal(st.tokens_acked, st.tokens_trained + st.tokens_buffered + st.tokens_queued);
  }));

test("produce: the window fills while training is paused, and drains on resume (backpressure)", () =>
  withDaemon({ queue_size: 2, ingest_hwm: 1 }, async (dm) => {
    await dm.client.pause();
    const p = new Producer(dm.ingest, { window: 3, d: D, timeout: 20000 });
    let sent = 0;
    const all = (async () => {
      for (let i = 0; i < 12; i++) { await p.send(randomActs(B, D, i + 1)); sent++; }
    })();
    await sleep(1000);
    const stalled = sent;
    assert.ok(stalled < 12, `all ${sent} batches went out while training was paused`);
    assert.equal(p.inFlight, 3, "the window is full");
    await sleep(300);
    assert.equal(sent, stalled, "nothing more is sent while the daemon holds back");
    await dm.client.resume();
    await all;
    await p.flush();
    assert.equal(p.stats.batchesAcked, 12);
    const st = await dm.waitStatus((s) => s.step === 12, "12 steps");
    assert.ok(st.counters.ingest_blocked >= 1);
    await p.close();
  }));

test("produce: nacks reject with the daemon's code and reason", () =>
  withDaemon({}, async (dm) => {
    const p = new Producer(dm.ingest, { window: 2 });
    await assert.rejects(p.sendAndWait(randomActs(4, D + 1, 1), { shape: [4, 2, D + 1] }), (e) => {
      assert.ok(e instanceof XcoderNack && e instanceof XcoderError);
      assert.equal(e.code, "XC_ESHAPE");
      assert.match(e.reason, /d = 33/);
      assert.equal(e.seq, 0);
      return true;
    });
    const bad = randomActs(4, D, 2);
    bad[5] = NaN;
    await assert.rejects(p.sendAndWait(bad, { d: D }), (e) => e.code === "XC_ENONFINITE" && /NaN/.test(e.reason));
    // a nack nobody waited for rejects the next send (which is then not sent)
    await p.send(randomActs(4, D + 1, 3), { d: D + 1 });
    await sleep(300);
    await assert.rejects(p.send(randomActs(4, D, 4), { d: D }), (e) => e.code === "XC_ESHAPE");
    await p.sendAndWait(randomActs(4, D, 5), { d: D });
    assert.equal(p.stats.batchesNacked, 3);
    await p.close();
    const st = await dm.client.status();
    assert.equal(st.counters.XC_ESHAPE, 2);
    assert.equal(st.counters.XC_ENONFINITE, 1);
    const q = new Producer(dm.ingest);
    await assert.rejects(q.send(new Int32Array(4), { d: 1 }), TypeError);
    await assert.rejects(q.send(new Float32Array(6), { d: 2 }), RangeError);
    assert.equal(q.stats.batchesSent, 0);
    await q.close();
  }));

test("control: ping, status, config, latent, top, pause/resume, errors", () =>
  withDaemon({}, async (dm) => {
    const c = new Client(dm.control, { timeout: 5000 });
    const pong = await c.ping();
    assert.equal(pong.proto, 1);
    assert.equal(pong.name, dm.name);
    const st = await c.status();
    assert.equal(st.config.d, D);
    assert.equal(await c.config("dict_size"), F);
    assert.equal((await c.config()).k, 4);
    const p = new Producer(dm.ingest, { d: D });
    for (let i = 0; i < 4; i++) await p.send(randomActs(B, D, i + 7));
    await p.close();
    await dm.waitStatus((s) => s.step === 4, "4 steps");
    const lat = await c.latent(3);
    assert.equal(lat.j, 3);
    assert.equal(lat.snapshot_step, 4);
    assert.ok(CLASS_NAMES.includes(lat.class));
    const top = await c.top({ by: "freq", n: 5 });
    assert.equal(top.length, 5);
    for (let i = 1; i < 5; i++) assert.ok(top[i - 1].freq >= top[i].freq);
    assert.equal((await c.pause()).paused, true);
    assert.equal((await c.status()).state, "paused");
    assert.equal((await c.resume()).paused, false);
    // several requests in flight on one socket
    const [a, b2, c3] = await Promise.all([c.ping(), c.status(), c.config("k")]);
    assert.equal(a.name, dm.name);
    assert.equal(b2.config.k, 4);
    assert.equal(c3, 4);
    await assert.rejects(c.latent(F), (e) => e.code === "XC_ENOTFOUND");
    await assert.rejects(c.request("frobnicate"), (e) => e.code === "XC_EUNKNOWN" && /known ops/.test(e.reason));
    await assert.rejects(c.top({ by: "nope" }), (e) => e.code === "XC_EINVAL");
    assert.match(await c.metrics(), /xcoderd_/);
    c.close();
    await assert.rejects(c.ping(), (e) => e.code === "XC_ESTATE");
  }));

test("history: the newest stats events, oldest first, equal to the history file's lines", () =>
  withDaemon({ stats_interval: 0.05 }, async (dm) => {
    const p = new Producer(dm.ingest, { window: 4, d: D });
    for (let i = 0; i < 4; i++) await p.send(randomActs(B, D, i + 1));
    await p.close();
    await dm.waitStatus((s) => s.step >= 4, "4 steps");
    const file = path.join(dm.stateDir, "history.jsonl");
    let h;
    for (const deadline = Date.now() + 10000; ; await sleep(50)) { // a few events after the steps
      h = await dm.client.history(5);
      if (h.length === 5 && h[4].step >= 4) break;
      if (Date.now() > deadline) assert.fail(`history: ${JSON.stringify(h.map((e) => e.step))}`);
    }
    for (const ev of h) {
      assert.equal(ev.type, "stats");
      assert.equal(ev.name, dm.name);
      assert.ok(Array.isArray(ev.fve) && typeof ev.loss === "number");
    }
    for (let i = 1; i < h.length; i++) assert.ok(h[i].time >= h[i - 1].time && h[i].step >= h[i - 1].step, "oldest first");
    // the same events as the file's lines (the reply is taken first: the file only grows meanwhile)
    const lines = fs.readFileSync(file, "utf8").split("\n").filter((l) => l).map((l) => JSON.parse(l));
    const at = lines.findIndex((e) => e.time === h[0].time);
    assert.ok(at >= 0, "the first returned event is in the file");
    assert.deepEqual(lines.slice(at, at + 5), h);
    assert.equal((await dm.client.history(1)).length, 1);
    await assert.rejects(dm.client.history(100001), (e) => e.code === "XC_EINVAL");
  }));

test("subscribe: stats and checkpoint events as an async iterator", () =>
  withDaemon({}, async (dm) => {
    const sub = subscribe(dm.events, ["stats", "checkpoint"]);
    const ev = await sub.receive({ timeout: 5000 });
    assert.equal(ev.topic, "stats");
    assert.equal(ev.body.type, "stats");
    assert.equal(ev.body.name, dm.name);
    assert.equal(typeof ev.body.step, "number");
    const ck = await dm.client.checkpoint();
    let got = null, n = 0;
    for await (const e of sub) {
      n++;
      if (e.topic === "checkpoint") { got = e.body; break; }
      if (n > 100) break;
    }
    assert.ok(got, "a checkpoint event");
    assert.equal(got.path, ck.path);
    assert.equal(got.reason, "request");
    const again = subscribe(dm.events, "alert");
    await assert.rejects(again.receive({ timeout: 300 }), (e) => e.code === "XC_ETIMEDOUT");
    again.close();
  }));

test("fetchCheckpoint: bytes equal the file on disk, also resumed after an interruption", () =>
  withDaemon({ dict_size: 4096, d: 64 }, async (dm) => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "xcjsf."));
    try {
      const c = new Client(dm.control);
      await assert.rejects(c.fetchCheckpoint(path.join(tmp, "none")), (e) => e.code === "XC_ENOTFOUND");
      const ck = await c.checkpoint();
      const want = fs.readFileSync(ck.path);
      const sum = "sha256:" + crypto.createHash("sha256").update(want).digest("hex");
      const name = path.basename(ck.path);
      const list = await c.checkpoints();
      const entry = list.find((e) => e.name === name);
      assert.ok(entry && entry.size === want.length && entry.step === ck.step && entry.kind === "checkpoint");

      const out = path.join(tmp, "a.safetensors");
      const r = await c.fetchCheckpoint(out);
      assert.equal(r.name, name);
      assert.equal(r.checksum, sum);
      assert.equal(r.resumedFrom, 0);
      assert.equal(r.fetched, want.length);
      assert.ok(want.length > 2 * (1 << 20), "several chunks");
      assert.ok(fs.readFileSync(out).equals(want));
      assert.ok(!fs.existsSync(out + ".part"));

      // interrupted: a client wrote three 64 KiB chunks and went away
      const out2 = path.join(tmp, "b.safetensors");
      const c1 = new Client(dm.control);
      const fd = fs.openSync(out2 + ".part", "w");
      for (let i = 0; i < 3; i++) fs.writeSync(fd, (await c1.request("fetch", { file: name, offset: i * 65536, length: 65536 })).data);
      fs.closeSync(fd);
      c1.close();
      const seen = [];
      const r2 = await c.fetchCheckpoint(out2, { name: ck.path, chunk: 65536, onProgress: (done) => seen.push(done) });
      assert.equal(r2.resumedFrom, 3 * 65536);
      assert.equal(r2.fetched, want.length - 3 * 65536);
      assert.equal(seen[0], 4 * 65536);
      assert.ok(fs.readFileSync(out2).equals(want));

      // a stale .part is caught by the checksum and fetched again
      const out3 = path.join(tmp, "c.safetensors");
      fs.writeFileSync(out3 + ".part", crypto.randomBytes(5000));
      const r3 = await c.fetchCheckpoint(out3, { name });
      assert.equal(r3.resumedFrom, 0);
      assert.ok(fs.readFileSync(out3).equals(want));

      for (const bad of ["../" + name, "/etc/passwd", "." + name])
        await assert.rejects(c.request("fetch", { file: bad }), (e) => e.code === "XC_EINVAL");
      c.close();
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  }));

test("table: columns equal the shared memory and the latent op", () =>
  withDaemon({}, async (dm) => {
    const p = new Producer(dm.ingest, { d: D });
    for (let i = 0; i < 12; i++) await p.send(randomActs(B, D, i + 21));
    await p.close();
    await dm.waitStatus((s) => s.step === 12, "12 steps");
    await dm.client.pause();
    const deadline = Date.now() + 10000;
    let shm;
    while ((shm = readShm(dm.name)).step !== 12) {
      assert.ok(Date.now() < deadline, "shared memory did not reach step 12");
      await sleep(20);
    }
    const c = new Client(dm.control);
    const t = await c.table();
    shm = readShm(dm.name);
    assert.equal(t.snapshotStep, 12);
    assert.equal(shm.step, 12);
    assert.equal(t.n, F);
    assert.equal(t.fields.length, 33);
    for (let i = 0; i < 28; i++) {
      const f = t.fields[i], col = t.columns[f];
      assert.ok(Buffer.from(col.buffer, col.byteOffset, col.byteLength).equals(shm.arrays[i]), `column ${f} differs from shared memory`);
    }
    assert.ok(t.columns.freq.some((x) => x > 0));
    for (const j of [0, 9, F - 1]) {
      const lat = await c.latent(j);
      assert.equal(lat.snapshot_step, 12);
      assert.equal(t.columns.delta_norm[j], Math.fround(lat.delta_norm));
      assert.equal(t.columns.last_step[j], BigInt(lat.last_step_fired));
      assert.equal(t.columns.fired[j], BigInt(lat.fired));
      assert.equal(CLASS_NAMES[t.columns.class[j]], lat.class);
      assert.equal(t.columns.dead[j], lat.dead ? 1 : 0);
      const nu = lat.scaling.nu_err;
      assert.ok(nu === null ? Number.isNaN(t.columns.nu_err[j]) : t.columns.nu_err[j] === Math.fround(nu));
    }
    const r = await c.table({ fields: ["delta_norm", "j"], start: 10, count: 5 });
    assert.deepEqual(r.fields, ["delta_norm", "j"]);
    assert.equal(r.start, 10);
    assert.deepEqual([...r.columns.j], [10n, 11n, 12n, 13n, 14n]);
    assert.deepEqual([...r.columns.delta_norm], [...t.columns.delta_norm.subarray(10, 15)]);
    const s = await c.table({ fields: "cosine,j", js: [F - 1, 2, 2] });
    assert.equal(s.start, null);
    assert.deepEqual([...s.columns.j], [BigInt(F - 1), 2n, 2n]);
    assert.deepEqual([...s.columns.cosine], [t.columns.cosine[F - 1], t.columns.cosine[2], t.columns.cosine[2]]);
    await assert.rejects(c.table({ fields: ["nope"] }), (e) => e.code === "XC_EINVAL");
    await assert.rejects(c.table({ js: [F] }), (e) => e.code === "XC_ENOTFOUND");
    await c.resume();
    c.close();
  }));

test("examples: a stream tag, a vocabulary and token context give rendered examples", () =>
  withDaemon({}, async (dm) => {
    const p = new Producer(dm.ingest, { d: D, producer: "js-ex", stream: "chat" });
    const vocab = Array.from({ length: 16 }, (_, i) => `w${i} `);
    assert.equal(await p.sendVocab(vocab), 16);
    for (let b = 0; b < 4; b++) {
      const ids = Array.from({ length: B }, (_, i) => (b * 7 + i * 3) % 16);
      const positions = Array.from({ length: B }, (_, i) => [b, i]);
      await p.send(randomActs(B, D, b + 1), { tokenIds: ids, positions });
    }
    await p.close();
    await dm.waitStatus((s) => s.step >= 4, "4 steps");
    let r = null;
    for (let j = 0; j < F && !(r && r.top.length); j++) r = await dm.client.examples(j, { n: 3 });
    assert.ok(r.top.length > 0 && r.top.length <= 3, "some latent has examples");
    const e = r.top[0];
    assert.equal(e.stream, "chat");
    assert.equal(e.producer, "js-ex");
    assert.equal(e.tokens[e.at], e.token);
    assert.deepEqual(e.pieces, e.tokens.map((t) => vocab[t]));
    assert.ok(wire.renderExample(e).includes(`[[w${e.token} ]]`));
    await dm.client.resetExamples(r.j);
    await assert.rejects(dm.client.examples(F), (err) => err instanceof XcoderError && err.code === "XC_ENOTFOUND");
  }));

test("shutdown: the daemon stops cleanly on request", async () => {
  const dm = await Daemon.start({});
  const r = await dm.client.shutdown();
  assert.equal(r.shutting_down, true);
  assert.equal(await dm.exited, 0);
  await dm.stop();
});
