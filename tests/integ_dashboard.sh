#!/usr/bin/env bash
# The web dashboard (client/js/dashboard) in a real browser: a build/xcoderd on
# tcp://127.0.0.1, `xcoder synth` feeding it, the dashboard server, Debian's
# Chromium driven headless by playwright-core (client/js/dashboard/test/browser.js
# prints the ok/not ok lines). Screenshots of each page: build/dashboard/*.png.
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
# the whole browser session takes about 25 s; 150 s is a hang
CHROMIUM="$CHROMIUM" timeout -k 5 150 node client/js/dashboard/test/browser.js
rc=$?
[ $rc -eq 124 ] && echo "not ok - dashboard: the browser test did not finish within 150 s"
exit $rc
