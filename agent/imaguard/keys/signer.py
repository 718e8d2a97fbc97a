"""Sign and verify file digests. A signer signs a digest; ``ima/xattr`` wraps the result.

RSA uses PKCS#1 v1.5 over the DigestInfo of the given algorithm and ECDSA a DER signature over
the digest, as the kernel's ``asymmetric_verify`` (public_key_verify_signature) expects.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from imaguard.digests import HashAlgo
from imaguard.errors import TrustError, UsageError
from imaguard.keys.material import Certificate, PrivateKey, PublicKey, describe_key, key_id_from_public_key

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["CheckedSigner", "LocalSigner", "Signer", "Verifier"]

_HASHES: dict[HashAlgo, type[hashes.HashAlgorithm]] = {
    HashAlgo.SHA1: hashes.SHA1,
    HashAlgo.SHA224: hashes.SHA224,
    HashAlgo.SHA256: hashes.SHA256,
    HashAlgo.SHA384: hashes.SHA384,
    HashAlgo.SHA512: hashes.SHA512,
}


# Made once per algorithm, not per file: they hold no state.
_PKCS1 = padding.PKCS1v15()


@functools.cache
def _prehashed(algo: HashAlgo) -> Prehashed:
    cls = _HASHES.get(algo)
    if cls is None:
        raise UsageError(f"signing with {algo.kernel_name} is not supported", reason="unsupported-algo")
    return Prehashed(cls())


@functools.cache
def _ecdsa(algo: HashAlgo) -> ec.ECDSA:
    return ec.ECDSA(_prehashed(algo))


class Signer(Protocol):
    """Anything that turns a trusted file digest into a signature and names its key."""

    @property
    def key_id(self) -> bytes: ...

    def sign_digest(self, algo: HashAlgo, digest: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class LocalSigner:
    """A private key held on this host (DESIGN.md §1.3: the weakest source, named as such)."""

    key: PrivateKey
    key_id: bytes

    @classmethod
    def from_key(cls, key: PrivateKey, cert: Certificate | None = None) -> LocalSigner:
        # With a certificate the kernel will match its SKID; without one, evmctl's derived id.
        key_id = cert.key_id if cert is not None else key_id_from_public_key(key.public_key())
        return cls(key, key_id)

    @property
    def description(self) -> str:
        return describe_key(self.key)

    def sign_digest(self, algo: HashAlgo, digest: bytes) -> bytes:
        if len(digest) != algo.digest_size:
            raise UsageError(f"{algo.kernel_name} digest must be {algo.digest_size} bytes")
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(digest, _PKCS1, _prehashed(algo))
        return self.key.sign(digest, _ecdsa(algo))


@dataclass(frozen=True, slots=True)
class CheckedSigner:
    """A ``Signer`` whose every signature is verified with the trusted certificates before it is
    handed out (TrustError else): enrollment never writes a signature the kernel would refuse, even
    from a faulty key, token or library. RSA verification costs ~6% of an RSA-2048 signature."""

    signer: Signer
    verifier: Verifier

    @property
    def key_id(self) -> bytes:
        return self.signer.key_id

    def sign_digest(self, algo: HashAlgo, digest: bytes) -> bytes:
        sig = self.signer.sign_digest(algo, digest)
        self.verifier.verify_digest(self.signer.key_id, algo, digest, sig)
        return sig


@dataclass(frozen=True, slots=True)
class Verifier:
    """Verifies digests against a set of trusted certificates, found by key id like the kernel does."""

    certificates: tuple[Certificate, ...]
    # Key ids on a verified revocation list: refused even when a certificate for them was given.
    revoked: frozenset[bytes] = frozenset()

    @classmethod
    def of(cls, certs: Iterable[Certificate], revoked: frozenset[bytes] = frozenset()) -> Verifier:
        return cls(tuple(certs), revoked)

    def find(self, key_id: bytes) -> tuple[Certificate, ...]:
        return tuple(c for c in self.certificates if c.key_id == key_id)

    def verify_digest(self, key_id: bytes, algo: HashAlgo, digest: bytes, signature: bytes) -> Certificate:
        """Return the certificate that verifies; TrustError ``revoked-key``, ``unknown-key`` or
        ``bad-signature`` else."""
        if key_id in self.revoked:
            raise TrustError(f"key id {key_id.hex()} is revoked", reason="revoked-key")
        candidates = self.find(key_id)
        if not candidates:
            raise TrustError(f"no trusted certificate has key id {key_id.hex()}", reason="unknown-key")
        for cert in candidates:
            if _verify(cert.public_key, algo, digest, signature):
                return cert
        raise TrustError(
            f"signature does not verify with key {key_id.hex()} ({candidates[0].key_kind})",
            reason="bad-signature",
        )


def _verify(key: PublicKey, algo: HashAlgo, digest: bytes, signature: bytes) -> bool:
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, digest, _PKCS1, _prehashed(algo))
        else:
            key.verify(signature, digest, _ecdsa(algo))
    except (InvalidSignature, ValueError):
        # ValueError: a digest whose length does not match the algorithm; untrusted either way.
        return False
    return True
