#!/bin/sh
# README.md shows whole example programs, and they must not drift from the
# files that are built and run: every ```c block of the README must be,
# byte for byte, one of examples/*.c (which make builds, make check runs
# and make installcheck builds against the installed library).
src=${srcdir:-.}
readme=$src/README.md
[ -f "$readme" ] || { echo "FAIL: no $readme"; exit 1; }
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
# Block N goes to $tmp/N.c (its lines between ```c and ```).
awk -v dir="$tmp" '
  /^```c$/ { n++; inside = 1; out = dir "/" n ".c"; printf "" > out; next }
  /^```$/ && inside { inside = 0; close(out); next }
  inside { print > out }
' "$readme"
fail=0
blocks=0
for b in "$tmp"/*.c; do
  [ -e "$b" ] || break
  blocks=$((blocks + 1))
  match=""
  for f in "$src"/examples/*.c; do
    if cmp -s "$b" "$f"; then
      match=${f#"$src"/}
      break
    fi
  done
  if [ -n "$match" ]; then
    echo "ok: README's C block $(basename "$b" .c) is $match"
  else
    echo "FAIL: README's C block $(basename "$b" .c), which begins with:"
    head -n 3 "$b" | sed 's/^/  | /'
    echo "  is none of examples/*.c: copy the file in whole, or fix it"
    fail=1
  fi
done
if [ $blocks -eq 0 ]; then
  echo "FAIL: no \`\`\`c block in $readme"
  fail=1
fi
exit $fail
