#!/usr/bin/env bash
# Authentication on tcp endpoints (CurveZMQ + the daemon's ZAP handler), with
# the C client (xcoder CLI / libxcoder) and the Python client against a real
# xcoderd on loopback: no key gets nothing, a reader reads but may not pause,
# an admin does everything, a producer pushes but may not read, a reader may
# not fetch a training-state file, allow-lists reload on SIGHUP, refusals are
# counted; a non-loopback tcp bind without keys refuses to start unless
# insecure_tcp = on (then warns, and status says so). Prints ok/not ok lines.
set -u
TEST_TMP_TAG=xc_integ_auth TEST_PREFIX="auth "
source "$(dirname "$0")/lib.sh"
json_ok() { [ "$(py_json "$1" "$2" 2>/dev/null)" = True ]; }
read -r PI PC PE < <(free_ports)
ING=tcp://127.0.0.1:$PI CTL=tcp://127.0.0.1:$PC EVT=tcp://127.0.0.1:$PE
NAME=xcauth$$

mkdir -p "$T/keys"
for who in server reader admin producer stranger; do
  "$XC" keygen "$T/keys/$who" >/dev/null 2>&1 || nok "keygen_$who" "xcoder keygen failed"
done
if [ "$(stat -c %a "$T/keys/reader.key")" = 600 ] && grep -q '^public-key = "' "$T/keys/reader.pub" &&
   ! "$XC" keygen "$T/keys/reader" >/dev/null 2>&1; then ok "keygen_files_0600_never_overwritten"
else nok "keygen_files_0600_never_overwritten" "mode $(stat -c %a "$T/keys/reader.key")"; fi
cp "$T/keys/reader.pub" "$T/readers.allow"
cp "$T/keys/admin.pub" "$T/admins.allow"
cp "$T/keys/producer.pub" "$T/producers.allow"

start_daemon() {
  "$XCD" --run_dir "$T/run" --state_dir "$T/state" --name "$NAME" --ingest "$ING" --control "$CTL" \
    --events "$EVT" --d 16 --dict_size 256 --k 4 --batch_size 128 --mix_tokens 128 --threads 1 \
    --curve_secret_key "$T/keys/server.key" --allow_readers "$T/readers.allow" \
    --allow_admins "$T/admins.allow" --allow_producers "$T/producers.allow" --log_level info \
    >"$T/daemon.log" 2>&1 &
  DPID=$!
}
start_daemon
SRV="$T/keys/server.pub"
X() { "$XC" --ingest "$ING" --control "$CTL" --events "$EVT" --server-key "$SRV" "$@"; }
up=0
for _ in $(seq 1 100); do
  if X --key "$T/keys/admin.key" --timeout 0.3 ping >/dev/null 2>&1; then up=1; break; fi
  kill -0 "$DPID" 2>/dev/null || break
  sleep 0.1
done
if [ $up -eq 1 ]; then ok "daemon_with_curve_up"; else
  nok "daemon_with_curve_up" "$(tail -3 "$T/daemon.log" | tr '\n' ' ')"; exit 1; fi

# no key at all (plain tcp to a CURVE socket), and an unknown key: no answer
if ! "$XC" --control "$CTL" --timeout 1 status >/dev/null 2>&1; then ok "no_key_gets_nothing"
else nok "no_key_gets_nothing" "status answered without a key"; fi
if ! X --key "$T/keys/stranger.key" --timeout 1 status >/dev/null 2>&1; then ok "unknown_key_gets_nothing"
else nok "unknown_key_gets_nothing" "status answered an unknown key"; fi

