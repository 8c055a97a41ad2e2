#!/usr/bin/env bash
# Runs every test program given on the command line (C binaries, or *.py run with
# Debian's /usr/bin/python3), counts "ok -" / "not ok -" lines, and treats a
# program that exits non-zero without reporting a failing case (a crash, a
# sanitizer report) as one failure. Ends with the line "N passed, N failed".
set -u
pass=0; fail=0
for t in "$@"; do
  log=$(mktemp)
  case "$t" in
    *.py) /usr/bin/python3 "$t" >"$log" 2>&1 ;;
    *.sh) bash "$t" >"$log" 2>&1 ;;
    *)    "$t" >"$log" 2>&1 ;;
  esac
  rc=$?
  p=$(grep -c '^ok - ' "$log"); f=$(grep -c '^not ok - ' "$log")
  pass=$((pass + p)); fail=$((fail + f))
  grep -E '^(ok|not ok) - ' "$log" | sed "s|^|[$t] |"
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    fail=$((fail + 1)); echo "not ok - $t exited with status $rc"
  fi
  if [ "$rc" -ne 0 ] || [ "$f" -ne 0 ]; then
    echo "---- output of $t (last 40 lines) ----"; tail -n 40 "$log"; echo "----"
  fi
  rm -f "$log"
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
