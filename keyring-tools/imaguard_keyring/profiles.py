"""Certificate profiles of the key ceremony: the IMA CA and the IMA signing certificate.

What the kernel reads from an X.509 certificate (crypto/asymmetric_keys/x509_cert_parser.c):
the subject key identifier (the key's ``id:``, matched on its tail by ``asymmetric_verify``), the
authority key identifier (how ``restrict_link_by_signature`` finds the issuing CA in a trusted
keyring), and since Linux 6.4 basicConstraints and keyUsage:

- keys added to a restricted ``.ima`` keyring (CONFIG_INTEGRITY_TRUSTED_KEYRING) go through
  ``restrict_link_by_digsig``: digitalSignature required, CA:TRUE and keyCertSign refused;
- with CONFIG_INTEGRITY_CA_MACHINE_KEYRING a MOK key reaches ``.machine`` only as a CA
  (CA:TRUE + keyCertSign), and with ..._MAX only without digitalSignature (``restrict_link_by_ca``).

The kernel ignores validity dates and extendedKeyUsage; the profile still sets both for the
tools that read them (openssl, audits). codeSigning is the purpose closest to "signs files".

Both profiles use RFC 5280 method 1 for the SKID (SHA-1 of the subjectPublicKey bits), which is
what evmctl derives as the key id when it has no certificate (``calc_keyid_v2``), so imaguard,
evmctl and the kernel agree on the key id.
"""

from __future__ import annotations

import datetime
import enum
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from imaguard.errors import UsageError

if TYPE_CHECKING:
    from imaguard.keys.material import PrivateKey, PublicKey

__all__ = [
    "CA_DEFAULT_DAYS",
    "CERT_DEFAULT_DAYS",
    "MAX_DAYS",
    "KeyType",
    "build_ca_certificate",
    "build_ima_certificate",
    "check_ca_validity",
    "check_ima_profile",
    "issued_by",
    "key_type_of",
]

CA_DEFAULT_DAYS = 3650
CERT_DEFAULT_DAYS = 730
MAX_DAYS = 36500


class KeyType(enum.Enum):
    """Key types the kernel can verify IMA signatures with (EC needs CONFIG_CRYPTO_ECDSA)."""

    RSA2048 = "rsa2048"
    RSA3072 = "rsa3072"
    RSA4096 = "rsa4096"
    P256 = "p256"
    P384 = "p384"

    @property
    def is_ec(self) -> bool:
        return self in (KeyType.P256, KeyType.P384)

    def generate(self) -> PrivateKey:
        if self is KeyType.P256:
            return ec.generate_private_key(ec.SECP256R1())
        if self is KeyType.P384:
            return ec.generate_private_key(ec.SECP384R1())
        return rsa.generate_private_key(65537, int(self.value[3:]))


def key_type_of(key: PublicKey | PrivateKey) -> KeyType:
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return KeyType(f"rsa{key.key_size}")
    return KeyType.P384 if key.curve.name == "secp384r1" else KeyType.P256


def _signature_hash(key: PrivateKey) -> hashes.HashAlgorithm:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1":
        return hashes.SHA384()
    return hashes.SHA256()


def check_common_name(common_name: str) -> str:
    """A subject common name: 1 to 64 printable characters (no control characters, no bytes that
    are not UTF-8, which argv carries as surrogates); UsageError ``bad-subject`` otherwise."""
    if not common_name or len(common_name) > 64:
        raise UsageError("the subject common name must be 1 to 64 characters", reason="bad-subject")
    if not common_name.isprintable():  # control characters; undecodable bytes are surrogates, not printable
        raise UsageError("the subject common name must be printable UTF-8 text (no control characters)",
                         reason="bad-subject")
    return common_name


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, check_common_name(common_name))])


def ca_subject_key_identifier(ca_cert: x509.Certificate) -> x509.SubjectKeyIdentifier:
    """The CA's subjectKeyIdentifier, which an issued certificate's authorityKeyIdentifier names (the
    kernel finds the CA of an IMA certificate by it); UsageError ``not-a-ca`` when it has none."""
    try:
        return ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound as exc:
        raise UsageError(f"the CA certificate {ca_cert.subject.rfc4514_string()} has no subjectKeyIdentifier: the "
                         "kernel finds an IMA certificate's CA by it; use a CA made by `imaguard-keyring ca create`",
                         reason="not-a-ca") from exc


