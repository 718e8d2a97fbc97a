"""Keys and certificates fit for IMA, the kernel's key id, and the Signer interface."""

from imaguard.keys.material import (
    Certificate,
    PrivateKey,
    PublicKey,
    describe_key,
    key_id_from_public_key,
    load_certificate,
    load_private_key,
    parse_certificate,
    parse_private_key,
)
from imaguard.keys.signer import CheckedSigner, LocalSigner, Signer, Verifier

__all__ = [
    "Certificate",
    "CheckedSigner",
    "LocalSigner",
    "PrivateKey",
    "PublicKey",
    "Signer",
    "Verifier",
    "describe_key",
    "key_id_from_public_key",
    "load_certificate",
    "load_private_key",
    "parse_certificate",
    "parse_private_key",
]
