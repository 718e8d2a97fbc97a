"""BundleSource hands out only signatures that verify with the IMA certificate, each pair checked once."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import pytest
from certlib import NOW
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from imaguard.digests import HashAlgo
from imaguard.errors import UsageError
from imaguard.ima.xattr import ImaSignature
from imaguard.keys import LocalSigner, Verifier, parse_certificate
from imaguard.packages.model import Evidence, FileKind, InstalledPackage, PackageFile
from imaguard.sign.bundle import bundle_name, make_bundle
from imaguard.sign.sources import BundleSource, NoSignature
from imaguard_keyring.profiles import build_ca_certificate, build_ima_certificate

if TYPE_CHECKING:
    from pathlib import Path

PKG = InstalledPackage("p", "1.0", "amd64")
EMPTY = hashlib.sha256(b"").digest()


def _cert(ca_key, ca_cert, key, name):
    cert = build_ima_certificate(ca_cert=ca_cert, ca_key=ca_key, public_key=key.public_key(), common_name=name,
                                 days=365, now=NOW)  # fmt: skip
    return parse_certificate(cert.public_bytes(serialization.Encoding.DER), name)


class CountingVerifier:
    """The real Verifier, counting the signatures it checks."""

    def __init__(self, inner: Verifier) -> None:
        self.inner = inner
        self.calls = 0
        self.certificates = inner.certificates
        self.revoked = inner.revoked

    def verify_digest(self, key_id, algo, digest, signature):
        self.calls += 1
        return self.inner.verify_digest(key_id, algo, digest, signature)


@pytest.fixture(scope="module")
def world():
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_cert = build_ca_certificate(ca_key, "test CA", 365, NOW)
    ima_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    auth_key = ec.generate_private_key(ec.SECP256R1())
    ima = _cert(ca_key, ca_cert, ima_key, "ima")
    authority = _cert(ca_key, ca_cert, auth_key, "authority")
    return LocalSigner.from_key(ima_key, ima), ima, auth_key, authority


def _source(tmp_path: Path, world, entries) -> tuple[BundleSource, CountingVerifier]:
    _signer, ima, auth_key, authority = world
    env = make_bundle(PKG, entries, auth_key, authority.key_id)
    (tmp_path / bundle_name(PKG)).write_bytes(env.to_json())
    verifier = CountingVerifier(Verifier.of([ima]))
    return BundleSource(str(tmp_path), (authority,), verifier), verifier


def _pf(path: bytes) -> PackageFile:
    return PackageFile(path, FileKind.REGULAR, Evidence.REPO_VERIFIED, EMPTY, HashAlgo.SHA256)


def test_identical_files_are_verified_once_and_get_the_bundle_value(tmp_path, world):
    signer = world[0]
    value = ImaSignature(HashAlgo.SHA256, signer.key_id, signer.sign_digest(HashAlgo.SHA256, EMPTY)).to_xattr()
    source, verifier = _source(tmp_path, world, [(b"/a/__init__.py", EMPTY, value), (b"/b/__init__.py", EMPTY, value)])
    assert source.signature_for(PKG, _pf(b"/a/__init__.py"), EMPTY) == value
    assert source.signature_for(PKG, _pf(b"/b/__init__.py"), EMPTY) == value
    assert verifier.calls == 1


def test_a_bad_signature_beside_a_verified_one_for_the_same_digest_is_refused(tmp_path, world):
    signer = world[0]
    good = ImaSignature(HashAlgo.SHA256, signer.key_id, signer.sign_digest(HashAlgo.SHA256, EMPTY))
    bad = ImaSignature(HashAlgo.SHA256, signer.key_id, bytes(256))
    source, verifier = _source(tmp_path, world, [(b"/good", EMPTY, good.to_xattr()), (b"/bad", EMPTY, bad.to_xattr())])
    assert source.signature_for(PKG, _pf(b"/good"), EMPTY) == good.to_xattr()
    with pytest.raises(NoSignature) as err:
        source.signature_for(PKG, _pf(b"/bad"), EMPTY)
    assert (err.value.reason, err.value.refuse) == ("bundle-signature-invalid", True)
    assert verifier.calls == 2


def test_a_malformed_entry_refuses_its_file_only(tmp_path, world):
    signer = world[0]
    good = ImaSignature(HashAlgo.SHA256, signer.key_id, signer.sign_digest(HashAlgo.SHA256, EMPTY)).to_xattr()
    source, _ = _source(tmp_path, world, [(b"/good", EMPTY, good), (b"/digest-only", EMPTY, b"\x04\x04" + EMPTY)])
    with pytest.raises(NoSignature) as err:
        source.signature_for(PKG, _pf(b"/digest-only"), EMPTY)
    assert (err.value.reason, err.value.refuse) == ("bundle-untrusted", True)
    assert source.signature_for(PKG, _pf(b"/good"), EMPTY) == good


def test_an_authority_with_the_ima_key_is_refused() -> None:
    # Regression: DSSE and IMA signatures are both RSA PKCS#1 v1.5 over SHA-256; one key for both roles
    # makes every bundle signature a valid IMA signature for a file holding the envelope's PAE bytes.
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_cert = build_ca_certificate(ca_key, "test CA", 365, NOW)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ima, authority = _cert(ca_key, ca_cert, key, "ima"), _cert(ca_key, ca_cert, key, "authority")  # two certs, one key
    other = _cert(ca_key, ca_cert, ec.generate_private_key(ec.SECP256R1()), "other")
    with pytest.raises(UsageError) as caught:
        BundleSource("/nonexistent", (other, authority), Verifier.of([ima]))
    assert (caught.value.reason, str(caught.value)) == ("shared-key", (
        "bundle authority certificate authority has the same public key as the IMA certificate ima: a bundle "
        "signature would also be a valid IMA signature (both sign SHA-256 with the same scheme), for a file whose "
        "content is the signed envelope; use a separate key for the authority"))
    BundleSource("/nonexistent", (other,), Verifier.of([ima]))  # separate keys are fine
