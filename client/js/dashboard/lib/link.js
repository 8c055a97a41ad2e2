"use strict";
// The dashboard's one link to a daemon: a control client and an event
// subscription (the JS client in client/js), a health check, the run's time
// series and the latent tables the pages ask for. Everything the browsers see
// passes through here, so N open pages cost the daemon what one does.

const { EventEmitter } = require("node:events");
const { Client, subscribe, XcoderError } = require("../..");

// Columns of the latents page (PROTOCOL.md 2.2, SHM.md names): all f32 or u8,
// sent to the browser as raw little-endian bytes (base64), exact and compact.
const TABLE_FIELDS = ["delta_norm", "cosine", "norm_base", "norm_chat", "freq", "nu_err", "nu_rec",
  "exact_nu_err", "exact_nu_rec", "class", "flags", "dead"];
// Per-latent history of the latents whose page is open.
const WATCH_FIELDS = ["delta_norm", "cosine", "norm_base", "norm_chat", "freq", "nu_err", "nu_rec",
  "exact_nu_err", "exact_nu_rec"];
const WATCH_MAX = 32;          // latents followed at once (least recently viewed dropped)
const WATCH_IDLE_MS = 120000;  // a latent nobody looked at for this long is no longer followed
const WATCH_POINTS = 1200;     // history points kept per followed latent
// Coarse history of every latent: these columns of a full table every
// `latentInterval` seconds, the last `latentHistory` of them (memory:
// dict_size x 6 x 4 bytes per snapshot).
const SNAP_FIELDS = ["delta_norm", "norm_base", "norm_chat", "freq", "nu_err", "nu_rec"];

/** One time-series point from a stats event or status reply (PROTOCOL.md 3.1). */
function pointOf(s, refusedDelta) {
  const fve = Array.isArray(s.fve) ? s.fve : [NaN, NaN];
  return {
    t: Number(s.time ?? Date.now() / 1000), step: Number(s.step), tokens: Number(s.tokens),
    loss: s.loss, recon_l2: s.recon_l2, recon_mse: s.recon_mse, aux: s.aux, l1: s.l1,
    fve_base: fve[0], fve_chat: fve[1], l0: s.l0, dead_fraction: s.dead_fraction,
    tokens_per_s: s.tokens_per_s, queue_depth: s.queue_depth, queue_size: s.queue_size,
    refused: refusedDelta,
  };
}

/** The fields of a status/stats map a page header shows (no config, no counters' detail). */
function summaryOf(s) {
  const out = {};
  for (const k of ["state", "paused", "step", "tokens", "tokens_acked", "tokens_trained", "tokens_per_s",
    "steps_per_s", "step_ms", "uptime_s", "queue_depth", "queue_size", "loss", "fve", "l0", "dead_fraction",
    "theta", "lr", "classes", "scaling", "shm"]) if (s[k] !== undefined) out[k] = s[k];
  if (s.counters) out.batches_refused = s.counters.batches_refused;
  return out;
}

function b64(col) {
  return Buffer.from(col.buffer, col.byteOffset, col.byteLength).toString("base64");
}

class DaemonLink extends EventEmitter {
  /**
   * control/events: endpoints (URIs or a run directory). clientOptions go to
   * the JS client's Client and subscribe() unchanged (today {timeout}; the
   * place where authentication keys will travel). poll: seconds between
   * health checks; history: points kept.
   */
  constructor({ control, events, clientOptions = {}, poll = 1, history = 3600, latentHistory = 120, latentInterval = 30 }) {
    super();
    this.setMaxListeners(0);
    this.clientOptions = { timeout: 5000, ...clientOptions };
    this.client = new Client(control, this.clientOptions);
    this.control = this.client.endpoint;
    this.eventsEndpoint = events;
    this.pollMs = Math.max(100, poll * 1000);
    this.historyMax = history;
    this.points = [];
    this.connected = false;
    this.everConnected = false;
    this.since = Date.now() / 1000;   // of the current connection state
    this.restarts = 0;
    this.status = null;               // last status reply (summary)
    this.config = null;
    this.checkpoints = [];
    this.name = null;
    this._lastRefused = null;
    this._lastUptime = -1;
    this._table = null;               // {at, step, promise|value}
    this._watch = new Map();          // j -> {seen, points: []}
    this._snaps = [];                 // [{t, step, cols: {field: Float32Array}}], oldest first
    this.latentHistory = latentHistory;
    this.latentIntervalMs = Math.max(200, latentInterval * 1000);
    this._watchBusy = false;
    this._latentCache = new Map();
    this._noExamples = false;        // the daemon answered XC_EUNKNOWN to `examples`
    this._closed = false;
  }

