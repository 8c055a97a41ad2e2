#!/usr/bin/env bash
# The build's structure:
#  - `make` with no target builds everything: the daemon, the CLI, libxcoder
#    (static and shared), every unit test and every benchmark (read from make's
#    database: the default goal and its prerequisites).
# Prints "ok - name" / "not ok - name: why"; exits non-zero on any failure.
set -u
TEST_TMP_TAG=xc_walls
TEST_PREFIX=walls_
. "$(dirname "$0")/lib.sh"

# make's database, without running anything (-q: question mode, -p: print)
make -pq --no-print-directory 2>/dev/null >"$T/db"

# ---------------------------------------------------- default goal: all --
default_goal_builds_everything() {
  local goal prereqs missing=""
  goal=$(sed -n 's/^\.DEFAULT_GOAL := //p' "$T/db" | tail -1)
  [ "$goal" = all ] || { echo "the default goal is '$goal', not all"; return 1; }
  prereqs=" $(sed -n 's/^all: //p' "$T/db" | head -1) "
  local want="build/xcoderd build/xcoder build/libxcoder.a build/libxcoder.so"
  for f in tests/test_*.c; do want="$want build/tests/$(basename "$f" .c)"; done
  for f in bench/*.c; do want="$want build/bench/$(basename "$f" .c)"; done
  for w in $want; do
    case "$prereqs" in *" $w "*) ;; *) missing="$missing $w" ;; esac
  done
  [ -z "$missing" ] || { echo "\`make\` does not build:$missing"; return 1; }
}
if out=$(default_goal_builds_everything 2>&1); then ok make_builds_everything
else nok make_builds_everything "$out"; fi

[ "$fails" -eq 0 ]
