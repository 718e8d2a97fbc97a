"""The revocation list: IMA key ids that ``verify``, ``enroll`` and reports refuse.

Pure: bytes in, typed values out. The list travels from the offline CA to every host like a
signature bundle, so it is a DSSE envelope signed by the IMA CA key (the authority that issued the
keys is the one that may withdraw them). An unsigned list could be truncated in transit, which
would silently un-revoke a key; a signed one can only be replaced by a newer signed one.

Rules a list obeys (checked when it is built and when it is parsed):

- entries are 4-byte IMA key ids (the tail of the certificate's subject key identifier, what
  the kernel and a ``security.ima`` signature carry), unique, kept sorted;
- ``serial`` grows by one with every change; a host keeps the highest serial it accepted and
  refuses an older list (``check_successor``), so an old list cannot be replayed;
- revocation is permanent: a successor keeps every key id of its predecessor.

A 4-byte id can collide (about 1 in 2**32 per pair of keys): revoking one then also refuses the
other. That is fail-closed; ``rotate`` never gives a successor the old key's or the CA's id.

Payload (JSON, keys sorted)::

    {"format": 1, "type": "imaguard-revocation-list", "serial": 3,
     "issued": "2026-11-22T03:00:00Z", "issuer_key_id": "1a2b3c4d",
     "revoked": [{"key_id": "5e6f7a8b", "revoked_at": "2026-11-22T03:00:00Z",
                  "reason": "key-compromise", "subject": "CN=ima-2026"}]}
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from imaguard import strictjson
from imaguard.errors import FormatError, TrustError, UsageError
from imaguard.keys.dsse import Envelope, sign_envelope, verify_envelope
from imaguard.keys.material import Certificate, PrivateKey, key_id_from_public_key, not_a_certificate

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = [
    "FORMAT_VERSION",
    "MAX_REVOCATION_LIST_SIZE",
    "PAYLOAD_TYPE",
    "RevocationList",
    "RevokedKey",
    "check_reason",
    "parse_ca_certificate",
    "parse_key_id",
    "revoked_set",
    "sign_revocation_list",
    "verify_revocation_list",
]

PAYLOAD_TYPE = "application/vnd.imaguard.revocation-list+json"
FORMAT_VERSION = 1
_TYPE = "imaguard-revocation-list"
# A list names key ids, a few dozen bytes each; a megabyte is tens of thousands of keys.
MAX_REVOCATION_LIST_SIZE = 1 << 20
_MAX_REASON = 200
_KEY_ID = re.compile(r"[0-9a-f]{8}")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_TOP_KEYS = {"format", "type", "serial", "issued", "issuer_key_id", "revoked"}
_ENTRY_KEYS = {"key_id", "revoked_at", "reason", "subject"}


def parse_key_id(text: str, source: str = "key id") -> bytes:
    """``1a2b3c4d`` (8 hex digits, the IMA key id) to 4 bytes; a 40-hex SKID gives its tail."""
    cleaned = text.strip().lower().replace(":", "")
    if cleaned.startswith("0x"):
        cleaned = cleaned[2:]
    if len(cleaned) == 40 and all(c in "0123456789abcdef" for c in cleaned):
        cleaned = cleaned[-8:]  # a whole SHA-1 subject key identifier: the kernel matches its tail
    if not _KEY_ID.fullmatch(cleaned):
        raise UsageError(f"{source}: {text!r} is not an IMA key id (8 hex digits, e.g. 1a2b3c4d)",
                         reason="bad-key-id")
    return bytes.fromhex(cleaned)


def _format_time(when: datetime.datetime) -> str:
    if when.tzinfo is None:
        raise ValueError("revocation times must be timezone-aware")
    return when.astimezone(datetime.UTC).strftime(_TIME_FORMAT)


def _parse_time(text: object, where: str) -> datetime.datetime:
    if not isinstance(text, str):
        raise FormatError(f"{where}: time must be a string like 2026-11-22T03:00:00Z")
    try:
        return datetime.datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=datetime.UTC)
    except ValueError as exc:
        raise FormatError(f"{where}: {text!r} is not a time like 2026-11-22T03:00:00Z") from exc


def _check_reason(reason: str, where: str, error: type[UsageError] | type[FormatError]) -> None:
    if len(reason) > _MAX_REASON or any(ord(c) < 0x20 or ord(c) == 0x7F for c in reason):
        raise error(f"{where}: reason must be one line of at most {_MAX_REASON} printable characters")


def check_reason(reason: str, where: str) -> None:
    """UsageError unless ``reason`` can be kept in a list: checked before a CA password is asked for."""
    _check_reason(reason, where, UsageError)


@dataclass(frozen=True, slots=True)
class RevokedKey:
    """One revoked IMA key id, when, and why (free text for people, never parsed)."""

    key_id: bytes
    revoked_at: datetime.datetime
    reason: str = ""
    subject: str = ""

    def __post_init__(self) -> None:
        if len(self.key_id) != 4:
            raise ValueError(f"an IMA key id is 4 bytes, got {len(self.key_id)}")
        if self.revoked_at.tzinfo is None:
            raise ValueError("revoked_at must be timezone-aware")
        _check_reason(self.reason, f"key {self.key_id.hex()}", UsageError)
        _check_reason(self.subject, f"key {self.key_id.hex()} subject", UsageError)

    def to_doc(self) -> dict[str, str]:
        doc = {"key_id": self.key_id.hex(), "revoked_at": _format_time(self.revoked_at), "reason": self.reason}
        if self.subject:
            doc["subject"] = self.subject
        return doc


@dataclass(frozen=True, slots=True)
class RevocationList:
    """A verified or freshly built revocation list; entries sorted by key id, no duplicates."""

    issuer_key_id: bytes
    serial: int
    issued: datetime.datetime
    entries: tuple[RevokedKey, ...] = ()
    _index: dict[bytes, RevokedKey] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.issuer_key_id) != 4:
            raise ValueError("issuer_key_id is a 4-byte IMA key id")
        if self.serial < 0:
            raise ValueError("serial must not be negative")
        if self.issued.tzinfo is None:
            raise ValueError("issued must be timezone-aware")
        ids = [e.key_id for e in self.entries]
        if ids != sorted(ids) or len(set(ids)) != len(ids):
            raise ValueError("entries must be sorted by key id and unique")
        object.__setattr__(self, "_index", {e.key_id: e for e in self.entries})

    @classmethod
    def empty(cls, issuer_key_id: bytes, now: datetime.datetime) -> RevocationList:
        return cls(issuer_key_id, 0, now, ())

    @property
    def key_ids(self) -> frozenset[bytes]:
        """What a ``Verifier`` needs: the set of refused key ids."""
        return frozenset(self._index)

    def is_revoked(self, key_id: bytes) -> bool:
        return key_id in self._index

    def entry(self, key_id: bytes) -> RevokedKey | None:
        return self._index.get(key_id)

    def with_revoked(
        self, key_id: bytes, now: datetime.datetime, reason: str = "", subject: str = ""
    ) -> RevocationList:
        """The successor list with ``key_id`` added (serial + 1); UsageError if already revoked."""
        if key_id in self._index:
            raise UsageError(
                f"key {key_id.hex()} is already revoked (since {_format_time(self._index[key_id].revoked_at)})",
                reason="already-revoked",
            )
        if key_id == self.issuer_key_id:
            raise UsageError(f"key {key_id.hex()} is the CA's own key; retire the CA instead", reason="bad-key-id")
        entries = sorted((*self.entries, RevokedKey(key_id, now, reason, subject)), key=lambda e: e.key_id)
        return RevocationList(self.issuer_key_id, self.serial + 1, now, tuple(entries))

    def check_successor(self, previous: RevocationList) -> None:
        """Refuse a list older than one already accepted, or one that forgets a revoked key."""
        if self.issuer_key_id != previous.issuer_key_id:
            raise TrustError(
                f"revocation list is issued by key {self.issuer_key_id.hex()}, the accepted one by "
                f"{previous.issuer_key_id.hex()}", reason="revocation-issuer-changed")
        if self.serial < previous.serial:
            raise TrustError(
                f"revocation list serial {self.serial} is older than the accepted serial {previous.serial}",
                reason="revocation-rollback")
        dropped = previous.key_ids - self.key_ids
        if dropped:
            names = ", ".join(sorted(k.hex() for k in dropped))
            raise TrustError(f"revocation list serial {self.serial} drops revoked keys {names}",
                             reason="revocation-rollback")

    def to_payload(self) -> bytes:
        doc = {
            "format": FORMAT_VERSION,
            "type": _TYPE,
            "serial": self.serial,
            "issued": _format_time(self.issued),
            "issuer_key_id": self.issuer_key_id.hex(),
            "revoked": [e.to_doc() for e in self.entries],
        }
        return json.dumps(doc, sort_keys=True, indent=1).encode() + b"\n"

    @classmethod
    def from_payload(cls, data: bytes, source: str) -> RevocationList:
        """Parse and validate the payload (not its signature: see ``verify_revocation_list``)."""
        if len(data) > MAX_REVOCATION_LIST_SIZE:
            raise FormatError(f"{source}: revocation list larger than {MAX_REVOCATION_LIST_SIZE} bytes",
                              reason="too-large")
        try:
            doc = strictjson.loads(data)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise FormatError(f"{source}: revocation list is not JSON ({exc})") from exc
        if not isinstance(doc, dict):
            raise FormatError(f"{source}: revocation list must be a JSON object with the fields "
                              f"{', '.join(sorted(_TOP_KEYS))}")  # fmt: skip
        if set(doc) != _TOP_KEYS:
            problems = []
            if missing := sorted(_TOP_KEYS - set(doc)):
                problems.append(f"lacks {', '.join(missing)}")
            if extra := sorted(set(doc) - _TOP_KEYS):
                problems.append(f"has unknown fields {', '.join(map(repr, extra))}")
            raise FormatError(f"{source}: revocation list {' and '.join(problems)}")
        if doc["type"] != _TYPE or type(doc["format"]) is not int or doc["format"] != FORMAT_VERSION:
            raise FormatError(f"{source}: not an imaguard revocation list of format {FORMAT_VERSION}",
                              reason="unsupported-format")
        serial = doc["serial"]
        if not isinstance(serial, int) or isinstance(serial, bool) or serial < 0:
            raise FormatError(f"{source}: serial must be a non-negative integer")
        issuer = _hex_id(doc["issuer_key_id"], f"{source}: issuer_key_id")
        issued = _parse_time(doc["issued"], f"{source}: issued")
        if not isinstance(doc["revoked"], list):
            raise FormatError(f"{source}: revoked must be a list")
        entries = [_entry(item, f"{source}: revoked[{i}]") for i, item in enumerate(doc["revoked"])]
        entries.sort(key=lambda e: e.key_id)
        if len({e.key_id for e in entries}) != len(entries):
            raise FormatError(f"{source}: a key id is listed twice")
        return cls(issuer, serial, issued, tuple(entries))


def _hex_id(value: object, where: str) -> bytes:
    if not isinstance(value, str) or not _KEY_ID.fullmatch(value):
        raise FormatError(f"{where}: must be 8 lowercase hex digits")
    return bytes.fromhex(value)


def _entry(item: object, where: str) -> RevokedKey:
    if not isinstance(item, dict) or not {"key_id", "revoked_at"} <= set(item) <= _ENTRY_KEYS:
        raise FormatError(f"{where}: an entry has key_id, revoked_at and optionally reason, subject")
    reason, subject = item.get("reason", ""), item.get("subject", "")
    if not isinstance(reason, str) or not isinstance(subject, str):
        raise FormatError(f"{where}: reason and subject must be strings")
    _check_reason(reason, where, FormatError)
    _check_reason(subject, where, FormatError)
    return RevokedKey(_hex_id(item["key_id"], f"{where}.key_id"), _parse_time(item["revoked_at"], where),
                      reason, subject)


def sign_revocation_list(rl: RevocationList, ca_key: PrivateKey) -> Envelope:
    """Wrap the list in a DSSE envelope signed by the CA key (key id = the list's issuer)."""
    return sign_envelope(PAYLOAD_TYPE, rl.to_payload(), ca_key, rl.issuer_key_id)


def verify_revocation_list(data: bytes, authorities: Sequence[Certificate], source: str) -> RevocationList:
    """Check the envelope against the CA certificates; return the list it carries.

    FormatError for bytes that are not a list, TrustError when no trusted CA signed it or the
    signer is not the issuer the list names.
    """
    if len(data) > MAX_REVOCATION_LIST_SIZE:
        raise FormatError(f"{source}: larger than {MAX_REVOCATION_LIST_SIZE} bytes", reason="too-large")
    env = Envelope.from_json(data, source)
    payload = verify_envelope(env, PAYLOAD_TYPE, tuple(authorities), source)
    rl = RevocationList.from_payload(payload, source)
    trusted = {c.key_id for c in authorities}
    signers = {keyid for keyid, _ in env.signatures}
    if rl.issuer_key_id not in trusted or rl.issuer_key_id.hex() not in signers:
        raise TrustError(f"{source}: the list names issuer {rl.issuer_key_id.hex()}, which did not sign it",
                         reason="bad-envelope-signature")
    return rl


def _fit_ca_key(public: object, source: str) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    if isinstance(public, rsa.RSAPublicKey) and public.key_size in (2048, 3072, 4096):
        return public
    if isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name in ("secp256r1", "secp384r1"):
        return public
    raise UsageError(f"{source}: CA key must be RSA-2048/3072/4096 or EC P-256/P-384", reason="unfit-key")


def parse_ca_certificate(data: bytes, source: str) -> Certificate:
    """Parse the IMA CA certificate (PEM or DER): CA:TRUE, keyCertSign and cRLSign if keyUsage is present.

    ``parse_certificate`` refuses it on purpose (a CA has no digitalSignature, so the kernel
    never verifies file signatures with it); this is the parser for the issuer of certificates
    and revocation lists. ``key_id`` is the SKID tail, as for IMA certificates.
    """
    try:
        cert = (x509.load_pem_x509_certificate(data) if b"-----BEGIN CERTIFICATE-----" in data
                else x509.load_der_x509_certificate(data))
        public = _fit_ca_key(cert.public_key(), source)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise not_a_certificate(data, source) from exc
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise UsageError(f"{source}: not a CA certificate (basicConstraints CA:TRUE missing)", reason="not-a-ca")
    try:
        usage: x509.KeyUsage | None = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not (usage.key_cert_sign and usage.crl_sign):
        raise UsageError(f"{source}: CA key usage must include keyCertSign and cRLSign", reason="not-a-ca")
    try:
        skid = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        skid = b""
    key_id = skid[-4:] if len(skid) >= 4 else key_id_from_public_key(public)
    return Certificate(cert, public, key_id, source)


def revoked_set(lists: Iterable[RevocationList]) -> frozenset[bytes]:
    """Union of the key ids of several lists (one per CA a host trusts)."""
    out: set[bytes] = set()
    for rl in lists:
        out |= rl.key_ids
    return frozenset(out)

