#!/bin/sh
# The small examples of the README run and check their own results:
# hello (both bridges), run-sync (three queries, one past its deadline),
# run-async (four threads fanning out, one call past its timeout).  Each
# exits non-zero if anything came out wrong; this script bounds them in
# time and fails if any fails.  A cross build runs them under its
# emulator, MM_TEST_EMULATOR (tests/cross-run.sh).
top=${top_builddir:-.}
fail=0
for p in hello run-sync run-async; do
  out=$(timeout 60 ${MM_TEST_EMULATOR:-} "$top/examples/$p" 2>&1)
  rc=$?
  echo "$out" | sed "s/^/$p: /"
  if [ $rc -ne 0 ]; then
    echo "FAIL: examples/$p exited $rc"
    fail=1
  fi
done
exit $fail
