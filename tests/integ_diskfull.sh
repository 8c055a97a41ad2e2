#!/usr/bin/env bash
# Checkpoints on a full disk, with state_dir on a small tmpfs (needs root, as
# CI runs; elsewhere it says why it did not run): when the disk fills, the
# oldest pair of this run is removed to make room and checkpoints go on; when
# nothing can be written, automatic checkpoints back off (a handful of failures
# in seconds, one ERROR line, not hundreds); SIGTERM then exits 1 with one
# clear line; with space again the daemon resumes from its last checkpoint.
# A read-only state_dir is handled the same way. Prints ok / not ok lines.
set -u
TEST_TMP_TAG=xc_integ_diskfull TEST_PREFIX="diskfull "
source "$(dirname "$0")/lib.sh"
ST="$T/state"
mkdir -p "$ST"
if ! mount -t tmpfs -o size=64m,mode=0700 tmpfs "$ST" 2>"$T/mount.err"; then
  echo "# diskfull: not run: cannot mount a tmpfs here ($(head -c 200 "$T/mount.err")); needs root"
  exit 0
fi
cleanup_mount() { umount -l "$ST" 2>/dev/null; cleanup; }
trap cleanup_mount EXIT
[ -n "${KEEP_LOG:-}" ] && trap "cp $T/daemon.log /tmp/diskfull.log; cleanup_mount" EXIT
NAME=xcfull$$
start() {
  "$XCD" --run_dir "$T/run" --state_dir "$ST" --name "$NAME" --d 32 --dict_size 1024 --k 4 --batch_size 256 \
    --mix_tokens 256 --threads 1 --checkpoint_steps 1 --checkpoint_keep 0 --checkpoint_interval 0 \
    --log_level info "$@" >>"$T/daemon.log" 2>&1 &
  DPID=$!
  for _ in $(seq 1 100); do "$XC" --run-dir "$T/run" --timeout 0.2 ping >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}
X() { "$XC" --run-dir "$T/run" "$@"; }
ctr() { X --json status 2>/dev/null | "$PY" -c "import json,sys; print(json.load(sys.stdin)['counters']['$1'])"; }

start || { nok "start" "$(tail -3 "$T/daemon.log")"; exit 1; }
# a pair is ~16 MB (the examples store): after three the disk is full; checkpoints go on by removing the oldest
X synth --tokens 0 --batch 256 --rate 4000 --quiet >/dev/null 2>&1 &
SPID=$!
for _ in $(seq 1 150); do [ "$(ctr checkpoints_written)" -ge 8 ] 2>/dev/null && break; sleep 0.1; done
w=$(ctr checkpoints_written)
if [ "${w:-0}" -ge 8 ] && grep -q "removed the oldest checkpoint" "$T/daemon.log"; then
  ok "full_disk_makes_room_and_goes_on"
else nok "full_disk_makes_room_and_goes_on" "written ${w:-?}; $(grep -m2 -i 'checkpoint' "$T/daemon.log" | tail -1)"; fi

# nothing fits any more and nothing can be removed (only the newest valid pair
# is left): automatic checkpoints back off
X pause >/dev/null 2>&1
sleep 1 # a write in flight finishes
dd if=/dev/zero of="$ST/junk" bs=64k >/dev/null 2>&1
newest=$(ls "$ST" | sed -n "s/^$NAME-\([0-9]*\)\.safetensors\$/\1/p" | sort | tail -1)
for f in "$ST/$NAME"-*.safetensors; do case "$f" in *"-$newest."*) ;; *) rm -f "$f" ;; esac; done
dd if=/dev/zero of="$ST/junk2" bs=64k >/dev/null 2>&1
X resume >/dev/null 2>&1
sleep 1
f0=$(ctr checkpoints_failed)
e0=$(grep -c 'ERROR.*checkpoint.*failed' "$T/daemon.log")
sleep 6
f1=$(ctr checkpoints_failed)
e1=$(grep -c 'ERROR.*checkpoint.*failed' "$T/daemon.log")
s1=$(X --json status 2>/dev/null | "$PY" -c "import json,sys; print(json.load(sys.stdin)['step'])")
if [ $((f1 - f0)) -ge 1 ] && [ $((f1 - f0)) -le 8 ] && [ $((e1 - e0)) -le 2 ]; then
  ok "failures_back_off: $((f1 - f0)) failures and $((e1 - e0)) ERROR line in 6 s at step ${s1:-?}"
else nok "failures_back_off" "$((f1 - f0)) failures, $((e1 - e0)) ERROR lines in 6 s (step ${s1:-?})"; fi
kill "$SPID" 2>/dev/null; wait "$SPID" 2>/dev/null

# SIGTERM on a full disk: exit 1, one clear line
kill -TERM "$DPID"; wait "$DPID"; rc=$?
if [ $rc -eq 1 ] && grep -q "the final checkpoint failed" "$T/daemon.log"; then ok "sigterm_full_disk_exit1_said"
else nok "sigterm_full_disk_exit1_said" "exit $rc; $(tail -2 "$T/daemon.log")"; fi

# space again: resumes from the newest valid pair
rm -f "$ST/junk" "$ST/junk2"
start || { nok "restart" "$(tail -3 "$T/daemon.log")"; exit 1; }
s2=$(X --json status 2>/dev/null | "$PY" -c "import json,sys; print(json.load(sys.stdin)['step'])")
if [ "${s2:-0}" -ge 8 ]; then ok "resumes_after_space_freed: step $s2"
else nok "resumes_after_space_freed" "step ${s2:-?}"; fi

# read-only state_dir: the checkpoint request fails with a reason, training goes on
X synth --tokens 0 --batch 256 --rate 4000 --quiet >/dev/null 2>&1 &
SPID=$!
# remounting fails while a checkpoint file is open for writing: pause (no new
# automatic checkpoints), let the one in flight finish, then remount
X pause >/dev/null 2>&1
ro=0
for _ in $(seq 1 100); do mount -o remount,ro "$ST" 2>/dev/null && { ro=1; break; }; sleep 0.1; done
X resume >/dev/null 2>&1
[ $ro -eq 1 ] || nok "read_only_remount" "could not remount the tmpfs read-only"
step() { X --json status 2>/dev/null | "$PY" -c "import json,sys; print(json.load(sys.stdin)['step'])"; }
r0=$(step)
for _ in $(seq 1 50); do [ "$(step)" -gt $((${r0:-0} + 2)) ] 2>/dev/null && break; sleep 0.1; done
if ! X --timeout 30 checkpoint >"$T/out" 2>&1 && grep -qi "read-only\|cannot" "$T/out" &&
   X ping >/dev/null 2>&1; then ok "read_only_state_dir_reported"
else nok "read_only_state_dir_reported" "$(cat "$T/out")"; fi
mount -o remount,rw "$ST"
kill "$SPID" 2>/dev/null; wait "$SPID" 2>/dev/null
kill -TERM "$DPID"; wait "$DPID"
exit 0
