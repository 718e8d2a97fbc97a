"""Private keys and X.509 certificates fit for IMA, and the key id the kernel matches on.

Key id: the kernel finds the verifying key by ``id:<8 hex>`` (``asymmetric_verify`` in
security/integrity/digsig_asymmetric.c), a partial match on the tail of the certificate's
subject key identifier. evmctl (``calc_keyid_v2``) uses the last 4 bytes of
SHA-1(subjectPublicKey) when it has no certificate; that equals the SKID tail whenever the SKID
was made by RFC 5280 method 1 (``subjectKeyIdentifier=hash``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from imaguard.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "MAX_KEY_FILE_SIZE",
    "Certificate",
    "PrivateKey",
    "PublicKey",
    "describe_key",
    "key_id_from_public_key",
    "load_certificate",
    "load_private_key",
    "parse_certificate",
    "parse_private_key",
    "read_small_file",
]

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

# Key and certificate files are small; a limit keeps a wrong path (a disk image) from being slurped.
MAX_KEY_FILE_SIZE = 1 << 20

_RSA_BITS = (2048, 3072, 4096)
_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384"}


def describe_key(key: PublicKey | PrivateKey) -> str:
    """``RSA-2048``, ``EC P-256``…: how errors and reports name a key."""
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return f"RSA-{key.key_size}"
    return f"EC {_CURVES.get(key.curve.name, key.curve.name)}"


def _check_fit(key: object, source: str) -> PublicKey | PrivateKey:
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if key.key_size not in _RSA_BITS:
            raise UsageError(
                f"{source}: RSA-{key.key_size} is unfit for IMA (use RSA-2048, 3072 or 4096)",
                reason="unfit-key",
            )
        return key
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if key.curve.name not in _CURVES:
            raise UsageError(
                f"{source}: EC curve {key.curve.name} is unfit for IMA (use P-256 or P-384)",
                reason="unfit-key",
            )
        return key
    raise UsageError(
        f"{source}: {type(key).__name__.lstrip('_')} keys are unfit for IMA (use RSA or EC P-256/P-384)",
        reason="unfit-key",
    )


def key_id_from_public_key(key: PublicKey) -> bytes:
    """Last 4 bytes of SHA-1 over the subjectPublicKey bit string, as evmctl computes it."""
    if isinstance(key, rsa.RSAPublicKey):
        bits = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    else:
        bits = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return hashlib.sha1(bits).digest()[-4:]  # noqa: S324 - the format defines SHA-1 here


@dataclass(frozen=True, slots=True)
class Certificate:
    """An X.509 certificate whose key is fit for IMA; ``key_id`` is the 4 bytes the kernel matches."""

    cert: x509.Certificate
    public_key: PublicKey
    key_id: bytes
    source: str

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def subject(self) -> str:
        return self.cert.subject.rfc4514_string()

    @property
    def key_kind(self) -> str:
        return describe_key(self.public_key)


_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]{1,40})-----")


def not_a_certificate(data: bytes, source: str) -> UsageError:
    """What to tell a user whose certificate does not parse: what the file is when PEM says it
    (a key given as --cert is the usual mistake), never the parser's internal error dump."""
    label = _PEM_LABEL.search(data)
    if label is not None and b"PRIVATE KEY" in label.group(1):
        return UsageError(f"{source}: a private key, not a certificate (give its X.509 certificate)",
                          reason="bad-certificate")
    if label is not None and label.group(1) != b"CERTIFICATE":
        kind = label.group(1).decode()
        return UsageError(f"{source}: a PEM {kind}, not an X.509 certificate", reason="bad-certificate")
    what = "a damaged PEM certificate" if label is not None else "not a PEM or DER X.509 certificate"
    return UsageError(f"{source}: {what}", reason="bad-certificate")


