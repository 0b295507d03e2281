#!/bin/sh
# DESIGN.md, Layout: lib/ never calls into bridge/.  The bridge uses lib's
# functions; lib reaches the bridge only through the ops table
# (mm__bridge_ops_t) it is given.  So no object of lib/ may need a symbol
# that an object of bridge/ defines (name resolution in lib/tcp.c, for
# one, uses libuv's getaddrinfo and mm_await, not mm_run_sync).
top="${top_builddir:-.}"
lib="$top/lib/.libs"
bridge="$top/bridge/.libs"
[ -d "$lib" ] && [ -d "$bridge" ] || { echo "no $lib or $bridge"; exit 1; }
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
nm --defined-only "$bridge"/*.o | awk 'NF == 3 && $2 ~ /[TDBR]/ { print $3 }' |
  sort -u >"$tmp/bridge"
nm -u "$lib"/*.o | awk 'NF == 2 { print $2 }' | sort -u >"$tmp/lib"
bad=$(comm -12 "$tmp/bridge" "$tmp/lib")
if [ -n "$bad" ]; then
  echo "lib/ objects need symbols of bridge/:"; echo "$bad"; exit 1
fi
echo "ok: lib/ needs nothing of bridge/ ($(wc -l <"$tmp/bridge") bridge symbols)"
