"""Password-encrypted private keys: PKCS#8 EncryptedPrivateKeyInfo with PBES2 (pure: bytes in, bytes out).

Why not ``serialization.BestAvailableEncryption``: cryptography 38 writes PBES2 with PBKDF2 at
2,048 iterations (its ``encryption_builder`` sets counts for OpenSSH and PKCS#12 only), far too few
for a CA key that may be copied off its medium. This module builds the same structure OpenSSL
writes for ``openssl pkcs8 -topk8 -v2 aes-256-cbc -v2prf hmacWithSHA256 -iter N``, so openssl,
cryptography and ``imaguard.keys.load_private_key`` read it as they read any encrypted key:

    EncryptedPrivateKeyInfo ::= SEQUENCE {                      RFC 5958 §3
        encryptionAlgorithm  SEQUENCE { id-PBES2, PBES2-params },   RFC 8018 A.4
        encryptedData        OCTET STRING }
    PBES2-params ::= SEQUENCE {
        keyDerivationFunc SEQUENCE { id-PBKDF2, PBKDF2-params },    RFC 8018 A.2
        encryptionScheme  SEQUENCE { aes256-CBC, OCTET STRING iv } } RFC 8018 C, NIST CSOR
    PBKDF2-params ::= SEQUENCE {
        salt OCTET STRING, iterationCount INTEGER,
        prf  SEQUENCE { id-hmacWithSHA256, NULL } }                 keyLength omitted, as OpenSSL does

The plaintext is the unencrypted PKCS#8 PrivateKeyInfo DER, padded with PKCS#7 (RFC 8018 §6.2.1).
Salt and IV are parameters so tests are deterministic; the caller draws them from ``os.urandom``.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "IV_SIZE",
    "PBKDF2_ITERATIONS",
    "PEM_LABEL",
    "SALT_SIZE",
    "Pbes2Parameters",
    "encrypt_private_key_info",
    "encrypted_pem",
]

# OWASP Password Storage Cheat Sheet (2023): 600,000 rounds for PBKDF2-HMAC-SHA256; opening a key costs ~0.2 s.
PBKDF2_ITERATIONS = 600_000
SALT_SIZE = 16  # what the ceremony draws: NIST SP 800-132 asks for 128 bits
_MIN_SALT_SIZE = 8  # RFC 8018 §4.1's minimum, and what OpenSSL 3.0 `pkcs8 -topk8` writes
IV_SIZE = 16  # the AES block size: CBC's IV is one block
PEM_LABEL = "ENCRYPTED PRIVATE KEY"  # RFC 7468 §11
_KEY_SIZE = 32  # AES-256

_ID_PBES2 = "1.2.840.113549.1.5.13"
_ID_PBKDF2 = "1.2.840.113549.1.5.12"
_ID_HMAC_WITH_SHA256 = "1.2.840.113549.2.9"
_ID_AES256_CBC = "2.16.840.1.101.3.4.1.42"


@dataclass(frozen=True, slots=True)
class Pbes2Parameters:
    """The random and tunable inputs of one encryption: the salt (16 bytes from the ceremony), a 16-byte IV,
    the PBKDF2 iteration count."""

    salt: bytes
    iv: bytes
    iterations: int = PBKDF2_ITERATIONS

    def __post_init__(self) -> None:
        if not _MIN_SALT_SIZE <= len(self.salt) <= 64:
            raise ValueError(f"PBKDF2 salt must be {_MIN_SALT_SIZE} to 64 bytes, not {len(self.salt)}")
        if len(self.iv) != IV_SIZE:
            raise ValueError(f"AES-CBC IV must be {IV_SIZE} bytes, not {len(self.iv)}")
        if not 1 <= self.iterations < 1 << 31:
            raise ValueError(f"PBKDF2 iteration count {self.iterations} is out of range")


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + _length(len(value)) + value


def _sequence(*items: bytes) -> bytes:
    return _tlv(0x30, b"".join(items))


def _octet_string(value: bytes) -> bytes:
    return _tlv(0x04, value)


def _integer(value: int) -> bytes:
    # Non-negative only: one leading zero byte keeps a set top bit from reading as negative.
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _oid(dotted: str) -> bytes:
    first, second, *rest = (int(arc) for arc in dotted.split("."))
    body = bytearray([40 * first + second])
    for arc in rest:  # base 128, most significant first, the high bit set on all but the last byte
        septets = max(1, (arc.bit_length() + 6) // 7)
        body += bytes(((arc >> 7 * i) & 0x7F) | (0x80 if i else 0) for i in reversed(range(septets)))
    return _tlv(0x06, bytes(body))


_NULL = b"\x05\x00"


def _algorithm_parameters(params: Pbes2Parameters) -> bytes:
    prf = _sequence(_oid(_ID_HMAC_WITH_SHA256), _NULL)
    kdf = _sequence(_oid(_ID_PBKDF2), _sequence(_octet_string(params.salt), _integer(params.iterations), prf))
    cipher = _sequence(_oid(_ID_AES256_CBC), _octet_string(params.iv))
    return _sequence(_oid(_ID_PBES2), _sequence(kdf, cipher))


def encrypt_private_key_info(private_key_info: bytes, password: bytes, params: Pbes2Parameters) -> bytes:
    """The DER EncryptedPrivateKeyInfo of an unencrypted PKCS#8 PrivateKeyInfo (DER), under ``password``."""
    if not password:
        raise ValueError("an empty password encrypts nothing")
    if private_key_info[:1] != b"\x30":
        raise ValueError("not a DER PKCS#8 PrivateKeyInfo (no SEQUENCE)")
    key = hashlib.pbkdf2_hmac("sha256", password, params.salt, params.iterations, _KEY_SIZE)
    padder = padding.PKCS7(algorithms.AES.block_size).padder()
    padded = padder.update(private_key_info) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(params.iv)).encryptor()
    encrypted = encryptor.update(padded) + encryptor.finalize()
    return _sequence(_algorithm_parameters(params), _octet_string(encrypted))


def encrypted_pem(private_key_info: bytes, password: bytes, params: Pbes2Parameters) -> bytes:
    """``encrypt_private_key_info`` as PEM (RFC 7468: 64-column base64 under ``ENCRYPTED PRIVATE KEY``)."""
    b64 = base64.b64encode(encrypt_private_key_info(private_key_info, password, params))
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return b"".join([f"-----BEGIN {PEM_LABEL}-----\n".encode(), *(line + b"\n" for line in lines),
                     f"-----END {PEM_LABEL}-----\n".encode()])
