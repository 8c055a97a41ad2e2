#!/usr/bin/env node
"use strict";
// The dashboard against a daemon with CURVE keys (tests/integ_dashboard.sh
// runs this): without a key it gets nothing; with a reader key it shows the run
// but the daemon refuses its admin requests (XC_EPERM) even when the browser
// holds the dashboard's admin token; with an admin key they work; `xcoder
// dashboard` passes the CLI's keys on. Prints ok/not ok lines; exits 1 on failure.

const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const { execFileSync } = require("node:child_process");
const { XCODERD, XCODER, T, ok, nok, check, sleep, freePort, start, killAll, waitFor, dashboardUrl } = require("./util");

const SERVER = path.join(__dirname, "..", "server.js");

async function main() {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "xcdash-auth."));
  const k = (who) => path.join(tmp, who);
  for (const who of ["server", "reader", "admin"]) execFileSync(XCODER, ["keygen", k(who)]);
  fs.copyFileSync(`${k("reader")}.pub`, `${k("readers")}.allow`);
  fs.copyFileSync(`${k("admin")}.pub`, `${k("admins")}.allow`);
  const [pi, pc, pe] = [await freePort(), await freePort(), await freePort()];
  const ep = { ingest: `tcp://127.0.0.1:${pi}`, control: `tcp://127.0.0.1:${pc}`, events: `tcp://127.0.0.1:${pe}` };
  const daemon = start(XCODERD, ["--run_dir", k("run"), "--state_dir", k("state"), "--name", `dashauth${process.pid}`,
    "--ingest", ep.ingest, "--control", ep.control, "--events", ep.events, "--shm", "off", "--d", "16", "--dict_size", "128",
    "--k", "4", "--batch_size", "64", "--mix_tokens", "64", "--threads", "1", "--stats_interval", "0.25",
    "--curve_secret_key", `${k("server")}.key`, "--allow_readers", `${k("readers")}.allow`,
    "--allow_admins", `${k("admins")}.allow`], path.join(tmp, "daemon.log"));
  const token = "t" + require("node:crypto").randomBytes(20).toString("hex");
  fs.writeFileSync(k("token"), token + "\n", { mode: 0o600 });
  const keyArgs = (who) => ["--server-key", `${k("server")}.pub`, "--key", `${k(who)}.key`];
  await waitFor("the daemon", () => { execFileSync(XCODER, ["--control", ep.control, ...keyArgs("admin"), "--timeout", "0.3", "ping"], { stdio: "pipe" }); return true; }, 15000, 200);

  // each dashboard: its URL, then its view of the daemon after it had time to connect
  const run = async (name, cmd, args) => {
    const log = path.join(tmp, `${name}.log`);
    const p = start(cmd, args, log);
    try {
      const url = await dashboardUrl(log);
      const status = () => fetch(`${url}api/status`).then((r) => r.json());
      const connected = await waitFor(`${name} connected`, async () => (await status()).connected, 4000).catch(() => false);
      const post = async (what, body) => (await fetch(`${url}api/${what}`, { method: "POST", headers: { "X-Xcoder-Admin": token },
        body: body ? JSON.stringify(body) : undefined })).json();
      return { url, connected, table: connected ? await (await fetch(`${url}api/table`)).json() : null, checkpoint: await post("checkpoint"),
        scaling: await post("scaling", { tokens: 1000 }) };
    } finally { p.kill("SIGTERM"); await p.exited; }
  };
  const dash = ["--control", ep.control, "--events", ep.events, "--port", "0", "--poll", "0.25", "--admin-token-file", k("token")];
  try {
    const none = await run("nokey", process.execPath, [SERVER, ...dash]);
    check("auth: without a key the dashboard gets nothing from a CURVE daemon", !none.connected && none.checkpoint.ok === false,
      JSON.stringify(none.checkpoint));
    const reader = await run("reader", process.execPath, [SERVER, ...dash, ...keyArgs("reader")]);
    check("auth: with a reader key it shows the run (status, table)", reader.connected && reader.table?.ok === true && reader.table.dictSize === 128,
      JSON.stringify(reader.table)?.slice(0, 200));
    check("auth: with a reader key the daemon refuses its admin requests (XC_EPERM), token or not",
      reader.checkpoint.ok === false && reader.checkpoint.code === "XC_EPERM" && reader.scaling.code === "XC_EPERM",
      JSON.stringify([reader.checkpoint, reader.scaling]));
    const admin = await run("admin", process.execPath, [SERVER, ...dash, ...keyArgs("admin")]);
    check("auth: with an admin key and the token the checkpoint and exact-pass buttons work",
      admin.connected && admin.checkpoint.ok === true && /safetensors$/.test(admin.checkpoint.path) && admin.scaling.ok === true && admin.scaling.started === true,
      JSON.stringify([admin.checkpoint, admin.scaling]));
    const cli = await run("cli", XCODER, ["--control", ep.control, "--events", ep.events, ...keyArgs("reader"), "dashboard", "--port", "0", "--poll", "0.25",
      "--admin-token-file", k("token")]);
    check("auth: xcoder dashboard passes the CLI's keys on", cli.connected && cli.checkpoint.code === "XC_EPERM", JSON.stringify(cli.checkpoint));
  } catch (e) {
    nok("auth session", e.stack || e.message);
  } finally {
    daemon.kill("SIGTERM");
    await Promise.race([daemon.exited, sleep(10000)]);
    killAll();
    if (T.fails === 0) fs.rmSync(tmp, { recursive: true, force: true });
    else process.stderr.write(`dashboard auth test: files kept in ${tmp}\n`);
  }
  process.exit(T.fails ? 1 : 0);
}

main().catch((e) => { nok("auth setup", e.stack || e.message); killAll(); process.exit(1); });