def _validity(now: datetime.datetime, days: int) -> tuple[datetime.datetime, datetime.datetime]:
    if not 1 <= days <= MAX_DAYS:
        raise UsageError(f"--days must be between 1 and {MAX_DAYS}", reason="bad-validity")
    # cryptography 38 takes naive datetimes as UTC; whole seconds, as X.509 encodes them.
    start = now.astimezone(datetime.UTC).replace(tzinfo=None, microsecond=0)
    return start, start + datetime.timedelta(days=days)


def _usage(*, digital_signature: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
        encipher_only=False, decipher_only=False,
    )


def build_ca_certificate(key: PrivateKey, common_name: str, days: int, now: datetime.datetime) -> x509.Certificate:
    """Self-signed IMA CA: CA:TRUE pathlen 0 and keyCertSign+cRLSign (both critical), no digitalSignature."""
    name = _name(common_name)
    start, end = _validity(now, days)
    skid = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(skid, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(skid), critical=False)
        .sign(key, _signature_hash(key))
    )


def check_ca_validity(ca_cert: x509.Certificate, now: datetime.datetime) -> None:
    """Refuse to issue from a CA outside its validity at ``now``: a certificate from a CA not valid yet
    (made on a machine whose clock was wrong) would start before it (openssl: "not yet valid"); from
    an expired CA no --days can help. UsageError ``ca-not-yet-valid`` / ``ca-expired``."""
    at = now.astimezone(datetime.UTC).replace(tzinfo=None, microsecond=0)
    if at < ca_cert.not_valid_before:
        raise UsageError(f"the CA is valid from {ca_cert.not_valid_before:%Y-%m-%d %H:%M:%S}Z, not yet now "
                         f"({at:%Y-%m-%d %H:%M:%S}Z): check this machine's clock, or the one that made the CA",
                         reason="ca-not-yet-valid")
    if at >= ca_cert.not_valid_after:
        raise UsageError(f"the CA expired on {ca_cert.not_valid_after:%Y-%m-%d}: create a new CA",
                         reason="ca-expired")


def build_ima_certificate(
    *,
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    public_key: PublicKey,
    common_name: str,
    days: int,
    now: datetime.datetime,
) -> x509.Certificate:
    """IMA signing certificate: digitalSignature only (critical), CA:FALSE, SKID method 1, AKID of the CA."""
    start, end = _validity(now, days)
    check_ca_validity(ca_cert, now)
    if end > ca_cert.not_valid_after:
        raise UsageError(
            f"the certificate would outlive its CA (CA valid until {ca_cert.not_valid_after:%Y-%m-%d}); "
            "use fewer --days or a new CA", reason="bad-validity")
    ca_skid = ca_subject_key_identifier(ca_cert)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_skid), critical=False)
        .sign(ca_key, _signature_hash(ca_key))
    )


def issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    """True if ``ca_cert``'s key signed ``cert`` and the names chain (cryptography 38 has no helper)."""
    if cert.issuer != ca_cert.subject or cert.signature_hash_algorithm is None:
        return False
    public = ca_cert.public_key()
    try:
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(),
                          cert.signature_hash_algorithm)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


def check_ima_profile(cert: x509.Certificate, source: str) -> None:
    """Refuse a certificate a restricted ``.ima`` keyring (Linux >= 6.4) would refuse."""
    ext = cert.extensions
    try:
        usage = ext.get_extension_for_class(x509.KeyUsage).value
        constraints = ext.get_extension_for_class(x509.BasicConstraints).value
        ext.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound as exc:
        raise UsageError(f"{source}: not an IMA signing certificate (needs keyUsage, basicConstraints and a "
                         "subject key identifier)", reason="unfit-certificate") from exc
    if not usage.digital_signature or usage.key_cert_sign or constraints.ca:
        raise UsageError(
            f"{source}: not an IMA signing certificate (needs digitalSignature, CA:FALSE, no keyCertSign)",
            reason="unfit-certificate")
