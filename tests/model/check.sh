#!/usr/bin/env bash
# Checks the spin models of the completion protocol (tests/model/*.pml,
# see completion.pml) exhaustively, and checks that the broken variants
# are rejected, so that a passing check is not a vacuous one.
#
# Usage: tests/model/check.sh [-j JOBS] [-k]
#   -j JOBS  checks run at once (default 2)
#   -k       keep the work directory (pan sources, logs, trails)
#
# Each check: spin -a on one model with some -D options, pan compiled by
# gcc and run.  "holds" checks must finish with 0 errors and without
# hitting the depth or memory bound; "rejects" checks must find an error
# whose message contains the expected text (the violation we mean, not
# any).  Safety checks compile with -DSAFETY; the "live" ones check the
# models' `ltl ends` (every waiter's call returns) with -a under weak
# fairness (-f).  Memory is bounded per pan (-DMEMLIM, MB); states are
# stored with -DCOLLAPSE.
#
# Prints one line per check, PASS or FAIL, then a summary; exits 0 only
# if every check passed.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
jobs=2
keep=no
while getopts j:k opt; do
  case $opt in
    j) jobs=$OPTARG ;;
    k) keep=yes ;;
    *) echo "usage: $0 [-j JOBS] [-k]" >&2; exit 2 ;;
  esac
done

memlim=${MM_MODEL_MEMLIM:-512}
depth=${MM_MODEL_DEPTH:-100000}

for tool in spin gcc; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "FAIL setup: $tool not found (scripts/install-deps installs it)"
    exit 2
  fi
done

work=$(mktemp -d "${TMPDIR:-/tmp}/mm-model.XXXXXX") || exit 2
if [ "$keep" = no ]; then
  trap 'rm -rf "$work"' EXIT
else
  echo "work directory: $work"
fi

# add NAME MODEL DEFINES MODE EXPECT [OPT]
#   MODE    safety, or live (-a -f on the model's `ltl ends`)
#   EXPECT  holds, or rejects:TEXT (pan's error must contain TEXT)
#   OPT     gcc optimisation for pan, default -O0: compiling pan.c at -O2
#           costs more than it saves on models of under a million states
checks=()
add() { checks+=("$1|$2|$3|$4|$5|${6:-}"); }

add chan-coro-and-thread chan "-DNW=2" safety holds -O1
add chan-recv chan "-DSTOP -DDEADLINE" safety holds
add chan-recv-no-stop chan "" safety holds
add chan-send chan "-DWAIT_SEND -DSTOP -DDEADLINE" safety holds
add chan-recv-live chan "-DLIVE -DSTOP -DDEADLINE" live holds -O1
add chan-old-cancel-rejected chan "-DOLD_CANCEL" safety \
  "rejects:assertion violated ch_alive"
add chan-free-after-close-busy-rejected chan "-DSTRICT_FREE" safety \
  "rejects:assertion violated  !((closed&&busy))"
add chan-free-waits-for-leaving chan "-DFREE_WAITS -DSTRICT_FREE -DSTOP" \
  safety holds
add chan-free-waits-coro-and-thread chan "-DFREE_WAITS -DSTRICT_FREE -DNW=2" \
  safety holds -O1
add chan-free-waits-unfair-rejected chan "-DLIVE -DFREE_WAITS" live \
  "rejects:acceptance cycle"

add bell bell "" safety holds
add bell-spurious-three-wakers bell "-DSPURIOUS -DNW=3" safety holds
add bell-reordered-rejected bell "-DREORDERED" safety \
  "rejects:assertion violated ((wakers_done==2)&&finished)"
add bell-no-recheck-rejected bell "-DNO_RECHECK" safety \
  "rejects:assertion violated ((wakers_done==2)&&finished)"

add run-sync runsync "-DDEADLINE -DSTOP" safety holds
add run-sync-cancel-only runsync "" safety holds
add run-sync-abandon runsync "-DABANDON -DDEADLINE -DSTOP" safety holds
add run-sync-abandon-cancel-only runsync "-DABANDON" safety holds
add run-sync-abandon-live runsync "-DLIVE -DABANDON -DDEADLINE -DSTOP" \
  live holds
add run-sync-no-ask-wait-rejected runsync "-DDEADLINE -DNO_ASK_WAIT" \
  safety "rejects:assertion violated (arg_alive&& !(oc_active))"
add run-sync-abandon-no-ask-wait-rejected runsync \
  "-DABANDON -DDEADLINE -DNO_ASK_WAIT" safety \
  "rejects:assertion violated ((arg_alive&&took)"
add run-sync-ungated-deadline-rejected runsync \
  "-DABANDON -DDEADLINE -DSTOP -DDEADLINE_UNGATED" safety \
  "rejects:assertion violated req_alive"

add run-async runasync "-DSTOP" safety holds
add run-async-no-stop runasync "" safety holds
add run-async-thread-deadline-heap runasync \
  "-DSTOP -DTHREAD_DEADLINE -DHEAP_Q" safety holds
