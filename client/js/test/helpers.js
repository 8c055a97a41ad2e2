"use strict";
// A real build/xcoderd in a temp dir, bound to tcp://127.0.0.1 on free ports.

const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const net = require("node:net");
const { spawn } = require("node:child_process");
const { Client, XcoderTimeout } = require("..");

const ROOT = path.resolve(__dirname, "..", "..", "..");
const XCODERD = process.env.XCODERD || path.join(ROOT, "build", "xcoderd");

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

class Daemon {
  static async start(keys = {}) {
    const d = new Daemon();
    if (!fs.existsSync(XCODERD)) throw new Error(`${XCODERD} is missing: run make build/xcoderd`);
    d.dir = fs.mkdtempSync(path.join(os.tmpdir(), "xcjs."));
    d.stateDir = path.join(d.dir, "state");
    d.name = keys.name || `js${process.pid}${Math.floor(Math.random() * 1e6)}`;
    const [pi, pc, pe] = [await freePort(), await freePort(), await freePort()];
    d.ingest = `tcp://127.0.0.1:${pi}`;
    d.control = `tcp://127.0.0.1:${pc}`;
    d.events = `tcp://127.0.0.1:${pe}`;
    d.config = { d: 32, dict_size: 256, k: 4, batch_size: 64, mix_tokens: 64, threads: 1, stats_interval: 0.2,
      shm_interval: 0.05, log_level: "info", ...keys };
    delete d.config.name;
    const args = ["--run_dir", path.join(d.dir, "run"), "--state_dir", d.stateDir, "--name", d.name,
      "--ingest", d.ingest, "--control", d.control, "--events", d.events];
    for (const [k, v] of Object.entries(d.config)) args.push(`--${k}`, String(v));
    d.logPath = path.join(d.dir, "daemon.log");
    const log = fs.openSync(d.logPath, "w");
    d.proc = spawn(XCODERD, args, { stdio: ["ignore", log, log] });
    fs.closeSync(log);
    d.exited = new Promise((resolve) => d.proc.on("exit", (code, sig) => resolve(sig ? `signal ${sig}` : code)));
    d.client = new Client(d.control, { timeout: 10000 });
    const deadline = Date.now() + 10000;
    for (;;) {
      if (d.proc.exitCode !== null) throw new Error(`xcoderd exited at start:\n${d.log()}`);
      try {
        await d.client.request("ping", {}, { timeout: 200 });
        break;
      } catch (e) {
        if (!(e instanceof XcoderTimeout) || Date.now() > deadline) throw new Error(`no ping reply: ${e.message}\n${d.log()}`);
      }
    }
    return d;
  }

  log() {
    try { return fs.readFileSync(this.logPath, "utf8").slice(-4000); } catch { return ""; }
  }

  async waitStatus(pred, what, timeout = 10000) {
    const deadline = Date.now() + timeout;
    for (;;) {
      const st = await this.client.status();
      if (pred(st)) return st;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; step ${st.step}, state ${st.state}`);
      await sleep(20);
    }
  }

  /** SIGTERM (unless it already exited) and the exit status. */
  async stop() {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill("SIGTERM");
    const t = setTimeout(() => this.proc.kill("SIGKILL"), 20000);
    const rc = await this.exited;
    clearTimeout(t);
    this.client.close();
    if (rc === 0) fs.rmSync(this.dir, { recursive: true, force: true });
    return rc;
  }
}

/** Random activations [n, 2, d] (deterministic for a seed). */
function randomActs(n, d, seed = 1) {
  const x = new Float32Array(n * 2 * d);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < x.length; i += 2) {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    const u1 = (s + 1) / 4294967297;
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    const u2 = (s + 1) / 4294967297;
    const r = Math.sqrt(-2 * Math.log(u1));
    x[i] = r * Math.cos(2 * Math.PI * u2);
    if (i + 1 < x.length) x[i + 1] = r * Math.sin(2 * Math.PI * u2);
  }
  return x;
}

/** A consistent copy of the shared-memory arrays /dev/shm/xcoderd.NAME (proto/SHM.md). */
function readShm(name) {
  const p = `/dev/shm/xcoderd.${name}`;
  for (let tries = 0; tries < 1000; tries++) {
    const b = fs.readFileSync(p);
    const seq1 = b.readBigUInt64LE(40);
    const again = fs.readFileSync(p, { encoding: null }).readBigUInt64LE(40);
    if (seq1 % 2n === 1n || seq1 !== again) continue;
    const n = b.readUInt32LE(24), nArrays = b.readUInt32LE(12);
    const arrays = [];
    for (let i = 0; i < nArrays; i++) {
      const off = Number(b.readBigUInt64LE(256 + 16 * i)), size = b.readUInt32LE(256 + 16 * i + 12);
      arrays.push(b.subarray(off, off + n * size));
    }
    return { step: Number(b.readBigInt64LE(64)), n, arrays };
  }
  throw new Error("shared memory never stable");
}

module.exports = { Daemon, freePort, sleep, randomActs, readShm, ROOT, XCODERD };
