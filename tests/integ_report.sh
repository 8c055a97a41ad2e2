#!/usr/bin/env bash
# `xcoder report` on a run fed by the user's own activations (here a .npy pushed
# with `xcoder push`, as a model server would feed it) and on a run fed by
# `xcoder synth`: the planted-feature section only for the synthetic run (the
# daemon's status names its producers) or when asked, and a checkpoint written
# only when asked (--new-checkpoint); the daemon's newest checkpoint is read.
# Prints "ok - name" / "not ok - name: why"; exits non-zero on any failure.
set -u
TEST_TMP_TAG=xc_integ_report
TEST_PREFIX=report_
source "$(dirname "$0")/lib.sh"
D=16
start_daemon() { # $1: run dir
  "$XCD" --run_dir "$1" --state_dir "$1/state" --name "rep$$$(basename "$1")" --d $D --dict_size 64 --k 4 \
    --batch_size 128 --mix_tokens 128 --checkpoint_interval 0 --shm off --threads 1 --log_level warn \
    >"$1.log" 2>&1 &
  DPID=$!
  for _ in $(seq 1 100); do
    "$XC" --run-dir "$1" --timeout 0.2 ping >/dev/null 2>&1 && return 0
    kill -0 "$DPID" 2>/dev/null || break
    sleep 0.1
  done
  return 1
}
ckpts() { ls "$1/state"/*.safetensors 2>/dev/null | wc -l; }

# --- a run on the user's own activations
R="$T/own"
mkdir -p "$R"
"$PY" -c "import numpy as np; np.save('$T/acts.npy', np.random.default_rng(0).standard_normal((2048, 2, $D)).astype(np.float32))"
if start_daemon "$R"; then ok daemon_starts; else nok daemon_starts "$(tail -3 "$R.log")"; exit 1; fi
X() { "$XC" --run-dir "$R" --timeout 20 "$@"; }
# a progress line with ETA on a terminal (script(1) gives it one), none otherwise
X push "$T/acts.npy" >/dev/null 2>"$T/push.err"; rc1=$?
script -qec "$XC --run-dir $R --timeout 20 push $T/acts.npy" /dev/null >"$T/push.tty" 2>&1; rc2=$?
if [ $rc1 -eq 0 ] && [ $rc2 -eq 0 ] && ! grep -q "ETA" "$T/push.err" && ! grep -q $'\r' "$T/push.err" &&
   grep -q "xcoder push: .* tokens (.*%), .* tokens/s, ETA" "$T/push.tty"; then ok progress_line_only_on_a_terminal
else nok progress_line_only_on_a_terminal "exit $rc1/$rc2: $(cat "$T/push.err") | $(tr '\r' '\n' <"$T/push.tty" | tail -3)"; fi
X report >"$T/out" 2>&1; rc=$?
if [ $rc -eq 1 ] && grep -q "no checkpoint yet" "$T/out" && [ "$(ckpts "$R")" -eq 0 ]; then ok no_checkpoint_says_so
else nok no_checkpoint_says_so "exit $rc, $(ckpts "$R") files: $(cat "$T/out")"; fi
X checkpoint >/dev/null
n0=$(ckpts "$R")
X report >"$T/out" 2>&1; rc=$?
if [ $rc -eq 0 ] && grep -q "latents by relative decoder norm" "$T/out" && ! grep -q "planted feature" "$T/out" &&
   [ "$(ckpts "$R")" -eq "$n0" ]; then ok own_data_no_planted_section_no_new_checkpoint
else nok own_data_no_planted_section_no_new_checkpoint "exit $rc, files $n0 -> $(ckpts "$R"): $(cat "$T/out")"; fi
X report --json >"$T/out.json" 2>&1
if [ "$(py_json "$T/out.json" "j['synthetic'] is False and 'recovery' not in j and j['dict_size'] == 64")" = "True" ]; then
  ok own_data_json
else nok own_data_json "$(head -c 300 "$T/out.json")"; fi
# offline Latent Scaling on the user's data: a progress line on a terminal
CKF=$(ls "$R/state"/*.safetensors | grep -v resume | head -1)
script -qec "$XC scaling --checkpoint $CKF --data $T/acts.npy --min-active 1" /dev/null >"$T/sc.tty" 2>&1; rc=$?
if [ $rc -eq 0 ] && grep -q "exact Latent Scaling: .* tokens (100.0%), .* ETA 0s" "$T/sc.tty" &&
   grep -q "exact Latent Scaling of .* over $T/acts.npy: 2048 tokens" "$T/sc.tty"; then ok offline_scaling_progress
else nok offline_scaling_progress "exit $rc: $(tr '\r' '\n' <"$T/sc.tty" | tail -4)"; fi
X report --synthetic >"$T/out" 2>&1; rc=$?
if [ $rc -eq 0 ] && grep -q "planted features recovered" "$T/out"; then ok synthetic_section_when_asked
else nok synthetic_section_when_asked "exit $rc: $(cat "$T/out")"; fi
rm -f "$R/state"/*.safetensors   # no step since the last one: the new pair would reuse its names
X report --new-checkpoint >"$T/out" 2>&1; rc=$?
if [ $rc -eq 0 ] && [ "$(ckpts "$R")" -eq 2 ] && grep -q "^report on $R/state/" "$T/out"; then ok new_checkpoint_when_asked
else nok new_checkpoint_when_asked "exit $rc, $(ckpts "$R") files: $(head -2 "$T/out")"; fi
X shutdown --wait >/dev/null 2>&1
wait "$DPID" 2>/dev/null

# --- a run fed by xcoder synth alone: the section by default
R="$T/syn"
mkdir -p "$R"
if start_daemon "$R"; then :; else nok synth_daemon_starts "$(tail -3 "$R.log")"; exit 1; fi
"$XC" --run-dir "$R" synth --tokens 4096 --batch 256 --quiet >/dev/null 2>&1
X() { "$XC" --run-dir "$R" --timeout 20 "$@"; }
X checkpoint >/dev/null
X report >"$T/out" 2>&1; rc=$?
if [ $rc -eq 0 ] && grep -q "planted features recovered" "$T/out"; then ok synth_run_shows_planted_section
else nok synth_run_shows_planted_section "exit $rc: $(cat "$T/out")"; fi
X status --json >"$T/st.json"
if [ "$(py_json "$T/st.json" "j['producers'] == {'xcoder-synth': 4096}")" = "True" ]; then ok status_names_producers
else nok status_names_producers "$(py_json "$T/st.json" "j.get('producers')")"; fi
X shutdown --wait >/dev/null 2>&1

[ "$fails" -eq 0 ]
