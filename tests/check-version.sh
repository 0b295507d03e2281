#!/bin/sh
# The version numbers agree: the package's (configure, mixmode.pc, the
# tarball's name) is the header's MM_VERSION_*; the shared library's
# soname and file name follow -version-info current:revision:age
# (configure.ac) as libtool makes them on ELF systems:
# libmixmode.so.<current - age>, file .so.<current - age>.<age>.<revision>.
# (mm_version() against MM_VERSION_*: test-errors.)
top=${top_builddir:-.}
src=${srcdir:-.}
fail=0
bad() { echo "FAIL: $*"; fail=1; }

header=$src/include/mixmode.h
hv=$(for p in MAJOR MINOR PATCH; do
       sed -n "s/^#define MM_VERSION_$p \([0-9][0-9]*\)\$/\1/p" "$header"
     done | tr '\n' . | sed 's/\.$//')
echo "header MM_VERSION_*: $hv"
case $hv in
  *.*.*) ;;
  *) bad "MM_VERSION_MAJOR/MINOR/PATCH not found in $header" ;;
esac
[ "$hv" = "${package_version:-}" ] ||
  bad "configure's version '${package_version:-}' is not the header's '$hv'"
pv=$(sed -n 's/^Version: *//p' "$top/mixmode.pc")
[ "$pv" = "$hv" ] || bad "mixmode.pc says Version: '$pv', the header '$hv'"

lt=${mm_lt_version:-}
case $lt in
  *:*:*) ;;
  *) echo "FAIL: no -version-info (mm_lt_version='$lt')"; exit 1 ;;
esac
cur=${lt%%:*}; rest=${lt#*:}; rev=${rest%%:*}; age=${rest#*:}
if [ "$age" -gt "$cur" ]; then
  bad "-version-info $lt: age is greater than current"
fi
so=$top/.libs/libmixmode.so
if [ ! -f "$so" ]; then
  echo "SKIP: no $so (a static-only build): no soname to check"
  [ $fail -eq 0 ] && exit 77 || exit 1
fi
major=$((cur - age))
if ! command -v readelf >/dev/null 2>&1; then
  echo "SKIP: readelf (binutils) not found: the soname is not checked"
  [ $fail -eq 0 ] && exit 77 || exit 1
fi
soname=$(readelf -d "$so" | sed -n 's/.*Library soname: \[\(.*\)\].*/\1/p')
echo "-version-info $lt: soname $soname"
[ "$soname" = "libmixmode.so.$major" ] ||
  bad "soname '$soname', expected libmixmode.so.$major from $lt"
[ -f "$so.$major.$age.$rev" ] ||
  bad "no $so.$major.$age.$rev:" \
    "$(ls "$top/.libs/" | grep '^libmixmode\.so' | tr '\n' ' ')"
[ $fail -eq 0 ] && echo "ok: version $hv, library $soname ($lt)"
exit $fail
