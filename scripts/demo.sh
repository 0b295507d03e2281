#!/usr/bin/env bash
# The demo behind `make demo`: examples/sqlite-server on a free loopback
# port, driven by examples/http-load (item requests with and without 4
# slow queries in flight) and examples/threaded-fanout, then the same
# load on a server that runs its slow queries on the plain worker pool
# instead of the lane set.  Prints a progress line while it runs and a
# short report at the end; exits non-zero if anything failed.  About 20 s.
#
# Usage: scripts/demo.sh [BUILD_DIR [HAVE_SQLITE]]   (make demo passes both)
set -u

b=${1:-.}
if [ "${2:-yes}" != yes ]; then
  echo "demo: configure found no SQLite, so examples/sqlite-server was not" \
       "built: ./scripts/install-deps (libsqlite3-dev), then ./configure" >&2
  exit 1
fi
server=$b/examples/sqlite-server
load=$b/examples/http-load
fanout=$b/examples/threaded-fanout
. "$(dirname "$0")/server-lib.sh"
server_setup

# A server that hangs is killed after 60 s, so that its clients see their
# connections close and the demo fails instead of hanging.
server_watchdog 60

steps=19
step=0
progress() {
  step=$((step + 1))
  if [ -t 1 ]; then
    printf '\r\033[K[%2d/%d] %s' "$step" "$steps" "$*"
  else
    printf '[%2d/%d] %s\n' "$step" "$steps" "$*"
  fi
}
fail() {
  [ -t 1 ] && echo
  echo "demo: FAILED: $*" >&2
  if [ -s "$tmp/err" ]; then
    echo "---- the server's stderr" >&2
    cat "$tmp/err" >&2
  fi
  exit 1
}

# key=value fields of http-load's and threaded-fanout's one-line reports.
field() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }

# The server's CPU time so far, in ms.
cpu_ms() {
  awk -v hz="$(getconf CLK_TCK)" \
    '{ sub(/^.*\) /, ""); print int(($12 + $13) * 1000 / hz) }' \
    "/proc/$pid/stat"
}

# start_server ARGS...: starts sqlite-server, waits for its "port N" line.
start_server() {
  rm -f "$tmp/out"
  mkfifo "$tmp/out"
  TMPDIR=$tmp "$server" --port 0 "$@" >"$tmp/out" 2>"$tmp/err" &
  server_started $!
  exec 3<"$tmp/out"
  server_port
}

stop_server() {
  kill -TERM "$pid"
  wait "$pid"
  local rc=$?
  pid=
  exec 3<&-
  [ $rc -eq 0 ] || fail "sqlite-server exited $rc after SIGTERM"
}

# measure NAME plain|slow|greedy: item load for 1 s over 4 connections;
# slow: while 4 slow queries (timeout 1.6 s) run; greedy: the same, the
# slow queries never giving up the CPU.  Sets NAME to the load's report.
measure() {
  local args=(--port "$port" --conns 4 --duration 1000)
  [ "$2" != plain ] && args+=(--slow 4 --slow-timeout 1600)
  [ "$2" = greedy ] && args+=(--slow-args yield=0)
  local out
  out=$("$load" "${args[@]}") || fail "http-load ${args[*]}: $out"
  if [ "$2" != plain ] && [ "$(field "$out" slow_running_at_end)" != 4 ]; then
    fail "the 4 slow queries were not running throughout: $out"
  fi
  printf -v "$1" '%s' "$out"
}

ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b > 0 ? a / b : 0) }'
}

# rounds NAME WHAT: three rounds of items alone then with 4 slow queries
# in flight (other load on the machine comes and goes: one run says
# little); sets NAME_plain and NAME_slow to the reports of the runs with
# the median p99 of each kind, and NAME_p99s to the six p99s.  The
# server's CPU is measured over the last slow run (cpu_slow ms in
# wall_slow ms).
rounds() {
  local r plain slow t0 cpu0
  local -a plains slows
  for r in 1 2 3; do
    progress "$2, round $r/3: item requests alone, 1 s"
    measure plain plain
    progress "$2, round $r/3: items with 4 slow queries in flight, 1.6 s"
    cpu0=$(cpu_ms)
    t0=$(date +%s%N)
    measure slow slow
    cpu_slow=$(( $(cpu_ms) - cpu0 ))
    wall_slow=$(( ($(date +%s%N) - t0) / 1000000 ))
    plains+=("$plain")
    slows+=("$slow")
  done
  printf -v "$1_plain" '%s' "$(median "${plains[@]}")"
  printf -v "$1_slow" '%s' "$(median "${slows[@]}")"
  printf -v "$1_p99s" '%s | %s' "$(p99s "${plains[@]}")" \
    "$(p99s "${slows[@]}")"
}

# median REPORT...: the report with the median p99; p99s REPORT...: the
# p99s, in order.
median() {
  local r
  for r in "$@"; do echo "$(field "$r" p99_ms) $r"; done |
    sort -n | sed -n "$(( ($# + 1) / 2 ))p" | cut -d' ' -f2-
}
p99s() {
  local r out=
  for r in "$@"; do out="$out $(field "$r" p99_ms)"; done
  echo "${out# }"
}

for p in "$server" "$load" "$fanout"; do
  [ -x "$p" ] || fail "$p is not built (make -j2 first)"
done
start=$(date +%s.%N)

progress "sqlite-server: generating 100000 items, 8 lanes"
start_server --lanes 8
"$load" --port "$port" --conns 4 --requests 2000 >/dev/null ||
  fail "warm-up load"

