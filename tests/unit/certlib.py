"""Certificates made on the fly for the keys tests: an IMA CA, certificates it issues (RSA, EC), a CA itself.

Built with the ceremony's own profiles (keyring-tools), so they carry what real ones carry
(SKID by hash, AKID of the CA, digitalSignature, CA:FALSE).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from imaguard.keys import parse_certificate
from imaguard_keyring.profiles import build_ca_certificate, build_ima_certificate

if TYPE_CHECKING:
    from pathlib import Path

    from imaguard.keys import Certificate

NOW = datetime.datetime(2026, 11, 22, tzinfo=datetime.UTC)


@dataclass(frozen=True)
class Pki:
    ca_key: rsa.RSAPrivateKey
    ca_cert: x509.Certificate
    rsa_cert: x509.Certificate
    ec_cert: x509.Certificate
    signing_ca_cert: x509.Certificate  # CA:TRUE with keyCertSign *and* digitalSignature: parses, is a CA

    def der(self, which: str) -> bytes:
        return getattr(self, which).public_bytes(serialization.Encoding.DER)

    def cert(self, which: str) -> Certificate:
        return parse_certificate(self.der(which), which)

    def write(self, directory: Path, which: str) -> Path:
        path = directory / f"{which}.der"
        path.write_bytes(self.der(which))
        return path


@cache
def pki() -> Pki:
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_cert = build_ca_certificate(ca_key, "imaguard test IMA CA", 3650, NOW)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_cert = build_ima_certificate(ca_cert=ca_cert, ca_key=ca_key, public_key=rsa_key.public_key(),
                                     common_name="ima rsa", days=365, now=NOW)  # fmt: skip
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_cert = build_ima_certificate(ca_cert=ca_cert, ca_key=ca_key, public_key=ec_key.public_key(),
                                    common_name="ima ec", days=365, now=NOW)  # fmt: skip
    signing_ca = (
        x509.CertificateBuilder().subject_name(_name("signing CA")).issuer_name(_name("signing CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(NOW).not_valid_after(NOW + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    return Pki(ca_key, ca_cert, rsa_cert, ec_cert, signing_ca)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def ca_pem(directory: Path) -> Path:
    path = directory / "ca.pem"
    path.write_bytes(pki().ca_cert.public_bytes(serialization.Encoding.PEM))
    return path
