"""Throw-away test keys for a lab run, made on the host (fast) instead of in the TCG guest (slow).

The RSA-2048 certificate follows the IMA profile the kernel checks (``digitalSignature``, not a CA,
``subjectKeyIdentifier`` = SHA-1 of the public key, whose last 4 bytes are the signature keyid).
The EC P-256 certificate exists only to show that Debian 12's kernel refuses it.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

__all__ = ["LabKeys", "make_keys"]


@dataclass(frozen=True, slots=True)
class LabKeys:
    directory: Path

    @property
    def rsa_key(self) -> Path:
        return self.directory / "ima-rsa.key.pem"

    @property
    def rsa_cert_der(self) -> Path:
        return self.directory / "ima-rsa.cert.der"

    @property
    def rsa_cert_pem(self) -> Path:
        return self.directory / "ima-rsa.cert.pem"

    @property
    def ec_cert_der(self) -> Path:
        return self.directory / "ima-ec-p256.cert.der"

    @property
    def ec_key(self) -> Path:
        return self.directory / "ima-ec-p256.key.pem"


def _cert(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, cn: str) -> x509.Certificate:
    name = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "imaguard lab"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.ObjectIdentifier("1.3.6.1.5.5.7.3.3")]), critical=False)
        .sign(key, hashes.SHA256())
    )


def make_keys(directory: Path) -> LabKeys:
    """Write a fresh RSA-2048 signing key + certificate and an EC P-256 certificate into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    keys = LabKeys(directory)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_cert = _cert(rsa_key, "imaguard lab IMA signing key (RSA-2048)")
    keys.rsa_key.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    keys.rsa_key.chmod(0o600)
    keys.rsa_cert_der.write_bytes(rsa_cert.public_bytes(serialization.Encoding.DER))
    keys.rsa_cert_pem.write_bytes(rsa_cert.public_bytes(serialization.Encoding.PEM))
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_cert = _cert(ec_key, "imaguard lab IMA signing key (EC P-256)")
    keys.ec_key.write_bytes(
        ec_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    keys.ec_cert_der.write_bytes(ec_cert.public_bytes(serialization.Encoding.DER))
    return keys
