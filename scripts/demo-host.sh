#!/bin/sh
# Host-only demo (no VM): set up, then sign and verify a sample tree on this host.
# Signs a sample tree of real binaries with a fresh lab key, verifies it with imaguard and with
# the reference tool evmctl, and shows a tampered file being refused.
set -eu
cd "$(dirname "$0")/.."
sh scripts/setup.sh >/dev/null
ig=.venv/bin/imaguard
work=$(mktemp -d /var/tmp/imaguard-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT

say() { printf '\n== %s\n' "$*"; }

say "1. a lab signing key (RSA-2048, the profile the kernel accepts)"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$work/ima.key" -out "$work/ima.pem" -days 30 \
    -subj "/CN=imaguard demo IMA key" -addext keyUsage=critical,digitalSignature \
    -addext subjectKeyIdentifier=hash -addext basicConstraints=critical,CA:FALSE 2>/dev/null
openssl x509 -in "$work/ima.pem" -outform DER -out "$work/ima.der"
openssl x509 -in "$work/ima.pem" -noout -subject -ext subjectKeyIdentifier | sed 's/^/   /'

say "2. a sample tree: copies of real binaries from /usr/bin"
mkdir -p "$work/tree/bin"
for b in ls cat cp grep sed dpkg apt-get python3; do
    cp "$(readlink -f "$(command -v "$b")")" "$work/tree/bin/$b"
done
ln -s ls "$work/tree/bin/dir"
ls "$work/tree/bin" | tr '\n' ' ' | sed 's/^/   /'; echo

say "3. imaguard sign -r: security.ima signature v2 on every regular file (symlinks skipped)"
$ig sign --key "$work/ima.key" --cert "$work/ima.pem" -r "$work/tree"
getfattr -e hex -n security.ima "$work/tree/bin/ls" 2>/dev/null | sed -n 2p | cut -c1-60 | sed 's/$/…/; s/^/   /'

say "4. imaguard verify -r, and the reference tool evmctl agrees"
$ig verify --cert "$work/ima.pem" -r "$work/tree"
evmctl ima_verify --key "$work/ima.der" "$work/tree/bin/ls" 2>&1 | grep -v '^key\|^hash' | sed 's/^/   evmctl: /'

say "5. one byte of a signed binary changes: both tools refuse it"
printf 'X' | dd of="$work/tree/bin/cat" bs=1 seek=1000 conv=notrunc 2>/dev/null
$ig verify --cert "$work/ima.pem" "$work/tree/bin/cat" && exit 1 || echo "   imaguard verify exit code: $? (3 = verification failed)"
evmctl ima_verify --key "$work/ima.der" "$work/tree/bin/cat" >/dev/null 2>&1 && exit 1 || echo "   evmctl ima_verify refused it too"

say "done: the kernel-side story (keys in the keyring, enforced policy) runs in the QEMU lab"
