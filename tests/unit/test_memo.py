"""Identical content is signed once: the reused signature is the one a fresh call makes."""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from imaguard.digests import HashAlgo
from imaguard.ima.xattr import ImaSignature
from imaguard.keys import LocalSigner
from imaguard.sign import memo
from imaguard.sign.memo import MemoSigner


class CountingSigner:
    def __init__(self, inner: LocalSigner) -> None:
        self.inner = inner
        self.calls = 0

    @property
    def key_id(self) -> bytes:
        return self.inner.key_id

    def sign_digest(self, algo: HashAlgo, digest: bytes) -> bytes:
        self.calls += 1
        return self.inner.sign_digest(algo, digest)


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_rsa_reuse_gives_the_xattr_bytes_of_a_fresh_signature():
    key = _rsa()
    fresh = LocalSigner.from_key(key)
    counting = CountingSigner(LocalSigner.from_key(key))
    signer = MemoSigner(counting)
    empty, other = hashlib.sha256(b"").digest(), hashlib.sha256(b"other").digest()
    first = signer.sign_digest(HashAlgo.SHA256, empty)
    again = signer.sign_digest(HashAlgo.SHA256, empty)
    assert again == first == fresh.sign_digest(HashAlgo.SHA256, empty)  # PKCS#1 v1.5 is deterministic
    assert signer.sign_digest(HashAlgo.SHA256, other) == fresh.sign_digest(HashAlgo.SHA256, other)
    assert (counting.calls, signer.reused) == (2, 1)
    assert signer.key_id == fresh.key_id
    reused = ImaSignature(HashAlgo.SHA256, signer.key_id, again).to_xattr()
    assert reused == ImaSignature(HashAlgo.SHA256, fresh.key_id, fresh.sign_digest(HashAlgo.SHA256, empty)).to_xattr()


def test_the_algorithm_is_part_of_what_is_remembered():
    counting = CountingSigner(LocalSigner.from_key(_rsa()))
    signer = MemoSigner(counting)
    d256, d512 = hashlib.sha256(b"x").digest(), hashlib.sha512(b"x").digest()
    s256 = signer.sign_digest(HashAlgo.SHA256, d256)
    s512 = signer.sign_digest(HashAlgo.SHA512, d512)
    assert s256 != s512
    assert signer.sign_digest(HashAlgo.SHA512, d512) == s512
    assert (counting.calls, signer.reused) == (2, 1)


def test_a_reused_ec_signature_verifies_over_the_content():
    key = ec.generate_private_key(ec.SECP256R1())
    signer = MemoSigner(LocalSigner.from_key(key))
    digest = hashlib.sha256(b"same content").digest()
    sig = signer.sign_digest(HashAlgo.SHA256, digest)
    assert signer.sign_digest(HashAlgo.SHA256, digest) == sig
    key.public_key().verify(sig, b"same content", ec.ECDSA(hashes.SHA256()))  # raises if invalid


def test_memory_is_bounded(monkeypatch):
    monkeypatch.setattr(memo, "_MAX_ENTRIES", 3)
    counting = CountingSigner(LocalSigner.from_key(_rsa()))
    signer = MemoSigner(counting)
    for i in range(5):
        signer.sign_digest(HashAlgo.SHA256, hashlib.sha256(bytes([i])).digest())
    assert len(signer._memo) <= 3
    assert counting.calls == 5
