#!/usr/bin/env bash
# Integration test of the xcoder CLI (and so libxcoder) against a real xcoderd
# on ipc:// endpoints in a temp dir: push a .npy (float32 and float16), status,
# latents, latent, config, events, watch, checkpoint, report, pause/resume,
# --json output parsed by Python, bad input refused with a clear message and a
# non-zero exit while the daemon keeps running, and a clean shutdown.
# Prints "ok - name" / "not ok - name: why"; exits non-zero on any failure.
set -u
TEST_TMP_TAG=xc_integ_cli
source "$(dirname "$0")/lib.sh"
RUN="$T/run"
X() { "$XC" --run-dir "$RUN" --timeout 20 "$@"; }

D=16
"$XCD" --run_dir "$RUN" --state_dir "$T/state" --name integ$$ --d $D --dict_size 128 --k 4 --batch_size 256 \
  --lr 1e-3 --warmup_steps 10 --threshold_start_step 20 --mix_tokens 512 --stats_interval 0.2 \
  --threads 1 --log_level warn >"$T/daemon.log" 2>&1 &
DPID=$!
up=0
for _ in $(seq 1 100); do
  if X --timeout 0.2 ping >/dev/null 2>&1; then up=1; break; fi
  kill -0 "$DPID" 2>/dev/null || break
  sleep 0.1
done
if [ $up -eq 1 ]; then ok "daemon_starts"; else
  nok "daemon_starts" "no answer to ping; log: $(tail -5 "$T/daemon.log" | tr '\n' ' ')"; exit 1
fi

# --- push: float32 file made by `xcoder synth --out`
if X synth --out "$T/a.npy" --tokens 4096 --d $D --seed 3 >"$T/out" 2>&1 &&
   X push "$T/a.npy" --batch 500 >"$T/out" 2>&1 && grep -q "pushed .*4096 tokens" "$T/out"; then
  ok "push_f32_npy"
else nok "push_f32_npy" "$(tail -3 "$T/out")"; fi

# --- push: float16 file written by numpy, with --json
"$PY" -c "import numpy as np; np.save('$T/h.npy', (np.random.RandomState(0).randn(1000,2,$D)*0.1).astype(np.float16))"
if X push "$T/h.npy" --json >"$T/out" 2>&1 && [ "$(py_json "$T/out" "j['tokens'], j['dtype']")" = "1000 f16" ]; then
  ok "push_f16_npy_json"
else nok "push_f16_npy_json" "$(tail -3 "$T/out")"; fi

# --- pushed tokens become training steps
steps=0
for _ in $(seq 1 100); do
  X status --json >"$T/st.json" 2>"$T/err" || break
  steps=$(py_json "$T/st.json" "j['step']")
  [ "$steps" -ge 15 ] && break
  sleep 0.1
done
if [ "$steps" -ge 15 ] 2>/dev/null; then ok "status_json_shows_steps"; else nok "status_json_shows_steps" "step=$steps $(cat "$T/err")"; fi
if [ "$(py_json "$T/st.json" "j['tokens_acked'] == 5096 and j['tokens_acked'] == j['tokens_trained'] + j['tokens_buffered'] + j['tokens_queued']")" = "True" ]; then
  ok "status_token_accounting"
else nok "status_token_accounting" "$(py_json "$T/st.json" "j['tokens_acked'], j['tokens_trained'], j['tokens_buffered'], j['tokens_queued']")"; fi
if X status >"$T/out" 2>&1 && grep -q "^quality  FVE base" "$T/out" && grep -q "^state    running" "$T/out"; then
  ok "status_text"
else nok "status_text" "$(head -3 "$T/out")"; fi

# --- latents and latent
if X latents --top 5 --by freq --json >"$T/out" 2>&1 &&
   [ "$(py_json "$T/out" "len(j['latents']) == 5 and j['by'] == 'freq' and all(a['freq'] >= b['freq'] for a, b in zip(j['latents'], j['latents'][1:]))")" = "True" ]; then
  ok "latents_top_json"
else nok "latents_top_json" "$(head -c 300 "$T/out")"; fi
if X latents --top 3 --by delta_norm --asc >"$T/out" 2>&1 && [ "$(grep -c '^ *[0-9]' "$T/out")" -eq 3 ]; then
  ok "latents_text"
