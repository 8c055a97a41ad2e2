#!/usr/bin/env bash
# `make demo`: xcoderd end to end in under 3 minutes on 2 cores.
#  1. starts build/xcoderd in a temporary run dir with a small demo model,
#     and the web dashboard (client/js/dashboard), printing its URL,
#  2. streams `xcoder synth` (planted shared / chat-only / base-only features) into it,
#  3. shows `xcoder watch` (live view) while it trains,
#  4. runs an exact Latent Scaling pass (`xcoder scaling`): which chat-only latents are
#     really chat-specific (nu ~ 0) rather than artefacts of sparsity,
#  5. takes a checkpoint and prints `xcoder report`: latents by Δnorm class,
#     the top chat-only latents, and how well the planted features were recovered,
#  6. shuts the daemon down cleanly (it writes a final checkpoint and exits 0).
# Environment: DEMO_SECONDS (training time, default 45), DEMO_RATE (synth tokens/s,
# default 100000: features emerge over ~20 s), DEMO_KEEP=1 keeps the temp dir,
# DEMO_DASHBOARD_PORT (default 0: a free port; DEMO_DASHBOARD=0: no dashboard),
# DEMO_LINGER (seconds to keep the daemon and dashboard up after the report, default 0).
set -euo pipefail
cd "$(dirname "$0")/.."
XC=build/xcoder
XCD=build/xcoderd
SECS=${DEMO_SECONDS:-45}
SEED=7
# planted features: shared, chat-only, base-only, and "shrunk" ones present in the base
# model at 0.4 of their chat strength (Latent Scaling should give them nu ~ 0.4 x cos)
FEATS=(--seed $SEED --shared 24 --chat-only 10 --base-only 6 --shrunk 10 --shrunk-scale 0.4)

for b in "$XC" "$XCD"; do
  [ -x "$b" ] || { echo "demo: $b is missing; run make first" >&2; exit 1; }
done

T=$(mktemp -d /tmp/xcoder-demo.XXXXXX)
RUN="$T/run"
DPID=""
SPID=""
WPID=""
cleanup() {
  [ -n "$SPID" ] && kill "$SPID" 2>/dev/null || true
  [ -n "$WPID" ] && kill "$WPID" 2>/dev/null || true
  if [ -n "$DPID" ] && kill -0 "$DPID" 2>/dev/null; then
    kill -TERM "$DPID" 2>/dev/null || true
    sleep 2
    kill -KILL "$DPID" 2>/dev/null || true
  fi
  if [ "${DEMO_KEEP:-0}" = 1 ]; then echo "demo: files kept in $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bold() { if [ -t 1 ]; then printf '\033[1m%s\033[0m\n' "$*"; else printf '== %s\n' "$*"; fi; }
X() { "$XC" --run-dir "$RUN" "$@"; }

# Demo model: small enough to learn visibly in ~45 s on 2 cores. Every key is
# documented by `build/xcoderd --help`.
cat >"$T/demo.conf" <<EOF
# xcoderd demo configuration
name = demo
run_dir = $RUN
state_dir = $T/state
log_file = $T/daemon.log
log_level = info
model = batchtopk
d = 64
dict_size = 512
k = 4
batch_size = 256
lr = 1e-4
warmup_steps = 200
threshold_start_step = 500
dead_tokens = 1000000
seed = 1
threads = 1
mix_tokens = 4096
queue_size = 16
stats_interval = 1
checkpoint_interval = 0
EOF

bold "1. starting xcoderd (d=64, 512 latents, BatchTopK k=4, batch 256) in $T"
"$XCD" --config "$T/demo.conf" >>"$T/daemon.out" 2>&1 &
DPID=$!
for _ in $(seq 1 100); do
  X --timeout 0.2 ping >/dev/null 2>&1 && break
  kill -0 "$DPID" 2>/dev/null || { echo "demo: xcoderd exited at start:" >&2; cat "$T/daemon.out" "$T/daemon.log" >&2 2>/dev/null; exit 1; }
  sleep 0.1
done
X ping

# The web dashboard: a Node.js process on the JS client, bound to 127.0.0.1.
if [ "${DEMO_DASHBOARD:-1}" != 0 ]; then
  if command -v node >/dev/null 2>&1 && [ -d client/js/node_modules/zeromq ] && [ -d client/js/dashboard/node_modules/uplot ]; then
    node client/js/dashboard/server.js --run-dir "$RUN" --port "${DEMO_DASHBOARD_PORT:-0}" >"$T/dashboard.out" 2>&1 &
    WPID=$!
    for _ in $(seq 1 50); do grep -q '^dashboard: http' "$T/dashboard.out" 2>/dev/null && break; sleep 0.1; done
    if URL=$(grep -m1 -o 'http://[^ ]*' "$T/dashboard.out"); then
      bold "dashboard: $URL  (open it in a browser: it follows the run live)"
    else
      echo "demo: the dashboard did not start:" >&2; cat "$T/dashboard.out" >&2; WPID=""
    fi
  else
    echo "demo: no dashboard (needs node and: make build/js.stamp build/dashboard.stamp)" >&2
  fi
fi

bold "2. streaming synthetic activations: 24 shared, 10 chat-only, 6 base-only, 10 shrunk planted features (seed $SEED)"
"$XC" --run-dir "$RUN" synth "${FEATS[@]}" --batch 512 --rate "${DEMO_RATE:-100000}" --quiet >"$T/synth.out" 2>&1 &
SPID=$!

bold "3. live view for ${SECS}s (xcoder watch)"
if [ -t 1 ]; then
  X watch --interval 1 --count "$SECS" || true
else # not a terminal: a few frames, one after another
  X watch --interval 5 --count $(((SECS + 4) / 5)) --plain || true
fi

bold "4. exact Latent Scaling pass over the next 200k streamed tokens (xcoder scaling)"
X scaling --tokens 200000 --wait --top 10 || echo "demo: the Latent Scaling pass did not finish" >&2

kill -TERM "$SPID" 2>/dev/null || true
wait "$SPID" || true
SPID=""
cat "$T/synth.out"

bold "5. checkpoint and report"
CK=$(X checkpoint --json | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["path"])')
echo "checkpoint: $CK ($(du -h "$CK" | cut -f1))"
X status
echo
X report --checkpoint "$CK" "${FEATS[@]}" --top 10

if [ "${DEMO_LINGER:-0}" != 0 ]; then
  bold "keeping the daemon${WPID:+ and the dashboard ($URL)} up for ${DEMO_LINGER}s"
  sleep "$DEMO_LINGER"
fi

bold "6. shutting down"
X shutdown --wait
rc=0
wait "$DPID" || rc=$?
DPID=""
if [ $rc -ne 0 ]; then
  echo "demo: xcoderd exited with status $rc" >&2
  tail -20 "$T/daemon.log" >&2 || true
  exit 1
fi
echo "xcoderd exited cleanly; final checkpoint: $(basename "$(ls -t "$T/state"/*.safetensors | head -1)")"
[ "${DEMO_KEEP:-0}" = 1 ] || echo "(the temp dir is removed now; DEMO_KEEP=1 make demo keeps it)"
