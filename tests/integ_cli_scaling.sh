#!/usr/bin/env bash
# Integration test of `xcoder scaling`, of `xcoder latents` / `latent` reading
# shared memory or the control socket, and of `xcoder watch` on shared memory,
# against a real xcoderd on ipc:// endpoints in a temp dir: an exact Latent
# Scaling pass waited for while `xcoder synth` streams tokens, both sources
# agreeing on the same latents with training paused, the refusal of a second
# pass, and clear errors when there is no shared memory.
# Prints "ok - name" / "not ok - name: why"; exits non-zero on any failure.
set -u
NAME="integscl$$"
TEST_TMP_TAG=xc_integ_scl SHM_NAME=$NAME
source "$(dirname "$0")/lib.sh"
if [ ! -d /dev/shm ]; then
  echo "not ok - setup: no /dev/shm on this machine (POSIX shared memory is needed)"; exit 1
fi
RUN="$T/run"
# like a user who only knows the run_dir: the CLI finds the instance itself
X() { "$XC" --run-dir "$RUN" --timeout 20 "$@"; }

"$XCD" --run_dir "$RUN" --state_dir "$T/state" --name "$NAME" --d 16 --dict_size 128 --k 4 --batch_size 256 \
  --lr 1e-3 --warmup_steps 10 --threshold_start_step 20 --mix_tokens 512 --stats_interval 0.2 \
  --shm_interval 0.05 --scaling_min_active 5 --threads 1 --log_level warn >"$T/daemon.log" 2>&1 &
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

# --- a stream of planted-feature tokens while the passes run
"$XC" --run-dir "$RUN" synth --tokens 0 --rate 20000 --batch 256 --quiet >/dev/null 2>"$T/synth.err" &
SPID=$!

# --- scaling --wait: subscribes, starts the pass, waits for its event, summarises
if X scaling --tokens 2000 --wait --json >"$T/sc.json" 2>"$T/err" &&
   [ "$(py_json "$T/sc.json" "j['step'] >= 0 and j['tokens'] >= 2000 and j['chat_only'] >= 0 and 0 <= j['chat_specific'] and j['source'] in ('shm', 'control') and len(j['latents']) <= 10 and all(l['class'] == 'chat_only' and l['scaling_exact'] is not None for l in j['latents']) and all(a['delta_norm'] >= b['delta_norm'] for a, b in zip(j['latents'], j['latents'][1:]))")" = "True" ]; then
  ok "scaling_wait_json_summary"
else nok "scaling_wait_json_summary" "$(head -c 400 "$T/sc.json") $(cat "$T/err")"; fi
if [ "$(py_json "$T/sc.json" "j['source']")" = "shm" ]; then ok "scaling_summary_from_shm"; else
  nok "scaling_summary_from_shm" "source $(py_json "$T/sc.json" "j['source']")"; fi
# the daemon agrees: status shows the pass
X status --json >"$T/st.json"
if [ "$(py_json "$T/st.json" "j['scaling']['passes'] >= 1 and j['scaling']['last_step'] == $(py_json "$T/sc.json" "j['step']")")" = "True" ]; then
  ok "scaling_pass_in_status"
else nok "scaling_pass_in_status" "$(py_json "$T/st.json" "j['scaling']")"; fi

# text summary, latents from the control socket
if X scaling --tokens 1500 --wait --source control --top 3 >"$T/out" 2>&1 &&
   grep -q "^exact Latent Scaling pass: dictionary of step [0-9]*, [0-9]* tokens" "$T/out" &&
   grep -q "^chat-only latents: [0-9]*, of which chat-specific: [0-9]*" "$T/out"; then
  ok "scaling_wait_text_control"
else nok "scaling_wait_text_control" "$(head -c 400 "$T/out")"; fi

# a pass under way refuses a second one: the daemon's message, exit 1
X scaling --tokens 100000000 >"$T/out" 2>&1; rc1=$?
X scaling --tokens 10 >"$T/out2" 2>&1; rc2=$?
if [ $rc1 -eq 0 ] && grep -q "pass started" "$T/out" && [ $rc2 -eq 1 ] && grep -q "XC_ESTATE" "$T/out2" &&
   grep -q "already under way" "$T/out2"; then
  ok "scaling_second_pass_refused"
