"""One signature per distinct digest: identical files (empty ``__init__.py``, copies) are signed once.

A signature depends only on the key, the algorithm and the digest. RSA PKCS#1 v1.5 is
deterministic, so a reused signature is byte for byte the one a fresh call would make; an ECDSA
signature reused for the same digest is as valid as a fresh one (ECDSA picks a random nonce).
Nothing about the file enters the signature, so reuse cannot make a file carry a signature over
content it does not have: the caller still hashes every file through its own descriptor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imaguard.digests import HashAlgo
    from imaguard.keys.signer import Signer

__all__ = ["MemoSigner"]

# About 300 bytes per entry with RSA-2048: a few MiB at most, whatever the tree.
_MAX_ENTRIES = 8192


class MemoSigner:
    """A ``Signer`` that remembers the signatures it made, by (algorithm, digest)."""

    __slots__ = ("_memo", "_signer", "reused")

    def __init__(self, signer: Signer) -> None:
        self._signer = signer
        self._memo: dict[tuple[HashAlgo, bytes], bytes] = {}
        self.reused = 0  # signatures handed out again rather than made (for benchmarks and tests)

    @property
    def key_id(self) -> bytes:
        return self._signer.key_id

    def sign_digest(self, algo: HashAlgo, digest: bytes) -> bytes:
        key = (algo, digest)
        sig = self._memo.get(key)
        if sig is not None:
            self.reused += 1
            return sig
        sig = self._signer.sign_digest(algo, digest)
        if len(self._memo) >= _MAX_ENTRIES:
            # Duplicates cluster (a package's copies sit together); forgetting old ones costs little.
            self._memo.clear()
        self._memo[key] = sig
        return sig
