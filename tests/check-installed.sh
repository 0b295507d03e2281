#!/bin/sh
# Builds against an installed mixmode the way a user does: out of the
# tree, in a temporary directory, with nothing but pkg-config's flags.
#
#   tests/check-installed.sh PKGCONFIGDIR
#
# PKGCONFIGDIR holds the installed mixmode.pc ($libdir/pkgconfig).  Run by
# `make installcheck` (so by `make distcheck`) and by .ci/run's "installed"
# step.  Prints one line per check, "PASS what", "FAIL what" or "SKIP
# what: why", and exits non-zero if any failed:
#   - pkg-config finds mixmode, with the header's version;
#   - every example of examples/ compiles and links with -Wall -Wextra
#     -Werror (those that need SQLite, libpq or libcurl only where
#     pkg-config finds them), and hello, run-sync, run-async and long-poll
#     --self-test run;
#   - tests/header-check.c compiles, links and runs as C99 and as C++11
#     (g++ -std=c++11), each with -Wall -Wextra -Wpedantic -Werror.  C99
#     with -D_POSIX_C_SOURCE=200809L: libuv's uv.h, which mixmode.h
#     includes, needs POSIX types that strict C99 hides.
# CC and CXX choose the compilers (cc and c++ by default).
set -u

if [ $# -ne 1 ] || [ ! -f "$1/mixmode.pc" ]; then
  echo "usage: $0 PKGCONFIGDIR (the directory of the installed mixmode.pc)" >&2
  exit 2
fi
PKG_CONFIG_PATH=$1${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
export PKG_CONFIG_PATH
src=$(cd "$(dirname "$0")/.." && pwd)
cc=${CC:-cc}
cxx=${CXX:-c++}
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
failed=0

pass() { echo "PASS $1"; }
fail() {
  echo "FAIL $1"
  [ -s "$tmp/out" ] && sed 's/^/  | /' "$tmp/out" | head -n 40
  failed=$((failed + 1))
}

# ---- pkg-config ----
hv=$(for p in MAJOR MINOR PATCH; do
       sed -n "s/^#define MM_VERSION_$p \([0-9][0-9]*\)\$/\1/p" \
         "$src/include/mixmode.h"
     done | tr '\n' . | sed 's/\.$//')
if ! pv=$(pkg-config --modversion mixmode 2>"$tmp/out"); then
  fail "pkg-config mixmode (not found in $1)"
  exit 1
elif [ "$pv" != "$hv" ]; then
  echo "installed $pv, source $hv" >"$tmp/out"
  fail "pkg-config mixmode version"
else
  pass "pkg-config mixmode $pv"
fi
libdir=$(pkg-config --variable=libdir mixmode)
# The prefix may be one the dynamic linker does not search.
rpath="-Wl,-rpath,$libdir"

# build NAME LANG-FLAGS -- SOURCES -- PKG-CONFIG-MODULES [-- EXTRA-LIBS]
build() {
  name=$1; shift
  flags=""
  while [ "$1" != -- ]; do flags="$flags $1"; shift; done; shift
  srcs=""
  while [ "$1" != -- ]; do srcs="$srcs $1"; shift; done; shift
  mods=""
  while [ $# -gt 0 ] && [ "$1" != -- ]; do mods="$mods $1"; shift; done
  [ $# -gt 0 ] && shift
  extra="$*"
  # shellcheck disable=SC2086
  $flags $srcs -o "$tmp/$name" $(pkg-config --cflags $mods) \
    $(pkg-config --libs $mods) $extra $rpath -pthread >"$tmp/out" 2>&1
}

ex=$src/examples
cflags="$cc -std=gnu11 -Wall -Wextra -Werror -I$ex"
for e in hello run-sync run-async long-poll; do
  if build "$e" $cflags -- "$ex/$e.c" -- mixmode; then
    pass "build examples/$e.c"
  else
    fail "build examples/$e.c"
  fi
done
if build http-load $cflags -- "$ex/http-load.c" "$ex/http-client.c" -- \
     mixmode -- -lm; then
  pass "build examples/http-load.c"
else
  fail "build examples/http-load.c"
fi
if build threaded-fanout $cflags -- "$ex/threaded-fanout.c" \
     "$ex/http-client.c" -- mixmode; then
  pass "build examples/threaded-fanout.c"
else
  fail "build examples/threaded-fanout.c"
fi
if ! pkg-config --exists sqlite3; then
  echo "SKIP build examples/sqlite-server.c: pkg-config finds no sqlite3" \
       "(apt-get install libsqlite3-dev)"
elif build sqlite-server $cflags -- "$ex/sqlite-server.c" -- mixmode sqlite3
then
  pass "build examples/sqlite-server.c"
else
  fail "build examples/sqlite-server.c"
fi
if ! pkg-config --exists libpq; then
  echo "SKIP build examples/pg-bridge.c: pkg-config finds no libpq" \
       "(apt-get install libpq-dev)"
# pg-bridge is built in the tree with -Wno-unused-parameter (its lane
# hooks ignore their argument): the same here.
elif build pg-bridge $cflags -Wno-unused-parameter -- "$ex/pg-bridge.c" -- \
       mixmode libpq; then
  pass "build examples/pg-bridge.c"
else
  fail "build examples/pg-bridge.c"
fi

if ! pkg-config --exists libcurl; then
  echo "SKIP build examples/fetch-many.c: pkg-config finds no libcurl" \
       "(apt-get install libcurl4-openssl-dev)"
elif build fetch-many $cflags -- "$ex/fetch-many.c" -- mixmode libcurl; then
  pass "build examples/fetch-many.c"
else
  fail "build examples/fetch-many.c"
fi

# run NAME ARGS...: runs a program built above, if it was.
run() {
  name=$1; shift
  [ -x "$tmp/$name" ] || return 0
  if timeout 120 "$tmp/$name" "$@" >"$tmp/out" 2>&1; then
    pass "run examples/$name${*:+ $*}"
  else
    echo "exit status $?" >>"$tmp/out"
    fail "run examples/$name${*:+ $*}"
  fi
}
run hello
run run-sync
run run-async
run long-poll --self-test 100

# ---- the header as C99 and as C++11 ----
strict="-Wall -Wextra -Wpedantic -Werror"
if build header-c99 "$cc" -std=c99 -D_POSIX_C_SOURCE=200809L $strict -- \
     "$src/tests/header-check.c" -- mixmode &&
   "$tmp/header-c99" >>"$tmp/out" 2>&1; then
  pass "mixmode.h as C99 ($cc -std=c99 $strict), linked and run"
else
  fail "mixmode.h as C99 ($cc -std=c99 $strict)"
fi
if ! command -v "$cxx" >/dev/null 2>&1; then
  echo "SKIP mixmode.h as C++11: no C++ compiler ($cxx; apt-get install g++)"
elif build header-cxx "$cxx" -x c++ -std=c++11 $strict -- \
       "$src/tests/header-check.c" -x none -- mixmode &&
     "$tmp/header-cxx" >>"$tmp/out" 2>&1; then
  pass "mixmode.h as C++11 ($cxx -std=c++11 $strict), linked and run"
else
  fail "mixmode.h as C++11 ($cxx -std=c++11 $strict)"
fi

[ $failed -eq 0 ]
