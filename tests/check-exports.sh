#!/bin/sh
# Every exported symbol of the shared library is public API: mm_*.
lib="${top_builddir:-.}/.libs/libmixmode.so"
[ -f "$lib" ] || { echo "no $lib"; exit 1; }
bad=$(nm -D --defined-only "$lib" | awk '{print $3}' | grep -v '^mm_' | grep -v '^_' )
if [ -n "$bad" ]; then
  echo "exported symbols outside mm_*:"; echo "$bad"; exit 1
fi
n=$(nm -D --defined-only "$lib" | awk '{print $3}' | grep -c '^mm_')
echo "ok: $n symbols, all mm_*"
