"""Key fitness and the key id the kernel and evmctl match on."""

from __future__ import annotations

import datetime
import hashlib
import os
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from imaguard.cli.main import main
from imaguard.digests import HashAlgo
from imaguard.errors import TrustError, UsageError
from imaguard.keys import LocalSigner, Verifier, key_id_from_public_key, parse_certificate, parse_private_key


def _cert(key, *, skid=True, usage=True, skid_value=None):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imaguard test")])
    now = datetime.datetime.now(datetime.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(0x1234567890)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if skid:
        ext = (
            x509.SubjectKeyIdentifier(skid_value)
            if skid_value
            else x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        )
        b = b.add_extension(ext, critical=False)
    if usage is not None:
        b = b.add_extension(
            x509.KeyUsage(usage, False, False, False, False, not usage, False, False, False), critical=True
        )
    return b.sign(key, hashes.SHA256())


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(65537, 2048)


def test_key_id_is_sha1_of_subject_public_key_bits(rsa_key):
    # RFC 5280 method 1: what `openssl ... subjectKeyIdentifier=hash` and evmctl's calc_keyid_v2 compute.
    cert = _cert(rsa_key)
    der_spki = rsa_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    out = subprocess.run(
        ["openssl", "asn1parse", "-inform", "DER", "-strparse", "19", "-noout", "-out", "/dev/stdout"],
        input=der_spki, capture_output=True, check=True,
    ).stdout
    assert key_id_from_public_key(rsa_key.public_key()) == hashlib.sha1(out).digest()[-4:]
    assert parse_certificate(cert.public_bytes(serialization.Encoding.PEM), "c").key_id == (
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest[-4:]
    )


def test_key_id_follows_the_skid_even_when_not_a_hash(rsa_key):
    cert = _cert(rsa_key, skid_value=b"\x00" * 16 + b"\xde\xad\xbe\xef")
    parsed = parse_certificate(cert.public_bytes(serialization.Encoding.DER), "c")
    assert parsed.key_id == b"\xde\xad\xbe\xef"


def test_cert_without_subject_key_identifier_is_refused(rsa_key, tmp_path, capsys, monkeypatch):
    # The kernel matches a signature's key id against the SKID (or issuer+serial) only: a key id
    # made up from the public key would never be found, so every file signed for it is refused.
    cert = _cert(rsa_key, skid=False)
    message = (
        "ca.pem: certificate has no subject key identifier (at least 4 bytes); the kernel finds IMA keys by it,"
        " so no signature would ever match this certificate. Re-issue it with subjectKeyIdentifier=hash"
    )
    with pytest.raises(UsageError) as err:
        parse_certificate(cert.public_bytes(serialization.Encoding.PEM), "ca.pem")
    assert (str(err.value), err.value.reason) == (message, "unfit-key")
    # Through the CLI: one line, usage exit, nothing signed.
    (tmp_path / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    target = tmp_path / "f"
    target.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert main(["sign", "--key", "k.pem", "--cert", "ca.pem", str(target)]) == 2
    assert capsys.readouterr().err == f"imaguard: error: {message}\n"
    assert "security.ima" not in os.listxattr(target)


def test_cert_without_digital_signature_usage_is_refused(rsa_key):
    cert = _cert(rsa_key, usage=False)
    with pytest.raises(UsageError) as err:
        parse_certificate(cert.public_bytes(serialization.Encoding.PEM), "ca.pem")
    assert str(err.value) == "ca.pem: certificate key usage lacks digitalSignature, the kernel will not verify with it"
    assert err.value.reason == "unfit-key"


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (lambda: rsa.generate_private_key(65537, 1024), "k.pem: RSA-1024 is unfit for IMA (use RSA-2048, 3072 or 4096)"),
        (lambda: ec.generate_private_key(ec.SECP521R1()), "k.pem: EC curve secp521r1 is unfit for IMA (use P-256 or P-384)"),
        (ed25519.Ed25519PrivateKey.generate, "k.pem: Ed25519PrivateKey keys are unfit for IMA (use RSA or EC P-256/P-384)"),
    ],
)
def test_unfit_private_keys_are_refused(key, message):
    pem = key().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(UsageError) as err:
        parse_private_key(pem, "k.pem")
    assert str(err.value) == message


def test_encrypted_key_password_errors(rsa_key):
    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
    )
    assert parse_private_key(pem, "k", b"pw").public_key().public_numbers() == rsa_key.public_key().public_numbers()
    with pytest.raises(UsageError, match=r"^k: wrong password for the key$"):
        parse_private_key(pem, "k", b"nope")
    with pytest.raises(UsageError, match=r"^k: the key is encrypted; give its password$"):
        parse_private_key(pem, "k")


@pytest.mark.parametrize("algo", [HashAlgo.SHA256, HashAlgo.SHA512])
@pytest.mark.parametrize("curve", [None, ec.SECP256R1(), ec.SECP384R1()])
def test_sign_then_verify_and_failure_reasons(rsa_key, algo, curve):
    key = rsa_key if curve is None else ec.generate_private_key(curve)
    cert = parse_certificate(_cert(key).public_bytes(serialization.Encoding.DER), "c")
    signer = LocalSigner.from_key(key, cert)
    digest = hashlib.new(algo.kernel_name, b"content").digest()
    sig = signer.sign_digest(algo, digest)
    verifier = Verifier.of([cert])
    assert verifier.verify_digest(signer.key_id, algo, digest, sig) is cert
    other = hashlib.new(algo.kernel_name, b"contenT").digest()
    with pytest.raises(TrustError) as err:
        verifier.verify_digest(signer.key_id, algo, other, sig)
    assert err.value.reason == "bad-signature"
    with pytest.raises(TrustError) as err:
        verifier.verify_digest(b"\x00\x00\x00\x01", algo, digest, sig)
    assert err.value.reason == "unknown-key"
    assert str(err.value) == "no trusted certificate has key id 00000001"