else nok "latents_text" "$(cat "$T/out")"; fi
# the short forms: -n N (= --top N) and -j (= --json)
if X latents -n 8 -j >"$T/out" 2>&1 && [ "$(py_json "$T/out" "len(j['latents']) == 8")" = "True" ]; then
  ok "latents_short_options"
else nok "latents_short_options" "$(head -c 300 "$T/out")"; fi
if X latent 7 --json >"$T/out" 2>&1 && [ "$(py_json "$T/out" "j['j'] == 7 and 'delta_norm' in j['stats']")" = "True" ]; then
  ok "latent_json"
else nok "latent_json" "$(head -c 300 "$T/out")"; fi
X latent 100000 >"$T/out" 2>&1; rc=$?
if [ $rc -eq 1 ] && grep -q "XC_ENOTFOUND" "$T/out"; then ok "latent_out_of_range_error"; else nok "latent_out_of_range_error" "exit $rc: $(cat "$T/out")"; fi
X latents --by nonsense >"$T/out" 2>&1; rc=$?
if [ $rc -eq 1 ] && grep -qi "nonsense" "$T/out"; then ok "latents_bad_field_error"; else nok "latents_bad_field_error" "exit $rc: $(cat "$T/out")"; fi

# --- config, events, watch
if [ "$(X config d 2>&1)" = "$D" ] && X config --json >"$T/out" && [ "$(py_json "$T/out" "j['config']['dict_size']")" = "128" ]; then
  ok "config"
else nok "config" "$(X config d 2>&1 | head -2)"; fi
"$XC" --run-dir "$RUN" synth --tokens 0 --rate 5000 --batch 256 --quiet >/dev/null 2>"$T/synth.err" &
SPID=$!
if X events --topic stats --count 2 --wait 10 --json >"$T/out" 2>&1 &&
   [ "$("$PY" -c "import json; print(all(json.loads(l)['type'] == 'stats' for l in open('$T/out')))")" = "True" ]; then
  ok "events_stats_json"
else nok "events_stats_json" "$(head -c 300 "$T/out")"; fi
if X watch --count 2 --interval 0.3 --plain >"$T/out" 2>&1 && grep -q "Δnorm of alive latents" "$T/out" &&
   [ "$(grep -c '^sparsity L0' "$T/out")" -eq 2 ] && ! grep -q $'\033' "$T/out"; then
  ok "watch_plain_frames"
else nok "watch_plain_frames" "$(head -c 400 "$T/out")"; fi
if X watch --count 2 --interval 0.2 --ansi >"$T/out" 2>&1 && grep -q $'\033\\[H' "$T/out"; then
  ok "watch_ansi_refresh"
else nok "watch_ansi_refresh" "no cursor-home code"; fi
kill -TERM $SPID 2>/dev/null; wait $SPID; src=$?
if [ $src -eq 0 ]; then ok "synth_stops_cleanly_on_sigterm"; else nok "synth_stops_cleanly_on_sigterm" "exit $src: $(tail -2 "$T/synth.err")"; fi

