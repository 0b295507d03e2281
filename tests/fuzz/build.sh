#!/usr/bin/env bash
# Builds the libFuzzer harness tests/fuzz/fuzz-api.c with clang, in two
# variants, into build-fuzz/ at the top of the source tree:
#
#   build-fuzz/fuzz-api-asan   -fsanitize=fuzzer,address,undefined
#   build-fuzz/fuzz-api-tsan   -fsanitize=fuzzer,thread
#
# Usage: tests/fuzz/build.sh [asan|tsan|all] [-DFUZZ_SWITCH=1 ...]
#
# The library's sources are compiled straight into the harness (with the
# fuzzer's coverage instrumentation, -fsanitize=fuzzer-no-link), from the
# list in Makefile.am (libmm_la_SOURCES and the context-switch backend of
# this CPU).  config.h: the in-tree one when the tree is configured in
# tree, else one made by an out-of-tree configure in build-fuzz/config
# (configure refuses to run out of tree once the tree is configured in it,
# and .ci/run builds out of tree).  Extra arguments (-D...) go to every
# compile: the harness's switches are listed at the top of fuzz-api.c.
set -euo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
out=$top/build-fuzz
cc=${CC:-clang}
variant=${1:-all}
[ $# -gt 0 ] && shift
extra=("$@")

case $variant in
  asan|tsan|all) ;;
  *) echo "usage: $0 [asan|tsan|all] [-DNAME=VALUE ...]" >&2; exit 2 ;;
esac

if ! command -v "$cc" >/dev/null 2>&1; then
  echo "build.sh: $cc not found (Debian: apt-get install clang" \
       "libclang-rt-14-dev)" >&2
  exit 1
fi
# libFuzzer's runtime comes with the compiler's runtime libraries.
if ! echo 'int LLVMFuzzerTestOneInput(const char *d, long n) { return 0; }' |
     "$cc" -x c -fsanitize=fuzzer -o /dev/null - 2>/dev/null; then
  echo "build.sh: $cc cannot link -fsanitize=fuzzer (Debian: apt-get" \
       "install libclang-rt-14-dev)" >&2
  exit 1
fi

mkdir -p "$out"

# ---- config.h ---------------------------------------------------------------
if [ -f "$top/config.h" ] && [ -f "$top/config.status" ]; then
  config_dir=$top
else
  config_dir=$out/config
  if [ ! -f "$config_dir/config.h" ] ||
     [ "$top/configure" -nt "$config_dir/config.h" ]; then
    if [ ! -x "$top/configure" ]; then
      (cd "$top" && ./autogen.sh) >"$out/autogen.log" 2>&1 || {
        cat "$out/autogen.log" >&2; exit 1; }
    fi
    mkdir -p "$config_dir"
    (cd "$config_dir" && "$top/configure" -q CC="$cc") \
      >"$out/configure.log" 2>&1 || { tail -n 40 "$out/configure.log" >&2;
                                      exit 1; }
  fi
fi

# ---- the library's sources, as Makefile.am lists them ---------------------
mapfile -t sources < <(
  awk '/^libmm_la_SOURCES = /{on=1; next}
       on { for (i = 1; i <= NF; i++) if ($i != "\\") print $i;
            if ($NF != "\\") on=0 }' "$top/Makefile.am" | grep '\.c$')
if [ "${#sources[@]}" -eq 0 ]; then
  echo "build.sh: no libmm_la_SOURCES found in Makefile.am" >&2
  exit 1
fi
if grep -q '^#define MM_CONTEXT_UCONTEXT 1' "$config_dir/config.h"; then
  sources+=(lib/switch-ucontext.c)
else
  case $(uname -m) in
    x86_64) sources+=(lib/switch-x86_64.S lib/context-asm.c) ;;
    aarch64) sources+=(lib/switch-aarch64.S lib/context-asm.c) ;;
    *) sources+=(lib/switch-ucontext.c) ;;
  esac
fi

uv_cflags=$(pkg-config --cflags libuv)
uv_libs=$(pkg-config --libs libuv)
cppflags=(-I"$config_dir" -I"$top/include" -I"$top/lib" -I"$top/bridge")
cflags=(-std=gnu11 -g -O1 -fno-omit-frame-pointer -pthread -Wall -Wextra
        -Wno-unused-parameter)

# build NAME SANITIZERS [FLAGS...]: objects in build-fuzz/obj-NAME, program
# build-fuzz/fuzz-api-NAME.
build() {
  local name=$1 san=$2
  local obj=$out/obj-$name
  shift 2
  local sflags=("$@")
  rm -rf "$obj"
  mkdir -p "$obj"
  local objs=() s o
  for s in "${sources[@]}"; do
    o=$obj/$(echo "$s" | tr '/' '_').o
    o=${o%.c.o}.o
    o=${o%.S.o}.o
    "$cc" "${cppflags[@]}" "${cflags[@]}" $uv_cflags \
      -fsanitize=fuzzer-no-link,"$san" "${sflags[@]}" "${extra[@]}" \
      -c "$top/$s" -o "$o" &
    objs+=("$o")
  done
  wait_all
  "$cc" "${cppflags[@]}" "${cflags[@]}" $uv_cflags -fsanitize=fuzzer,"$san" \
    "${sflags[@]}" "${extra[@]}" "$top/tests/fuzz/fuzz-api.c" "${objs[@]}" \
    $uv_libs \
    -o "$out/fuzz-api-$name"
  echo "build.sh: built $out/fuzz-api-$name"
}

# Waits for every background compile; fails if any failed.
wait_all() {
  local failed=0 pid
  for pid in $(jobs -p); do
    wait "$pid" || failed=1
  done
  [ $failed -eq 0 ] || { echo "build.sh: compile failed" >&2; exit 1; }
}

cd "$top"
case $variant in
  asan) build asan address,undefined -fno-sanitize-recover=undefined ;;
  tsan) build tsan thread ;;
  all)
    build asan address,undefined -fno-sanitize-recover=undefined
    build tsan thread
    ;;
esac
