#!/usr/bin/env bash
# The web dashboard (client/js/dashboard): `xcoder dashboard`; against a daemon
# with CURVE keys (test/auth.js); and in a real browser (test/browser.js): a
# build/xcoderd on tcp://127.0.0.1, `xcoder synth` feeding it, the dashboard
# server, Debian's Chromium driven headless by playwright-core. The scripts print
# the ok/not ok lines. Screenshots of each page: build/dashboard/*.png.
set -u
cd "$(dirname "$0")/.."
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
miss=""
command -v node >/dev/null 2>&1 || miss="node is not installed (make deps installs nodejs and npm)"
[ -n "$miss" ] || [ -x "$CHROMIUM" ] || miss="$CHROMIUM is missing (make deps installs Debian's chromium)"
[ -n "$miss" ] || [ -d client/js/node_modules/zeromq ] || miss="client/js/node_modules is missing (make build/js.stamp runs npm ci)"
[ -n "$miss" ] || { [ -d client/js/dashboard/node_modules/uplot ] && [ -d client/js/dashboard/node_modules/playwright-core ]; } ||
  miss="client/js/dashboard/node_modules is missing (make build/dashboard.stamp runs npm ci)"
[ -n "$miss" ] || { [ -x build/xcoderd ] && [ -x build/xcoder ]; } || miss="build/xcoderd and build/xcoder must be built (make)"
if [ -n "$miss" ]; then echo "not ok - dashboard: $miss"; exit 1; fi
fails=0
# `xcoder dashboard` runs node on the dashboard with the CLI's endpoints; it
# starts whether or not a daemon answers, and says it is waiting for one
T=$(mktemp -d /tmp/xc_dash.XXXXXX)
trap 'kill "$WPID" 2>/dev/null; rm -rf "$T"' EXIT
WPID=""
build/xcoder --control tcp://127.0.0.1:9 --events tcp://127.0.0.1:9 dashboard --port 0 --poll 0.2 >"$T/out" 2>&1 &
WPID=$!
url=""
for _ in $(seq 1 100); do url=$(grep -m1 -o 'http://127\.0\.0\.1:[0-9]*/' "$T/out") && break; sleep 0.1; done
if [ -n "$url" ] && node -e '
  fetch(process.argv[1] + "api/status").then((r) => r.json()).then((s) => {
    process.exit(s.control === "tcp://127.0.0.1:9" && s.connected === false ? 0 : 1); }, () => process.exit(1));' "$url"; then
  echo "ok - dashboard xcoder dashboard starts it with the CLI's endpoints and prints its URL"
else
  echo "not ok - dashboard xcoder dashboard starts it with the CLI's endpoints and prints its URL: $(head -c 300 "$T/out")"; fails=1
fi
kill "$WPID" 2>/dev/null; wait "$WPID" 2>/dev/null; WPID=""
# with CURVE keys: none, reader, admin, and through `xcoder dashboard`
timeout -k 5 60 node client/js/dashboard/test/auth.js || fails=1
# the whole browser session takes about 25 s; 150 s is a hang
CHROMIUM="$CHROMIUM" timeout -k 5 150 node client/js/dashboard/test/browser.js
rc=$?
[ $rc -eq 124 ] && echo "not ok - dashboard: the browser test did not finish within 150 s"
[ $rc -eq 0 ] && [ $fails -eq 0 ]
