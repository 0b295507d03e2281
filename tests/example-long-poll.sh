#!/usr/bin/env bash
# examples/long-poll, two ways:
#   - --self-test N: N clients parked on coroutines, one notification
#     posted from a plain thread, every client answered exactly once with
#     its text.  The program checks all of it and exits non-zero on any
#     failure; this script bounds it in time.  1000 clients take about
#     0.2 s, 5 s in a TSan build (on a 2-CPU VM): no need to scale N down
#     there.  LONG_POLL_CLIENTS overrides N.
#   - serving, with clients that leave before their answer
#     (tests/leave-early.pl): the server must not die of SIGPIPE.
# Skipped, saying why, without perl (for tests/leave-early.pl).
set -u

prog=${top_builddir:-.}/examples/long-poll
leave=${srcdir:-.}/tests/leave-early.pl
n=${LONG_POLL_CLIENTS:-1000}
if ! command -v perl >/dev/null; then
  echo "SKIP: no perl for tests/leave-early.pl (apt-get install perl-base)"
  exit 77
fi

# MM_TEST_EMULATOR: a cross build's emulator (tests/cross-run.sh), with
# its options, so unquoted; empty on the machine itself.
out=$(timeout 120 ${MM_TEST_EMULATOR:-} "$prog" --self-test "$n" 2>&1)
rc=$?
echo "$out"
if [ $rc -ne 0 ]; then
  echo "FAIL: long-poll --self-test $n exited $rc"
  exit 1
fi
echo "$out" | grep -q "^long-poll: [0-9]* clients answered once each in " ||
  { echo "FAIL: no result line"; exit 1; }

# Serving.  50 clients each send "GET /wait", then half-close and reset
# their connection: the server's one write of each answer fails with
# EPIPE (a plain close would not do it: the first write to a closed peer
# succeeds and draws the RST, and long-poll writes once).  A probe then
# answered 404 shows that the server has taken them in before it; one
# notification and the end of stdin answer every parked client (200, or
# 503 if one parked late), and the server must exit 0.
. "${srcdir:-.}/scripts/server-lib.sh"
fail() {
  echo "FAIL: $*"
  echo "---- server's stderr"
  cat "$tmp/err"
  exit 1
}
server_setup
mkfifo "$tmp/in" "$tmp/out"
${MM_TEST_EMULATOR:-} "$prog" --port 0 <"$tmp/in" >"$tmp/out" 2>"$tmp/err" &
server_started $!
server_watchdog 120           # a hung server fails the test, not hangs it
exec 4>"$tmp/in"              # the notifications: the server's stdin
exec 3<"$tmp/out"
server_port
echo "server $pid on port $port"
"$leave" "$port" 50 abort 'GET /wait HTTP/1.1\r\n\r\n' ||
  fail "clients that leave could not connect (the server died?)"
out=$("$leave" "$port" 1 read 'GET /probe HTTP/1.1\r\n\r\n') ||
  fail "the probe after the clients that left failed: $out"
echo "$out" | grep -q '^HTTP/1.1 404 ' || fail "the probe got: $out"
echo "hello" >&4
exec 4>&-                     # end of stdin: the server answers all, exits
wait "$pid"
rc=$?
pid=
[ $rc -eq 0 ] || fail "the server exited $rc after clients left before" \
  "their answers ($(kill -l $rc 2>/dev/null || echo "?"))"
[ -s "$tmp/err" ] && fail "the server wrote to stderr"
echo "PASS"
