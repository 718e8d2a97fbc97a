#!/bin/sh
# Set up a Debian 12 machine (as root) to run imaguard from this checkout: the Debian packages it
# and its tests need, then a virtualenv (.venv) from /usr/bin/python3 that sees Debian's
# python3-apt and python3-rpm (--system-site-packages), with imaguard and its test tools in it.
set -eu
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: run as root (it installs Debian packages)" >&2
    exit 2
fi

# Runtime bindings come from Debian (not PyPI); the rest are the reference tools the tests run
# for real: evmctl, keyutils, rpm, dpkg-dev, and the QEMU lab (qemu, debootstrap, swtpm, tpm2-tools).
PACKAGES="python3 python3-venv python3-pip python3-cryptography python3-apt python3-rpm python3-tqdm
python3-psutil ima-evm-utils keyutils attr openssl e2fsprogs rpm rpm2cpio dpkg-dev apt-utils gpg gpgv gpgconf lz4 zstd python3-zstandard
qemu-system-x86 qemu-utils debootstrap swtpm swtpm-tools tpm2-tools python3-gpg python3-yaml"

missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "setup.sh: installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    apt-get install -y -q --no-install-recommends $missing
fi

if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
# The editable install puts an import hook in every start-up (a finder module importing pathlib
# and urllib: ~12 ms of each `imaguard` run, where a package install has none). The two source
# directories hold only the two packages, so a plain path entry finds the same modules, new ones too.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
printf '%s\n%s\n' "$PWD/agent" "$PWD/keyring-tools" > "$site/__editable__.imaguard-0.1.0.pth"
rm -f "$site"/__editable___imaguard_*_finder.py
# Byte-compile now, as a package install would: where PYTHONDONTWRITEBYTECODE is set, every
# `imaguard` run would otherwise compile its modules again (~10 ms of each start-up).
.venv/bin/python -m compileall -q agent keyring-tools >/dev/null

# The Keylime peer for interop tests and bench/log_parse, in its own venv so PyPI keylime never
# touches .venv. Its wheel declares no dependencies: these are what keylime.ima imports (gpg,
# yaml and cryptography come from Debian through --system-site-packages); SQLAlchemy, pyasn1 and
# tornado are what `keylime-policy create runtime` imports (bench/keylime_policy).
if [ ! -x .venv-peer/bin/python ]; then
    /usr/bin/python3 -m venv --system-site-packages .venv-peer
fi
.venv-peer/bin/python -m pip install -q --disable-pip-version-check 'keylime==7.14.3' 'jsonschema==4.26.0' 'lark==1.3.1' 'packaging==26.3' \
    'SQLAlchemy==2.1.9' 'pyasn1==0.6.5' 'pyasn1_modules==0.4.2' 'tornado==6.6.1'
echo "setup.sh: ready: $(.venv/bin/imaguard --version) in .venv"
