#!/usr/bin/env bash
# Runs each libFuzzer harness for SECONDS on its seed corpus (fuzz/seeds.py),
# printing one "ok - fuzz NAME: N runs" / "not ok - fuzz NAME: ..." line each
# (tests/run.sh counts them). A crash leaves its input in build/fuzz/crashes/.
# Usage: fuzz/run.sh SECONDS build/fuzz/fuzz_NAME...
set -u
cd "$(dirname "$0")/.."
secs=$1
shift
corpus=build/fuzz/corpus
mkdir -p "$corpus" build/fuzz/crashes
/usr/bin/python3 fuzz/seeds.py "$corpus" || { echo "not ok - fuzz seeds: fuzz/seeds.py failed"; exit 1; }
fails=0
for f in "$@"; do
  name=$(basename "$f")
  log=build/fuzz/$name.log
  if "$f" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
       -artifact_prefix=build/fuzz/crashes/"$name"- "$corpus/$name" >"$log" 2>&1; then
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
    echo "ok - fuzz $name: ${runs:-?} runs in ${secs} s, no crash"
  else
    echo "not ok - fuzz $name: $(grep -m1 -E 'ERROR|SUMMARY|deadly' "$log" | cut -c1-200) (input in build/fuzz/crashes/)"
    fails=$((fails + 1))
  fi
done
[ $fails -eq 0 ]