def parse_certificate(data: bytes, source: str) -> Certificate:
    """Parse a PEM or DER certificate and check it is usable to verify IMA signatures."""
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            cert = x509.load_pem_x509_certificate(data)
        else:
            cert = x509.load_der_x509_certificate(data)
        public = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise not_a_certificate(data, source) from exc
    checked = _check_fit(public, source)
    assert isinstance(checked, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)  # noqa: S101 - narrowing
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.digital_signature:
        raise UsageError(
            f"{source}: certificate key usage lacks digitalSignature, the kernel will not verify with it",
            reason="unfit-key",
        )
    # The kernel finds the key of a signature v2 by the last 4 bytes of one of the certificate's
    # ids: issuer+serial, or the subject key identifier. Without a SKID no signature's key id can
    # ever match it (evmctl's public-key hash is a SKID convention, not something the kernel
    # computes): files signed for it would be refused under appraisal, a lockout.
    try:
        skid = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        skid = b""
    if len(skid) < 4:
        raise UsageError(
            f"{source}: certificate has no subject key identifier (at least 4 bytes); the kernel finds IMA keys"
            " by it, so no signature would ever match this certificate. Re-issue it with"
            " subjectKeyIdentifier=hash",
            reason="unfit-key",
        )
    return Certificate(cert, checked, skid[-4:], source)


def _is_encrypted(loader: Callable[..., object], data: bytes) -> bool:
    """Ask the parser itself: PEM says ENCRYPTED in its header, DER PKCS#8 does not."""
    try:
        loader(data, password=None)
    except TypeError:
        return True
    except (ValueError, UnsupportedAlgorithm):
        return False
    return False


def parse_private_key(data: bytes, source: str, password: bytes | None = None) -> PrivateKey:
    """Parse a PEM or DER private key (PKCS#1, SEC1 or PKCS#8, optionally encrypted)."""
    loader = (
        serialization.load_pem_private_key if b"-----BEGIN" in data else serialization.load_der_private_key
    )
    try:
        key = loader(data, password=password)
    except TypeError as exc:
        # cryptography raises TypeError for "password given but not encrypted" and the reverse.
        if password is None:
            raise UsageError(f"{source}: the key is encrypted; give its password", reason="key-password") from exc
        if _is_encrypted(loader, data):  # cryptography takes an empty password for none at all
            what = "wrong password for the key" if password else "the key is encrypted and the password given is empty"
            raise UsageError(f"{source}: {what}", reason="key-password") from exc
        raise UsageError(f"{source}: the key is not encrypted but a password was given", reason="key-password") from exc
    except ValueError as exc:
        if password is not None and _is_encrypted(loader, data):
            raise UsageError(f"{source}: wrong password for the key", reason="key-password") from exc
        label = _PEM_LABEL.search(data)
        if label is not None and b"CERTIFICATE" in label.group(1):
            raise UsageError(f"{source}: a certificate, not a private key", reason="bad-key") from exc
        raise UsageError(f"{source}: not a PEM or DER private key", reason="bad-key") from exc
    except UnsupportedAlgorithm as exc:
        raise UsageError(f"{source}: unsupported key algorithm ({exc})", reason="unfit-key") from exc
    checked = _check_fit(key, source)
    assert isinstance(checked, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)  # noqa: S101 - narrowing
    return checked


def read_small_file(
    path: Path, what: str, limit: int = MAX_KEY_FILE_SIZE, reason: str = "bad-key", *, unreadable: str = "unreadable"
) -> bytes:
    """Read a key, certificate or list, refusing anything over ``limit`` (a wrong path to a disk image).

    ``reason`` is the reason code of a file too large, ``unreadable`` of one that cannot be read.
    """
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read {what}: {exc.strerror}", reason=unreadable) from exc
    if len(data) > limit:
        raise UsageError(f"{path}: larger than {limit} bytes, not a {what}", reason=reason)
    return data


def load_certificate(path: Path) -> Certificate:
    return parse_certificate(read_small_file(path, "certificate"), str(path))


def load_private_key(path: Path, password: bytes | None = None, cert: Certificate | None = None) -> PrivateKey:
    """Load a signing key; with ``cert``, refuse a certificate that belongs to another key."""
    key = parse_private_key(read_small_file(path, "private key"), str(path), password)
    if cert is not None:
        pub = serialization.PublicFormat.SubjectPublicKeyInfo
        mine = key.public_key().public_bytes(serialization.Encoding.DER, pub)
        theirs = cert.public_key.public_bytes(serialization.Encoding.DER, pub)
        if mine != theirs:
            raise UsageError(
                f"{cert.source}: certificate does not belong to the key {path}", reason="key-cert-mismatch"
            )
    return key
