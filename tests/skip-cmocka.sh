#!/bin/sh
# Stands in for every cmocka test program when configure found no cmocka:
# they are not built, and `make check` says so instead of passing without
# them.  The scripts beside it (exports, layout, examples) still run.
echo "SKIP: the cmocka test programs (tests/test-*.c): configure found no" \
     "cmocka, so they are not built (Debian: apt-get install libcmocka-dev," \
     "then ./configure)"
exit 77