else nok "scaling_second_pass_refused" "exit $rc1/$rc2: $(cat "$T/out" "$T/out2")"; fi
# progress of the pass under way: status (text and JSON)
X status >"$T/out" 2>&1
X status --json >"$T/st.json" 2>&1
X watch -n 1 --plain >"$T/w.out" 2>&1
if grep -q "^scaling  exact pass: .* of 100M tokens" "$T/out" && grep -q "^scaling  exact pass: .* of 100M tokens" "$T/w.out" &&
   [ "$(py_json "$T/st.json" "j['scaling']['running'] and j['scaling']['tokens_target'] == 100000000 and j['scaling']['tokens_done'] >= 0")" = "True" ]; then
  ok "scaling_progress_in_status"
else nok "scaling_progress_in_status" "$(grep scaling "$T/out") $(py_json "$T/st.json" "j['scaling']")"; fi
# --wait attaches to the pass under way; --cancel stops it; the waiter says so
X scaling --wait >"$T/out" 2>"$T/err" &
WPID=$!
sleep 1.5
X scaling --cancel >"$T/out2" 2>&1; rc1=$?
wait $WPID; rc2=$?
if [ $rc1 -eq 0 ] && grep -q "^exact Latent Scaling pass cancelled after [0-9]* of 100000000 tokens" "$T/out2" &&
   [ $rc2 -eq 1 ] && grep -q "attaching to the exact pass already under way" "$T/err" && grep -q "was cancelled" "$T/err"; then
  ok "scaling_wait_attaches_cancel_stops"
else nok "scaling_wait_attaches_cancel_stops" "exit $rc1/$rc2: $(cat "$T/out2" "$T/err")"; fi
X scaling --cancel >"$T/out" 2>&1; rc=$?
if [ $rc -eq 1 ] && grep -q "no exact Latent Scaling pass is under way" "$T/out" &&
   [ "$(X status --json | py_json /dev/stdin "j['scaling']['cancelled'] == 1 and not j['scaling']['running']")" = "True" ]; then
  ok "scaling_cancel_without_pass"
else nok "scaling_cancel_without_pass" "exit $rc: $(cat "$T/out")"; fi
# a pass started elsewhere, then --wait attaches and summarises it
X scaling --tokens 3000 >/dev/null 2>&1
if X scaling --wait --json >"$T/sc2.json" 2>"$T/err" && grep -q "attaching" "$T/err" &&
   [ "$(py_json "$T/sc2.json" "j['tokens'] >= 3000 and j['step'] >= 0")" = "True" ]; then
  ok "scaling_wait_attaches_and_summarises"
else nok "scaling_wait_attaches_and_summarises" "$(head -c 300 "$T/sc2.json") $(cat "$T/err")"; fi
X scaling --tokens 0 >"$T/out" 2>&1; rc=$?
if [ $rc -eq 2 ] && grep -q "not an integer in \[1," "$T/out"; then ok "scaling_bad_tokens_usage"; else
  nok "scaling_bad_tokens_usage" "exit $rc: $(cat "$T/out")"; fi

# --- watch on shared memory
if X -v watch --count 2 --interval 0.2 --plain >"$T/out" 2>"$T/err" && grep -q "Δnorm of alive latents.*\[shm, step" "$T/out" &&
   grep -q "chat-specific)" "$T/out" && grep -q "^ν chat-only  running: median ν^ε" "$T/out" &&
   grep -q "exact (step [0-9]*)" "$T/out" && grep -q "from shm /xcoderd.$NAME" "$T/err"; then
  ok "watch_from_shm"
else nok "watch_from_shm" "$(tail -4 "$T/out") $(cat "$T/err")"; fi
if X watch --count 1 --plain --source control >"$T/out" 2>&1 && grep -q "\[control, step" "$T/out"; then
  ok "watch_source_control"