  start() {
    if (this.latentHistory > 0) this._snapTimer = setTimeout(() => this._snapshot(), 1000);
    this._sub = subscribe(this.eventsEndpoint ?? this.control.replace(/control\.sock$/, "events.sock"),
      ["stats", "checkpoint", "scaling", "alert"], this.clientOptions);
    this._eventLoop();
    this._healthLoop();
    return this;
  }

  close() {
    this._closed = true;
    clearTimeout(this._snapTimer);
    clearTimeout(this._healthTimer);
    if (this._sub) this._sub.close();
    this.client.close();
  }

  /** What a page needs on (re)connecting to the dashboard. */
  snapshot() {
    return {
      control: this.control, connected: this.connected, everConnected: this.everConnected, since: this.since,
      restarts: this.restarts, name: this.name, status: this.status, config: this.config,
      checkpoints: this.checkpoints, points: this.points, history: this.historyInfo ?? null,
    };
  }

  _setConnected(up, restarted) {
    if (up === this.connected && !restarted) return;
    this.connected = up;
    this.since = Date.now() / 1000;
    if (up) { this.everConnected = true; this._noExamples = false; } // a restarted daemon may be newer
    this.emit("conn", { connected: up, since: this.since, restarted: !!restarted, restarts: this.restarts, control: this.control });
  }

  // WHY: ZeroMQ reconnects by itself and never reports a dead peer, so a
  // status request every `poll` seconds is what tells "daemon gone" (no reply
  // within the poll interval) and "daemon back" (a reply again; a smaller
  // uptime than before means it restarted, so the series restart with it).
  async _healthLoop() {
    if (this._closed) return;
    const t0 = Date.now();
    try {
      const st = await this.client.request("status", {}, { timeout: Math.max(1000, this.pollMs) });
      const restarted = this._lastUptime >= 0 && st.uptime_s + 0.5 < this._lastUptime;
      if (restarted) { this.restarts++; this._lastRefused = null; }
      this._lastUptime = st.uptime_s;
      const wasUp = this.connected;
      this.status = summaryOf(st);
      this.name = st.config?.name ?? this.name;
      const cfgChanged = JSON.stringify(st.config) !== JSON.stringify(this.config);
      this.config = st.config ?? this.config;
      if (!wasUp || restarted) {
        this._setConnected(true, restarted);
        this._refreshCheckpoints();
        this._loadHistory();
      }
      if (cfgChanged) this.emit("config", this.config);
      this.emit("status", this.status);
      if (this.points.length === 0 || (Date.now() / 1000 - this.points[this.points.length - 1].t) > 3 * this._statsInterval())
        this._addPoint({ ...st, time: Date.now() / 1000 });
    } catch (e) {
      if (this.connected || !this.everConnected) this._setConnected(false);
      this._lastError = e.message;
    }
    const wait = Math.max(0, this.pollMs - (Date.now() - t0));
    this._healthTimer = setTimeout(() => this._healthLoop(), wait);
  }

  _statsInterval() { return Number(this.config?.stats_interval ?? 1) || 1; }

  _addPoint(s) {
    const refused = Number(s.counters?.batches_refused ?? 0);
    const delta = this._lastRefused == null ? 0 : refused >= this._lastRefused ? refused - this._lastRefused : refused;
    this._lastRefused = refused;
    const p = pointOf(s, delta);
    const last = this.points[this.points.length - 1];
    if (last && p.t <= last.t) return;
    this.points.push(p);
    if (this.points.length > this.historyMax) this.points.splice(0, this.points.length - this.historyMax);
    this.emit("point", p);
  }

