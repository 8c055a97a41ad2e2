#!/usr/bin/env bash
# The JavaScript client's test suite (client/js/test/*.test.js, node's built-in
# test runner) against a real build/xcoderd on tcp://127.0.0.1, plus the shared
# protocol vectors. node's TAP ("ok N - name" / "not ok N - name") becomes the
# "ok - js name" / "not ok - js name" lines tests/run.sh counts; a skipped
# test counts as a failure; exits non-zero when anything failed.
set -u
cd "$(dirname "$0")/.."
if ! command -v node >/dev/null 2>&1; then
  echo "not ok - js client tests: node is not installed (make deps installs nodejs and npm)"; exit 1
fi
if [ ! -d client/js/node_modules/zeromq ] || [ ! -d client/js/node_modules/@msgpack/msgpack ]; then
  echo "not ok - js client tests: client/js/node_modules is missing (make build/js.stamp runs npm ci)"; exit 1
fi
if [ ! -x build/xcoderd ]; then
  echo "not ok - js client tests: build/xcoderd is missing (make build/xcoderd)"; exit 1
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
(cd client/js && node --test --test-reporter=tap test/*.test.js) >"$log" 2>&1
rc=$?
# Leaf results only: a file wrapper line (a name ending in .js, older node
# versions) is reported only when it failed (e.g. the file did not load).
awk '
  match($0, /^[ \t]*(not )?ok [0-9]+ - /) {
    line = $0; sub(/^[ \t]*/, "", line)
    bad = (line ~ /^not ok/)
    name = line; sub(/^(not )?ok [0-9]+ - /, "", name)
    directive = ""
    if (match(name, / # (SKIP|TODO)( .*)?$/)) { directive = substr(name, RSTART + 3); name = substr(name, 1, RSTART - 1) }
    if (name ~ /\.js$/ && !bad) next
    if (directive ~ /^SKIP/) { print "not ok - js " name ": skipped (" directive ")"; next }
    if (directive ~ /^TODO/) { print "ok - js " name " # " directive; next }
    print (bad ? "not ok - js " : "ok - js ") name
  }' "$log" >"$log.lines"
cat "$log.lines"
fails=$(grep -c '^not ok - ' "$log.lines")
passes=$(grep -c '^ok - ' "$log.lines")
rm -f "$log.lines"
if [ "$rc" -ne 0 ] || [ "$fails" -ne 0 ] || [ "$passes" -eq 0 ]; then
  echo "---- node --test output (last 60 lines) ----"; tail -n 60 "$log"
  [ "$fails" -eq 0 ] && echo "not ok - js client tests: node --test exited with status $rc"
  exit 1
fi
exit 0
