#!/bin/sh
# lib/switch-x86_64.S assembles for Mach-O (macOS) too, though no CI here
# runs macOS: clang's integrated assembler with -target x86_64-apple-macos
# must take it, and the object must define the two entry points with
# Mach-O's leading underscore and need only the C side's last word.
# Skipped when clang is missing (scripts/install-deps installs it).
src=${srcdir:-.}/lib/switch-x86_64.S
if ! command -v clang >/dev/null 2>&1; then
  echo "SKIP: clang not installed (scripts/install-deps installs it)"
  exit 77
fi
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
if ! clang -target x86_64-apple-macos -c "$src" -o "$tmp/switch.o"; then
  echo "FAIL: clang -target x86_64-apple-macos does not assemble $src"
  exit 1
fi
# What the macros made of the names: a Mach-O reader (llvm-nm) is not
# always installed, the preprocessor is.
pp=$(clang -target x86_64-apple-macos -E "$src") || exit 1
for want in '_mm__ctx_switch:' '_mm__ctx_trampoline:' \
            '.private_extern _mm__ctx_switch' \
            '.private_extern _mm__ctx_trampoline' \
            'callq _mm__ctx_entry_returned'; do
  if ! echo "$pp" | tr -s ' \t;' '   \n' | grep -qF "$want"; then
    echo "FAIL: no '$want' in the source preprocessed for Mach-O"
    exit 1
  fi
done
if echo "$pp" | grep -qE '\.type|\.size|GNU-stack'; then
  echo "FAIL: ELF-only directives in the source preprocessed for Mach-O"
  exit 1
fi
echo "ok: assembles as Mach-O, with _mm__ctx_switch and _mm__ctx_trampoline"
