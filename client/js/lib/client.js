"use strict";
// Control requests (PROTOCOL.md 2), checkpoint transfer (2.1) and latent
// tables (2.2) over the daemon's control socket.

const fs = require("node:fs");
const crypto = require("node:crypto");
const path = require("node:path");
const zmq = require("zeromq");
const wire = require("./wire");
const { curveOptions } = require("./keys");
const { XcoderError, XcoderTimeout } = require("./errors");

const CHUNK_MAX = 1 << 20; // the daemon's cap on one fetch reply's data

/**
 * Request/reply with the daemon's control socket (a DEALER: several requests
 * may be in flight; replies are matched by id, a late reply to a timed-out
 * request is dropped). endpoint: a URI, the daemon's run directory, or
 * undefined (the run directory of instance `name`, found as libxcoder and the
 * CLI find it: wire.runDirDefault); an ipc endpoint whose socket file is
 * missing rejects at once with XC_ENOTFOUND. timeout: ms per request
 * (0 = forever). Every method resolves to the reply's fields and rejects with
 * XcoderError (the daemon's code and message) or XcoderTimeout.
 */
class Client {
  constructor(endpoint, { timeout = 30000, serverKey, clientKey, name } = {}) {
    this.endpoint = wire.endpointFor(endpoint, "control", name);
    this.timeout = timeout;
    this._sock = new zmq.Dealer({ linger: 0, ...curveOptions(this.endpoint, { serverKey, clientKey }) });
    this._sock.connect(this.endpoint);
    this._pending = new Map();
    this._nextId = 1;
    this._sendChain = Promise.resolve();
    this._closed = false;
    this._loop = this._recvLoop();
  }

  async _recvLoop() {
    try {
      for await (const frames of this._sock) {
        const body = frames[frames.length - 1];
        let m;
        try { m = wire.unpackMap(body, "reply"); } catch (e) { continue; }
        const p = this._pending.get(m.id);
        if (!p) continue; // a late reply to a timed-out request
        this._pending.delete(m.id);
        if (p.timer) clearTimeout(p.timer);
        if (m.ok === true) p.resolve(m);
        else p.reject(new XcoderError(m.code || "XC_EPROTO", String(m.message ?? ""), m));
      }
    } catch (e) {
      if (!this._closed) for (const [, p] of this._pending) p.reject(new XcoderError("XC_EIO", `control socket: ${e.message}`));
    }
  }

  _send(frames) {
    const p = this._sendChain.then(() => this._sock.send(frames));
    this._sendChain = p.catch(() => {});
    return p;
  }

  /** Sends {v, op, id, ...args} (undefined/null args left out); resolves to the success reply map. */
  request(op, args = {}, { timeout } = {}) {
    if (this._closed) return Promise.reject(new XcoderError("XC_ESTATE", "client is closed"));
    try { wire.checkIpcPresent(this.endpoint); } catch (e) { return Promise.reject(e); }
    const id = this._nextId++;
    const body = wire.pack(wire.request(op, id, args));
    if (body.length > wire.REQUEST_MAX) return Promise.reject(new RangeError(`request is ${body.length} bytes; at most ${wire.REQUEST_MAX}`));
    const t = timeout ?? this.timeout;
    return new Promise((resolve, reject) => {
      const timer = t > 0 ? setTimeout(() => {
        this._pending.delete(id);
        reject(new XcoderTimeout(`no reply to '${op}' from ${this.endpoint} within ${t} ms`));
      }, t) : null;
      this._pending.set(id, { resolve, reject, timer });
      this._send(body).catch((e) => {
        if (!this._pending.delete(id)) return;
        if (timer) clearTimeout(timer);
        reject(new XcoderError("XC_EIO", `cannot send '${op}': ${e.message}`));
      });
    });
  }

  ping() { return this.request("ping"); }
  /** The stats fields (PROTOCOL.md 3.1) and `config`. */
  status() { return this.request("status"); }
  /** Statistics of latent j (PROTOCOL.md 3.3) with j and snapshot_step. */
  async latent(j) {
    const r = await this.request("latent", { j });
    return { j: r.j, snapshot_step: r.snapshot_step, ...r.stats };
  }
  /** The n latents best by `by`, best first (each with j). */
  async top({ by = "delta_norm", n = 10, order = "desc", aliveOnly = false } = {}) {
    return (await this.request("top", { by, n, order, alive_only: aliveOnly })).latents;
  }
  /**
   * Latent j's live examples (PROTOCOL.md 2.3): {top, random, seen, window, ...};
   * each example {act, step, producer, stream, doc, pos, token, tokens, at, pieces?}.
   * wire.renderExample(ex) gives its one-line text.
   */
  examples(j, { n } = {}) { return this.request("examples", n == null ? { j } : { j, n }); }
  /** Forgets latent j's examples (every latent's when j is null). */
  resetExamples(j) { return this.request("examples_reset", j == null ? { all: true } : { j }); }
  /** Writes a checkpoint now: {path, step, bytes}. */
  checkpoint({ timeout } = {}) { return this.request("checkpoint", {}, { timeout }); }
  pause() { return this.request("pause"); }
  resume() { return this.request("resume"); }
  shutdown() { return this.request("shutdown"); }
  /** Every config key -> value; with key, that key's value. */
  async config(key) {
    const c = (await this.request("config", { key })).config;
    return key == null ? c : c[key];
  }
  /** Starts an exact Latent Scaling pass over the next `tokens` trained tokens. */
  scaling(tokens) { return this.request("scaling", { tokens }); }
  /** The Prometheus text of the instance (op "metrics"). */
  async metrics() { return (await this.request("metrics")).text; }
  /**
   * The newest n stats events of the daemon's history (op "history", PROTOCOL.md 2.4),
   * oldest first, each parsed from its JSON line (undefined values null). At most
   * 100000 events and 4 MiB of them in one reply. A line that is not JSON (torn by
   * a full disk) is skipped with a process warning naming it, never silently.
   */
  async history(n = 100) {
    const lines = (await this.request("history", { n })).lines || [];
    const out = [];
    lines.forEach((line, i) => {
      if (!String(line).trim()) return;
      try {
        out.push(JSON.parse(line));
      } catch (e) {
        process.emitWarning(`history line ${i + 1} skipped: not JSON (${e.message})`);
      }
    });
    return out;
  }

