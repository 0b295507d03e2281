#!/bin/sh
# LOG_COMPILER of a cross build (.ci/run's arm64 step): runs a test program
# under the emulator that MM_TEST_EMULATOR names (e.g. qemu-aarch64), and a
# test script as it is: the scripts put $MM_TEST_EMULATOR in front of the
# programs they start themselves.  Nothing here needs binfmt_misc, which CI
# containers may not have.
case $1 in
  *.sh) exec "$@" ;;
esac
if [ -z "${MM_TEST_EMULATOR:-}" ]; then
  echo "cross-run.sh: MM_TEST_EMULATOR is not set" >&2
  exit 99
fi
# Unquoted on purpose: the emulator may come with options.
exec $MM_TEST_EMULATOR "$@"
