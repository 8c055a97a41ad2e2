"use strict";
// Shared by the dashboard's test scripts: the repository's binaries, ok/not ok
// lines (the format tests/run.sh counts), child processes killed at exit, and
// waiting for a condition.

const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const net = require("node:net");
const { spawn } = require("node:child_process");

const ROOT = path.resolve(__dirname, "..", "..", "..", "..");
const XCODERD = process.env.XCODERD || path.join(ROOT, "build", "xcoderd");
const XCODER = process.env.XCODER || path.join(ROOT, "build", "xcoder");

const T = { fails: 0 };
const ok = (name) => console.log(`ok - dashboard ${name}`);
const nok = (name, why) => { console.log(`not ok - dashboard ${name}: ${String(why).replace(/\s+/g, " ").slice(0, 400)}`); T.fails++; };
const check = (name, cond, why) => (cond ? ok(name) : nok(name, why));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

const procs = new Set();
function start(cmd, args, logFile) {
  const fd = fs.openSync(logFile, "a");
  const p = spawn(cmd, args, { stdio: ["ignore", fd, fd] });
  fs.closeSync(fd);
  procs.add(p);
  p.exited = new Promise((r) => p.on("exit", (code, sig) => { procs.delete(p); r(sig ? `signal ${sig}` : code); }));
  return p;
}
function killAll() { for (const p of procs) try { p.kill("SIGKILL"); } catch { /* gone */ } }
process.on("exit", killAll);

async function waitFor(what, fn, timeout = 15000, every = 100) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try { last = await fn(); if (last) return last; } catch (e) { last = e; }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last instanceof Error ? `: ${last.message}` : ""}`);
    await sleep(every);
  }
}

/** Waits for "dashboard: URL" in a dashboard's log file. */
function dashboardUrl(logFile) {
  return waitFor("the dashboard's URL", () => {
    const m = /dashboard: (http:\/\/\S+)/.exec(fs.readFileSync(logFile, "utf8"));
    return m && m[1].replace(/#.*/, "");
  });
}

module.exports = { ROOT, XCODERD, XCODER, T, ok, nok, check, sleep, freePort, start, killAll, waitFor, dashboardUrl };
