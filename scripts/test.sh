#!/bin/sh
# Set up (scripts/setup.sh) and run the whole test suite: unit, root integration on this host,
# and the QEMU lab (real IMA kernel). Extra arguments go to pytest, e.g. `-m "not vm"`.
set -eu
cd "$(dirname "$0")/.."
sh scripts/setup.sh
# The lab tools are installed by setup.sh: a lab that cannot run is a failure here, not a skip.
export IMAGUARD_LAB_REQUIRED=1
status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "test.sh: pytest collected no tests; that is a failure, not a pass" >&2
    exit 1
fi
exit "$status"
