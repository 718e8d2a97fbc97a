"""TPM 2.0 quotes over PCR 10: parse the attestation and verify it against an AK public key (pure).

Structures (TCG TPM 2.0 Library, Part 2, r1.59; all integers big-endian):
``TPMS_ATTEST`` = magic (``TPM_GENERATED_VALUE`` 0xff544347) | type (``TPM_ST_ATTEST_QUOTE`` 0x8018) |
``TPM2B_NAME`` qualifiedSigner | ``TPM2B_DATA`` extraData | ``TPMS_CLOCK_INFO`` (u64 clock, u32
resetCount, u32 restartCount, u8 safe) | u64 firmwareVersion | ``TPMS_QUOTE_INFO`` =
``TPML_PCR_SELECTION`` (u32 count; each u16 hash, u8 sizeofSelect, bitmap) + ``TPM2B_DIGEST`` pcrDigest.
The pcrDigest is H(selected PCR values, in selection order); the AK signs the whole TPMS_ATTEST.

The qualifying data (extraData) is SHA-256 of the report's nonce string, so any nonce fits the
TPM's 64-byte limit. Trust in the AK itself (credential activation against an EK certificate) is
out of scope: the quote proves the log to whoever trusts the AK key it names — a verifier that
recorded the host's AK pins it (``ak_public_key``/``ak_fingerprint``, ``report verify --ak``).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from imaguard.errors import FormatError, TrustError

__all__ = [
    "TPM_ALG_SHA1",
    "TPM_ALG_SHA256",
    "Quote",
    "QuoteInfo",
    "ak_fingerprint",
    "ak_public_key",
    "nonce_data",
    "parse_attest",
    "pcr_digest",
    "verify_quote",
]

TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018
TPM_ALG_SHA1 = 0x0004
TPM_ALG_SHA256 = 0x000B
_ALG_NAMES = {TPM_ALG_SHA1: "sha1", TPM_ALG_SHA256: "sha256", 0x000C: "sha384", 0x000D: "sha512"}
_MAX_ATTEST = 4096  # sizeof(TPMS_ATTEST) is far below this


@dataclass(frozen=True, slots=True)
class QuoteInfo:
    """The parts of a TPMS_ATTEST a verifier decides on."""

    qualified_signer: bytes
    extra_data: bytes
    clock: int
    reset_count: int
    restart_count: int
    firmware_version: int
    selection: tuple[tuple[str, tuple[int, ...]], ...]  # (bank, PCR indexes)
    pcr_digest: bytes


@dataclass(frozen=True, slots=True)
class Quote:
    """What ``report/quote.py`` hands the report: the signed message, its signature, the AK public key."""

    attest: bytes
    signature: bytes  # raw: RSASSA-PKCS1-v1_5 or DER ECDSA, SHA-256
    ak_public_pem: bytes
    pcr_bank: str  # the bank quoted ("sha256")
    pcr_value: bytes  # the PCR 10 value read from the TPM in the same breath


def nonce_data(nonce: str) -> bytes:
    """The qualifying data handed to ``TPM2_Quote`` for a report nonce."""
    return hashlib.sha256(nonce.encode()).digest()


def pcr_digest(bank: str, values: list[bytes]) -> bytes:
    """H_bank(PCR values concatenated), what the TPM puts into pcrDigest (hash of the quote's bank)."""
    return hashlib.new(bank, b"".join(values)).digest()


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise FormatError("TPMS_ATTEST is truncated", offset=self.pos, reason="bad-quote")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        value: int = struct.unpack(fmt, self.take(size))[0]
        return value

    def sized(self) -> bytes:
        return self.take(self.u(">H"))


def parse_attest(data: bytes) -> QuoteInfo:
    """Parse a quote's TPMS_ATTEST; FormatError (reason ``bad-quote``) if it is not one."""
    if len(data) > _MAX_ATTEST:
        raise FormatError(f"TPMS_ATTEST of {len(data)} bytes is too large", reason="bad-quote")
    r = _Reader(data)
    if r.u(">I") != TPM_GENERATED_VALUE:
        raise FormatError("not a TPM-generated attestation (magic)", offset=0, reason="bad-quote")
    kind = r.u(">H")
    if kind != TPM_ST_ATTEST_QUOTE:
        raise FormatError(f"attestation type 0x{kind:04x} is not a quote", offset=4, reason="bad-quote")
    signer = r.sized()
    extra = r.sized()
    clock, reset, restart = r.u(">Q"), r.u(">I"), r.u(">I")
    r.take(1)  # safe
    firmware = r.u(">Q")
    selection: list[tuple[str, tuple[int, ...]]] = []
    for _ in range(r.u(">I")):
        alg = r.u(">H")
        bitmap = r.take(r.u(">B"))
        pcrs = tuple(i * 8 + b for i, byte in enumerate(bitmap) for b in range(8) if byte >> b & 1)
        selection.append((_ALG_NAMES.get(alg, f"alg-0x{alg:04x}"), pcrs))
    digest = r.sized()
    if r.pos != len(data):
        raise FormatError("trailing bytes after TPMS_ATTEST", offset=r.pos, reason="bad-quote")
    return QuoteInfo(signer, extra, clock, reset, restart, firmware, tuple(selection), digest)


def ak_public_key(pem: bytes) -> bytes:
    """The AK's SubjectPublicKeyInfo (DER) from its PEM: what two AKs are compared by."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise FormatError(f"the AK public key is not a PEM public key ({exc})", reason="bad-quote") from exc
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def ak_fingerprint(pem: bytes) -> str:
    """``sha256:<hex>`` of the AK's SubjectPublicKeyInfo: a short name to record and compare."""
    return "sha256:" + hashlib.sha256(ak_public_key(pem)).hexdigest()


def _check_signature(attest: bytes, signature: bytes, ak_public_pem: bytes) -> None:
    key = serialization.load_der_public_key(ak_public_key(ak_public_pem))
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, attest, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, attest, ec.ECDSA(hashes.SHA256()))
        else:
            raise FormatError(f"AK key type {type(key).__name__} is not RSA or EC", reason="bad-quote")
    except InvalidSignature:
        raise TrustError(
            "the TPM quote's signature does not verify with the AK public key in the report", reason="quote-signature"
        ) from None


def verify_quote(quote: Quote, *, nonce: str, expected_pcr10: bytes) -> QuoteInfo:
    """Check signature, nonce, selection (PCR 10 only) and that pcrDigest covers ``expected_pcr10``.

    ``expected_pcr10`` is the replayed log's PCR 10 in the quote's bank. TrustError names what failed.
    """
    _check_signature(quote.attest, quote.signature, quote.ak_public_pem)
    info = parse_attest(quote.attest)
    if info.extra_data != nonce_data(nonce):
        raise TrustError("the TPM quote was made for another nonce (qualifying data differs)", reason="quote-nonce")
    if info.selection != ((quote.pcr_bank, (10,)),):
        raise TrustError(
            f"the TPM quote selects {info.selection}, expected only PCR 10 of {quote.pcr_bank}",
            reason="quote-selection",
        )
    if info.pcr_digest != pcr_digest(quote.pcr_bank, [quote.pcr_value]):
        raise TrustError(
            "the TPM quote's PCR digest does not match the PCR 10 value in the report", reason="quote-pcr-digest"
        )
    if quote.pcr_value != expected_pcr10:
        raise TrustError(
            f"PCR 10 ({quote.pcr_bank}) in the quote differs from the replayed measurement log",
            reason="quote-log-mismatch",
        )
    return info
