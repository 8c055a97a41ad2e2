#!/usr/bin/env node
"use strict";
// xcoder dashboard: a live web view of one xcoderd, served by this small
// Node.js process on the JS client (client/js). The daemon stays free of
// HTTP: this process subscribes to its events, asks its control socket, and
// pushes to the browsers over server-sent events. Read-only unless started
// with an admin credential. Usage: node server.js --help.

const http = require("node:http");
const fs = require("node:fs");
const path = require("node:path");
const crypto = require("node:crypto");
const { DaemonLink } = require("./lib/link");

const USAGE = `usage: node client/js/dashboard/server.js [options]

Serves a live dashboard of one xcoderd (overview, latents, latent pages).

  --run-dir DIR        the daemon's run directory (its ipc sockets); default: that of
                       instance --name, found as the CLI finds it ($XCODER_RUN_DIR, else
                       $XDG_RUNTIME_DIR/xcoderd-NAME or /tmp/xcoderd-NAME, else /run/xcoderd[-NAME])
  --name NAME          the daemon's instance name (default "default")
  --control EP         control endpoint (tcp://host:port, ipc://path); overrides --run-dir
  --events EP          events endpoint (default: the run directory's, or needed with --control tcp://)
  --server-key KEY     the daemon's CURVE public key (Z85, or its .pub file) for tcp
                       endpoints (default $XCODER_SERVER_KEY)
  --key FILE           this dashboard's key file BASE.key from \`xcoder keygen\` (default
                       $XCODER_CLIENT_KEY); the daemon's role for it (reader, admin) bounds
                       what the dashboard can do
  --host ADDR          address to serve on (default 127.0.0.1)
  --port N             port (default 8765; 0 = any free port)
  --admin-token-file F enable the admin buttons (exact Latent Scaling pass, checkpoint) for
                       browsers presenting the token in F (first line); see also --admin
  --admin              enable them with a random token, printed in the URL only
  --poll S             seconds between health checks of the daemon (default 1)
  --history N          time-series points kept (default 3600): the daemon's stats history
                       (op history, loaded on each connection), then live
  --latent-history N   snapshots of every latent's main statistics kept for the latent
                       pages (default 120; memory: dict_size x 24 bytes each; 0 = none)
  --latent-interval S  seconds between those snapshots (default 30)
  --timeout MS         control request timeout (default 5000)
  -h, --help

Prints "dashboard: URL" on stdout once it listens. The admin token travels in
the URL's fragment (#admin=...), never to other sites; the page sends it in a
header with each admin request.`;

function parseArgs(argv) {
  const o = { host: "127.0.0.1", port: 8765, poll: 1, history: 3600, timeout: 5000, latentHistory: 120, latentInterval: 30 };
  const need = (i) => {
    if (i + 1 >= argv.length) throw new Error(`${argv[i]} needs a value`);
    return argv[i + 1];
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    switch (a) {
      case "-h": case "--help": o.help = true; break;
      case "--run-dir": o.runDir = need(i); i++; break;
      case "--name": o.name = need(i); i++; break;
      case "--control": o.control = need(i); i++; break;
      case "--events": o.events = need(i); i++; break;
      case "--server-key": o.serverKey = need(i); i++; break;
      case "--key": o.clientKey = need(i); i++; break;
      case "--host": o.host = need(i); i++; break;
      case "--port": o.port = Number(need(i)); i++; break;
      case "--admin-token-file": o.adminTokenFile = need(i); i++; break;
      case "--admin": o.admin = true; break;
      case "--poll": o.poll = Number(need(i)); i++; break;
      case "--history": o.history = Number(need(i)); i++; break;
      case "--latent-history": o.latentHistory = Number(need(i)); i++; break;
      case "--latent-interval": o.latentInterval = Number(need(i)); i++; break;
      case "--timeout": o.timeout = Number(need(i)); i++; break;
      default: throw new Error(`unknown option ${a} (--help lists them)`);
    }
  }
  if (!Number.isInteger(o.port) || o.port < 0 || o.port > 65535) throw new Error("--port: an integer 0..65535");
  if (!(o.poll > 0)) throw new Error("--poll: seconds > 0");
  if (!(o.history >= 10)) throw new Error("--history: at least 10 points");
  if (!(o.timeout > 0)) throw new Error("--timeout: ms > 0");
  if (!Number.isInteger(o.latentHistory) || o.latentHistory < 0) throw new Error("--latent-history: an integer >= 0");
  if (!(o.latentInterval >= 0.2)) throw new Error("--latent-interval: seconds >= 0.2");
  if (o.control && /^tcp:/.test(o.control) && !o.events) throw new Error("--control tcp://... needs --events tcp://... too");
  return o;
}