# reader: status yes, pause no (XC_EPERM with a reason)
if X --key "$T/keys/reader.key" --timeout 5 status >/dev/null 2>"$T/err"; then ok "reader_status"
else nok "reader_status" "$(cat "$T/err")"; fi
if ! X --key "$T/keys/reader.key" --timeout 5 pause >"$T/out" 2>&1 && grep -q "XC_EPERM\|admin role" "$T/out"
then ok "reader_may_not_pause"; else nok "reader_may_not_pause" "$(cat "$T/out")"; fi
# producer: pushes, may not read status
if X --key "$T/keys/producer.key" --timeout 10 synth --tokens 1024 --batch 256 --quiet >"$T/out" 2>&1
then ok "producer_pushes"; else nok "producer_pushes" "$(tail -2 "$T/out")"; fi
if ! X --key "$T/keys/producer.key" --timeout 5 status >"$T/out" 2>&1 && grep -q "reader role" "$T/out"
then ok "producer_may_not_read"; else nok "producer_may_not_read" "$(cat "$T/out")"; fi
# reader may not push
if ! X --key "$T/keys/reader.key" --timeout 5 synth --tokens 256 --batch 256 --quiet >"$T/out" 2>&1 &&
   grep -q "XC_EPERM\|producer role" "$T/out"; then ok "reader_may_not_push"
else nok "reader_may_not_push" "$(cat "$T/out")"; fi
# admin: pause, resume, checkpoint
if X --key "$T/keys/admin.key" --timeout 10 pause >/dev/null 2>&1 &&
   X --key "$T/keys/admin.key" --timeout 10 resume >/dev/null 2>&1 &&
   X --key "$T/keys/admin.key" --timeout 60 checkpoint >/dev/null 2>"$T/err"; then ok "admin_everything"
else nok "admin_everything" "$(cat "$T/err")"; fi
# the training-state file (producers' raw activations) is admin-only
RES=$(ls "$T/state" | grep '\.resume\.safetensors$' | head -1)
MOD=$(ls "$T/state" | grep -v resume | grep '\.safetensors$' | head -1)
if ! X --key "$T/keys/reader.key" --timeout 10 fetch "$RES" "$T/r.st" >"$T/out" 2>&1 &&
   grep -q "admin" "$T/out" && X --key "$T/keys/reader.key" --timeout 20 fetch "$MOD" "$T/m.st" >/dev/null 2>&1 &&
   X --key "$T/keys/admin.key" --timeout 20 fetch "$RES" "$T/a.st" >/dev/null 2>&1; then
  ok "training_state_fetch_admin_only"
else nok "training_state_fetch_admin_only" "res=$RES mod=$MOD $(cat "$T/out")"; fi

# Python client with keys (and refused without the right role)
if XC_CTL="$CTL" XC_SRV="$SRV" XC_KEYS="$T/keys" PYTHONPATH="$PWD/client/python" $PY - >"$T/py.out" 2>&1 <<'EOF'
import os, sys
import xcoder
from xcoder.errors import XcoderError, XcoderTimeout
ctl, srv, k = os.environ["XC_CTL"], os.environ["XC_SRV"], os.environ["XC_KEYS"]
r = xcoder.Client(ctl, timeout=5, server_key=srv, client_key=k + "/reader.key")
st = r.status()
assert st["curve"] is True and st["insecure_tcp"] is False, st
try:
    r.pause(); sys.exit("reader paused")
except XcoderError as e:
    assert e.code == "XC_EPERM", e.code
a = xcoder.Client(ctl, timeout=5, server_key=srv, client_key=k + "/admin.key")
a.pause(); a.resume()
s = xcoder.Client(ctl, timeout=1, server_key=srv, client_key=k + "/stranger.key")
try:
    s.status(); sys.exit("stranger answered")
except XcoderTimeout:
    pass
print("python ok")
EOF
then ok "python_client_roles"; else nok "python_client_roles" "$(tail -3 "$T/py.out" | tr '\n' ' ')"; fi

