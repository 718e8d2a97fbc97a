"""``local:KEY`` checks every signature it makes against --cert: a signature the kernel would
refuse is never written, whatever produced it (a wrong key behind the right key id, a faulty
token or library)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from imaguard.digests import HashAlgo
from imaguard.ima.xattr import ImaSignature, parse_xattr
from imaguard.keys import CheckedSigner, LocalSigner, Verifier, load_certificate, load_private_key
from imaguard.packages.model import Evidence, FileKind, InstalledPackage, PackageFile
from imaguard.sign.memo import MemoSigner
from imaguard.sign.sources import LocalSource, NoSignature

KEYS = Path(__file__).resolve().parents[2] / "tests" / "data" / "keys"
PKG = InstalledPackage("p", "1", "all")
DIGEST = hashlib.sha256(b"content").digest()
FILE = PackageFile(b"/usr/bin/p", FileKind.REGULAR, Evidence.REPO_VERIFIED, DIGEST, HashAlgo.SHA256)


def _source(signer: LocalSigner) -> LocalSource:
    verifier = Verifier.of([load_certificate(KEYS / "ima-test-rsa2048.pem")])
    return LocalSource(MemoSigner(CheckedSigner(signer, verifier)), verifier)


def test_the_matching_key_signs_and_the_value_verifies():
    cert = load_certificate(KEYS / "ima-test-rsa2048.pem")
    source = _source(LocalSigner.from_key(load_private_key(KEYS / "ima-test-rsa2048.key"), cert))
    value = parse_xattr(source.signature_for(PKG, FILE, DIGEST))
    assert isinstance(value, ImaSignature)
    assert value.keyid == cert.key_id
    Verifier.of([cert]).verify_digest(value.keyid, HashAlgo.SHA256, DIGEST, value.signature)


def test_a_signature_the_certificate_does_not_verify_is_refused():
    # Another key under the certificate's key id: what a swapped key file or a faulty signer gives.
    cert = load_certificate(KEYS / "ima-test-rsa2048.pem")
    wrong = LocalSigner(rsa.generate_private_key(public_exponent=65537, key_size=2048), cert.key_id)
    with pytest.raises(NoSignature) as err:
        _source(wrong).signature_for(PKG, FILE, DIGEST)
    assert (err.value.reason, err.value.refuse) == ("local-signature-invalid", True)
    assert str(err.value) == (f"p=1/all: the local key's signature of b'/usr/bin/p' does not verify: signature "
                              f"does not verify with key {cert.key_id.hex()} (RSA-2048)")  # fmt: skip