# --- bad input: clear message, non-zero exit, daemon keeps running
X status --json >"$T/before.json"
X synth --out "$T/d8.npy" --tokens 100 --d 8 >/dev/null
X push "$T/d8.npy" >"$T/out" 2>&1; rc=$?
if [ $rc -eq 1 ] && grep -q "XC_ESHAPE" "$T/out" && grep -q "refused tokens 0-99" "$T/out"; then ok "push_wrong_d_refused"; else nok "push_wrong_d_refused" "exit $rc: $(cat "$T/out")"; fi
"$PY" -c "
import numpy as np
a = np.ones((300, 2, $D), np.float32); a[257, 1, 5] = np.nan; np.save('$T/nan.npy', a)
np.save('$T/f64.npy', np.ones((10, 2, $D)))
np.save('$T/shape.npy', np.ones((10, 3, $D), np.float32))"
X push "$T/nan.npy" --batch 256 >"$T/out" 2>&1; rc=$?
if [ $rc -eq 1 ] && grep -q "XC_ENONFINITE" "$T/out" && grep -q "tokens 256-299" "$T/out"; then ok "push_nan_refused"; else nok "push_nan_refused" "exit $rc: $(cat "$T/out")"; fi
X push "$T/f64.npy" >"$T/out" 2>&1; rc=$?
if [ $rc -eq 1 ] && grep -q "unsupported dtype '<f8'" "$T/out"; then ok "push_f64_file_rejected"; else nok "push_f64_file_rejected" "exit $rc: $(cat "$T/out")"; fi
X push "$T/shape.npy" >"$T/out" 2>&1; rc=$?
if [ $rc -eq 1 ] && grep -q "need \[N, 2, d\]" "$T/out"; then ok "push_bad_shape_rejected"; else nok "push_bad_shape_rejected" "exit $rc: $(cat "$T/out")"; fi
X status --json >"$T/after.json" 2>&1
if kill -0 "$DPID" 2>/dev/null && [ "$(py_json "$T/after.json" "j['counters']['XC_ESHAPE'] >= 1 and j['counters']['XC_ENONFINITE'] >= 1")" = "True" ]; then
  ok "daemon_counts_refusals_and_keeps_running"
else nok "daemon_counts_refusals_and_keeps_running" "$(head -c 300 "$T/after.json")"; fi

# --- pause / resume
if X pause >/dev/null && [ "$(X status --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["paused"])')" = "True" ] &&
   X resume --json >"$T/out" && [ "$(py_json "$T/out" "j['paused']")" = "False" ]; then
  ok "pause_resume"
else nok "pause_resume" "$(cat "$T/out")"; fi

# --- checkpoint and report
if X checkpoint --json >"$T/ck.json" 2>&1 && CK=$(py_json "$T/ck.json" "j['path']") && [ -s "$CK" ]; then
  ok "checkpoint_json_path_exists"
else nok "checkpoint_json_path_exists" "$(cat "$T/ck.json")"; CK=""; fi
if [ -n "$CK" ] && X report --checkpoint "$CK" --seed 3 --json >"$T/out" 2>&1 &&
   [ "$(py_json "$T/out" "j['dict_size'] == 128 and j['d'] == $D and 'chat_only' in j['classes'] and j['recovery']['features'] > 0")" = "True" ]; then
  ok "report_json"
else nok "report_json" "$(head -c 300 "$T/out")"; fi
if [ -n "$CK" ] && X report --offline --checkpoint "$CK" --seed 3 >"$T/out" 2>&1 && grep -q "planted features recovered" "$T/out"; then
  ok "report_offline_text"
else nok "report_offline_text" "$(head -c 300 "$T/out")"; fi
printf 'garbage' >"$T/bad.safetensors"
X report --offline --checkpoint "$T/bad.safetensors" >"$T/out" 2>&1; rc=$?
if [ $rc -eq 1 ] && grep -q "safetensors" "$T/out"; then ok "report_bad_checkpoint_error"; else nok "report_bad_checkpoint_error" "exit $rc: $(cat "$T/out")"; fi

# --- clean shutdown
if X shutdown --wait >"$T/out" 2>&1; then ok "shutdown_wait"; else nok "shutdown_wait" "$(cat "$T/out")"; fi
drc=124
for _ in $(seq 1 100); do
  if ! kill -0 "$DPID" 2>/dev/null; then wait "$DPID"; drc=$?; break; fi
  sleep 0.1
done
DPID=""
if [ $drc -eq 0 ] && ls "$T/state"/*.safetensors >/dev/null 2>&1; then ok "daemon_exit_0_with_checkpoint"; else
  nok "daemon_exit_0_with_checkpoint" "exit $drc; $(tail -3 "$T/daemon.log" | tr '\n' ' ')"; fi
X --timeout 20 status >"$T/out" 2>&1; rc=$?   # the socket file is gone: fails at once
if [ $rc -eq 1 ] && grep -q "does not exist" "$T/out"; then ok "status_after_shutdown_fails_at_once"; else
  nok "status_after_shutdown_fails_at_once" "exit $rc: $(cat "$T/out")"; fi

[ $fails -eq 0 ]