# JavaScript client with keys
if XC_CTL="$CTL" XC_SRV="$SRV" XC_KEYS="$T/keys" node - >"$T/js.out" 2>&1 <<'EOF'
const xc = require(process.cwd() + "/client/js");
const { XC_CTL: ctl, XC_SRV: srv, XC_KEYS: k } = process.env;
(async () => {
  const r = new xc.Client(ctl, { timeout: 5000, serverKey: srv, clientKey: k + "/reader.key" });
  const st = await r.status();
  if (st.curve !== true) throw new Error("status.curve " + st.curve);
  let denied = null;
  try { await r.pause(); } catch (e) { denied = e.code; }
  if (denied !== "XC_EPERM") throw new Error("reader pause: " + denied);
  const a = new xc.Client(ctl, { timeout: 5000, serverKey: srv, clientKey: k + "/admin.key" });
  await a.pause(); await a.resume();
  const s = new xc.Client(ctl, { timeout: 1000, serverKey: srv, clientKey: k + "/stranger.key" });
  let timedOut = false;
  try { await s.status(); } catch (e) { timedOut = e instanceof xc.XcoderTimeout; }
  if (!timedOut) throw new Error("stranger answered");
  for (const c of [r, a, s]) c.close();
  console.log("js ok");
})().catch((e) => { console.error(e); process.exit(1); });
EOF
then ok "js_client_roles"; else nok "js_client_roles" "$(tail -3 "$T/js.out" | tr '\n' ' ')"; fi

# counted: refused handshakes and denied requests
X --key "$T/keys/admin.key" --timeout 5 --json status >"$T/st.json" 2>/dev/null
if json_ok "$T/st.json" 'j["counters"]["auth_refused"] >= 2 and j["counters"]["control_denied"] >= 3 and j["counters"]["XC_EPERM"] >= 1'
then ok "refusals_counted"; else nok "refusals_counted" "$(head -c 400 "$T/st.json")"; fi

# SIGHUP reloads the allow-lists: the stranger becomes a reader
cat "$T/keys/stranger.pub" >>"$T/readers.allow"
kill -HUP "$DPID"
got=0
for _ in $(seq 1 30); do
  if X --key "$T/keys/stranger.key" --timeout 0.5 status >/dev/null 2>&1; then got=1; break; fi
done
if [ $got -eq 1 ]; then ok "allow_lists_reload_on_sighup"; else nok "allow_lists_reload_on_sighup" "still refused"; fi

X --key "$T/keys/admin.key" --timeout 30 shutdown --wait >/dev/null 2>&1
wait "$DPID"; rc=$?
if [ $rc -eq 0 ]; then ok "admin_shutdown"; else nok "admin_shutdown" "exit $rc"; fi

# a non-loopback tcp bind without keys: refused; with insecure_tcp = on: warned
read -r QI QC QE < <(free_ports)
"$XCD" --run_dir "$T/run2" --state_dir "$T/state2" --name "${NAME}b" --ingest "tcp://*:$QI" \
  --control "tcp://127.0.0.1:$QC" --events "tcp://127.0.0.1:$QE" --d 8 --dict_size 64 --k 2 --batch_size 64 \
  --mix_tokens 64 --threads 1 >"$T/d2.log" 2>&1
rc=$?
if [ $rc -eq 2 ] && grep -q "insecure_tcp" "$T/d2.log"; then ok "remote_tcp_without_keys_refused"
else nok "remote_tcp_without_keys_refused" "exit $rc: $(tail -2 "$T/d2.log")"; fi
"$XCD" --run_dir "$T/run2" --state_dir "$T/state2" --name "${NAME}b" --ingest "tcp://*:$QI" \
  --control "tcp://127.0.0.1:$QC" --events "tcp://127.0.0.1:$QE" --d 8 --dict_size 64 --k 2 --batch_size 64 \
  --mix_tokens 64 --threads 1 --insecure_tcp on >"$T/d3.log" 2>&1 &
D3=$!
st=""
for _ in $(seq 1 50); do
  st=$("$XC" --control "tcp://127.0.0.1:$QC" --timeout 0.3 --json status 2>/dev/null) && break
  sleep 0.1
done
echo "$st" >"$T/st3.json"
if json_ok "$T/st3.json" 'j["insecure_tcp"] is True and j["curve"] is False' && grep -q INSECURE "$T/d3.log"
then ok "insecure_tcp_warns"; else nok "insecure_tcp_warns" "$(head -c 200 "$T/st3.json")"; fi
kill -TERM "$D3" 2>/dev/null; wait "$D3" 2>/dev/null
exit 0
