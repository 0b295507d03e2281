# Sourced, not run: what scripts/demo.sh and the tests that start an
# example's server (tests/example-sqlite-server.sh,
# tests/example-fetch-many.sh, tests/example-long-poll.sh) share.  The
# caller defines fail MESSAGE.
#
#   server_skip_under_emulator
#                        exits 77 (SKIP, saying why) under a cross build's
#                        emulator, MM_TEST_EMULATOR (tests/cross-run.sh):
#                        servers and clients are several processes
#                        talking over TCP, and it runs only single
#                        programs here
#   server_setup         $tmp (a fresh directory), $pid and $watchdog
#                        empty, and an exit trap that kills both and
#                        removes $tmp
#   server_started PID   records the server's pid ($pid, and $tmp/pid for
#                        the watchdog)
#   server_watchdog S    kills the server whose pid $tmp/pid holds when S
#                        seconds have passed, so that its clients see
#                        their connections close and the caller fails
#                        instead of hanging; the exit trap ends it
#   server_port          reads the server's first line, "port N", from fd
#                        3 into $port, or fails

server_skip_under_emulator() {
  if [ -n "${MM_TEST_EMULATOR:-}" ]; then
    echo "SKIP: not run under an emulator ($MM_TEST_EMULATOR)"
    exit 77
  fi
}

server_cleanup() {
  [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
  [ -n "$watchdog" ] && kill "$watchdog" 2>/dev/null
  rm -rf "$tmp"
}

server_setup() {
  tmp=$(mktemp -d)
  pid=
  watchdog=
  trap server_cleanup EXIT
}

server_started() {
  pid=$1
  echo "$pid" >"$tmp/pid"
}

server_watchdog() {
  ( trap 'kill $s 2>/dev/null; exit 0' TERM
    sleep "$1" & s=$!
    wait $s && kill -KILL "$(cat "$tmp/pid")" 2>/dev/null ) &
  watchdog=$!
}

server_port() {
  local word
  read -r word port <&3 || fail "the server ended before printing its port"
  [ "$word" = port ] && [ "$port" -gt 0 ] 2>/dev/null ||
    fail "first line is '$word $port', not 'port N'"
}
