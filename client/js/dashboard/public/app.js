"use strict";
// The dashboard page: three views (overview, latents, one latent) fed by the
// server's event stream (/api/events) and, on demand, /api/table and
// /api/latent/J. No framework; charts by uPlot (time series, histogram), the
// scatter as SVG (one element per latent).
(() => {
  const $ = (s, el = document) => el.querySelector(s);
  const CLASS_NAMES = ["other", "shared", "chat_only", "base_only", "dead"];
  const CLASS_LABEL = { other: "other", shared: "shared", chat_only: "chat-only", base_only: "base-only", dead: "dead" };
  const BINS = 50;

  const S = {
    connected: false, everConnected: false, since: 0, restarts: 0, control: "",
    status: null, config: null, checkpoints: [], points: [], admin: false,
    table: null, tableAt: 0, tableBusy: false,
    latent: null, latentJ: -1, latentAt: 0, latentBusy: false,
    sort: { key: "delta_norm", dir: -1 }, page: 0, pageSize: 100,
    reconnectedAt: 0,
  };
  const charts = {};
  window.xcDash = { S, charts }; // for the browser test and the curious (redraw: below)

  // ---------------------------------------------------------------- admin token
  // #admin=TOKEN (printed by the server) is kept for this tab only and removed from the URL.
  let adminToken = sessionStorage.getItem("xcAdmin");
  function takeToken() {
    if (!location.hash.startsWith("#admin=")) return;
    adminToken = decodeURIComponent(location.hash.slice(7));
    sessionStorage.setItem("xcAdmin", adminToken);
    history.replaceState(null, "", location.pathname + "#/");
    $("#admin").hidden = !(S.admin && adminToken);
  }
  takeToken();

  // ------------------------------------------------------------------ formatting
  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  function fmt(v, digits = 4) {
    if (v === null || v === undefined || (typeof v === "number" && !Number.isFinite(v))) return "—";
    if (typeof v !== "number") return String(v);
    if (Number.isInteger(v) && Math.abs(v) < 1e15) return v.toLocaleString("en-US");
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(2);
    return Number(v.toPrecision(digits)).toString();
  }
  function fmtBytes(n) {
    if (!isNum(n)) return "—";
    const u = ["B", "kB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1000 && i < u.length - 1) { n /= 1000; i++; }
    return `${n.toFixed(n < 10 && i ? 1 : 0)} ${u[i]}`;
  }
  function fmtAge(s) {
    if (!isNum(s)) return "—";
    s = Math.max(0, s);
    if (s < 90) return `${Math.round(s)} s`;
    if (s < 5400) return `${Math.round(s / 60)} min`;
    if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
    return `${(s / 86400).toFixed(1)} d`;
  }
  function short(v) {
    if (v == null) return "";
    const a = Math.abs(v);
    if (a >= 1e9) return `${+(v / 1e9).toFixed(1)}G`;
    if (a >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
    if (a >= 1e4) return `${+(v / 1e3).toFixed(1)}k`;
    return String(+v.toPrecision(3));
  }
  const yAxis = { size: 50, values: (u, vals) => vals.map(short) };
  // one point (a paused run, a page just opened): a minute around it rather than years
  const xTime = { time: true };
  // WHY: uPlot stretches a time axis with a single point (a paused run, a page
  // just opened) over years; show a minute around it instead.
  function fitX(u) {
    const t = u.data[0];
    if (t.length && t[t.length - 1] - t[0] < 1) u.setScale("x", { min: t[0] - 30, max: t[t.length - 1] + 30 });
  }
  const clock = (t) => new Date(t * 1000).toLocaleTimeString("en-GB");
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  // a number in the page: shown rounded, kept exact in data-value
  const numCell = (v, digits) => `<span class="n" data-value="${isNum(v) ? v : ""}">${fmt(v, digits)}</span>`;

  // ------------------------------------------------------------------ routing
  function route() {
    const h = location.hash || "#/";
    let m;
    if ((m = /^#\/latent\/(\d+)$/.exec(h))) return { page: "latent", j: Number(m[1]) };
    if (h.startsWith("#/latents")) return { page: "latents" };
    return { page: "overview" };
  }
  function show() {
    takeToken();
    const r = route();
    for (const p of ["overview", "latents", "latent"]) $(`#page-${p}`).hidden = p !== r.page;
    $("#nav-overview").toggleAttribute("aria-current", r.page === "overview");
    $("#nav-latents").toggleAttribute("aria-current", r.page === "latents");
    if (r.page === "overview") { document.title = "xcoderd · overview"; drawSeries(true); }
    if (r.page === "latents") { document.title = "xcoderd · latents"; refreshTable(true); }
    if (r.page === "latent") {
      document.title = `xcoderd · latent ${r.j}`;
      if (S.latentJ !== r.j) { S.latent = null; S.latentJ = r.j; renderLatent(); }
      refreshLatent(true);
    }
  }
  window.addEventListener("hashchange", show);

  // --------------------------------------------------------------- event stream
  function connect() {
    const es = new EventSource("/api/events");
    es.addEventListener("hello", (e) => {
      const h = JSON.parse(e.data);
      Object.assign(S, { connected: h.connected, everConnected: h.everConnected, since: h.since, restarts: h.restarts,
        control: h.control, status: h.status, config: h.config, checkpoints: h.checkpoints, admin: h.admin, name: h.name });
      S.points = h.points;
      S.history = h.history;
      S.serverUp = true;
      rebuildSeries();
      renderAll();
    });
    es.addEventListener("conn", (e) => {
      const c = JSON.parse(e.data);
      const wasDown = !S.connected && S.everConnected;
      S.connected = c.connected; S.since = c.since; S.restarts = c.restarts;
      if (c.connected) {
        if (wasDown || c.restarted) { S.reconnectedAt = c.since; S.reconnectRestarted = c.restarted || S.reconnectRestarted; }
        S.everConnected = true;
        logEvent(c.restarted ? "daemon restarted; reconnected" : wasDown ? "reconnected to the daemon" : "connected to the daemon", c.since);
      } else if (S.everConnected) {
        logEvent("daemon not answering", c.since);
      }
      renderConn();
    });
    es.addEventListener("status", (e) => {
      S.status = JSON.parse(e.data);
      renderSummary();
      if (route().page === "overview") renderKpis();
      if (route().page === "latents") refreshTable(false);
      if (route().page === "latent") refreshLatent(false);
    });
    es.addEventListener("point", (e) => { addPoint(JSON.parse(e.data)); });
    // the daemon's history merged under the live points (on each (re)connection)
    es.addEventListener("points", (e) => {
      const h = JSON.parse(e.data);
      S.points = h.points; S.history = h.history;
      rebuildSeries();
    });
    es.addEventListener("config", (e) => { S.config = JSON.parse(e.data); renderConfig(); });
    es.addEventListener("checkpoints", (e) => { S.checkpoints = JSON.parse(e.data); renderCkpts(); });
    es.addEventListener("checkpoint", (e) => { const c = JSON.parse(e.data); logEvent(`checkpoint at step ${c.step} (${c.reason})`, c.time); });
    es.addEventListener("scaling", (e) => {
      const c = JSON.parse(e.data);
      logEvent(`exact Latent Scaling pass done: step ${c.step}, ${fmt(c.tokens)} tokens, ${c.chat_specific} of ${c.chat_only} chat-only latents chat-specific`, c.time);
      S.tableAt = 0;
      if (route().page === "latents") refreshTable(true);
    });
    es.addEventListener("alert", (e) => { const c = JSON.parse(e.data); logEvent(`alert (${c.kind}): ${c.message}`, c.time); });
    es.onerror = () => { S.serverUp = false; renderConn(); };
    es.onopen = () => { S.serverUp = true; renderConn(); };
  }

  const evlog = [];
  function logEvent(text, t) {
    evlog.unshift({ text, t: t || Date.now() / 1000 });
    if (evlog.length > 12) evlog.pop();
    $("#evlog").innerHTML = evlog.map((e) => `<li><time>${clock(e.t)}</time> ${esc(e.text)}</li>`).join("");
  }

  // ------------------------------------------------------------- header, overview
  function renderAll() {
    renderConn(); renderSummary(); renderKpis(); renderConfig(); renderCkpts();
    $("#admin").hidden = !(S.admin && adminToken);
    $("#foot-src").textContent = S.control;
    show();
  }

  function renderConn() {
    const el = $("#conn");
    let st, text;
    if (S.serverUp === false) { st = "server-down"; text = "dashboard server not answering — retrying…"; }
    else if (!S.connected) {
      st = "down";
      text = S.everConnected ? `daemon not answering since ${clock(S.since)} — reconnecting…` : `waiting for the daemon at ${S.control}…`;
    } else if (S.reconnectedAt && Date.now() / 1000 - S.reconnectedAt < 120) {
      st = "reconnected";
      text = `reconnected at ${clock(S.reconnectedAt)}${S.reconnectRestarted ? " (the daemon restarted)" : ""}`;
    } else { st = "up"; text = "live"; }
    el.dataset.state = st;
    el.textContent = text;
  }
  setInterval(() => { renderConn(); renderCkptAges(); }, 1000);

  function renderSummary() {
    const s = S.status || {};
    $("#inst").textContent = S.name ? `xcoderd · ${S.name}` : "xcoderd";
    $("#summary").innerHTML = [
      `<span>state <b>${esc(s.state ?? "—")}</b></span>`,
      `<span>step <b id="sum-step" data-value="${s.step ?? ""}">${fmt(s.step)}</b></span>`,
      `<span>tokens <b>${fmt(s.tokens)}</b></span>`,
      `<span><b>${fmt(s.tokens_per_s, 3)}</b> tokens/s</span>`,
    ].join(" ");
  }

  function renderKpis() {
    const s = S.status || {}, c = s.classes || {};
    const fve = Array.isArray(s.fve) ? s.fve : [];
    const items = [
      ["step", s.step], ["loss", s.loss], ["FVE base", fve[0]], ["FVE chat", fve[1]], ["L0", s.l0],
      ["dead", isNum(s.dead_fraction) ? `${(100 * s.dead_fraction).toFixed(1)} %` : "—"], ["tokens/s", s.tokens_per_s],
      ["queue", `${fmt(s.queue_depth)} / ${fmt(s.queue_size)}`], ["refused", s.batches_refused],
      ["chat-only", c.chat_only], ["chat-specific", c.chat_specific], ["shared", c.shared], ["base-only", c.base_only],
    ];
    $("#kpis").innerHTML = items.map(([k, v]) => `<div><span class="muted">${k}</span><b>${typeof v === "string" ? esc(v) : fmt(v)}</b></div>`).join("");
  }

  function renderConfig() {
    const c = S.config || {};
    $("#config tbody").innerHTML = Object.keys(c).sort().map((k) => `<tr><th>${esc(k)}</th><td>${esc(c[k])}</td></tr>`).join("");
  }

  function renderCkpts() {
    const rows = [...(S.checkpoints || [])].reverse();
    $("#ckpts tbody").innerHTML = rows.length
      ? rows.map((c) => `<tr><td>${esc(c.name)}</td><td class="num">${fmt(c.step)}</td><td class="num">${fmtBytes(c.size)}</td><td class="num age" data-mtime="${c.mtime}"></td></tr>`).join("")
      : `<tr><td colspan="4" class="muted">no checkpoint yet</td></tr>`;
    renderCkptAges();
  }
  function renderCkptAges() {
    const now = Date.now() / 1000;
    for (const td of document.querySelectorAll("#ckpts td.age")) td.textContent = fmtAge(now - Number(td.dataset.mtime));
  }

  // ------------------------------------------------------------------ time series
  const fromZero = (u, lo, hi) => [Math.min(0, lo ?? 0), Math.max(1e-9, hi ?? 1) * 1.1];
  const SERIES = [
    { id: "loss", title: "Loss terms", lines: [["loss", "loss", "#1f5fa8"], ["recon_l2", "recon (l2)", "#2a9d4b"], ["aux", "AuxK", "#c0392b"], ["l1", "L1", "#8e44ad"]] },
    { id: "fve", title: "FVE per model", lines: [["fve_base", "base", "#1f5fa8"], ["fve_chat", "chat", "#d35400"]] },
    { id: "l0", title: "L0 (active latents per token)", lines: [["l0", "L0", "#1f5fa8"]], range: fromZero },
    { id: "dead", title: "Dead fraction", lines: [["dead_fraction", "dead", "#7f8c8d"]], range: (u, lo, hi) => [0, Math.max(0.05, hi * 1.1)] },
    { id: "tps", title: "Tokens/s", lines: [["tokens_per_s", "tokens/s", "#2a9d4b"]], range: fromZero },
    { id: "queue", title: "Queue depth (batches)", lines: [["queue_depth", "depth", "#1f5fa8"], ["queue_size", "capacity", "#bbb"]], range: fromZero },
    { id: "refused", title: "Refused batches per interval", lines: [["refused", "refused", "#c0392b"]], range: fromZero },
  ];
  let seriesData = null, seriesDirty = false;

  function renderSeriesSource() {
    const h = S.history, n = S.points.length;
    $("#ts-src").textContent = !n ? "no points yet" : h && h.loaded > 0
      ? `${fmt(n)} points since ${clock(S.points[0].t)}: the daemon's stats history (${fmt(h.loaded)} events${h.more ? ", the newest of a longer history" : ""}), then live`
      : `${fmt(n)} points since ${clock(S.points[0].t)}, live (${h && h.enabled === false ? "the daemon keeps no history: history_max_bytes = 0" : h && h.error ? `no history from the daemon: ${h.error}` : "the daemon's history not loaded yet"})`;
  }

  function rebuildSeries() {
    renderSeriesSource();
    seriesData = {};
    const col = (k) => S.points.map((p) => (isNum(p[k]) ? p[k] : null));
    seriesData.t = S.points.map((p) => p.t);
    for (const d of SERIES) for (const [k] of d.lines) seriesData[k] = col(k);
    seriesDirty = true;
    drawSeries(false);
  }
  function addPoint(p) {
    S.points.push(p);
    if (!seriesData) return rebuildSeries();
    seriesData.t.push(p.t);
    for (const d of SERIES) for (const [k] of d.lines) seriesData[k].push(isNum(p[k]) ? p[k] : null);
    const max = 20000;
    if (S.points.length > max) { S.points.splice(0, S.points.length - max); rebuildSeries(); return; }
    seriesDirty = true;
    if (S.points.length === 1 || S.points.length % 20 === 0) renderSeriesSource();
    drawSeries(false);
  }

  let drawQueued = false;
  function drawSeries(force) {
    if (route().page !== "overview" || !seriesData) return;
    if (force) seriesDirty = true;
    if (drawQueued) return;
    drawQueued = true;
    requestAnimationFrame(() => {
      drawQueued = false;
      if (!seriesDirty) return;
      seriesDirty = false;
      const host = $("#ts-charts");
      for (const d of SERIES) {
        const data = [seriesData.t, ...d.lines.map(([k]) => seriesData[k])];
        if (!charts[d.id]) {
          const box = document.createElement("div");
          box.className = "chart"; box.id = `ch-${d.id}`;
          box.setAttribute("role", "img"); box.setAttribute("aria-label", d.title);
          host.appendChild(box);
          charts[d.id] = new uPlot({
            title: d.title, width: chartWidth(box), height: 170,
            scales: { x: xTime, ...(d.range ? { y: { range: d.range } } : {}) },
            series: [{}, ...d.lines.map(([, label, color]) => ({ label, stroke: color, width: 1.5, points: { show: false } }))],
            axes: [{}, yAxis],
          }, data, box);
        } else charts[d.id].setData(data);
        fitX(charts[d.id]);
      }
    });
  }
  function chartWidth(el) { return Math.max(260, Math.floor((el.parentElement?.clientWidth || 800) / (el.parentElement?.id === "ts-charts" ? 2 : 1)) - 24); }
  window.addEventListener("resize", () => {
    for (const [id, u] of Object.entries(charts)) {
      const box = u.root.parentElement;
      if (box && box.offsetParent) u.setSize({ width: chartWidth(box), height: u.height });
      void id;
    }
  });

  // -------------------------------------------------------------------- latents
  function decodeTable(t) {
    const cols = {};
    for (const [name, b64] of Object.entries(t.columns)) {
      const bin = atob(b64);
      const u8 = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) u8[i] = bin.charCodeAt(i);
      const dt = t.dtypes[name];
      cols[name] = dt === "f32" ? new Float32Array(u8.buffer) : dt === "f64" ? new Float64Array(u8.buffer) : u8;
    }
    return { ...t, cols };
  }

  // WHY: the table is asked for only while the latents page is shown, at most
  // every 2 s and one request at a time, whatever the stats rate.
  async function refreshTable(now) {
    if (S.tableBusy || (!now && Date.now() - S.tableAt < 2000)) return;
    S.tableBusy = true;
    try {
      const r = await (await fetch("/api/table")).json();
      if (r.ok) { S.table = decodeTable(r); S.tableAt = Date.now(); renderLatents(); }
      else $("#lat-info").textContent = `table not available: ${r.error}`;
    } catch (e) {
      $("#lat-info").textContent = `table not available: ${e.message}`;
    } finally { S.tableBusy = false; }
  }

  const thr = () => {
    const c = S.config || {};
    const g = (k, d) => (isNum(Number(c[k])) ? Number(c[k]) : d);
    return { chat_only_min: g("chat_only_min", 0.9), base_only_max: g("base_only_max", 0.1), shared_lo: g("shared_lo", 0.4),
      shared_hi: g("shared_hi", 0.6), nu_err_max: g("nu_err_max", 0.2), nu_rec_max: g("nu_rec_max", 0.5) };
  };
  const hasExact = (t, j) => (t.cols.flags[j] & 2) !== 0 || Number.isFinite(t.cols.exact_nu_err[j]) || Number.isFinite(t.cols.exact_nu_rec[j]);
  // ν shown for latent j: the exact pass's where it decided, else the running estimate
  function nuOf(t, j) {
    if (hasExact(t, j)) return { err: t.cols.exact_nu_err[j], rec: t.cols.exact_nu_rec[j], exact: true };
    return { err: t.cols.nu_err[j], rec: t.cols.nu_rec[j], exact: false };
  }

  function renderLatents() {
    const t = S.table;
    if (!t) return;
    const F = t.n, cls = t.cols.class;
    let alive = 0;
    for (let j = 0; j < F; j++) if (cls[j] !== 4) alive++;
    $("#lat-info").innerHTML = `snapshot step <b id="tab-step">${fmt(t.snapshotStep)}</b> · <b id="tab-alive" data-value="${alive}">${fmt(alive)}</b> alive of ${fmt(F)} latents · ` +
      (t.scalingStep >= 0 ? `exact Latent Scaling pass at step ${fmt(t.scalingStep)} over ${fmt(t.scalingTokens)} tokens` : "no exact Latent Scaling pass yet (ν are running estimates)");
    drawHist(t);
    drawScatter(t);
    renderTable();
  }

  let histLines = [];
  function drawHist(t) {
    const counts = new Array(BINS).fill(0), centers = [];
    for (let b = 0; b < BINS; b++) centers.push((b + 0.5) / BINS);
    for (let j = 0; j < t.n; j++) {
      if (t.cols.class[j] === 4) continue;
      const d = t.cols.delta_norm[j];
      counts[Math.min(BINS - 1, Math.max(0, Math.floor((Number.isFinite(d) ? d : 0.5) * BINS)))]++;
    }
    const sum = counts.reduce((a, b) => a + b, 0);
    const th = thr();
    const lines = [[th.base_only_max, "base-only ≤"], [th.shared_lo, "shared"], [th.shared_hi, ""], [th.chat_only_min, "≥ chat-only"]];
    $("#hist-cap").innerHTML = `Δnorm of the <span id="hist-sum" data-value="${sum}">${fmt(sum)}</span> alive latents (${BINS} bins; dashed: class thresholds ${lines.map((l) => l[0]).join(", ")})`;
    const box = $("#hist");
    box.setAttribute("role", "img");
    box.setAttribute("aria-label", `histogram of Δnorm over ${sum} alive latents`);
    const data = [centers, counts];
    histLines = lines;
    if (!charts.hist) {
      charts.hist = new uPlot({
        title: "Δnorm (relative decoder norm)", width: chartWidth(box), height: 260,
        scales: { x: { time: false, range: [0, 1] }, y: { range: (u, lo, hi) => [0, Math.max(1, hi) * 1.08] } },
        series: [{ label: "Δnorm" }, { label: "latents", fill: "rgba(31,95,168,0.55)", stroke: "#1f5fa8", width: 1, paths: uPlot.paths.bars({ size: [1, Infinity], gap: 1 }), points: { show: false } }],
        axes: [{ label: "Δnorm: 0 base-only · 1 chat-only" }, yAxis],
        legend: { show: false },
        hooks: {
          draw: [(u) => {
            const ctx = u.ctx;
            ctx.save();
            ctx.setLineDash([5, 4]);
            ctx.strokeStyle = "#c0392b";
            ctx.fillStyle = "#c0392b";
            ctx.font = `${11 * devicePixelRatio}px sans-serif`;
            for (const [x, label] of histLines) {
              const px = u.valToPos(x, "x", true);
              ctx.beginPath(); ctx.moveTo(px, u.bbox.top); ctx.lineTo(px, u.bbox.top + u.bbox.height); ctx.stroke();
              if (label) ctx.fillText(label, px + 3 * devicePixelRatio, u.bbox.top + 12 * devicePixelRatio);
            }
            ctx.restore();
          }],
        },
      }, data, box);
    } else charts.hist.setData(data);
  }

  // WHY SVG: one element per chat-only latent (a few hundred at most), each
  // with its own tooltip and link to its page, exact and running ν drawn
  // differently; undefined ν get a point in a side strip so none is hidden.
  // Each point is a link in the tab order (by j), labelled for screen
  // readers; Enter opens its latent page. The scatter is redrawn with every
  // table refresh, so the focused point is focused again afterwards.
  function drawScatter(t) {
    const focused = document.activeElement && document.activeElement.closest ? document.activeElement.closest("#scatter a") : null;
    const focusJ = focused ? focused.dataset.j : null;
    const th = thr();
    const pts = [];
    for (let j = 0; j < t.n; j++) if (t.cols.class[j] === 2) pts.push({ j, ...nuOf(t, j), spec: (t.cols.flags[j] & 1) !== 0 });
    const W = 460, H = 340, L = 48, R = 70, T = 16, B = 40;
    const def = pts.filter((p) => Number.isFinite(p.err) && Number.isFinite(p.rec));
    let x0 = -0.1, x1 = 1.1, y0 = -0.1, y1 = 1.1;
    for (const p of def) { x0 = Math.min(x0, p.err); x1 = Math.max(x1, p.err); y0 = Math.min(y0, p.rec); y1 = Math.max(y1, p.rec); }
    x0 = Math.max(x0, -2); x1 = Math.min(x1, 3); y0 = Math.max(y0, -2); y1 = Math.min(y1, 3);
    const X = (v) => L + ((Math.min(x1, Math.max(x0, v)) - x0) / (x1 - x0)) * (W - L - R);
    const Y = (v) => H - B - ((Math.min(y1, Math.max(y0, v)) - y0) / (y1 - y0)) * (H - T - B);
    const ticks = (a, b) => { const out = []; for (let v = Math.ceil(a * 4) / 4; v <= b + 1e-9; v += 0.25) out.push(+v.toFixed(2)); return out; };
    let s = `<svg id="scatter" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="group" aria-label="ν error vs ν reconstruction of ${pts.length} chat-only latents; each point opens its latent's page">`;
    s += `<rect class="region" x="${X(x0)}" y="${Y(Math.min(th.nu_rec_max, y1))}" width="${X(Math.min(th.nu_err_max, x1)) - X(x0)}" height="${Y(y0) - Y(Math.min(th.nu_rec_max, y1))}"><title>chat-specific: ν^ε &lt; ${th.nu_err_max} and ν^r &lt; ${th.nu_rec_max}</title></rect>`;
    for (const v of ticks(x0, x1)) s += `<line class="grid" x1="${X(v)}" x2="${X(v)}" y1="${T}" y2="${H - B}"/><text class="tick" x="${X(v)}" y="${H - B + 14}" text-anchor="middle">${v}</text>`;
    for (const v of ticks(y0, y1)) s += `<line class="grid" x1="${L}" x2="${W - R}" y1="${Y(v)}" y2="${Y(v)}"/><text class="tick" x="${L - 4}" y="${Y(v) + 4}" text-anchor="end">${v}</text>`;
    s += `<text class="axis" x="${(L + W - R) / 2}" y="${H - 6}" text-anchor="middle">ν<tspan baseline-shift="super" font-size="9">ε</tspan> (error target)</text>`;
    s += `<text class="axis" transform="translate(12 ${(T + H - B) / 2}) rotate(-90)" text-anchor="middle">ν<tspan baseline-shift="super" font-size="9">r</tspan> (reconstruction target)</text>`;
    s += `<text class="tick" x="${W - R + 8}" y="${T + 8}">ν undefined</text><line class="grid" x1="${W - R + 4}" x2="${W - R + 4}" y1="${T}" y2="${H - B}"/>`;
    let und = 0;
    for (const p of pts) {
      const cls = `pt ${p.exact ? "exact" : "running"}${p.spec ? " spec" : ""}`;
      let cx, cy, tip;
      if (Number.isFinite(p.err) && Number.isFinite(p.rec)) { cx = X(p.err); cy = Y(p.rec); tip = `ν^ε ${fmt(p.err)}, ν^r ${fmt(p.rec)}`; }
      else { cx = W - R + 14 + (und % 6) * 8; cy = T + 18 + Math.floor(und / 6) * 8; und++; tip = "ν undefined (too few activations)"; }
      const label = `latent ${p.j}: ${tip} (${p.exact ? "exact pass" : "running estimate"})${p.spec ? ", chat-specific" : ""}`;
      s += `<a href="#/latent/${p.j}" data-j="${p.j}" aria-label="${esc(label)}"><circle class="${cls} ${Number.isFinite(p.err) && Number.isFinite(p.rec) ? "" : "undef"}" data-j="${p.j}" cx="${cx.toFixed(1)}" cy="${cy.toFixed(1)}" r="4"><title>${esc(label)}</title></circle></a>`;
    }
    s += "</svg>";
    $("#scatter-wrap").innerHTML = s;
    if (focusJ != null) { const a = $(`#scatter a[data-j="${focusJ}"]`); if (a) a.focus(); }
    const nExact = pts.filter((p) => p.exact).length;
    $("#scatter-cap").innerHTML = `ν<sup>ε</sup> vs ν<sup>r</sup> of the <span id="scatter-n" data-value="${pts.length}">${pts.length}</span> chat-only latents: ` +
      `<span class="key exact">●</span> exact pass (${nExact}) · <span class="key running">○</span> running estimate (${pts.length - nExact}); ` +
      `shaded: chat-specific (ν<sup>ε</sup> < ${th.nu_err_max}, ν<sup>r</sup> < ${th.nu_rec_max})${und ? `; ${und} with ν undefined at the right` : ""}`;
  }

  // ------------------------------------------------------------------ the table
  const COLS = [
    { key: "j", label: "j", num: true },
    { key: "class", label: "class" },
    { key: "delta_norm", label: "Δnorm", num: true },
    { key: "cosine", label: "cosine", num: true },
    { key: "freq", label: "frequency", num: true },
    { key: "nu_err", label: "ν<sup>ε</sup>", num: true },
    { key: "nu_rec", label: "ν<sup>r</sup>", num: true },
    { key: "nu_src", label: "ν from" },
    { key: "spec", label: "chat-specific" },
  ];
  function val(t, j, key) {
    switch (key) {
      case "j": return j;
      case "class": return t.cols.class[j];
      case "nu_err": return nuOf(t, j).err;
      case "nu_rec": return nuOf(t, j).rec;
      case "nu_src": return hasExact(t, j) ? 1 : 0;
      case "spec": return t.cols.flags[j] & 1;
      default: return t.cols[key][j];
    }
  }
  function parseJ(s) {
    s = s.trim();
    if (!s) return null;
    let m;
    if ((m = /^(\d+)\s*[-:]\s*(\d+)$/.exec(s))) return [Number(m[1]), Number(m[2])];
    if ((m = /^\d+$/.exec(s))) return [Number(s), Number(s)];
    return [-1, -2];
  }
  function renderTable() {
    const t = S.table;
    if (!t) return;
    const head = $("#latents thead tr");
    if (!head.children.length) {
      head.innerHTML = COLS.map((c) => `<th class="${c.num ? "num" : ""}" aria-sort="none"><button type="button" data-key="${c.key}">${c.label}</button></th>`).join("");
      head.addEventListener("click", (e) => {
        const b = e.target.closest("button");
        if (!b) return;
        const k = b.dataset.key;
        S.sort = { key: k, dir: S.sort.key === k ? -S.sort.dir : k === "j" ? 1 : -1 };
        S.page = 0;
        renderTable();
      });
    }
    for (const th of head.children) {
      const k = th.firstElementChild.dataset.key;
      th.setAttribute("aria-sort", k === S.sort.key ? (S.sort.dir > 0 ? "ascending" : "descending") : "none");
    }
    const f = $("#f-class").value, dmin = Number($("#f-dmin").value) || 0, jr = parseJ($("#f-j").value);
    const rows = [];
    for (let j = 0; j < t.n; j++) {
      const c = t.cols.class[j];
      if (f === "alive" && c === 4) continue;
      if (f === "chat_specific" && !(t.cols.flags[j] & 1)) continue;
      if (f !== "alive" && f !== "all" && f !== "chat_specific" && CLASS_NAMES[c] !== f) continue;
      if (dmin > 0 && !(t.cols.delta_norm[j] >= dmin)) continue;
      if (jr && (j < jr[0] || j > jr[1])) continue;
      rows.push(j);
    }
    const { key, dir } = S.sort;
    const v = new Float64Array(t.n);
    for (const j of rows) v[j] = val(t, j, key);
    rows.sort((a, b) => {
      const x = v[a], y = v[b], nx = Number.isNaN(x), ny = Number.isNaN(y);
      if (nx || ny) return nx === ny ? a - b : nx ? 1 : -1; // undefined last either way
      return x === y ? a - b : (x < y ? -dir : dir);
    });
    const pages = Math.max(1, Math.ceil(rows.length / S.pageSize));
    S.page = Math.min(S.page, pages - 1);
    const slice = rows.slice(S.page * S.pageSize, (S.page + 1) * S.pageSize);
    $("#t-count").textContent = `${rows.length.toLocaleString("en-US")} latents`;
    $("#pg-info").textContent = `page ${S.page + 1} of ${pages}`;
    $("#pg-prev").disabled = S.page === 0;
    $("#pg-next").disabled = S.page >= pages - 1;
    $("#latents tbody").innerHTML = slice.map((j) => {
      const nu = nuOf(t, j);
      return `<tr data-j="${j}"><td class="num"><a href="#/latent/${j}">${j}</a></td><td>${CLASS_LABEL[CLASS_NAMES[t.cols.class[j]]] || "?"}</td>` +
        `<td class="num">${numCell(t.cols.delta_norm[j])}</td><td class="num">${numCell(t.cols.cosine[j])}</td><td class="num">${numCell(t.cols.freq[j], 3)}</td>` +
        `<td class="num">${numCell(nu.err, 3)}</td><td class="num">${numCell(nu.rec, 3)}</td><td>${nu.exact ? "exact" : "running"}</td><td>${t.cols.flags[j] & 1 ? "yes" : ""}</td></tr>`;
    }).join("");
  }
  for (const id of ["#f-class", "#f-dmin", "#f-j"]) $(id).addEventListener("input", () => { S.page = 0; renderTable(); });
  $("#filters").addEventListener("submit", (e) => e.preventDefault());
  $("#pg-prev").addEventListener("click", () => { S.page--; renderTable(); });
  $("#pg-next").addEventListener("click", () => { S.page++; renderTable(); });

  // ---------------------------------------------------------------- latent page
  async function refreshLatent(now) {
    const j = S.latentJ;
    if (j < 0 || S.latentBusy || (!now && Date.now() - S.latentAt < 1000)) return;
    S.latentBusy = true;
    try {
      const r = await (await fetch(`/api/latent/${j}`)).json();
      if (j !== S.latentJ) return;
      S.latentAt = Date.now();
      if (r.ok) { S.latent = r; S.latentErr = null; } else S.latentErr = `${r.code}: ${r.error}`;
      renderLatent();
    } catch (e) {
      S.latentErr = e.message; renderLatent();
    } finally { S.latentBusy = false; }
  }

  function renderLatent() {
    const j = S.latentJ;
    $("#h-latent").textContent = `Latent ${j}`;
    $("#lat-prev").href = `#/latent/${Math.max(0, j - 1)}`;
    $("#lat-next").href = `#/latent/${j + 1}`;
    const err = $("#lat-err");
    err.hidden = !S.latentErr;
    err.textContent = S.latentErr || "";
    const r = S.latent;
    if (!r) { $("#lat-stats").innerHTML = ""; return; }
    const L = r.latent, sc = L.scaling || {}, ex = L.scaling_exact || null;
    $("#lat-step").textContent = `(snapshot step ${fmt(L.snapshot_step)})`;
    const items = [
      ["class", CLASS_LABEL[L.class] || L.class, "class"], ["chat-specific", L.chat_specific ? "yes" : "no", "chat_specific"],
      ["Δnorm", L.delta_norm, "delta_norm"], ["cosine", L.cosine, "cosine"], ["frequency", L.freq, "freq"],
      ["mean activation", L.mean_act, "mean_act"], ["max activation", L.max_act, "max_act"], ["fired", L.fired, "fired"],
      ["tokens since fired", L.tokens_since_fired, "tokens_since_fired"], ["last step fired", L.last_step_fired, "last_step_fired"],
      ["dead", L.dead ? "yes" : "no", "dead"],
    ];
    $("#lat-stats").innerHTML = items.map(([k, v, f]) => `<dt>${k}</dt><dd data-field="${f}"${typeof v === "number" ? ` data-value="${v}"` : ""}>${typeof v === "number" ? fmt(v) : esc(v)}</dd>`).join("");
    const nb = L.norm_base, nc = L.norm_chat, mx = Math.max(nb || 0, nc || 0, 1e-12);
    $("#lat-norms").innerHTML = [["base", nb, "norm_base"], ["chat", nc, "norm_chat"]].map(([m, v, f]) =>
      `<div class="bar"><span class="lbl">${m}</span><span class="track"><span class="fill ${m}" style="width:${(100 * (v || 0) / mx).toFixed(1)}%"></span></span><span class="n" data-field="${f}" data-value="${v ?? ""}">${fmt(v)}</span></div>`).join("");
    const nuRow = (name, m, cls) => `<tr class="${cls}"><th>${name}</th>` +
      `<td class="num" data-field="${cls}_nu_err" data-value="${m && m.nu_err != null ? m.nu_err : ""}">${fmt(m ? m.nu_err : null)}</td>` +
      `<td class="num" data-field="${cls}_nu_rec" data-value="${m && m.nu_rec != null ? m.nu_rec : ""}">${fmt(m ? m.nu_rec : null)}</td>` +
      `<td>${m ? `${fmt(m.beta_err_base)}, ${fmt(m.beta_err_chat)}` : "—"}</td><td>${m ? `${fmt(m.beta_rec_base)}, ${fmt(m.beta_rec_chat)}` : "—"}</td></tr>`;
    $("#lat-nu tbody").innerHTML = nuRow("running", sc, "running") + nuRow(ex ? "exact pass" : "exact pass (none yet)", ex, "exact");
    drawLatentCharts(r.history);
    $("#lat-hist-cap").textContent = `${r.history.length} point${r.history.length === 1 ? "" : "s"}: every latent's main statistics ` +
      "at a coarse interval since the dashboard started, then at every stats event while its page is open (cosine and exact ν only then)";
    renderExamples(r.examples);
  }

  function drawLatentCharts(h) {
    const t = h.map((p) => p.t);
    const col = (k) => h.map((p) => (isNum(p[k]) ? p[k] : null));
    const defs = [
      { id: "lat-delta", title: "Δnorm and cosine over time", lines: [["delta_norm", "Δnorm", "#1f5fa8"], ["cosine", "cosine", "#7f8c8d"]] },
      { id: "lat-nu", title: "ν: running (solid) vs exact (dashed)", lines: [["nu_err", "νε running", "#c0392b"], ["nu_rec", "νr running", "#2a9d4b"], ["exact_nu_err", "νε exact", "#c0392b", [6, 4]], ["exact_nu_rec", "νr exact", "#2a9d4b", [6, 4]]] },
      { id: "lat-norm", title: "Decoder norms over time", lines: [["norm_base", "base", "#1f5fa8"], ["norm_chat", "chat", "#d35400"]] },
      { id: "lat-freq", title: "Firing frequency over time", lines: [["freq", "frequency", "#8e44ad"]] },
    ];
    const host = $("#lat-charts");
    for (const d of defs) {
      const data = [t, ...d.lines.map(([k]) => col(k))];
      if (!charts[d.id]) {
        const box = document.createElement("div");
        box.className = "chart"; box.id = `ch-${d.id}`;
        box.setAttribute("role", "img"); box.setAttribute("aria-label", d.title);
        host.appendChild(box);
        charts[d.id] = new uPlot({
          title: d.title, width: Math.max(300, host.clientWidth - 8 || 460), height: 150, scales: { x: xTime },
          series: [{}, ...d.lines.map(([, label, color, dash]) => ({ label, stroke: color, width: 1.5, dash, points: { show: h.length < 3 } }))],
          axes: [{}, yAxis],
        }, data, box);
      } else charts[d.id].setData(data);
      fitX(charts[d.id]);
    }
  }

  // Examples (the daemon's `examples` op): each window rendered as
  // xcoder.render_example does (pieces joined, a token without a piece as
  // <id>, <?> when its id is unknown, control characters escaped), the
  // activating token marked.
  const escPiece = (p) => p.replace(/[\x00-\x1f\x7f]/g, (c) =>
    c === "\n" ? "\\n" : c === "\r" ? "\\r" : c === "\t" ? "\\t" : `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`);
  function exampleHtml(x) {
    const toks = x.tokens || [], pieces = x.pieces;
    const body = toks.map((t, i) => {
      const p = pieces && i < pieces.length && pieces[i] != null ? escPiece(String(pieces[i])) : t == null ? "<?>" : `<${t}>`;
      return i === x.at ? `<mark>${esc(p)}</mark>` : esc(p);
    }).join("");
    const where = [x.stream ? `stream ${x.stream}` : "", x.doc != null ? `doc ${x.doc}${x.pos != null ? `:${x.pos}` : ""}` : "",
      x.step != null ? `step ${x.step}` : "", x.producer ? x.producer : ""].filter(Boolean).join(" · ");
    return `<li><span class="act n" data-value="${isNum(x.act) ? x.act : ""}">${fmt(x.act)}</span> <span class="ctx">${body}</span> <span class="muted">${esc(where)}</span></li>`;
  }
  function renderExamples(e) {
    const el = $("#lat-examples");
    if (!e || !e.available) { el.innerHTML = `<p class="muted" id="examples-na">${esc(e ? e.reason : "examples are not available")}</p>`; return; }
    const top = e.top || [], rnd = e.random || [];
    const noIds = [...top, ...rnd].every((x) => (x.tokens || []).every((t) => t == null));
    el.innerHTML = `<p class="muted">${fmt(e.seen)} activations seen; the ${top.length} largest and a uniform sample of ${rnd.length}` +
      `${e.window != null ? `, each with ±${e.window} tokens of context` : ""}${noIds && (top.length || rnd.length) ? " (the producer sent no token ids: &lt;?&gt; marks the token)" : ""}.</p>` +
      (top.length ? `<h3>Most activating</h3><ol class="examples" id="ex-top">${top.map(exampleHtml).join("")}</ol>` : `<p class="muted">no examples recorded for this latent yet</p>`) +
      (rnd.length ? `<h3>Random sample</h3><ol class="examples" id="ex-random">${rnd.map(exampleHtml).join("")}</ol>` : "");
  }

  // ---------------------------------------------------------------------- admin
  async function adminPost(url, body) {
    const out = $("#admin-out");
    out.textContent = "…";
    try {
      const r = await (await fetch(url, { method: "POST", headers: { "Content-Type": "application/json", "X-Xcoder-Admin": adminToken || "" }, body: JSON.stringify(body || {}) })).json();
      out.textContent = r.ok ? (r.path ? `checkpoint written: ${r.path} (step ${r.step})` : `exact pass started over ${fmt(r.tokens)} tokens`) : `refused: ${r.error}`;
    } catch (e) { out.textContent = `failed: ${e.message}`; }
  }
  $("#f-scaling").addEventListener("submit", (e) => { e.preventDefault(); adminPost("/api/scaling", { tokens: Number($("#scaling-tokens").value) }); });
  $("#b-checkpoint").addEventListener("click", () => adminPost("/api/checkpoint"));

  // ------------------------------------------------------------------- keyboard
  $("#goto").addEventListener("submit", (e) => {
    e.preventDefault();
    const v = $("#goto-j").value.trim();
    if (/^\d+$/.test(v)) location.hash = `#/latent/${Number(v)}`;
  });
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.target.closest("input, select, textarea")) { if (e.key === "Escape") e.target.blur(); return; }
    const r = route();
    if (e.key === "1") location.hash = "#/";
    else if (e.key === "2") location.hash = "#/latents";
    else if (e.key === "g") { e.preventDefault(); $("#goto-j").focus(); }
    else if (e.key === "/" && r.page === "latents") { e.preventDefault(); $("#f-j").focus(); }
    else if (e.key === "[" && r.page === "latent" && r.j > 0) location.hash = `#/latent/${r.j - 1}`;
    else if (e.key === "]" && r.page === "latent") location.hash = `#/latent/${r.j + 1}`;
  });

  window.xcDash.redrawLatents = renderLatents;
  connect();
  show();
})();
