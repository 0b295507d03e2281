#!/usr/bin/env bash
# examples/fetch-many, black-box, against its own server (--serve) on a
# free loopback port, each answer delayed 100 ms:
#   - 10 GETs in parallel (a group, libcurl's multi interface on
#     mm_wait_fd) under a generous deadline, then the same 10 one after
#     another: every body of both batches arrives intact, exit 0;
#   - with a deadline (20 ms) shorter than one delay, the parallel batch
#     is cut: not all its fetches arrived, each cut one says ETIMEDOUT,
#     the sequential batch still arrives whole, exit 3 -- under Valgrind,
#     as the server is, when it is installed and the build has no
#     sanitizer (which checks leaks itself): the cut fetches' curl
#     handles are freed;
#   - bad arguments exit 2; a port nobody listens on (the server's, once
#     it has gone) gives ECONNREFUSED and exit 1;
#   - the end of its stdin stops the server: exit 0, no stderr.
# Every step waits for what it needs; nothing is timed.  Skipped, saying
# why, without libcurl.
set -u
. "${srcdir:-.}/scripts/server-lib.sh"
server_skip_under_emulator

if [ "${have_curl:-no}" != yes ]; then
  echo "SKIP: configure found no libcurl (pkg-config libcurl):" \
       "apt-get install libcurl4-openssl-dev, then ./configure again"
  exit 77
fi

prog=${top_builddir:-.}/examples/fetch-many
server_setup

fail() {
  echo "FAIL: $*"
  echo "---- server's stderr"
  cat "$tmp/err"
  exit 1
}

# The number of lines of $out that match the regular expression $1.
lines() {
  printf '%s\n' "$out" | grep -c -- "$1"
}

# Valgrind for the server and the cut batch, unless missing or this is a
# sanitizer build (which checks leaks and memory itself).
vg=()
if ! command -v valgrind >/dev/null; then
  echo "valgrind not installed: the server and the cut batch run without it"
elif ldd "$prog" 2>/dev/null | grep -q 'lib[at]san'; then
  echo "a sanitizer build: the server and the cut batch run without valgrind"
else
  vg=(valgrind -q --leak-check=full --errors-for-leak-kinds=definite
      --show-leak-kinds=definite --error-exitcode=99)
fi

# The server: stdin from a fifo this script holds open (closing it stops
# the server), stdout through a fifo for its "port N" line.
mkfifo "$tmp/in" "$tmp/out"
"${vg[@]}" "$prog" --serve --delay 100 <"$tmp/in" >"$tmp/out" 2>"$tmp/err" &
server_started $!
server_watchdog 120           # a hung server fails the test, not hangs it
exec 4>"$tmp/in" 3<"$tmp/out"
server_port
echo "server $pid on port $port"

# Both batches whole.
out=$(timeout 120 "$prog" --port "$port" --count 10 --deadline 60000 2>&1)
rc=$?
echo "$out"
[ $rc -eq 0 ] || fail "fetch-many exited $rc, not 0"
for batch in parallel sequential; do
  for i in 0 1 2 3 4 5 6 7 8 9; do
    [ "$(lines "^$batch /item/$i: 200, [0-9]* bytes, intact$")" -eq 1 ] ||
      fail "$batch /item/$i did not arrive intact exactly once"
  done
  [ "$(lines "^$batch /item/")" -eq 10 ] || fail "$batch: not 10 fetch lines"
  [ "$(lines "^$batch: 10 of 10 intact in ")" -eq 1 ] ||
    fail "$batch: no '10 of 10 intact' line"
done
[ "$(lines '^ratio: sequential / parallel = [0-9.]*$')" -eq 1 ] ||
  fail "no ratio line"

# A deadline shorter than one delay cuts the parallel batch.
out=$(timeout 300 "${vg[@]}" "$prog" --port "$port" --count 10 \
      --deadline 20 2>&1)
rc=$?
echo "$out"
[ $rc -ne 99 ] || fail "valgrind found errors or definite leaks"
[ $rc -eq 3 ] || fail "fetch-many with a 20 ms deadline exited $rc, not 3"
[ "$(lines '^parallel: cut by its deadline of 20 ms$')" -eq 1 ] ||
  fail "the parallel batch does not say it was cut"
# A fetch whose last wait ended before the loop saw the deadline pass
# stands (a slow loop -- Valgrind -- can see it late): not all were done,
# and each one that was not says ETIMEDOUT.
cut=$(lines '^parallel /item/[0-9]*: failed: ETIMEDOUT')
done=$(lines '^parallel /item/[0-9]*: 200, [0-9]* bytes, intact$')
[ "$cut" -ge 1 ] || fail "no fetch of the batch was cut by its deadline"
[ $((cut + done)) -eq 10 ] ||
  fail "a fetch of the cut batch neither arrived intact nor said ETIMEDOUT"
[ "$(lines "^parallel: $done of 10 intact in ")" -eq 1 ] ||
  fail "the cut batch's summary does not say $done of 10 intact"
[ "$(lines '^sequential /item/[0-9]*: 200, [0-9]* bytes, intact$')" -eq 10 ] ||
  fail "the sequential batch after the cut one did not arrive whole"

# Bad arguments.
for args in "" "--count 10" "--port 0" "--port 70000" "--port x" \
            "--port $port --count 0" "--port $port --count 101" \
            "--port $port --deadline 0" "--port $port --deadline 5x" \
            "--port $port --bogus 1" "--port $port --count"; do
  # shellcheck disable=SC2086   # the words of $args are the arguments
  "$prog" $args >"$tmp/usage" 2>&1
  rc=$?
  [ $rc -eq 2 ] || fail "'fetch-many $args' exited $rc, not 2"
  grep -q '^usage: ' "$tmp/usage" || fail "'fetch-many $args' printed no usage"
done

# The end of stdin stops the server.
exec 4>&-
read -r served_line <&3
wait "$pid"
rc=$?
pid=
[ $rc -ne 99 ] || fail "valgrind found errors or definite leaks in the server"
[ $rc -eq 0 ] || fail "the server exited $rc at the end of its stdin"
served=$(echo "$served_line" | sed -n 's/^served \([0-9]*\) requests$/\1/p')
[ -n "$served" ] && [ "$served" -ge 30 ] ||
  fail "the server's last line is '$served_line', not 'served N' (N >= 30)"
[ -s "$tmp/err" ] && fail "the server wrote to stderr"

# Nobody listens on its port now: every fetch is refused.
out=$(timeout 120 "$prog" --port "$port" --count 3 2>&1)
rc=$?
echo "$out"
[ $rc -eq 1 ] || fail "fetch-many with no server exited $rc, not 1"
[ "$(lines '^sequential /item/[0-9]*: failed: ECONNREFUSED')" -eq 3 ] ||
  fail "the fetches without a server do not say ECONNREFUSED"
[ "$(lines '^parallel /item/[0-9]*: failed: ECONNREFUSED')" -ge 1 ] ||
  fail "the parallel batch without a server does not say ECONNREFUSED"
echo "PASS"
