#!/usr/bin/env bash
# Remote access with the C client (xcoder CLI / libxcoder) against a real
# xcoderd bound to tcp://127.0.0.1 on random free ports, using only the
# sockets: `xcoder checkpoints`, `xcoder fetch` (bytes equal the file on disk;
# a transfer interrupted by Ctrl-C resumed with --resume from the .part's
# size; a stale .part detected by the SHA-256 and fetched again), and
# `xcoder table` (--npy columns byte-equal to the daemon's shared memory,
# --range, --fields, --json, text). Prints "ok - name" / "not ok - name: why".
set -u
TEST_TMP_TAG=xc_integ_remote TEST_PREFIX="remote_cli "
source "$(dirname "$0")/lib.sh"
read -r PI PC PE < <(free_ports)
ING=tcp://127.0.0.1:$PI CTL=tcp://127.0.0.1:$PC EVT=tcp://127.0.0.1:$PE
NAME=xcrem$$
# only sockets: no --run-dir for the client, endpoints by URI
X() { "$XC" --ingest "$ING" --control "$CTL" --events "$EVT" --timeout 20 "$@"; }

# d=64, F=8192: a ~6 MB checkpoint, several 1 MiB chunks
D=64 F=8192
"$XCD" --run_dir "$T/run" --state_dir "$T/state" --name "$NAME" --ingest "$ING" --control "$CTL" \
  --events "$EVT" --d $D --dict_size $F --k 8 --batch_size 256 --mix_tokens 256 --threads 1 \
  --shm_interval 0.05 --log_level warn >"$T/daemon.log" 2>&1 &
DPID=$!
up=0
for _ in $(seq 1 100); do
  if X --timeout 0.2 ping >/dev/null 2>&1; then up=1; break; fi
  kill -0 "$DPID" 2>/dev/null || break
  sleep 0.1
done
if [ $up -eq 1 ]; then ok "daemon_on_tcp"; else
  nok "daemon_on_tcp" "no answer to ping; log: $(tail -5 "$T/daemon.log" | tr '\n' ' ')"; exit 1
fi

# --- nothing to fetch yet: a clear error, non-zero exit
if ! X fetch "$T/none.st" >"$T/out" 2>&1 && grep -q "XC_ENOTFOUND\|no checkpoint" "$T/out"; then
  ok "fetch_before_any_checkpoint"
else nok "fetch_before_any_checkpoint" "$(tail -2 "$T/out")"; fi

X synth --tokens 4096 --batch 512 --quiet >"$T/out" 2>&1 || nok "synth" "$(tail -2 "$T/out")"
X checkpoint --json >"$T/ck.json" 2>"$T/err"
CK=$("$PY" -c "import json; print(json.load(open('$T/ck.json'))['path'])" 2>/dev/null)
CKN=$(basename "$CK")
if [ -f "$CK" ]; then ok "checkpoint_written"; else nok "checkpoint_written" "$(cat "$T/err")"; fi
SIZE=$(stat -c %s "$CK")
SUM=$(sha256sum "$CK" | cut -d' ' -f1)

# --- checkpoints lists it
if X checkpoints --json >"$T/out" 2>&1 && [ "$("$PY" -c "
import json; j = json.load(open('$T/out'))
e = [c for c in j['checkpoints'] if c['name'] == '$CKN']
print(bool(e) and e[0]['size'] == $SIZE and e[0]['kind'] == 'checkpoint' and j['newest'] == '$CKN')")" = "True" ] &&
   X checkpoints >"$T/out" 2>&1 && grep -q "^$CKN " "$T/out"; then
  ok "checkpoints_listing"
else nok "checkpoints_listing" "$(head -5 "$T/out")"; fi

# --- fetch the newest: bytes equal the file, checksum is sha256sum's
if X fetch "$T/a.st" --json >"$T/out" 2>"$T/err" && cmp -s "$CK" "$T/a.st" && [ ! -e "$T/a.st.part" ] &&
   [ "$("$PY" -c "import json; j = json.load(open('$T/out')); print(j['checksum'] == 'sha256:$SUM' and j['size'] == $SIZE and j['resumed_from'] == 0 and j['fetched'] == $SIZE)")" = "True" ]; then
  ok "fetch_newest_equals_file"
else nok "fetch_newest_equals_file" "$(cat "$T/out" "$T/err" | tail -3)"; fi

# --- by name, or by the path the daemon reported, with small chunks and the text output
if X fetch "$CK" "$T/b.st" --chunk 65536 --quiet >"$T/out" 2>&1 && cmp -s "$CK" "$T/b.st" &&
   grep -q "sha256:$SUM" "$T/out"; then
  ok "fetch_by_path_small_chunks"
else nok "fetch_by_path_small_chunks" "$(tail -2 "$T/out")"; fi

# --- interrupted with Ctrl-C (SIGINT) mid-transfer, then --resume from the .part's size
"$XC" --control "$CTL" fetch "$CKN" "$T/c.st" --chunk 4096 >"$T/out1" 2>&1 &  # not via X: $! must be xcoder
FPID=$!
for _ in $(seq 1 200); do
  [ -f "$T/c.st.part" ] && [ "$(stat -c %s "$T/c.st.part")" -ge 200000 ] && break
  sleep 0.01
done
kill -INT "$FPID" 2>/dev/null
wait "$FPID"; frc=$?
PART=$(stat -c %s "$T/c.st.part" 2>/dev/null || echo 0)
if [ "$frc" -ne 0 ] && [ "$PART" -gt 0 ] && [ "$PART" -lt "$SIZE" ] && [ ! -e "$T/c.st" ] &&
   grep -q "interrupted at byte" "$T/out1" && cmp -s -n "$PART" "$CK" "$T/c.st.part"; then
  ok "fetch_interrupted_leaves_part"
