#!/usr/bin/env bash
# Writes the seed corpus of fuzz-api into tests/fuzz/corpus/: small
# hand-made programs, one or more per operation family.  The encoding is
# fuzz-api.c's: a config byte, then 4 bytes per operation
#
#   code  where+(nbody<<3)  a  b
#
# where (bits 0-2, modulo 6): 0-3 plain thread T0..T3, 4-5 a coroutine of
# loop 0 / loop 1;
# nbody: how many of the following operations form the body.  Run it again
# after changing the encoding; FUZZ_PRINT=1 build-fuzz/fuzz-api-asan FILE
# shows how a file decodes.
set -euo pipefail

dir=$(cd "$(dirname "$0")" && pwd)/corpus
mkdir -p "$dir"

SPAWN=0 JOIN=1 DETACH=2 CANCEL=3 YIELD=4 SLEEP=5 RUN_SYNC=6 RUN_ASYNC=7
SEND=8 RECV=9 CLOSE=10 CHAN_FREE=11 GSPAWN=12 GCANCEL=13 GWAIT=14 STOP=15
FREE=16 START=17 RUN=18 STALE=19 LOCAL=20 DUMP=21
T0=0 T1=1 T2=2 T3=3 C0=4 C1=5

out=""
# op CODE WHERE NBODY A B
op() { out+=$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' "$1" $(($2 + ($3 << 3))) \
                "$4" "$5"); }
# seed NAME CONFIG: writes what the op calls since the last seed collected.
seed() { printf '%b' "$(printf '\\x%02x' "$2")$out" >"$dir/$1"; out=""; }

# SPAWN a: slot | loop << 3; b: timeout index (0,0,1,3 ms) | 4 named |
#   value index << 3 (0, -EIO, -ENOENT)
op $SPAWN $T0 0 0 0; op $JOIN $T1 0 0 0
seed spawn-join 0
op $SPAWN $C1 1 9 12; op $SLEEP 0 0 2 0; op $CANCEL $T1 0 1 0
op $DETACH $T2 0 1 0
seed spawn-cancel-detach 0
op $SPAWN $T0 2 2 2; op $SLEEP 0 0 3 0; op $YIELD 0 0 0 0
op $JOIN $T1 0 2 0
seed spawn-timeout 0
op $SPAWN $C0 2 8 0; op $SPAWN 0 1 3 0; op $SLEEP 0 0 1 0
op $JOIN 0 0 3 0; op $JOIN $T0 0 0 0
seed nested-spawn-join 0

# RUN_SYNC a: affinity (0 POOL, 1 CALLER, 2 LANE) | lane's loop << 2;
#   b: timeout index (0,0,1,2 ms) | 4 abandon | 8 no cleanup |
#   value index << 4 | fn sleep ms << 6
op $RUN_SYNC $C0 0 0 64; op $RUN_SYNC $T0 0 0 16
seed run-sync-pool 0
op $RUN_ASYNC $T0 1 0 0; op $RUN_SYNC 0 0 1 66
seed run-sync-caller 0
op $RUN_SYNC $C1 0 2 64; op $RUN_SYNC $T1 0 6 0
seed run-sync-lane 0
op $SPAWN $T0 1 0 0; op $RUN_SYNC 0 0 0 196; op $SLEEP $T1 0 1 0
op $CANCEL $T1 0 0 0; op $JOIN $T2 0 0 0
seed run-sync-abandon-cancel 0
op $SPAWN $C0 2 1 0; op $RUN_SYNC 0 0 0 198; op $RUN_SYNC 0 0 1 130
op $JOIN $T0 0 1 0
seed run-sync-timeout 0

# RUN_ASYNC a: loop; b: timeout index (0,0,1,3 ms) | 4 named | value << 3
op $RUN_ASYNC $T0 1 1 2; op $SLEEP 0 0 3 0
seed run-async-timeout 0
op $RUN_ASYNC $C0 2 1 12; op $YIELD 0 0 0 0; op $RUN_ASYNC 0 0 0 0
seed run-async-other-loop 0

# channels: a: slot | capacity - 1 << 2
op $SEND $T0 0 0 0; op $RECV $C1 0 0 0; op $SEND $C0 0 0 0
op $RECV $T1 0 0 0; op $SEND $T2 0 0 0; op $SEND $T3 0 0 0
seed chan-across 0
op $RECV $T0 0 1 0; op $RECV $C0 0 1 0; op $SEND $C1 0 1 0
op $CLOSE $T2 0 1 0; op $SEND $T3 0 1 0
seed chan-close-waiters 0
op $SEND $T0 0 2 0; op $SEND $T1 0 2 0; op $CHAN_FREE $C1 0 2 0
op $SEND $T1 0 2 0; op $RECV $T2 0 2 0
seed chan-free 0
op $SPAWN $T0 1 0 0; op $RECV 0 0 0 0; op $CLOSE $T1 0 0 0
op $CHAN_FREE $T1 0 0 0; op $CANCEL $T2 0 0 0
seed chan-close-free-cancel 0

# groups: a: group | loop << 1
op $GSPAWN $T0 1 0 8; op $SLEEP 0 0 1 0; op $GSPAWN $T1 0 0 0
op $GWAIT $T2 0 0 0
seed group-fail 0
op $GSPAWN $C1 2 3 0; op $GSPAWN 0 0 1 0; op $SLEEP 0 0 3 0
op $GCANCEL $T0 0 1 0; op $GWAIT $T1 0 1 0
seed group-cancel 0

# loops: a: loop
op $SPAWN $T0 1 8 0; op $SLEEP 0 0 3 0; op $RUN_ASYNC $T1 0 1 0
op $STOP $T2 0 1 0; op $JOIN $T3 0 0 0
seed loop-stop 0
op $SPAWN $T0 0 8 0; op $RUN_ASYNC $T1 0 1 0; op $FREE 0 0 1 0
op $SPAWN $T2 0 9 0
seed loop-free-midway 0
op $SPAWN $T0 0 8 0; op $RUN_ASYNC $T1 0 1 0; op $RUN $T2 0 1 0
op $JOIN $T3 0 0 0; op $START 0 0 1 0
seed loop-undriven 1
op $SPAWN $C0 3 1 0; op $RUN_SYNC 0 2 2 134; op $RUN_ASYNC 0 1 1 1
op $SEND 0 0 0 0; op $RECV 0 0 0 0; op $CANCEL $T0 0 1 0
op $JOIN $T1 0 1 0
seed mixed-nesting 0

# locals (a: key) and diagnostics (DUMP a: loop; b: 1 stats)
op $LOCAL $T0 0 0 0; op $SPAWN $T0 2 0 0; op $LOCAL 0 0 1 0
op $RUN_SYNC 0 1 0 0; op $LOCAL 0 0 0 0; op $RUN_ASYNC $T0 1 1 0
op $LOCAL 0 0 1 0; op $JOIN $T1 0 0 0; op $DUMP $T2 0 0 0
op $DUMP $C1 0 0 1; op $DUMP $C0 0 1 0
seed locals-dump 0

# config bits: 1 loop 1 undriven, 2/4 pools of 2, 8 idle 1 ms, 16 slow
# step 1 ms, 32 one thread kept
op $SPAWN $C0 2 0 0; op $RUN_SYNC 0 0 0 64; op $RUN_SYNC 0 0 0 64
op $SPAWN $C0 1 1 0; op $RUN_SYNC 0 0 0 130; op $RUN_SYNC $C0 0 0 66
op $SLEEP $T0 0 3 0; op $RUN_SYNC $C0 0 0 0; op $JOIN $T1 0 0 0
op $JOIN $T2 0 1 0
seed pool-tight $((2 | 8 | 16))
op $RUN_ASYNC $T0 1 1 0; op $RUN_SYNC 0 1 1 66; op $SPAWN $T1 0 9 0
op $RUN $T2 0 1 0; op $RUN_ASYNC $C0 1 1 0; op $RUN_SYNC 0 0 2 0
op $STOP $T3 0 1 0
seed undriven-pool-min $((1 | 4 | 32))

echo "make-seeds.sh: $(ls "$dir" | wc -l) seeds in $dir"