const PUBLIC = path.join(__dirname, "public");
const UPLOT = path.dirname(require.resolve("uplot/dist/uPlot.iife.min.js"));
// Every file the page loads, all local (the page works offline).
const FILES = {
  "/": [path.join(PUBLIC, "index.html"), "text/html; charset=utf-8"],
  "/app.js": [path.join(PUBLIC, "app.js"), "text/javascript; charset=utf-8"],
  "/style.css": [path.join(PUBLIC, "style.css"), "text/css; charset=utf-8"],
  "/vendor/uPlot.iife.min.js": [path.join(UPLOT, "uPlot.iife.min.js"), "text/javascript; charset=utf-8"],
  "/vendor/uPlot.min.css": [path.join(UPLOT, "uPlot.min.css"), "text/css; charset=utf-8"],
};

const isLoopback = (h) => h === "127.0.0.1" || h === "::1" || h === "localhost" || /^127\./.test(h);

class Dashboard {
  constructor(opts) {
    this.opts = opts;
    this.adminToken = null;
    if (opts.adminTokenFile) {
      this.adminToken = fs.readFileSync(opts.adminTokenFile, "utf8").split("\n")[0].trim();
      if (this.adminToken.length < 16) throw new Error(`${opts.adminTokenFile}: the token must be at least 16 characters`);
    } else if (opts.admin) {
      this.adminToken = crypto.randomBytes(24).toString("base64url");
    }
    const control = opts.control ?? opts.runDir;
    const events = opts.events ?? opts.runDir;
    // Options for the JS client (Client and subscribe) pass through unchanged;
    // keys left undefined fall back to $XCODER_SERVER_KEY / $XCODER_CLIENT_KEY there.
    const clientOptions = { timeout: opts.timeout, name: opts.name, serverKey: opts.serverKey, clientKey: opts.clientKey };
    this.link = new DaemonLink({ control, events, clientOptions, poll: opts.poll, history: opts.history,
      latentHistory: opts.latentHistory, latentInterval: opts.latentInterval });
    this.clients = new Set();
    this.files = new Map();
    for (const [route, [file, type]] of Object.entries(FILES)) this.files.set(route, { body: fs.readFileSync(file), type });
    for (const ev of ["conn", "status", "point", "points", "config", "checkpoint", "checkpoints", "scaling", "alert"])
      this.link.on(ev, (data) => this.broadcast(ev, data));
  }

  async listen() {
    this.server = http.createServer((req, res) => this.handle(req, res).catch((e) => this.fail(res, 500, e.message)));
    await new Promise((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(this.opts.port, this.opts.host, resolve);
    });
    this.port = this.server.address().port;
    this.link.start();
    this.keepalive = setInterval(() => { for (const c of this.clients) c.write(": keepalive\n\n"); }, 15000);
    const host = this.opts.host.includes(":") ? `[${this.opts.host}]` : this.opts.host;
    this.url = `http://${host}:${this.port}/`;
    return this.url;
  }

  close() {
    clearInterval(this.keepalive);
    for (const c of this.clients) c.end();
    this.link.close();
    if (this.server) this.server.close();
  }

  broadcast(event, data) {
    const msg = `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
    for (const c of this.clients) {
      // a browser that stopped reading is dropped rather than buffered forever
      if (c.writableLength > 8 << 20) { c.destroy(); this.clients.delete(c); continue; }
      c.write(msg);
    }
  }

  send(res, code, body, type = "application/json; charset=utf-8") {
    const b = typeof body === "string" || Buffer.isBuffer(body) ? body : JSON.stringify(body);
    res.writeHead(code, { "Content-Type": type, "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
      "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:",
      "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY" });
    res.end(b);
  }

  fail(res, code, message) {
    if (res.headersSent) { res.destroy(); return; }
    this.send(res, code, { ok: false, error: message });
  }

  // WHY: a page on another site (or a DNS name rebound to 127.0.0.1) must not
  // read the daemon's data through a browser, nor press an admin button: when
  // bound to loopback only loopback Host names are served, and requests from
  // another Origin are refused.
  allowed(req) {
    const host = (req.headers.host || "").replace(/:\d+$/, "").replace(/^\[|\]$/g, "");
    if (isLoopback(this.opts.host) && !isLoopback(host)) return false;
    const origin = req.headers.origin;
    if (origin && origin !== `http://${req.headers.host}`) return false;
    return true;
  }