  // WHY: the curves should show the run's past, not only what happened since
  // this process started (a dashboard started late, or restarted): on each
  // (re)connection the daemon's stats history (op `history`, PROTOCOL.md
  // 2.4: the stats events' bodies as JSON lines) is merged under the live
  // points by time, and the browsers get the whole series again.
  async _loadHistory() {
    let r;
    try {
      r = await this.client.request("history", { n: Math.min(this.historyMax, 100000) }, { timeout: Math.max(this.clientOptions.timeout, 10000) });
    } catch (e) {
      // a daemon without the op (XC_EUNKNOWN) or without the history: live points only
      this.historyInfo = { loaded: 0, error: e.code || e.message };
      return;
    }
    const events = [];
    for (const line of r.lines || []) {
      try { events.push(JSON.parse(line)); } catch { /* a torn line: the daemon says readers skip it */ }
    }
    const pts = [];
    let lastRefused = null;
    for (const ev of events) {
      const refused = Number(ev.counters?.batches_refused ?? 0);
      const delta = lastRefused == null ? 0 : refused >= lastRefused ? refused - lastRefused : refused;
      lastRefused = refused;
      const p = pointOf(ev, delta);
      if (Number.isFinite(p.t)) pts.push(p);
    }
    this.historyInfo = { loaded: pts.length, more: !!r.more, enabled: r.enabled !== false };
    if (pts.length === 0) return;
    // one series by time: history points the live series does not have yet
    const have = new Set(this.points.map((p) => p.t));
    const merged = this.points.concat(pts.filter((p) => !have.has(p.t))).sort((a, b) => a.t - b.t);
    if (merged.length > this.historyMax) merged.splice(0, merged.length - this.historyMax);
    this.points = merged;
    this.emit("points", { points: this.points, history: this.historyInfo });
  }

  async _eventLoop() {
    for (;;) {
      let ev;
      try {
        ev = await this._sub.receive();
      } catch (e) {
        if (this._closed) return;
        await new Promise((r) => setTimeout(r, 500));
        continue;
      }
      const { topic, body } = ev;
      if (topic === "stats") {
        this._addPoint(body);
        this.status = { ...this.status, ...summaryOf(body) };
        this.emit("status", this.status);
        this._followWatched();
      } else if (topic === "checkpoint") {
        this.emit("checkpoint", { path: body.path, step: body.step, bytes: body.bytes, reason: body.reason, time: body.time });
        this._refreshCheckpoints();
      } else if (topic === "scaling") {
        this._table = null;
        this.emit("scaling", { step: body.step, tokens: body.tokens, chat_specific: body.chat_specific, chat_only: body.chat_only, time: body.time });
      } else if (topic === "alert") {
        this.emit("alert", { kind: body.kind, message: body.message, time: body.time });
      }
    }
  }

  async _refreshCheckpoints() {
    try {
      this.checkpoints = (await this.client.checkpoints()).filter((c) => c.kind === "checkpoint")
        .map((c) => ({ name: c.name, size: c.size, step: c.step, mtime: c.mtime }));
      this.emit("checkpoints", this.checkpoints);
    } catch { /* the next (re)connection or checkpoint event tries again */ }
  }

  /**
   * The latents table (TABLE_FIELDS) as {snapshotStep, dictSize, n,
   * scalingStep, scalingTokens, dtypes, columns: name -> base64}. At most one
   * request in flight and at most one per `minAgeMs`: any number of open
   * pages share it.
   */
  async table(minAgeMs = 1000) {
    const c = this._table;
    if (c && (c.pending || Date.now() - c.at < minAgeMs)) return c.promise;
    const promise = this.client.table({ fields: TABLE_FIELDS }).then((t) => {
      const columns = {};
      for (const f of t.fields) columns[f] = b64(t.columns[f]);
      return { snapshotStep: t.snapshotStep, dictSize: t.dictSize, n: t.n, scalingStep: t.scalingStep,
        scalingTokens: t.scalingTokens, dtypes: t.dtypes, columns };
    });
    const entry = { at: Date.now(), pending: true, promise };
    this._table = entry;
    promise.then(() => { entry.pending = false; entry.at = Date.now(); },
      () => { if (this._table === entry) this._table = null; });
    return promise;
  }

  /**
   * Latent j's page: the `latent` op's record (what `xcoder latent J` shows),
   * the history recorded since the page was first opened, and its examples.
   */
  latent(j) {
    // any number of open pages of latent j share one request per ~second
    const c = this._latentCache.get(j);
    if (c && (c.pending || Date.now() - c.at < 900)) return c.promise;
    const entry = { at: Date.now(), pending: true };
    entry.promise = this._latent(j).finally(() => { entry.pending = false; entry.at = Date.now(); });
    entry.promise.catch(() => this._latentCache.delete(j));
    this._latentCache.set(j, entry);
    if (this._latentCache.size > 256) this._latentCache.delete(this._latentCache.keys().next().value);
    return entry.promise;
  }

