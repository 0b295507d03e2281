#!/bin/sh
# The manual (issue 12): every MM_EXTERN function of include/mixmode.h has
# a page in man/ -- its own, or a one-line ".so man3/PAGE.3" link to the
# page that names it in NAME --, its prototype in that page's SYNOPSIS is
# the header's, each page has the sections issue 12 asks for (CALLING
# CONTEXT: where it may be called, and thread-safety), and every page
# lints cleanly with mandoc -T lint (and, when man-db is there, renders
# without groff warnings).  With the build tree at hand,
# `make install-man DESTDIR=...` is checked to put every name under
# share/man/man3, where man(1) finds and renders it.
#
# Usage: tests/check-man.sh (top_srcdir and top_builddir from the
# environment, as make check sets them; the current directory otherwise).
# MM_CHECK_MAN_NO_INSTALL=1 leaves the install out (a quick run while
# editing pages).
# Exit 77 (skip) when mandoc is not installed: scripts/install-deps
# installs it.
src="${top_srcdir:-.}"
build="${top_builddir:-.}"
header="$src/include/mixmode.h"
mandir="$src/man"
[ -f "$header" ] && [ -d "$mandir" ] || {
  echo "no $header or $mandir"; exit 1
}
if ! command -v mandoc >/dev/null 2>&1; then
  echo "SKIP: mandoc not installed (Debian package mandoc), cannot lint" \
       "the pages"
  exit 77
fi
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
fail=0
bad() { echo "FAIL: $*"; fail=1; }

# ---- every public function has a page that names it ----------------------
# "MM_EXTERN <type> name(" on one line: the header's own style.
sed -n 's/^MM_EXTERN[^(]*[^a-z0-9_]\(mm_[a-z0-9_]*\)(.*/\1/p' "$header" |
  sort >"$tmp/names"
n=$(wc -l <"$tmp/names")
[ "$n" -gt 0 ] || bad "no MM_EXTERN function found in $header"
# Full pages (not links), by file name.
for f in "$mandir"/*.3; do
  head -n 1 "$f" | grep -q '^\.so ' || echo "$f"
done >"$tmp/pages"
while read -r name; do
  f="$mandir/$name.3"
  if [ ! -f "$f" ]; then
    bad "$name: no page man/$name.3"
    continue
  fi
  page="$f"
  if head -n 1 "$f" | grep -q '^\.so '; then
    target=$(sed -n '1s/^\.so man3\/\([a-z0-9_]*\.3\)$/\1/p' "$f")
    if [ "$(wc -l <"$f")" -ne 1 ] || [ -z "$target" ]; then
      bad "man/$name.3: a link page is one line, .so man3/PAGE.3"
      continue
    fi
    page="$mandir/$target"
    if [ ! -f "$page" ] || head -n 1 "$page" | grep -q '^\.so '; then
      bad "man/$name.3: links to man/$target, which is not a page"
      continue
    fi
  fi
  grep -q "^\.Nm $name\( ,\)\{0,1\}\$" "$page" ||
    bad "$name: ${page#"$src"/} does not name it in NAME (.Nm $name)"
done <"$tmp/names"
# A link page for a name the header no longer has would install a page
# for nothing.
for f in "$mandir"/*.3; do
  head -n 1 "$f" | grep -q '^\.so ' || continue
  base=$(basename "$f" .3)
  grep -qx "$base" "$tmp/names" || bad "man/$base.3: links a name" \
    "that is not an MM_EXTERN function of mixmode.h"
done

# ---- every function page has the sections the issue asks for --------------
# ERRORS where a function can fail (returns int or ssize_t).
while read -r f; do
  [ "$(basename "$f")" = mixmode.3 ] && continue
  for sec in NAME SYNOPSIS DESCRIPTION "CALLING CONTEXT" "RETURN VALUES" \
             "SEE ALSO"; do
    grep -qx "\.Sh $sec" "$f" || bad "${f#"$src"/}: no $sec section"
  done
  if grep -q -e '^\.Ft int$' -e '^\.Ft ssize_t$' "$f"; then
    grep -qx '\.Sh ERRORS' "$f" || bad "${f#"$src"/}: no ERRORS section"
  fi
done <"$tmp/pages"

# ---- SYNOPSIS prototypes are the header's --------------------------------
# The header's declarations, one a line, whitespace collapsed:
# "int mm_spawn(mm_loop_t *loop, mm_fn fn, void *arg, mm_coro_t **coro)".
awk '/^MM_EXTERN/ { d = ""; on = 1 }
     on { d = d " " $0; if ($0 ~ /;/) { on = 0; print d } }' "$header" |
  sed 's/MM_EXTERN//; s/;.*//; s/[[:space:]][[:space:]]*/ /g;
       s/^ //; s/ $//; s/\* /*/g' | sort >"$tmp/protos.h"
