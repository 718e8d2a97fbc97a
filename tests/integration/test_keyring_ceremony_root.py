"""Certificates from the key ceremony work with the reference tool (issue 6, item 1; root tier).

A key issued by ``imaguard-keyring cert issue`` signs a file with ``imaguard sign --key K --cert PEM``;
evmctl verifies it with the issued DER certificate (what /etc/keys/ima/ holds), and the other way
round. The key id in security.ima is the certificate's SKID tail, which evmctl derives by itself.
"""

from __future__ import annotations

import os

import pytest
from cryptography import x509
from rootlib import flip_one_byte, get_ima, run, write_file

from imaguard_keyring.cli import main as keyring_main

pytestmark = pytest.mark.root

KINDS = ["rsa2048", "rsa3072", "p256"]  # evmctl verifies EC in userspace; only the Debian kernel cannot


@pytest.fixture(scope="module")
def issued(tmp_path_factory):
    top = tmp_path_factory.mktemp("ceremony-root")
    assert keyring_main(["ca", "create", "--out", str(top / "ca"), "--key-type", "rsa2048"]) == 0
    made = {}
    for kind in KINDS:
        assert keyring_main(["cert", "issue", "--ca", str(top / "ca"), "--out", str(top / "keys"), "--name", kind,
                             "--key-type", kind]) == 0
        made[kind] = top / "keys" / kind
    return made


def _skid_tail(stem) -> str:
    cert = x509.load_pem_x509_certificate(stem.with_suffix(".pem").read_bytes())
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest[-4:].hex()


@pytest.mark.parametrize("kind", KINDS)
def test_imaguard_sign_with_issued_key_then_evmctl_verify(kind, issued, evmctl, imaguard_json, tmp_path):
    stem = issued[kind]
    target = write_file(tmp_path / "file", os.urandom(100_000))
    code, doc = imaguard_json(["sign", "--key", str(stem.with_suffix(".key")), "--cert", str(stem.with_suffix(".pem")),
                               str(target)])
    assert code == 0, doc
    value = get_ima(target)
    assert value is not None
    assert value[3:7].hex() == _skid_tail(stem)
    proc = run([evmctl, "ima_verify", "--key", str(stem.with_suffix(".der")), str(target)], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    flip_one_byte(target, 5)
    proc = run([evmctl, "ima_verify", "--key", str(stem.with_suffix(".der")), str(target)], check=False)
    assert proc.returncode != 0


@pytest.mark.parametrize("kind", KINDS)
def test_evmctl_sign_without_cert_gives_the_same_key_id(kind, issued, evmctl, imaguard_json, tmp_path):
    # No --keyid-from-cert: evmctl derives the key id from the public key; SKID method 1 makes it match.
    stem = issued[kind]
    target = write_file(tmp_path / "file", os.urandom(5000))
    run([evmctl, "ima_sign", "--hashalgo", "sha256", "--key", str(stem.with_suffix(".key")), str(target)])
    value = get_ima(target)
    assert value is not None
    assert value[3:7].hex() == _skid_tail(stem)
    code, doc = imaguard_json(["verify", "--cert", str(stem.with_suffix(".der")), str(target)])
    assert code == 0, doc


SCRIPT = """
set -e
ca_ring=$(keyctl newring imaguard-test-ca @s)
keyctl padd asymmetric "" "$ca_ring" < "$1" >/dev/null
ima_ring=$(keyctl newring imaguard-test-ima @s)
keyctl restrict_keyring "$ima_ring" asymmetric "key_or_keyring:$ca_ring"
keyctl padd asymmetric "" "$ima_ring" < "$2" >/dev/null
keyctl rdescribe "$(keyctl search "$ima_ring" asymmetric "$3")"
if keyctl padd asymmetric "" "$ima_ring" < "$4" 2>/dev/null; then echo "foreign accepted"; exit 1; fi
"""


def test_the_kernel_chains_the_issued_cert_to_the_ca(issued, tmp_path):
    # A keyring restricted to keys signed by the CA (restrict_link_by_key_or_keyring: the AKID lookup and
    # signature check of restrict_link_by_signature, which guards ".ima") takes the issued certificate and
    # refuses one the CA did not sign. Runs in a throw-away session keyring.
    stem = issued["rsa2048"]
    ca_der = stem.parent.parent / "ca" / "ca.der"
    assert keyring_main(["ca", "create", "--out", str(tmp_path / "other"), "--key-type", "rsa2048"]) == 0
    assert keyring_main(["cert", "issue", "--ca", str(tmp_path / "other"), "--out", str(tmp_path), "--name", "foreign",
                         "--key-type", "rsa2048"]) == 0
    cert = x509.load_pem_x509_certificate(stem.with_suffix(".pem").read_bytes())
    skid = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    proc = run(["keyctl", "session", "-", "bash", "-c", SCRIPT, "sh", str(ca_der), str(stem.with_suffix(".der")),
                f"rsa2048: {skid}", str(tmp_path / "foreign.der")], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # asymmetric;uid;gid;perm;CN: SKID -- the kernel names the key by its subject key identifier.
    assert proc.stdout.strip().split("\n")[-1].endswith(f";rsa2048: {skid}")