  async _latent(j) {
    const [rec, examples] = await Promise.all([this.client.latent(j), this.examples(j)]);
    // followed only once the daemon knows j: one bad index would fail the whole js request
    let w = this._watch.get(j);
    if (!w) {
      w = { points: [] };
      this._watch.set(j, w);
      if (this._watch.size > WATCH_MAX) {
        let oldest = null;
        for (const [k, v] of this._watch) if (!oldest || v.seen < oldest[1].seen) oldest = [k, v];
        this._watch.delete(oldest[0]);
      }
    }
    w.seen = Date.now();
    if (w.points.length === 0 || w.points[w.points.length - 1].step < rec.snapshot_step) {
      const s = rec.scaling || {}, x = rec.scaling_exact || {};
      this._pushWatch(w, { t: Date.now() / 1000, step: rec.snapshot_step, delta_norm: rec.delta_norm, cosine: rec.cosine,
        norm_base: rec.norm_base, norm_chat: rec.norm_chat, freq: rec.freq, nu_err: s.nu_err ?? null, nu_rec: s.nu_rec ?? null,
        exact_nu_err: x.nu_err ?? null, exact_nu_rec: x.nu_rec ?? null });
    }
    return { latent: rec, history: this._historyOf(j, w.points), examples };
  }

  // WHY: a latent page should show where the latent came from, not only what
  // happened since it was opened; every latent's few main statistics are kept
  // at a coarse interval (one `table` request each time), merged with the
  // fine history of the latents being viewed.
  async _snapshot() {
    if (this._closed) return;
    if (this.connected) {
      try {
        const t = await this.client.table({ fields: SNAP_FIELDS });
        const last = this._snaps[this._snaps.length - 1];
        if (last && last.n !== t.n) this._snaps = []; // another dictionary (a restart with another shape)
        if (!last || last.n !== t.n || last.step < t.snapshotStep) {
          this._snaps.push({ t: Date.now() / 1000, step: t.snapshotStep, n: t.n, cols: t.columns });
          if (this._snaps.length > this.latentHistory) this._snaps.splice(0, this._snaps.length - this.latentHistory);
        }
      } catch { /* the next interval */ }
    }
    this._snapTimer = setTimeout(() => this._snapshot(), this.latentIntervalMs);
  }

  /** Latent j's coarse snapshots before its fine points, as one list by step. */
  _historyOf(j, fine) {
    const first = fine.length ? fine[0].step : Infinity;
    const out = [];
    for (const s of this._snaps) {
      if (j >= s.n || s.step >= first) continue;
      const p = { t: s.t, step: s.step };
      for (const f of SNAP_FIELDS) { const v = s.cols[f][j]; p[f] = Number.isFinite(v) ? v : null; }
      out.push(p);
    }
    return out.concat(fine);
  }

  _pushWatch(w, p) {
    w.points.push(p);
    if (w.points.length > WATCH_POINTS) w.points.splice(0, w.points.length - WATCH_POINTS);
  }

  // WHY: a latent page shows its statistics over time, but keeping every
  // latent's history would cost F × fields × points; only latents someone
  // looked at recently are followed, one `table` request (js = their indices)
  // per stats event.
  async _followWatched() {
    if (this._watchBusy || !this.connected) return;
    const now = Date.now();
    for (const [j, w] of this._watch) if (now - w.seen > WATCH_IDLE_MS) this._watch.delete(j);
    const js = [...this._watch.keys()];
    if (js.length === 0) return;
    this._watchBusy = true;
    try {
      const t = await this.client.table({ fields: WATCH_FIELDS, js });
      js.forEach((j, i) => {
        const w = this._watch.get(j);
        if (!w || (w.points.length && w.points[w.points.length - 1].step >= t.snapshotStep)) return;
        const p = { t: now / 1000, step: t.snapshotStep };
        for (const f of WATCH_FIELDS) { const v = t.columns[f][i]; p[f] = Number.isFinite(v) ? v : null; }
        this._pushWatch(w, p);
      });
    } catch { /* next stats event */ }
    this._watchBusy = false;
  }

  /**
   * Max-activating examples of latent j from the daemon's `examples` op when
   * it has one: {available: true, items, ...} or {available: false, reason}.
   */
  async examples(j, n) {
    const none = { available: false, reason: "this daemon has no examples op: examples are not available" };
    if (this._noExamples) return none;
    try {
      // PROTOCOL.md 2.3: {top, random, seen, window, top_n, random_n}, each
      // example {act, step, producer, stream, doc, pos, token, tokens, at, pieces?}
      const r = await this.client.request("examples", { j, n });
      return { available: true, top: r.top || [], random: r.random || [], seen: r.seen, window: r.window,
        top_n: r.top_n, random_n: r.random_n };
    } catch (e) {
      if (e instanceof XcoderError && e.code === "XC_EUNKNOWN") { this._noExamples = true; return none; }
      return { available: false, reason: `examples are not available: ${e.message}` };
    }
  }
}

module.exports = { DaemonLink, TABLE_FIELDS, WATCH_FIELDS };
