#!/usr/bin/env node
"use strict";
// The dashboard in a real browser (tests/integ_dashboard.sh runs this): a
// build/xcoderd on tcp://127.0.0.1, `build/xcoder synth` feeding it, the
// dashboard server, and Debian's Chromium driven headless by playwright-core.
// Prints "ok - dashboard ..." / "not ok - dashboard ...: why" lines (the
// format tests/run.sh counts) and exits 1 if any check failed. Screenshots of
// each page go to $DASH_ARTEFACTS (default build/dashboard).
// Environment: CHROMIUM (default /usr/bin/chromium), XCODERD, XCODER.

const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const { execFileSync } = require("node:child_process");
const { ROOT, XCODERD, XCODER, T, ok, nok, check, sleep, freePort, start, killAll, waitFor, dashboardUrl } = require("./util");

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const OUT = path.resolve(ROOT, process.env.DASH_ARTEFACTS || "build/dashboard");

async function main() {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "xcdash."));
  fs.mkdirSync(OUT, { recursive: true });
  const [pi, pc, pe] = [await freePort(), await freePort(), await freePort()];
  const ep = { ingest: `tcp://127.0.0.1:${pi}`, control: `tcp://127.0.0.1:${pc}`, events: `tcp://127.0.0.1:${pe}` };
  const daemonArgs = ["--run_dir", path.join(tmp, "run"), "--state_dir", path.join(tmp, "state"), "--name", `dash${process.pid}`,
    "--ingest", ep.ingest, "--control", ep.control, "--events", ep.events, "--shm", "off",
    "--d", "64", "--dict_size", "512", "--k", "4", "--batch_size", "256", "--lr", "4e-4", "--warmup_steps", "100",
    "--threshold_start_step", "300", "--dead_tokens", "1000000", "--threads", "1", "--mix_tokens", "4096",
    "--queue_size", "16", "--stats_interval", "0.25", "--checkpoint_interval", "0", "--log_level", "info"];
  const xc = (...args) => execFileSync(XCODER, ["--control", ep.control, "--events", ep.events, "--ingest", ep.ingest, "--timeout", "20", ...args],
    { encoding: "utf8" });
  const xcJson = (...args) => JSON.parse(xc("--json", ...args));
  const startDaemon = async () => {
    const d = start(XCODERD, daemonArgs, path.join(tmp, "daemon.log"));
    await waitFor("the daemon's ping", () => { xc("--timeout", "0.3", "ping"); return true; }, 15000, 200);
    return d;
  };
  const startSynth = () => start(XCODER, ["--ingest", ep.ingest, "--control", ep.control, "synth", "--seed", "7", "--shared", "24",
    "--chat-only", "10", "--base-only", "6", "--shrunk", "10", "--shrunk-scale", "0.4", "--batch", "512", "--rate", "0", "--quiet"],
  path.join(tmp, "synth.log"));

  let daemon = await startDaemon();
  let synth = startSynth();
  // the dashboard starts late, after some training: its curves must still show
  // the run from the start (the daemon's stats history, op `history`)
  const histLines = () => xc("history", "--json", "--count", "100000").split("\n").filter(Boolean).map((l) => JSON.parse(l));
  await waitFor("some training and stats history before the dashboard starts",
    () => histLines().filter((e) => e.step > 0).length >= 6, 40000, 250);
  const dashStart = Date.now() / 1000;
  const tokenFile = path.join(tmp, "admin.token");
  const token = "t" + require("node:crypto").randomBytes(20).toString("hex");
  fs.writeFileSync(tokenFile, token + "\n", { mode: 0o600 });
  const dash = start(process.execPath, [path.join(__dirname, "..", "server.js"), "--control", ep.control, "--events", ep.events,
    "--port", "0", "--poll", "0.5", "--latent-interval", "0.5", "--admin-token-file", tokenFile], path.join(tmp, "dashboard.log"));
  const url = await dashboardUrl(path.join(tmp, "dashboard.log"));
  check("server prints its URL on 127.0.0.1", /^http:\/\/127\.0\.0\.1:\d+\/$/.test(url), url);

  const { chromium } = require("playwright-core");
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "xcdash-chromium."));
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM, headless: true, viewport: { width: 1280, height: 900 },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
  const page = ctx.pages()[0] || await ctx.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  const external = [];
  page.on("request", (r) => { if (!r.url().startsWith(url)) external.push(r.url()); });
  const num = async (sel) => Number(await page.getAttribute(sel, "data-value"));
  try {
    // ------------------------------------------------------------ overview
    await page.goto(url);
    await page.waitForSelector("#sum-step[data-value]:not([data-value=''])");
    await waitFor("training to start", async () => (await num("#sum-step")) > 0);
    const s1 = await num("#sum-step");
    await sleep(1500);
    const s2 = await num("#sum-step");
    check("overview: the step advances between two reads", s2 > s1, `${s1} then ${s2}`);
    const pts = await page.evaluate(() => window.xcDash.charts.loss && window.xcDash.charts.loss.data[0].length);
    check("overview: loss, FVE, L0, dead, tokens/s, queue, refusals charts drawn with live points",
      pts >= 2 && (await page.locator("#ts-charts .chart").count()) === 7, `${pts} points`);
    check("overview: run configuration shown", (await page.textContent("#config")).includes("dict_size"), "no dict_size row");
    check("overview: read-only without the admin token", await page.isHidden("#admin"), "admin panel visible");
    const denied = await page.evaluate(async () => (await fetch("/api/checkpoint", { method: "POST" })).status);
    check("admin request without the credential refused (403)", denied === 403, `HTTP ${denied}`);
    // the curves reach back before the dashboard started, as the daemon's history has them
    const hist0 = histLines();
    const past = await page.evaluate((t) => {
      const p = window.xcDash.S.points, c = window.xcDash.charts.loss.data[0];
      return { n: p.filter((q) => q.t < t).length, first: p.length ? p[0].t : null, chartFirst: c.length ? c[0] : null,
        steps: p.filter((q) => q.t < t).map((q) => q.step), src: document.querySelector("#ts-src").textContent };
    }, dashStart);
    const histBefore = hist0.filter((e) => e.time < dashStart);
    check("overview: curves start with the daemon's history from before the dashboard started",
      past.n >= 6 && past.n === histBefore.length && Math.abs(past.first - hist0[0].time) < 1e-6 &&
      past.chartFirst === past.first && past.steps.every((v, i) => v === histBefore[i].step) && /history/.test(past.src),
      `${past.n} points before the start (history ${histBefore.length}), first ${past.first} vs ${hist0[0] && hist0[0].time}, chart ${past.chartFirst}; "${past.src}"`);
    await page.reload();
    await page.waitForSelector("#sum-step[data-value]:not([data-value=''])");
    await waitFor("the curves after a reload", () => page.evaluate(() => window.xcDash.charts.loss && window.xcDash.charts.loss.data[0].length > 0), 10000);
    const afterReload = await page.evaluate((t) => window.xcDash.charts.loss.data[0].filter((x) => x < t).length, dashStart);
    check("overview: a page reload shows the same past", afterReload === past.n, `${afterReload} points before the start after reload, ${past.n} before`);
    await page.screenshot({ path: path.join(OUT, "overview.png") });
    const foreign = await Promise.all([{ host: "evil.example" }, { origin: "http://evil.example" }].map((h) => new Promise((resolve) => {
      const u = new URL(url);
      const req = require("node:http").get({ host: u.hostname, port: u.port, path: "/api/status", headers: h }, (res) => { res.resume(); resolve(res.statusCode); });
      req.on("error", (e) => resolve(e.message));
    })));
    check("foreign Host (DNS rebinding) and cross-site Origin refused (403)", foreign[0] === 403 && foreign[1] === 403, foreign.join(", "));

    // ------------------------- features learnt, exact pass, then a paused model
    const t0 = Date.now();
    await waitFor("chat-only latents to appear", () => xcJson("status").classes.chat_only >= 5, 40000, 500);
    process.stderr.write(`dashboard test: 5 chat-only latents after ${((Date.now() - t0) / 1000).toFixed(1)} s more\n`);
    xc("scaling", "--tokens", "100000", "--wait");
    xc("pause");
    const st = await waitFor("a paused daemon", () => { const s = xcJson("status"); return s.paused && s.state === "paused" && s; });
    await sleep(300);
    const paused = xcJson("status");

    // ------------------------------------------------------------- latents
    await page.keyboard.press("2");
    await waitFor("the latents page at the paused step", async () =>
      (await page.isVisible("#page-latents")) && (await page.textContent("#tab-step")).replace(/,/g, "") === String(paused.step), 15000);
    // status's class counts come from the last per-latent refresh, which the
    // dashboard's table request brought to the paused step: read them now
    const status = xcJson("status");
    const alive = status.config.dict_size - status.classes.dead;
    const histSum = await page.evaluate(() => window.xcDash.charts.hist.data[1].reduce((a, b) => a + b, 0));
    check("latents: histogram bars sum to the alive latents of status", histSum === alive && (await num("#hist-sum")) === alive,
      `bars ${histSum}, status ${alive} (step ${status.step} vs ${st.step})`);
    const nPts = await page.locator("#scatter circle.pt").count();
    check("latents: scatter has one point per chat-only latent", nPts === status.classes.chat_only && nPts > 0,
      `${nPts} points, status chat_only ${status.classes.chat_only}`);
    const nExact = await page.locator("#scatter circle.pt.exact").count();
    const fills = await page.evaluate(() => ["exact", "running"].map((c) => {
      const e = document.querySelector(`#scatter circle.pt.${c}`);
      return e ? getComputedStyle(e).fill : null;
    }));
    check("latents: exact-pass points drawn distinctly from running ones",
      nExact > 0 && fills[0] !== "rgb(255, 255, 255)" && fills[0] !== fills[1], `${nExact} exact points, fills ${fills}`);
    check("latents: chat-specific region shaded", (await page.locator("#scatter rect.region").count()) === 1, "no region");
    // keyboard: the scatter's points are in the tab order right after the header, labelled, visibly focused; Enter opens the page
    const ptJs = await page.$$eval("#scatter a", (els) => els.map((e) => Number(e.dataset.j)));
    const labels = await page.$$eval("#scatter a", (els) => els.map((e) => e.getAttribute("aria-label")));
    check("latents: every scatter point has an aria label naming its latent and ν",
      labels.length === nPts && labels.every((l, i) => new RegExp(`^latent ${ptJs[i]}: (ν\\^ε|ν undefined)`).test(l || "")), labels.slice(0, 3).join(" | "));
    await page.focus("#goto button");
    await page.keyboard.press("Tab");
    const focus1 = await page.evaluate(() => { const a = document.activeElement; return a && a.closest("#scatter") ? Number(a.dataset.j) : `${a && a.tagName}#${a && a.id}`; });
    let focus2 = null;
    if (nPts > 1) { await page.keyboard.press("Tab"); focus2 = await page.evaluate(() => Number(document.activeElement.dataset.j)); }
    check("keyboard: Tab reaches the scatter's points, in order of j", focus1 === ptJs[0] && (nPts < 2 || focus2 === ptJs[1]), `focused ${focus1}, ${focus2}; points ${ptJs.slice(0, 3)}`);
    const fj = nPts > 1 ? ptJs[1] : ptJs[0];
    const ring = await page.evaluate(() => [...document.querySelectorAll("#scatter circle.pt")].map((c) => [Number(c.dataset.j), getComputedStyle(c).strokeWidth, getComputedStyle(c).r]));
    const mine = ring.find((x) => x[0] === fj), other = ring.find((x) => x[0] !== fj);
    check("keyboard: the focused point is drawn visibly (thicker ring, larger)", mine && mine[1] === "3px" && (!other || (other[1] !== "3px" && other[2] !== mine[2])), JSON.stringify([mine, other]));
    await page.evaluate(() => window.xcDash.redrawLatents());
    const kept = await page.evaluate(() => Number(document.activeElement && document.activeElement.dataset.j));
    check("keyboard: the focus stays on its point when the scatter is redrawn", kept === fj, `${kept} (was ${fj})`);
    await page.keyboard.press("Enter");
    await waitFor("Enter on a scatter point to open its latent page", async () => (await page.evaluate(() => location.hash)) === `#/latent/${fj}`, 5000)
      .then(() => ok("keyboard: Enter on a scatter point opens its latent page"), (e) => nok("keyboard: Enter on a scatter point opens its latent page", e.message));
    await page.keyboard.press("2");
    await waitFor("the latents page again", async () => (await page.isVisible("#page-latents")) && (await page.locator("#latents tbody tr").count()) > 0, 10000);
    // sort by Δnorm (ascending, then descending with a second press), filter chat-only
    await page.click("#latents thead button[data-key=delta_norm]");
    await page.selectOption("#f-class", "chat_only");
    const shown = await page.locator("#latents tbody tr").count();
    check("latents: the table filters to the chat-only latents", shown === status.classes.chat_only, `${shown} rows`);
    const ds = await page.$$eval("#latents tbody tr td:nth-child(3) .n", (els) => els.map((e) => Number(e.dataset.value)));
    check("latents: the table sorts by Δnorm", ds.every((v, i) => i === 0 || ds[i - 1] >= v) || ds.every((v, i) => i === 0 || ds[i - 1] <= v), ds.join(","));
    await page.screenshot({ path: path.join(OUT, "latents.png"), fullPage: true });

    // -------------------------------------------------------- a latent page
    // a latent whose ν comes from the exact pass, so both kinds are compared
    const link = page.locator("#latents tbody tr", { has: page.locator("td:nth-child(8)", { hasText: "exact" }) }).locator("a").first();
    const j = Number(await link.textContent());
    await link.focus();
    await page.keyboard.press("Enter"); // keyboard: the table's links open latent pages
    await waitFor("latent page", async () => (await page.isVisible("#page-latent")) && (await page.locator("#lat-stats dd[data-field=delta_norm]").count()) === 1);
    check("latent page: opened from the table", (await page.evaluate(() => location.hash)) === `#/latent/${j}`, await page.evaluate(() => location.hash));
    const cli = xcJson("latent", String(j));
    const close = (a, b) => (a == null || Number.isNaN(a) ? b == null : b != null && Math.abs(a - b) <= 1e-6 * Math.max(1, Math.abs(b)));
    const pv = async (f) => { const v = await page.getAttribute(`#page-latent [data-field=${f}]`, "data-value"); return v === "" || v == null ? null : Number(v); };
    const got = { d: await pv("delta_norm"), re: await pv("running_nu_err"), rr: await pv("running_nu_rec"), xe: await pv("exact_nu_err"), xr: await pv("exact_nu_rec") };
    const want = { d: cli.stats.delta_norm, re: cli.stats.scaling.nu_err, rr: cli.stats.scaling.nu_rec,
      xe: cli.stats.scaling_exact?.nu_err ?? null, xr: cli.stats.scaling_exact?.nu_rec ?? null };
    check("latent page: Δnorm and ν (running and exact) equal `xcoder latent J --json`",
      Object.keys(want).every((k) => close(got[k], want[k])) && want.xe != null, `page ${JSON.stringify(got)} cli ${JSON.stringify(want)}`);
    const hist = await page.evaluate(() => window.xcDash.S.latent.history.map((p) => [p.step, p.delta_norm]));
    check("latent page: its statistics over time, from before the page was opened",
      hist.length >= 3 && hist.every((p, i) => i === 0 || p[0] > hist[i - 1][0]) && hist.every((p) => typeof p[1] === "number") &&
      (await page.evaluate(() => window.xcDash.charts["lat-delta"].data[0].length)) === hist.length, JSON.stringify(hist).slice(0, 300));
    // the daemon's examples of j (training is paused: they stay as they are)
    const { Client } = require("../..");
    const cl = new Client(ep.control, { timeout: 10000 });
    const exOp = await cl.request("examples", { j }).catch((e) => e);
    cl.close();
    if (exOp.code === "XC_EUNKNOWN") {
      check("latent page: says examples are not available (a daemon without the examples op)",
        /not available/.test(await page.textContent("#lat-examples")), await page.textContent("#lat-examples"));
    } else {
      await waitFor("the examples", async () => (await page.locator("#ex-top li").count()) > 0, 5000).catch(() => {});
      const acts = await page.$$eval("#ex-top li .act", (els) => els.map((e) => Number(e.dataset.value)));
      const marks = await page.locator("#ex-top li mark").count();
      check("latent page: max-activating examples as the examples op gives them, activating token marked",
        exOp.ok && exOp.top.length > 0 && acts.length === exOp.top.length && marks === acts.length &&
        acts.every((a, i) => Math.abs(a - exOp.top[i].act) <= 1e-6 * Math.max(1, Math.abs(a))) &&
        (await page.locator("#ex-random li").count()) === exOp.random.length,
        `page ${acts.length} top (${marks} marked) ${acts.slice(0, 3)}, op ${exOp.top?.length} top ${exOp.top?.slice(0, 3).map((x) => x.act)}, ${exOp.message ?? ""}`);
    }
    await page.screenshot({ path: path.join(OUT, "latent.png"), fullPage: true });
    await page.evaluate(() => { location.hash = "#/latent/999999"; });
    await waitFor("the error for a latent out of range", async () => /XC_ENOTFOUND/.test(await page.textContent("#lat-err")), 5000)
      .then(() => ok("latent page: an index out of range says XC_ENOTFOUND"), (e) => nok("latent page: an index out of range says XC_ENOTFOUND", e.message));
    await page.evaluate((jj) => { location.hash = `#/latent/${jj}`; }, j);
    await waitFor("latent page again", async () => (await page.textContent("#h-latent")) === `Latent ${j}` && !(await page.isVisible("#lat-err")), 5000);
    await page.keyboard.press("]");
    await waitFor("the next latent by keyboard", async () => (await page.evaluate(() => location.hash)) === `#/latent/${j + 1}`, 3000);
    ok("keyboard: 2 opens the latents page, Enter a latent, ] the next one");

    // ------------------------------------------------------------- admin
    xc("resume");
    await page.goto(`${url}#admin=${token}`);
    await page.waitForSelector("#admin:not([hidden])", { timeout: 5000 }).catch(() => {});
    const adminShown = await page.isVisible("#admin");
    if (adminShown) {
      await page.click("#b-checkpoint");
      await waitFor("the checkpoint reply", async () => /checkpoint written/.test(await page.textContent("#admin-out")), 20000).catch(() => {});
    }
    const out = adminShown ? await page.textContent("#admin-out") : "";
    check("admin: with the credential, the checkpoint button writes a checkpoint", adminShown && /checkpoint written/.test(out), adminShown ? out : "panel hidden");
    await waitFor("the checkpoint listed", async () => (await page.locator("#ckpts tbody tr td.age").count()) >= 1, 5000).catch(() => {});
    check("overview: checkpoints listed with their age", (await page.locator("#ckpts tbody tr td.age").count()) >= 1, await page.textContent("#ckpts"));

    // ----------------------------------------------------- daemon restart
    const before = await num("#sum-step");
    daemon.kill("SIGTERM");
    const rc = await daemon.exited;
    await waitFor("the page to say the daemon is gone", async () => (await page.getAttribute("#conn", "data-state")) === "down", 10000)
      .then(() => ok("restart: the page says the daemon is not answering"), (e) => nok("restart: the page says the daemon is not answering", e.message));
    await page.screenshot({ path: path.join(OUT, "disconnected.png") });
    daemon = await startDaemon();
    if (synth.exitCode !== null || synth.signalCode !== null) synth = startSynth();
    await waitFor("the page to say it reconnected", async () => (await page.getAttribute("#conn", "data-state")) === "reconnected", 15000)
      .then(async () => check("restart: the page says it reconnected (and that the daemon restarted)",
        /restarted/.test(await page.textContent("#conn")), await page.textContent("#conn")),
      (e) => nok("restart: the page says it reconnected", e.message));
    const after = await waitFor("the step to advance after the restart", async () => { const s = await num("#sum-step"); return s > before && s; }, 15000).catch((e) => e.message);
    check("restart: live again, the step advances past the last one before it", typeof after === "number", `${after} (before ${before}, daemon exit ${rc})`);
    await page.screenshot({ path: path.join(OUT, "reconnected.png") });

    check("no script errors in the page", errors.length === 0, errors.join("; "));
    check("nothing loaded from outside the dashboard (works offline)", external.length === 0, external.join(" "));
    let bytes = 0;
    for (const f of ["vendor/uPlot.iife.min.js", "vendor/uPlot.min.css", "app.js", "style.css", ""]) bytes += (await (await fetch(url + f)).arrayBuffer()).byteLength;
    check(`page weight ${(bytes / 1024).toFixed(0)} KiB (< 300 KB)`, bytes < 300000, `${bytes} bytes`);
  } catch (e) {
    nok("browser session", e.stack || e.message);
    try { await page.screenshot({ path: path.join(OUT, "failure.png"), fullPage: true }); } catch { /* closed */ }
    process.stderr.write(fs.readFileSync(path.join(tmp, "dashboard.log"), "utf8").slice(-2000));
  } finally {
    await ctx.close().catch(() => {});
    fs.rmSync(profile, { recursive: true, force: true });
    dash.kill("SIGTERM");
    synth.kill("SIGTERM");
    daemon.kill("SIGTERM");
    await Promise.race([daemon.exited, sleep(10000)]);
    killAll();
    if (T.fails === 0) fs.rmSync(tmp, { recursive: true, force: true });
    else process.stderr.write(`dashboard test: files kept in ${tmp}\n`);
  }
  process.exit(T.fails ? 1 : 0);
}

main().catch((e) => { nok("setup", e.stack || e.message); killAll(); process.exit(1); });
