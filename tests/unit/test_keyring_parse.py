"""Pure parsers of imaguard.ima.keyring: /proc/keys, KEYCTL_DESCRIBE, ECDSA support, add_key errors."""

from __future__ import annotations

import contextlib
import datetime
import errno

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from imaguard.errors import FormatError, HostStateError, TrustError, UnsupportedError
from imaguard.ima import keyring

# Lines as security/keys/proc.c prints them (6.1): note the type cut to 9 characters.
PROC_KEYS = """\
0a3a6a1d I--Q---     1 perm 1f0b0000     0     0 keyring   _ima: 1
1b9e4c27 I------     1 perm 1f030000     0     0 asymmetri imaguard lab IMA signing key (RSA-2048): 9d1c0e2aa7cd27be2f0bd1c4ef44cfc65f9bd91c: X509.rsa 5f9bd91c []
2c1f11e4 I------     2 perm 1f0f0000     0     0 keyring   .builtin_trusted_keys: 1
33c6aa05 I------     1 perm 1f0b0000     0     0 keyring   .ima: empty
3dc2f2f1 I--Q---     5 perm 3f030000     0     0 keyring   _uid.0: 1
"""


def test_parse_proc_keys_fields() -> None:
    keys = keyring.parse_proc_keys(PROC_KEYS)
    assert [k.serial for k in keys] == [0x0A3A6A1D, 0x1B9E4C27, 0x2C1F11E4, 0x33C6AA05, 0x3DC2F2F1]
    ima = keys[0]
    assert (ima.type, ima.description, ima.summary, ima.perm, ima.flags) == (
        "keyring",
        "_ima",
        "1",
        0x1F0B0000,
        "I--Q---",
    )
    cert = keys[1]
    assert cert.type == "asymmetri"
    assert cert.description == "imaguard lab IMA signing key (RSA-2048): 9d1c0e2aa7cd27be2f0bd1c4ef44cfc65f9bd91c"
    assert cert.summary == "X509.rsa 5f9bd91c []"


def test_trusted_ima_keyring_detected_and_explained() -> None:
    keys = keyring.parse_proc_keys(PROC_KEYS)
    found = keyring.trusted_ima_keyring(keys)
    assert found is not None
    assert found.serial == 0x33C6AA05
    text = keyring.trusted_ima_requirement(found)
    assert ".builtin_trusted_keys" in text
    assert "CONFIG_INTEGRITY_TRUSTED_KEYRING" in text


def test_no_trusted_keyring_on_debian_like_kernel() -> None:
    assert keyring.trusted_ima_keyring(keyring.parse_proc_keys(PROC_KEYS.replace(".ima: empty", "_x: empty"))) is None


@pytest.mark.parametrize(
    "line",
    ["0a3a6a1d I--Q--- 1 perm 1f0b0000 0 0 keyring", "zz3a6a1d I--Q--- 1 perm 1f0b0000 0 0 keyring _ima: 1"],
)
def test_parse_proc_keys_rejects_bad_lines(line: str) -> None:
    with pytest.raises(FormatError, match="/proc/keys line 1"):
        keyring.parse_proc_keys(line)


@given(st.text(max_size=300))
def test_parse_proc_keys_only_raises_format_error(text: str) -> None:
    with contextlib.suppress(FormatError):
        keyring.parse_proc_keys(text)


def test_parse_key_description() -> None:
    desc = keyring.parse_key_description(b"asymmetric;0;0;3f010000;lab: 9d1c\0")
    assert desc == keyring.KeyDescription("asymmetric", 0, 0, 0x3F010000, "lab: 9d1c")
    with pytest.raises(FormatError):
        keyring.parse_key_description(b"keyring;0;0")


CRYPTO_WITH_ECDSA = (
    "name         : ecdsa-nist-p256\ndriver       : ecdsa-nist-p256-generic\nmodule       : ecdsa_generic\n"
)


@pytest.mark.parametrize(
    ("proc_crypto", "config", "expected"),
    [
        (CRYPTO_WITH_ECDSA, None, True),
        ("name : sha256\n", "CONFIG_CRYPTO_RSA=y\n# CONFIG_CRYPTO_ECDSA is not set\n", False),
        ("name : sha256\n", "CONFIG_CRYPTO_ECDSA=m\n", True),
        ("name : sha256\n", "CONFIG_CRYPTO_ECDSA=y\n", True),
        ("name : sha256\n", None, None),
        ("name : sha256\n", "CONFIG_CRYPTO_RSA=y\n", None),
    ],
)
def test_ecdsa_support(proc_crypto: str, config: str | None, expected: bool | None) -> None:
    assert keyring.ecdsa_support(proc_crypto, config) is expected


def _cert(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def test_certificate_is_ec() -> None:
    assert keyring.certificate_is_ec(_cert(ec.generate_private_key(ec.SECP256R1())))
    assert not keyring.certificate_is_ec(_cert(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    with pytest.raises(FormatError, match=r"not a DER X\.509 certificate"):
        keyring.certificate_is_ec(b"\x30\x03\x02\x01\x01")


@pytest.mark.parametrize("err", [errno.ENOENT, errno.EBADMSG, errno.ENOPKG])
def test_ec_add_key_errors_say_no_ecdsa(err: int) -> None:
    exc = keyring.add_key_error(err, is_ec=True, keyring=0x1234)
    assert isinstance(exc, UnsupportedError)
    assert "CONFIG_CRYPTO_ECDSA" in str(exc)
    assert exc.reason == "no-ecdsa"


def test_rsa_add_key_errors_are_not_blamed_on_ecdsa() -> None:
    assert isinstance(keyring.add_key_error(errno.EBADMSG, is_ec=False, keyring=1), FormatError)
    assert isinstance(keyring.add_key_error(errno.EKEYREJECTED, is_ec=False, keyring=1), TrustError)
    other = keyring.add_key_error(errno.ENOENT, is_ec=False, keyring=1)
    assert isinstance(other, HostStateError)
    assert other.errno == errno.ENOENT
    assert "CONFIG_CRYPTO_ECDSA" not in str(other)