# The pages' .Ft/.Fn pairs of SYNOPSIS, rebuilt the same way.
while read -r f; do
  awk '/^\.Sh / { syn = ($2 == "SYNOPSIS"); next }
       !syn { next }
       /^\.Ft / { ft = substr($0, 5); next }
       /^\.Fn / {
         rest = substr($0, 5); name = rest; sub(/ .*/, "", name)
         rest = substr(rest, length(name) + 2)
         args = ""
         if (rest !~ /"/) args = rest
         else {
           n = split(rest, part, "\"")
           for (i = 2; i <= n; i += 2)
             args = args (args == "" ? "" : ", ") part[i]
         }
         print ft " " name "(" args ")"; ft = ""
       }' "$f"
done <"$tmp/pages" | sed 's/\* /*/g' | sort >"$tmp/protos.man"
comm -23 "$tmp/protos.h" "$tmp/protos.man" | sed 's/^/  header: /' \
  >"$tmp/diff"
comm -13 "$tmp/protos.h" "$tmp/protos.man" | sed 's/^/  pages:  /' \
  >>"$tmp/diff"
if [ -s "$tmp/diff" ]; then
  bad "SYNOPSIS prototypes differ from include/mixmode.h:"
  cat "$tmp/diff"
fi
dups=$(sort "$tmp/protos.man" | uniq -d)
[ -z "$dups" ] || bad "prototypes in more than one SYNOPSIS: $dups"

# ---- lint ------------------------------------------------------------------
# Every message down to STYLE fails, except the two that depend on which
# other manuals this machine has: Xr to a page not installed, and an
# outdated mandoc.db.
while read -r f; do
  mandoc -T lint -W style "$f" 2>&1 |
    grep -v -e 'STYLE: referenced manual not found' \
            -e 'outdated mandoc.db'
  mandoc -T lint -W warning "$f" >/dev/null 2>&1 ||
    echo "mandoc: $f: warnings (exit status $?)"
done <"$tmp/pages" >"$tmp/lint"
if [ -s "$tmp/lint" ]; then
  bad "mandoc -T lint:"; cat "$tmp/lint"
fi
# groff through man-db as well, at a fixed width: its mdoc package
# complains about things mandoc accepts (a table too wide to break).
if command -v man >/dev/null 2>&1 && command -v groff >/dev/null 2>&1; then
  while read -r f; do
    w=$(MANWIDTH=80 man --warnings -l "$f" 2>&1 >/dev/null)
    [ -z "$w" ] || echo "man --warnings: $f: $w"
  done <"$tmp/pages" >"$tmp/groff"
  if [ -s "$tmp/groff" ]; then
    bad "man --warnings:"; cat "$tmp/groff"
  fi
else
  echo "note: man or groff missing, pages not rendered through groff"
fi

# ---- make install-man puts them where man(1) finds them -------------------
if [ -f "$build/Makefile" ] && [ "${MM_CHECK_MAN_NO_INSTALL:-0}" != 1 ]; then
  dest="$tmp/dest"
  if ! ${MAKE:-make} -s -C "$build" install-man DESTDIR="$dest" \
       >"$tmp/install.log" 2>&1; then
    bad "make install-man DESTDIR=... failed:"; cat "$tmp/install.log"
  else
    man3=$(find "$dest" -type d -name man3 | head -n 1)
    if [ -z "$man3" ]; then
      bad "make install-man installed no man3 directory"
    else
      # Every page of man/, no more and no less.
      (cd "$mandir" && ls -- *.3) >"$tmp/shipped"
      (cd "$man3" && ls -- *.3) >"$tmp/installed"
      cmp -s "$tmp/shipped" "$tmp/installed" ||
        bad "installed pages differ from man/ (Makefile: dist_man3_MANS):" \
          "$(diff "$tmp/shipped" "$tmp/installed" | grep '^[<>]' | tr '\n' ' ')"
      if command -v man >/dev/null 2>&1; then
        while read -r name; do
          MANWIDTH=80 man -M "${man3%/man3}" 3 "$name" 2>/dev/null |
            grep -q "$name" || echo "$name"
        done <"$tmp/names" >"$tmp/unrendered"
        [ ! -s "$tmp/unrendered" ] || bad "man -M <DESTDIR>/.../man 3" \
          "NAME does not show: $(tr '\n' ' ' <"$tmp/unrendered")"
      fi
    fi
  fi
elif [ -f "$build/Makefile" ]; then
  echo "note: MM_CHECK_MAN_NO_INSTALL=1, install not checked"
else
  echo "note: no build tree ($build/Makefile), install not checked"
fi

[ "$fail" -eq 0 ] || exit 1
echo "ok: $n functions, $(wc -l <"$tmp/pages") pages, all lint clean," \
     "prototypes as in mixmode.h"
