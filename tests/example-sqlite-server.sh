#!/usr/bin/env bash
# examples/sqlite-server, black-box, driven by examples/http-load:
#   - an item and a search answer;
#   - while 4 slow queries run (the server says so), item requests keep
#     answering;
#   - /slow?timeout=300 answers 504, and no slow query runs after it (the
#     interrupted query really stopped: the server's own counter);
#   - slow queries with a 1 ms deadline all answer 504;
#   - examples/threaded-fanout's jobs, from 4 pthreads through
#     mm_run_async, all get their 10 + 10 answers;
#   - /stats has the counters;
#   - clients that send two requests and leave before the answers
#     (tests/leave-early.pl) do not kill it (SIGPIPE);
#   - SIGTERM, with a slow query running and no timeout on it, ends the
#     server with status 0 and its temporary database removed.
# Every step waits for what it needs (the "port N" line, responses, the
# server's own counters); nothing is timed (how fast it answers is the
# demo's to print: scripts/demo.sh).  Skipped, saying why, without SQLite.
set -u
. "${srcdir:-.}/scripts/server-lib.sh"
server_skip_under_emulator

if [ "${have_sqlite:-no}" != yes ]; then
  echo "SKIP: configure found no SQLite (pkg-config sqlite3):" \
       "apt-get install libsqlite3-dev, then ./configure again"
  exit 77
fi

b=${top_builddir:-.}
server=$b/examples/sqlite-server
load=$b/examples/http-load
fanout=$b/examples/threaded-fanout
leave=${srcdir:-.}/tests/leave-early.pl
if ! command -v perl >/dev/null; then
  echo "SKIP: no perl for tests/leave-early.pl (apt-get install perl-base)"
  exit 77
fi
server_setup

fail() {
  echo "FAIL: $*"
  echo "---- server's stderr"
  cat "$tmp/err"
  exit 1
}

# The value of a counter of /stats.
stat_of() {
  "$load" --port "$port" --get /stats | sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"
}

# Start the server and wait for its "port N" line.
mkfifo "$tmp/out"
TMPDIR=$tmp "$server" --port 0 --lanes 8 >"$tmp/out" 2>"$tmp/err" &
server_started $!
server_watchdog 120           # a hung server fails the test, not hangs it
exec 3<"$tmp/out"
server_port
echo "server $pid on port $port"

# An item and a search.
out=$("$load" --port "$port" --get '/item?id=42') || fail "GET /item: $out"
echo "$out" | grep -q '"id":42,' || fail "GET /item?id=42 answered: $out"
out=$("$load" --port "$port" --get '/item?id=100001' --expect 404) ||
  fail "GET /item?id=100001 (none): $out"
out=$("$load" --port "$port" --get '/search?q=opal%20pine') ||
  fail "GET /search: $out"
[ "$(echo "$out" | grep -o '"id":' | wc -l)" -eq 20 ] ||
  fail "GET /search?q=opal pine did not give 20 rows: $out"

# Items keep answering while 4 slow queries occupy 4 of the 8 lanes.
out=$("$load" --port "$port" --conns 2 --requests 300 --slow 4 \
      --slow-timeout 3000) ||
  fail "items with 4 slow queries in flight: $out"
echo "$out"
echo "$out" | grep -q 'slow_running_at_end=4$' ||
  fail "the 4 slow queries were not running throughout: $out"
echo "$out" | grep -q 'slow_504=4 ' ||
  fail "the 4 slow queries did not all answer 504: $out"

# A slow query with a 300 ms timeout: 504, and then no slow query runs
# (the server counts a query running until its statement has returned).
out=$("$load" --port "$port" --get '/slow?timeout=300' --expect 504) ||
  fail "GET /slow?timeout=300: $out"
echo "$out"
[ "$(stat_of slow_running)" = 0 ] || fail "a slow query still runs"

# Deadlines that pass around the query's start (queued, starting, just
# started): every one answers 504 -- an interrupt that came before the
# statement ran is not lost (a lost one would run for tens of seconds, and
# the server's count of running queries says so below).
out=$("$load" --port "$port" --conns 2 --requests 200 \
      --path '/slow?timeout=1' --expect 504) ||
  fail "200 slow queries with a 1 ms timeout: $out"
echo "$out"
[ "$(stat_of slow_running)" = 0 ] || fail "a slow query still runs"

# threaded-fanout: pthreads calling into a loop, each job a group of 10.
out=$("$fanout" --port "$port" --threads 4 --jobs 16) ||
  fail "threaded-fanout: $out"
echo "$out"
echo "$out" | grep -q 'jobs=16 requests=320 failed=0 ' ||
  fail "threaded-fanout did not make its 320 requests: $out"

# The counters.
out=$("$load" --port "$port" --get /stats) || fail "GET /stats: $out"
echo "$out"
for key in requests slow_started slow_timed_out slow_interrupted lane_calls \
           coros_live sync_calls; do
  echo "$out" | grep -q "\"$key\":[0-9]" || fail "/stats has no $key: $out"
done
[ "$(stat_of slow_timed_out)" -ge 5 ] &&
  [ "$(stat_of slow_interrupted)" -ge 5 ] ||
  fail "/stats did not count the 5 slow queries stopped: $out"
case $(echo "$out" | tail -n 1) in
  "{"*"}") ;;
  *) fail "/stats is not a JSON object: $out" ;;
esac

# Clients that leave before their answers: 50 that send two pipelined
# requests and close at once.  The first answer draws a client's RST, so
# the second write fails with EPIPE: the server must serve on (it ignores
# SIGPIPE), having counted all 100 requests (each /stats asked meanwhile
# is one more).
before=$(stat_of requests)
"$leave" "$port" 50 close \
  'GET /item?id=1 HTTP/1.1\r\n\r\nGET /item?id=2 HTTP/1.1\r\n\r\n' ||
  fail "clients that close at once could not connect (the server died?)"
asked=0
while :; do
  n=$(stat_of requests)
  [ -n "$n" ] || fail "the server stopped answering after clients left" \
    "before their answers (killed by SIGPIPE?)"
  [ "$n" = $((before + 100 + asked + 1)) ] && break
  asked=$((asked + 1))
  [ $asked -lt 5000 ] || fail "/stats counts $n requests, not" \
    "$((before + 100 + asked)): the clients that left were not all served"
done

# SIGTERM with a slow query running, without a timeout: it is interrupted
# and the server exits 0.
"$load" --port "$port" --get '/slow' --expect 503 >"$tmp/slow-out" 2>&1 &
client=$!
tries=0
until [ "$(stat_of slow_running)" = 1 ]; do
  tries=$((tries + 1))
  [ $tries -lt 5000 ] && kill -0 "$client" 2>/dev/null ||
    fail "the untimed slow query does not run"
done
kill -TERM "$pid"
wait "$pid"
rc=$?
pid=
[ $rc -eq 0 ] || fail "the server exited $rc after SIGTERM"
wait "$client"          # whatever it got (503 or a closed connection)
ls "$tmp"/sqlite-server-* >/dev/null 2>&1 &&
  fail "the temporary database was left behind"
[ -s "$tmp/err" ] && fail "the server wrote to stderr"
echo "PASS"
