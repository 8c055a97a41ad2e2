#!/usr/bin/env bash
# The Python client's test suite (client/python/tests) under Debian's pytest,
# against a real build/xcoderd. Prints one "ok - python NAME" / "not ok - python
# NAME: why" line per test (tests/run.sh counts them; a skipped test counts as
# a failure) and exits non-zero when any test failed or pytest itself failed.
set -u
cd "$(dirname "$0")/.."
if [ ! -x build/xcoderd ]; then
  echo "not ok - python client tests: build/xcoderd is missing (make build/xcoderd)"
  exit 1
fi
export XC_TAP=1 PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$PWD/client/python${PYTHONPATH:+:$PYTHONPATH}"
/usr/bin/python3 -m pytest -q -rfEs --tb=short -p no:cacheprovider client/python/tests
rc=$?
[ "$rc" -eq 0 ] || echo "python client tests: pytest exited with status $rc"
exit "$rc"