else nok "watch_source_control" "$(tail -3 "$T/out")"; fi

kill -TERM $SPID 2>/dev/null; wait $SPID 2>/dev/null; SPID=""

# --- both sources agree once training stands still
X pause >/dev/null
prev=-1
for _ in $(seq 1 50); do
  s=$(X status --json | "$PY" -c "import json,sys; print(json.load(sys.stdin)['step'])")
  [ "$s" = "$prev" ] && break
  prev=$s; sleep 0.1
done
# a control query takes the snapshot (and rewrites shared memory) at this step
X latents --source control --json --top 128 >"$T/ctl.json" 2>"$T/err"
X -v latents --source shm --json --top 128 >"$T/shm.json" 2>"$T/err2"
cmp_py='
import json, sys
c, s = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
assert c["source"] == "control" and s["source"] == "shm", (c["source"], s["source"])
assert c["snapshot_step"] == s["snapshot_step"], (c["snapshot_step"], s["snapshot_step"])
assert len(c["latents"]) == len(s["latents"]) == 128, (len(c["latents"]), len(s["latents"]))
cl = {l["j"]: l for l in c["latents"]}
for l in s["latents"]:
    o = cl[l["j"]]
    assert set(o) == set(l), sorted(set(o) ^ set(l))
    for k in ("delta_norm", "class", "chat_specific", "cosine", "freq", "mean_act", "max_act", "last_step_fired",
              "dead", "scaling", "scaling_exact"):
        assert o[k] == l[k], (l["j"], k, o[k], l[k])
assert [l["j"] for l in c["latents"]] == [l["j"] for l in s["latents"]], "order"
assert any(l["scaling_exact"] is not None for l in s["latents"]), "no exact results"
print("True")
'
if [ "$("$PY" -c "$cmp_py" "$T/ctl.json" "$T/shm.json" 2>&1 | tail -1)" = "True" ]; then ok "latents_shm_equals_control"; else
  nok "latents_shm_equals_control" "$("$PY" -c "$cmp_py" "$T/ctl.json" "$T/shm.json" 2>&1 | tail -1) $(cat "$T/err" "$T/err2")"; fi
if grep -q "source shm: /xcoderd.$NAME" "$T/err2"; then ok "latents_verbose_names_source"; else
  nok "latents_verbose_names_source" "$(cat "$T/err2")"; fi
# auto (the default) picks shared memory for a local daemon, found from the run_dir alone
if X latents --json --top 3 >"$T/out" 2>&1 && [ "$(py_json "$T/out" "j['source']")" = "shm" ]; then ok "latents_auto_uses_shm"; else
  nok "latents_auto_uses_shm" "$(head -c 300 "$T/out")"; fi

# the same filters and fields from both sources
for args in "--class chat_only" "--class chat_specific" "--class shared --by freq" "--by nu_err" "--by exact_nu_rec --alive"; do
  X latents $args --top 20 --json --source control >"$T/a.json" 2>&1
  X latents $args --top 20 --json --source shm >"$T/b.json" 2>&1
  if [ "$("$PY" -c "
import json, sys
a, b = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
ja, jb = [l['j'] for l in a['latents']], [l['j'] for l in b['latents']]
cls = a.get('class')
ok = ja == jb and (cls is None or all((l['chat_specific'] if cls == 'chat_specific' else l['class'] == cls) for l in b['latents']))
print(ok if ok else (ja, jb, [(l.get('scaling_exact') or {}).get('nu_rec') for l in a['latents']], [(l.get('scaling_exact') or {}).get('nu_rec') for l in b['latents']]))" "$T/a.json" "$T/b.json" 2>&1 | tail -1 | tee "$T/cmp")" = "True" ]; then ok "latents_filter_agrees ($args)"; else
    nok "latents_filter_agrees ($args)" "$(cat "$T/cmp")"; fi
done