add run-async-live runasync "-DLIVE -DSTOP -DTHREAD_DEADLINE -DHEAP_Q" \
  live holds
add run-async-thread-deadline-stack-rejected runasync \
  "-DSTOP -DTHREAD_DEADLINE" safety "rejects:assertion violated q_alive"

add await await "-DDEADLINE -DSTOP" safety holds
add await-no-stop await "" safety holds
add await-live await "-DLIVE -DDEADLINE -DSTOP" live holds
add await-shared-slot-rejected await "-DSHARED_SLOT" safety \
  "rejects:assertion violated (((gresult==1)"
add await-late-on-cancel-rejected await "-DSTRICT_ONCANCEL" safety \
  "rejects:assertion violated  !(wake_returned)"
add await-stop-without-wake-rejected await "-DNO_WAKE -DSTOP" safety \
  "rejects:assertion violated coro_done"

now() { date +%s.%N; }

# run_check INDEX: runs checks[INDEX] in its own directory and leaves its
# verdict line in result.
run_check() {
  local name model defs mode expect opt
  IFS='|' read -r name model defs mode expect opt <<<"${checks[$1]}"
  local dir=$work/$1-$name
  mkdir -p "$dir"
  cp "$here"/*.pml "$dir"/
  local start verdict detail
  start=$(now)
  (
    cd "$dir" || exit 1
    # shellcheck disable=SC2086  # defs is a word list
    if ! spin -a $defs "$model.pml" >spin.log 2>&1; then
      echo "FAIL spin -a failed: $(tail -n 1 spin.log)" >result.tmp
      exit 0
    fi
    local cflags=("${opt:--O0}" -w -DCOLLAPSE -DMEMLIM="$memlim"
                  -DNFAIR=4)
    local run=(./pan -m"$depth" -n)
    if [ "$mode" = safety ]; then
      cflags+=(-DSAFETY)
    else
      run+=(-a -f)
    fi
    if ! gcc "${cflags[@]}" -o pan pan.c >gcc.log 2>&1; then
      echo "FAIL gcc failed: $(head -n 1 gcc.log)" >result.tmp
      exit 0
    fi
    "${run[@]}" >pan.log 2>&1
    local errors states bounded=""
    errors=$(sed -n 's/.*errors: \([0-9][0-9]*\).*/\1/p' pan.log | tail -n 1)
    states=$(sed -n 's/^ *\([0-9.e+]*\) states, stored.*/\1/p' pan.log |
             tail -n 1)
    grep -q 'max search depth too small' pan.log && bounded="depth bound hit"
    grep -q 'MEMLIM' pan.log && bounded="memory bound hit"
    if [ -z "$errors" ]; then
      echo "FAIL pan gave no verdict: $(tail -n 1 pan.log)" >result.tmp
    elif [ "$expect" = holds ]; then
      if [ "$errors" != 0 ]; then
        echo "FAIL $(grep -m 1 -E '^pan:[0-9]|^pan: ' pan.log)" \
          "($states states)" >result.tmp
      elif [ -n "$bounded" ]; then
        echo "FAIL not exhaustive: $bounded ($states states)" >result.tmp
      else
        echo "PASS $states states" >result.tmp
      fi
    else
      local want=${expect#rejects:}
      if [ "$errors" = 0 ]; then
        echo "FAIL the broken variant was accepted ($states states)" \
          >result.tmp
      elif ! grep -qF -- "$want" pan.log; then
        echo "FAIL rejected for another reason: $(grep -m 1 '^pan:' pan.log)" \
          >result.tmp
      else
        echo "PASS rejected as expected: $want" >result.tmp
      fi
    fi
  )
  [ -f "$dir/result.tmp" ] || echo "FAIL could not run" >"$dir/result.tmp"
  read -r verdict detail <"$dir/result.tmp"
  printf '%s %s [%s %s %s] %s (%ss)\n' "$verdict" "$name" "$model.pml" \
    "${defs:--}" "$mode" "$detail" \
    "$(awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')" \
    >"$dir/result"
}

start_all=$(now)
running=0
for i in "${!checks[@]}"; do
  run_check "$i" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n
    running=$((running - 1))
  fi
done
wait

passed=0 failed=0
for i in "${!checks[@]}"; do
  IFS='|' read -r name _ <<<"${checks[$i]}"
  line=$(cat "$work/$i-$name/result" 2>/dev/null ||
         echo "FAIL $name (no result)")
  echo "$line"
  case $line in
    PASS*) passed=$((passed + 1)) ;;
    *)
      failed=$((failed + 1))
      [ -f "$work/$i-$name/pan.log" ] &&
        sed 's/^/    /' "$work/$i-$name/pan.log" | head -n 40
      ;;
  esac
done
echo "model: $passed passed, $failed failed in $(awk -v a="$start_all" \
  -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')s"
[ "$failed" -eq 0 ]
