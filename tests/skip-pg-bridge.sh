#!/bin/sh
# Stands in for tests/test-pg-bridge when configure found no libpq: the
# test is skipped, and says why.
echo "SKIP: test-pg-bridge: configure found no libpq, so examples/pg-bridge" \
     "is not built (Debian: apt-get install libpq-dev, then ./configure)"
exit 77