  /** The checkpoint files the daemon keeps, oldest first: [{name, size, step, kind, mtime, checksum?}]. */
  async checkpoints() { return (await this.request("checkpoints")).checkpoints; }

  /**
   * Downloads a checkpoint over the control socket into outPath (PROTOCOL.md
   * 2.1). Bytes go to outPath + ".part", renamed to outPath once the SHA-256
   * matches the daemon's checksum. name: a file name (or a path the daemon
   * reported); default the newest. resume (default true): continue from the
   * size of an existing .part. One chunk (<= 1 MiB) is in memory at a time.
   * A file replaced during the transfer, or a .part that is not its start,
   * makes the transfer start over once; then XC_ECORRUPT.
   * Resolves to {path, name, size, checksum, step, resumedFrom, fetched}.
   */
  async fetchCheckpoint(outPath, { name, resume = true, chunk = CHUNK_MAX, onProgress } = {}) {
    let file = name == null ? undefined : path.basename(String(name));
    chunk = Math.max(1, Math.min(chunk, CHUNK_MAX));
    const part = `${outPath}.part`;
    let fetched = 0;
    for (let attempt = 0; attempt < 2; attempt++) {
      const ann = await this.request("fetch", { file, length: 0 });
      file = ann.name;
      const size = Number(ann.size), checksum = ann.checksum;
      let start = 0;
      if (resume && attempt === 0) {
        try { start = fs.statSync(part).size; } catch { start = 0; }
        if (start > size) start = 0;
      }
      const fh = await fs.promises.open(part, start > 0 ? "r+" : "w");
      const h = crypto.createHash("sha256");
      let changed = false, off = start;
      try {
        await fh.truncate(start);
        const buf = Buffer.alloc(Math.min(CHUNK_MAX, Math.max(start, 1)));
        for (let o = 0; o < start;) {
          const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, start - o), o);
          if (bytesRead <= 0) throw new XcoderError("XC_EIO", `cannot read ${part}`);
          h.update(buf.subarray(0, bytesRead));
          o += bytesRead;
        }
        while (off < size) {
          const r = await this.request("fetch", { file, offset: off, length: chunk });
          if (r.name !== file || Number(r.size) !== size || r.checksum !== checksum) { changed = true; break; }
          const data = r.data;
          if (Number(r.offset) !== off || !data || data.length === 0)
            throw new XcoderError("XC_EPROTO", `fetch of ${file} at ${off}: reply with offset ${r.offset} and ${data ? data.length : 0} bytes`);
          await fh.write(data, 0, data.length, off);
          h.update(data);
          off += data.length;
          fetched += data.length;
          if (onProgress) onProgress(off, size);
        }
        await fh.sync();
      } finally {
        await fh.close();
      }
      const got = "sha256:" + h.digest("hex");
      if (!changed && got === checksum) {
        await fs.promises.rename(part, outPath);
        return { path: String(outPath), name: file, size, checksum, step: ann.step, resumedFrom: start, fetched };
      }
      if (attempt === 1)
        throw new XcoderError("XC_ECORRUPT", `checkpoint ${file}: ` + (changed ? "it changed during the transfer" : `SHA-256 of the download is ${got}, the daemon announced ${checksum}`));
      resume = false;
    }
  }

  /**
   * Per-latent columns (PROTOCOL.md 2.2): {snapshotStep, dictSize, n, start,
   * scalingStep, scalingTokens, fields, dtypes, columns} with columns name ->
   * Float32Array | Float64Array | BigInt64Array | Uint8Array (SHM.md names and
   * dtypes). fields: names or "a,b" (default all but j); rows: start/count or js.
   */
  async table({ fields, start, count, js } = {}) {
    const args = {};
    if (fields != null) args.fields = typeof fields === "string" ? fields.split(",") : [...fields].map(String);
    if (js != null) args.js = [...js].map(Number);
    else {
      if (start) args.start = start;
      if (count != null) args.count = count;
    }
    const r = await this.request("table", args);
    const columns = {};
    for (const f of r.fields) columns[f] = wire.column(r.columns[f], r.dtypes[f]);
    return {
      snapshotStep: r.snapshot_step, dictSize: r.dict_size, n: r.n, start: r.start ?? null,
      scalingStep: r.scaling_step, scalingTokens: r.scaling_tokens, fields: r.fields, dtypes: r.dtypes, columns,
    };
  }

  /** Closes the socket; requests still waiting reject with XC_ESTATE. */
  close() {
    if (this._closed) return;
    this._closed = true;
    for (const [, p] of this._pending) {
      if (p.timer) clearTimeout(p.timer);
      p.reject(new XcoderError("XC_ESTATE", "client closed"));
    }
    this._pending.clear();
    this._sock.close();
  }
}

module.exports = { Client, CHUNK_MAX };
