# Shared setup of the shell integration tests, sourced after `set -u` (set
# TEST_TMP_TAG, and optionally TEST_PREFIX and SHM_NAME, before sourcing): the
# repository root as working directory, the binaries, ok/nok lines counted in
# $fails, a temp dir $T removed at exit together with the daemon ($DPID), a
# background producer ($SPID) and the shared-memory object of instance $SHM_NAME.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
XC=${XCODER_BIN:-build/xcoder}
XCD=build/xcoderd
PY=/usr/bin/python3
fails=0
ok() { echo "ok - ${TEST_PREFIX:-}$1"; }
nok() { echo "not ok - ${TEST_PREFIX:-}$1: $2"; fails=$((fails + 1)); }
if [ ! -x "$XC" ] || [ ! -x "$XCD" ]; then
  echo "not ok - ${TEST_PREFIX:-}setup: build/xcoder and build/xcoderd must be built (make)"; exit 1
fi
T=$(mktemp -d "/tmp/${TEST_TMP_TAG:-xc_integ}.XXXXXX")
DPID=""
SPID=""
cleanup() {
  for p in $SPID $DPID; do
    if kill -0 "$p" 2>/dev/null; then kill -KILL "$p" 2>/dev/null; fi
  done
  if [ -n "${SHM_NAME:-}" ]; then rm -f "/dev/shm/xcoderd.$SHM_NAME"; fi
  rm -rf "$T"
}
trap cleanup EXIT
# free_ports: three free loopback TCP ports on one line
free_ports() {
  "$PY" -c "
import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(('127.0.0.1', 0))
print(*[s.getsockname()[1] for s in ss])"
}
# py_json FILE EXPR: prints EXPR evaluated on the parsed JSON file as `j`
py_json() { "$PY" -c "import json,sys; j=json.load(open(sys.argv[1])); print($2)" "$1"; }
