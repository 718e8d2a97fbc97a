#!/bin/sh
# The README's first command: set up, then show imaguard end to end against a real IMA kernel.
# Builds (or reuses) the QEMU lab image, boots Debian's kernel with a swtpm TPM, and tells the
# story: keys loaded, files signed, policy enforced, a tampered binary refused; then powers off.
set -eu
cd "$(dirname "$0")/.."
sh scripts/setup.sh >/dev/null
exec vagrant/lab/lab demo "$@"