rounds lane "lane set"
progress "the slow queries were cancelled: CPU over the next 500 ms"
cpu1=$(cpu_ms)
sleep 0.5                       # the window over which CPU is measured
cpu_after=$(( $(cpu_ms) - cpu1 ))
progress "lane set: slow queries that never yield the CPU, 1.6 s"
measure lane_greedy greedy

progress "threaded-fanout: 8 threads, 64 jobs of 10 requests"
fan=$("$fanout" --port "$port") || fail "threaded-fanout: $fan"
progress "one more slow query, timeout 300 ms"
one=$("$load" --port "$port" --get '/slow?timeout=300' --expect 504) ||
  fail "/slow?timeout=300: $one"
one_ms=$(echo "$one" | sed -n 's/^ms //p')
progress "the library's stats"
stats=$("$load" --port "$port" --get /stats) || fail "/stats: $stats"
stats=$(echo "$stats" | tail -n 1)
stop_server

progress "baseline: sqlite-server --pool (slow queries on the worker pool)"
start_server --lanes 8 --pool
"$load" --port "$port" --conns 4 --requests 2000 >/dev/null ||
  fail "warm-up load (--pool)"
rounds pool "pool"
pool_stats=$("$load" --port "$port" --get /stats | tail -n 1)
stop_server
[ -t 1 ] && printf '\r\033[K'

# ---- the report ---------------------------------------------------------
jfield() { echo "$1" | sed -n "s/.*\"$2\":\([0-9]*\).*/\1/p"; }
row() {
  printf '  %-34s %8s %9s %9s\n' "$1" "$(field "$2" rps)" \
    "$(field "$2" p50_ms)" "$(field "$2" p99_ms)"
}
served=$(( $(jfield "$stats" requests) + $(jfield "$pool_stats" requests) ))
lane_ratio=$(ratio "$(field "$lane_slow" p99_ms)" \
  "$(field "$lane_plain" p99_ms)")
pool_ratio=$(ratio "$(field "$pool_slow" p99_ms)" \
  "$(field "$pool_plain" p99_ms)")
aim=$(awk -v r="$lane_ratio" \
  'BEGIN { print (r <= 3 ? "met" : "NOT met") }')

rps_ratio=$(ratio "$(field "$lane_slow" rps)" "$(field "$lane_plain" rps)")
greedy_ratio=$(ratio "$(field "$lane_greedy" p99_ms)" \
  "$(field "$lane_plain" p99_ms)")
# The library's counters (mm_loop_stats), one per line's worth.
loop_stats=$(echo "$stats" | sed 's/.*"loop":{\(.*\)}}$/\1/; s/"//g; s/,/ /g' |
  fold -s -w 72)

echo "mixmode demo: sqlite-server, SQLite's blocking API on a lane set of 8"
echo "and a coroutine per connection, 100000 items, on 127.0.0.1"
echo
echo "requests served: $served (both servers, warm-ups included)"
echo
echo "item requests, 4 keep-alive connections, 1 s per run, 3 runs each;"
echo "the run with the median p99 is shown:"
printf '  %-34s %8s %9s %9s\n' "" "req/s" "p50 ms" "p99 ms"
row "lane set of 8" "$lane_plain"
row "lane set, 4 slow queries in flight" "$lane_slow"
row "  slow queries that never yield" "$lane_greedy"
row "pool (--pool)" "$pool_plain"
row "pool, 4 slow queries in flight" "$pool_slow"
echo "  4 slow queries in flight on the lane set: p99 ${lane_ratio}x," \
     "req/s ${rps_ratio}x"
echo "  (aim: p99 within 3x: $aim); on the pool: p99 ${pool_ratio}x;" \
     "never yielding: ${greedy_ratio}x"
echo "  p99 of each run, ms (alone | with 4 slow queries):"
echo "    lane set  $lane_p99s"
echo "    pool      $pool_p99s"
echo "  ($(nproc) CPUs here, shared by the server, its slow queries, the load"
echo "  and whatever else runs)"
echo
echo "threaded-fanout: 8 pthreads, 64 jobs, each 10 GETs via mm_run_async:"
echo "  10 at once (a group) $(field "$fan" parallel_ms_per_job) ms/job," \
     "one after another $(field "$fan" serial_ms_per_job) ms/job:"
echo "  speed-up $(field "$fan" speedup)x"
echo
echo "slow queries (a recursive CTE of 100 million rows, tens of seconds):"
echo "  cancelled at their timeout by on_cancel -> sqlite3_interrupt (504):" \
     "$(jfield "$stats" slow_interrupted) +" \
     "$(jfield "$pool_stats" slow_interrupted)"
echo "  /slow?timeout=300 answered 504 in $one_ms ms; the longest stop after"
echo "  on_cancel took $(jfield "$stats" slow_stop_ms_max) ms"
echo "  server CPU while 4 ran: $cpu_slow ms in $wall_slow ms; in the 500 ms" \
     "after: $cpu_after ms"
echo
echo "the library's stats (mm_loop_stats, lane-set server):"
echo "$loop_stats" | sed 's/^ */  /; s/ *$//'
echo
echo "demo done in $(awk -v s="$start" -v e="$(date +%s.%N)" \
  'BEGIN { printf "%.1f", e - s }') s"
if [ "$cpu_after" -ge 100 ]; then
  fail "the server kept using CPU after its slow queries were cancelled"
fi