# one latent
X latent 5 --json --source control >"$T/a.json" 2>&1
X latent 5 --json --source shm >"$T/b.json" 2>&1
if [ "$("$PY" -c "
import json, sys
a, b = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
sa, sb = a['stats'], b['stats']
ok = a['j'] == b['j'] == 5 and set(sa) == set(sb) and all(sa[k] == sb[k] for k in sa if k not in ('fired', 'tokens_since_fired'))
ok = ok and sb['fired'] is None and isinstance(sa['fired'], int)
print(ok)" "$T/a.json" "$T/b.json" 2>&1 | tail -1)" = "True" ]; then ok "latent_shm_equals_control"; else
  nok "latent_shm_equals_control" "$(head -c 300 "$T/a.json") / $(head -c 300 "$T/b.json")"; fi
if X latent 5 --source shm >"$T/out" 2>&1 && grep -q "^latent 5 (step [0-9]*, from shm)" "$T/out" &&
   grep -q "^  scaling.nu_err " "$T/out" && grep -q "^  class " "$T/out"; then ok "latent_text_shm"; else
  nok "latent_text_shm" "$(head -5 "$T/out")"; fi
X latent 100000 --source shm >"$T/out" 2>&1; rc=$?
if [ $rc -eq 1 ] && grep -q "XC_ENOTFOUND" "$T/out"; then ok "latent_shm_out_of_range"; else nok "latent_shm_out_of_range" "exit $rc: $(cat "$T/out")"; fi
X latents --by fired --source shm >"$T/out" 2>&1; rc=$?
if [ $rc -eq 2 ] && grep -q "not in shared memory" "$T/out"; then ok "latents_shm_field_missing"; else
  nok "latents_shm_field_missing" "exit $rc: $(cat "$T/out")"; fi

# --- no shared memory: a clear error, exit 1
"$XC" --name "nosuch$$" latents --source shm >"$T/out" 2>&1; rc=$?
if [ $rc -eq 1 ] && grep -q "no shared memory /xcoderd.nosuch$$" "$T/out"; then ok "latents_shm_no_daemon_error"; else
  nok "latents_shm_no_daemon_error" "exit $rc: $(cat "$T/out")"; fi
# --name alone is enough (no run_dir with a daemon's lock to check against)...
mkdir -p "$T/other"
X --name "$NAME" --run-dir "$T/other" latents --source shm --top 1 >"$T/out" 2>&1; rc=$?
if [ $rc -eq 0 ] && grep -q "from shm" "$T/out"; then ok "latents_shm_by_name"; else nok "latents_shm_by_name" "exit $rc: $(cat "$T/out")"; fi
# ...but an object written by another process than the run_dir's daemon is refused
echo $$ >"$T/other/xcoderd.lock"
X --name "$NAME" --run-dir "$T/other" latents --source shm >"$T/out" 2>&1; rc=$?
if [ $rc -eq 1 ] && grep -q "belongs to pid $DPID, not to the daemon addressed (pid $$)" "$T/out"; then ok "latents_shm_other_daemon_refused"; else
  nok "latents_shm_other_daemon_refused" "exit $rc: $(cat "$T/out")"; fi
X --name "$NAME" --run-dir "$T/other" --timeout 0.3 -v latents >"$T/out" 2>&1; rc=$?
if grep -q "source control: shared memory /xcoderd.$NAME belongs to pid" "$T/out"; then ok "latents_auto_other_daemon_uses_control"; else
  nok "latents_auto_other_daemon_uses_control" "exit $rc: $(cat "$T/out")"; fi

# --- after a clean shutdown the object is gone
X shutdown --wait >/dev/null 2>&1
wait "$DPID" 2>/dev/null; DPID=""
X --name "$NAME" latents --source shm >"$T/out" 2>&1; rc=$?
if [ $rc -eq 1 ] && grep -q "no shared memory" "$T/out" && [ ! -e "/dev/shm/xcoderd.$NAME" ]; then ok "latents_shm_after_shutdown_error"; else
  nok "latents_shm_after_shutdown_error" "exit $rc: $(cat "$T/out")"; fi

[ $fails -eq 0 ]
