#!/usr/bin/env bash
# make test runs every libFuzzer harness (fuzz/) for a few seconds
# (FUZZ_TEST_SECONDS, default 3) from its seeds and past defects' inputs;
# `make fuzz FUZZ_SECONDS=N` runs them longer.
cd "$(dirname "$0")/.."
bins=()
for src in fuzz/fuzz_*.c; do n=$(basename "$src" .c); bins+=("build/fuzz/$n"); done
exec bash fuzz/run.sh "${FUZZ_TEST_SECONDS:-3}" "${bins[@]}"