else nok "fetch_interrupted_leaves_part" "rc=$frc part=$PART size=$SIZE $(tail -c 300 "$T/out1")"; fi
if X fetch "$CKN" "$T/c.st" --resume --json >"$T/out" 2>"$T/err" && cmp -s "$CK" "$T/c.st" &&
   [ "$("$PY" -c "import json; j = json.load(open('$T/out')); print(j['resumed_from'] == $PART and j['fetched'] == $SIZE - $PART)")" = "True" ]; then
  ok "fetch_resumed_from_offset"
else nok "fetch_resumed_from_offset" "part=$PART $(cat "$T/out" "$T/err" | tail -3)"; fi

# --- a .part made by truncating a complete download: resumed from that offset
head -c 1234567 "$CK" >"$T/d.st.part"
if X fetch "$CKN" "$T/d.st" --resume --json -v >"$T/out" 2>"$T/err" && cmp -s "$CK" "$T/d.st" &&
   grep -q "resuming .* at byte 1234567" "$T/err" &&
   [ "$("$PY" -c "import json; print(json.load(open('$T/out'))['resumed_from'])")" = "1234567" ]; then
  ok "fetch_resume_at_arbitrary_offset"
else nok "fetch_resume_at_arbitrary_offset" "$(cat "$T/err" | tail -3)"; fi

# --- a stale .part (not this file's bytes): the SHA-256 catches it, fetched again from 0
head -c 100000 /dev/urandom >"$T/e.st.part"
if X fetch "$CKN" "$T/e.st" --resume --quiet >"$T/out" 2>"$T/err" && cmp -s "$CK" "$T/e.st" &&
   grep -q "again from the start" "$T/err"; then
  ok "fetch_stale_part_refetched"
else nok "fetch_stale_part_refetched" "$(cat "$T/err" | tail -3)"; fi

# --- names that are not checkpoints in state_dir are refused
if ! X fetch "../../etc/passwd.safetensors" "$T/f.st" >"$T/out" 2>&1 &&
   ! X --json fetch "/etc/passwd" "$T/f.st" >"$T/out2" 2>&1 && [ ! -e "$T/f.st" ]; then
  ok "fetch_refuses_paths"
else nok "fetch_refuses_paths" "$(cat "$T/out" "$T/out2" | tail -2)"; fi

# --- table: pause so the snapshot and shared memory hold the same step, then compare
X pause >/dev/null 2>&1
STEP=$(X status --json 2>/dev/null | "$PY" -c "import json,sys; print(json.load(sys.stdin)['step'])")
mkdir -p "$T/npy"
cat >"$T/cmp.py" <<EOF
import sys, time, numpy as np
sys.path.insert(0, "client/python")
import xcoder
s = xcoder.SharedStats("$NAME", wait=5)
t0 = time.monotonic()
while s.snapshot(verify=False).header["step"] != $STEP:
    assert time.monotonic() - t0 < 10, "shm never reached the paused step"
    time.sleep(0.02)
snap = s.snapshot()
bad = []
for name, arr in snap.arrays.items():
    got = np.load("$T/npy/%s.npy" % name)
    if got.dtype != arr.dtype or got.tobytes() != arr.tobytes():
        bad.append(name)
j = np.load("$T/npy/j.npy")
extra = [np.load("$T/npy/%s.npy" % n).shape for n in ("fired", "tokens_since_fired", "dead")]
print("OK" if not bad and len(snap.arrays) == 28 and (j == np.arange($F)).all()
      and extra == [($F,)] * 3 else "differ: %s" % bad)
EOF
if X table --npy "$T/npy" >"$T/out" 2>&1 && [ "$("$PY" "$T/cmp.py" 2>&1 | tail -1)" = "OK" ]; then
  ok "table_npy_equals_shared_memory"
else nok "table_npy_equals_shared_memory" "$("$PY" "$T/cmp.py" 2>&1 | tail -2) $(tail -2 "$T/out")"; fi

if X table --range 100:105 --fields delta_norm,class,last_step >"$T/out" 2>&1 &&
   [ "$(head -1 "$T/out")" = "$(printf 'j\tdelta_norm\tclass\tlast_step')" ] && [ "$(wc -l <"$T/out")" -eq 6 ] &&
   [ "$(sed -n 2p "$T/out" | cut -f1)" = "100" ]; then
  ok "table_text_range_fields"
else nok "table_text_range_fields" "$(head -3 "$T/out")"; fi

if X table --range 8190: --fields delta_norm,nu_err --json >"$T/out" 2>&1 &&
   [ "$("$PY" -c "
import json, numpy as np; j = json.load(open('$T/out'))
dn = np.load('$T/npy/delta_norm.npy')
c = j['columns']
print(j['start'] == 8190 and j['n'] == 2 and j['snapshot_step'] == $STEP and
      np.allclose(c['delta_norm'], dn[8190:]) and all(v is None or isinstance(v, float) for v in c['nu_err']))")" = "True" ]; then
  ok "table_json"
else nok "table_json" "$(head -c 300 "$T/out")"; fi

if ! X table --fields nope >"$T/out" 2>&1 && grep -q "unknown table field" "$T/out" &&
   ! X table --range 5:2 >/dev/null 2>&1; then
  ok "table_bad_arguments"
else nok "table_bad_arguments" "$(tail -2 "$T/out")"; fi
X resume >/dev/null 2>&1

# --- the daemon trained on and stops cleanly
if X shutdown >/dev/null 2>&1 && wait "$DPID"; then ok "daemon_clean_exit"; else
  nok "daemon_clean_exit" "$(tail -3 "$T/daemon.log")"; fi
DPID=""
[ "$fails" -eq 0 ]