  isAdmin(req) {
    if (!this.adminToken) return false;
    const got = Buffer.from(String(req.headers["x-xcoder-admin"] || ""));
    const want = Buffer.from(this.adminToken);
    return got.length === want.length && crypto.timingSafeEqual(got, want);
  }

  async handle(req, res) {
    if (!this.allowed(req)) return this.fail(res, 403, "refused: foreign Host or Origin");
    const url = new URL(req.url, "http://x");
    const p = url.pathname;
    if (req.method === "GET" && this.files.has(p)) {
      const f = this.files.get(p);
      return this.send(res, 200, f.body, f.type);
    }
    if (req.method === "GET" && p === "/api/events") return this.events(req, res);
    if (req.method === "GET" && p === "/api/table") return this.send(res, 200, await this.guard(() => this.link.table()));
    if (req.method === "GET" && p === "/api/status") return this.send(res, 200, this.link.snapshot());
    let m;
    if (req.method === "GET" && (m = /^\/api\/latent\/(\d{1,9})$/.exec(p))) {
      const j = Number(m[1]);
      return this.send(res, 200, await this.guard(() => this.link.latent(j)));
    }
    if (req.method === "POST" && (p === "/api/checkpoint" || p === "/api/scaling")) {
      if (!this.isAdmin(req)) return this.fail(res, 403, "admin credential required (start the dashboard with --admin or --admin-token-file)");
      if (p === "/api/checkpoint") return this.send(res, 200, await this.guard(() => this.link.client.checkpoint({ timeout: 120000 })));
      const body = await readBody(req, 4096);
      let tokens = 1e6;
      try { tokens = Number(JSON.parse(body || "{}").tokens ?? 1e6); } catch { return this.fail(res, 400, "body: JSON {tokens}"); }
      if (!Number.isInteger(tokens) || tokens < 1) return this.fail(res, 400, "tokens: a positive integer");
      return this.send(res, 200, await this.guard(() => this.link.client.scaling(tokens)));
    }
    return this.fail(res, 404, `no such page: ${p}`);
  }

  /** Runs a daemon request; its failure becomes {ok: false, error, code} (HTTP 200: the page shows it). */
  async guard(fn) {
    if (!this.link.connected) // answer now rather than after a request's timeout
      return { ok: false, code: "XC_ETIMEDOUT", error: `the daemon at ${this.link.control} is not answering` };
    try {
      return { ok: true, ...(await fn()) };
    } catch (e) {
      return { ok: false, code: e.code || "XC_EIO", error: e.reason || e.message };
    }
  }

  events(req, res) {
    res.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-store", Connection: "keep-alive",
      "X-Content-Type-Options": "nosniff" });
    res.write("retry: 1000\n\n");
    res.write(`event: hello\ndata: ${JSON.stringify({ ...this.link.snapshot(), admin: !!this.adminToken })}\n\n`);
    this.clients.add(res);
    req.on("close", () => this.clients.delete(res));
  }
}

function readBody(req, max) {
  return new Promise((resolve, reject) => {
    let n = 0;
    const chunks = [];
    req.on("data", (c) => {
      n += c.length;
      if (n > max) { reject(new Error("request body too large")); req.destroy(); return; }
      chunks.push(c);
    });
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

async function main() {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`dashboard: ${e.message}\n`);
    process.exit(2);
  }
  if (opts.help) { process.stdout.write(USAGE + "\n"); return; }
  if (!isLoopback(opts.host))
    process.stderr.write(`dashboard: serving on ${opts.host}: anyone who reaches it reads the run's statistics (plain HTTP)\n`);
  let d, url;
  try {
    d = new Dashboard(opts);
  } catch (e) {
    process.stderr.write(`dashboard: ${e.reason || e.message}\n`); // a bad key or token file
    process.exit(2);
  }
  try {
    url = await d.listen();
  } catch (e) {
    process.stderr.write(`dashboard: cannot start on ${opts.host}:${opts.port}: ${e.reason || e.message}\n`);
    process.exit(1);
  }
  process.stdout.write(`dashboard: ${url}${d.adminToken && opts.admin ? `#admin=${d.adminToken}` : ""}\n`);
  process.stderr.write(`dashboard: daemon control ${d.link.control}; ${d.adminToken ? "admin buttons enabled" : "read-only"}\n`);
  const stop = () => { d.close(); process.exit(0); };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
}

if (require.main === module) main();

module.exports = { Dashboard, parseArgs };
