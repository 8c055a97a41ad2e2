#!/usr/bin/env bash
# Integration test: four `xcoder synth` producers at once (f32, f16, bf16 and a
# rate-limited one) into one xcoderd over tcp:// endpoints, with a tiny queue so
# that backpressure holds them back. Nothing is lost: the tokens every producer
# saw acknowledged add up to the daemon's tokens_acked, which equals tokens
# trained + buffered + queued. Also: a producer blocked by a paused daemon
# times out with exit status 3 and a message, and resumes fine afterwards.
# Prints "ok - name" / "not ok - name: why"; exits non-zero on any failure.
set -u
TEST_TMP_TAG=xc_integ_prod
source "$(dirname "$0")/lib.sh"

# free tcp ports chosen by the kernel
read -r P1 P2 P3 < <(free_ports)
EP=(--ingest "tcp://127.0.0.1:$P1" --control "tcp://127.0.0.1:$P2" --events "tcp://127.0.0.1:$P3")
X() { "$XC" "${EP[@]}" --timeout 30 "$@"; }

D=32
"$XCD" --run_dir "$T/run" --state_dir "$T/state" --ingest "tcp://127.0.0.1:$P1" --control "tcp://127.0.0.1:$P2" \
  --events "tcp://127.0.0.1:$P3" --d $D --dict_size 256 --k 4 --batch_size 256 --queue_size 2 --ingest_hwm 2 \
  --mix_tokens 1024 --threads 1 --log_level warn >"$T/daemon.log" 2>&1 &
DPID=$!
up=0
for _ in $(seq 1 100); do
  if X --timeout 0.2 ping >/dev/null 2>&1; then up=1; break; fi
  kill -0 "$DPID" 2>/dev/null || break
  sleep 0.1
done
if [ $up -eq 1 ]; then ok "daemon_starts_on_tcp"; else
  nok "daemon_starts_on_tcp" "$(tail -5 "$T/daemon.log" | tr '\n' ' ')"; exit 1
fi

pids=()
"$XC" "${EP[@]}" synth --tokens 40000 --batch 500 --seed 1 --producer p-f32 --json >"$T/p1.json" 2>"$T/p1.err" & pids+=($!)
"$XC" "${EP[@]}" synth --tokens 30000 --batch 300 --seed 2 --dtype f16 --producer p-f16 --json >"$T/p2.json" 2>"$T/p2.err" & pids+=($!)
"$XC" "${EP[@]}" synth --tokens 30000 --batch 1000 --seed 3 --dtype bf16 --producer p-bf16 --json >"$T/p3.json" 2>"$T/p3.err" & pids+=($!)
"$XC" "${EP[@]}" synth --tokens 10000 --batch 200 --rate 20000 --seed 4 --window 2 --producer p-slow --json >"$T/p4.json" 2>"$T/p4.err" & pids+=($!)
allok=1
for i in 0 1 2 3; do
  wait "${pids[$i]}" || { allok=0; nok "producer_$((i + 1))_exit" "$(cat "$T/p$((i + 1)).err")"; }
done
[ $allok -eq 1 ] && ok "four_producers_finish"

sum=$("$PY" -c "
import json
print(sum(json.load(open('$T/p%d.json' % i))['tokens_acked'] for i in (1, 2, 3, 4)))" 2>&1)
if [ "$sum" = "110000" ]; then ok "every_token_acked_by_its_producer"; else nok "every_token_acked_by_its_producer" "sum $sum"; fi

X status --json >"$T/st.json"
acc=$("$PY" -c "
import json
j = json.load(open('$T/st.json'))
print(j['tokens_acked'], j['tokens_trained'] + j['tokens_buffered'] + j['tokens_queued'], j['counters']['batches_refused'])")
if [ "$acc" = "110000 110000 0" ]; then ok "acked_equals_trained_plus_buffered_plus_queued"; else
  nok "acked_equals_trained_plus_buffered_plus_queued" "acked, trained+buffered+queued, refused = $acc"; fi

# a paused daemon stops acking once its queue is full: the producer times out
X pause >/dev/null
"$XC" "${EP[@]}" --timeout 2 synth --tokens 200000 --batch 1000 --window 2 >"$T/out" 2>&1; rc=$?
if [ $rc -eq 3 ] && grep -q "no reply from the daemon" "$T/out"; then ok "paused_daemon_backpressure_timeout"; else
  nok "paused_daemon_backpressure_timeout" "exit $rc: $(tail -2 "$T/out")"; fi
X resume >/dev/null
if X synth --tokens 5000 --batch 500 --quiet >"$T/out" 2>&1; then ok "producer_after_resume"; else nok "producer_after_resume" "$(cat "$T/out")"; fi

X shutdown --wait >/dev/null 2>&1
drc=124
for _ in $(seq 1 100); do
  if ! kill -0 "$DPID" 2>/dev/null; then wait "$DPID"; drc=$?; break; fi
  sleep 0.1
done
DPID=""
if [ $drc -eq 0 ]; then ok "daemon_exit_0"; else nok "daemon_exit_0" "exit $drc"; fi

[ $fails -eq 0 ]
