#!/usr/bin/env bash
# The daemon's integration tests once more against build/asan/xcoderd
# (AddressSanitizer + UBSan): an overflow, a use after free, undefined behaviour or
# a leak at exit in the service fails them (the SIGTERM cases expect exit 0).
# Case names get an "asan " prefix.
set -u -o pipefail
cd "$(dirname "$0")/.."
if [ ! -x build/asan/xcoderd ]; then
  echo "not ok - asan setup: build/asan/xcoderd is not built (make build/asan/xcoderd)"; exit 1
fi
export XCODERD=build/asan/xcoderd
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
rc=0
for t in tests/integ_daemon.py tests/integ_scaling.py tests/integ_examples.py tests/integ_mix.py tests/integ_norm.py; do
  /usr/bin/python3 "$t" 2>&1 | sed -E 's/^(not )?ok - /&asan /' || rc=1
done
exit $rc
