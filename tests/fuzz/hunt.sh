#!/usr/bin/env bash
# Fuzzes with one built fuzz-api binary for a while, starting again after
# each failure, and keeps every failing input.
#
# Usage: tests/fuzz/hunt.sh BINARY WORKDIR SECONDS [libFuzzer options...]
#
# The binary is copied into WORKDIR first (so that rebuilding does not pull
# it from under a running fuzzer).  WORKDIR/corpus starts as a copy of
# tests/fuzz/corpus and keeps what the runs add; failing inputs land in
# WORKDIR/artifacts (crash-*, timeout-*, leak-*), each with the tail of
# its run's output beside it (.log).  TSan binaries get the suppressions of
# tests/fuzz/tsan.supp.
set -uo pipefail

if [ $# -lt 3 ]; then
  echo "usage: $0 BINARY WORKDIR SECONDS [libFuzzer options...]" >&2
  exit 2
fi
src=$(cd "$(dirname "$0")" && pwd)
bin=$1 work=$2 secs=$3
shift 3
mkdir -p "$work/corpus" "$work/artifacts"
cp "$bin" "$work/fuzz-api"
[ -n "$(ls -A "$work/corpus")" ] || cp "$src"/corpus/* "$work/corpus/"
case $bin in
  *tsan*) export TSAN_OPTIONS="halt_on_error=1 suppressions=$src/tsan.supp" ;;
esac

end=$(($(date +%s) + secs))
run=0
while [ "$(date +%s)" -lt "$end" ]; do
  run=$((run + 1))
  left=$((end - $(date +%s)))
  "$work/fuzz-api" -max_total_time="$left" -timeout=30 -rss_limit_mb=4096 \
    -artifact_prefix="$work/artifacts/" "$@" "$work/corpus" \
    >"$work/run-$run.log" 2>&1
  rc=$?
  new=$(ls -t "$work/artifacts" | grep -v '\.log$' | head -n 1)
  if [ $rc -ne 0 ] && [ -n "$new" ] && [ ! -f "$work/artifacts/$new.log" ]; then
    tail -n 400 "$work/run-$run.log" >"$work/artifacts/$new.log"
    what='violation: .{0,80}|fuzz-api: hang|ERROR: [A-Za-z]+: [a-z-]+'
    what="$what|WARNING: ThreadSanitizer: [a-z ]+"
    echo "hunt.sh: run $run: $new ($(grep -m1 -oE "$what" \
      "$work/run-$run.log" | head -n 1))"
  fi
  grep -E '^#[0-9]+.*(DONE|pulse)' "$work/run-$run.log" | tail -n 1
done
