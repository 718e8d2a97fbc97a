"""DSSE envelopes (github.com/secure-systems-lab/dsse, protocol v1), signed and verified.

Used for signature bundles and signed reports: the signature covers
``PAE(payloadType, payload)``, never the JSON around it, so re-serialising cannot change meaning.
Key ids in envelopes are the hex IMA key id of the signing certificate.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from imaguard import strictjson
from imaguard.errors import FormatError, TrustError
from imaguard.keys.material import Certificate, PrivateKey

__all__ = ["MAX_SIGNATURES", "Envelope", "pae", "sign_envelope", "verify_envelope"]

# DSSE allows several signatures (one per signer); imaguard makes one. A few spare for co-signing.
MAX_SIGNATURES = 8

_T = TypeVar("_T")


def pae(payload_type: str, payload: bytes) -> bytes:
    """Pre-Authentication Encoding: ``DSSEv1 SP len(type) SP type SP len(body) SP body``."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


@dataclass(frozen=True, slots=True)
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[tuple[str, bytes], ...]  # (keyid hex, signature)

    def to_json(self) -> bytes:
        doc = {
            "payloadType": self.payload_type,
            "payload": base64.b64encode(self.payload).decode(),
            "signatures": [{"keyid": k, "sig": base64.b64encode(s).decode()} for k, s in self.signatures],
        }
        return json.dumps(doc, indent=1).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, source: str) -> Envelope:
        """Parse an envelope; FormatError naming the field that is missing or of the wrong kind."""
        try:
            doc = strictjson.loads(data)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise FormatError(f"{source}: not a DSSE envelope (not JSON: {exc})") from exc
        try:
            env = cls._from_doc(doc)
        except _NotEnvelopeError as exc:
            raise FormatError(f"{source}: not a DSSE envelope ({exc})") from exc
        if not env.signatures:
            raise FormatError(f"{source}: DSSE envelope without signatures")
        return env

    @classmethod
    def _from_doc(cls, doc: object) -> Envelope:
        if not isinstance(doc, dict):
            raise _NotEnvelopeError(f"expected an object with payloadType, payload and signatures, got {_kind(doc)}")
        payload_type = _field(doc, "payloadType", str, "a string")
        payload = _base64(_field(doc, "payload", str, "a base64 string"), "payload")
        sigs = []
        for i, item in enumerate(_field(doc, "signatures", list, "a list")):
            where = f"signatures[{i}]"
            if not isinstance(item, dict):
                raise _NotEnvelopeError(f"{where} must be an object with keyid and sig, got {_kind(item)}")
            keyid = _field(item, "keyid", str, "a string", where)
            sigs.append((keyid, _base64(_field(item, "sig", str, "a base64 string", where), f"{where}.sig")))
        return cls(payload_type, payload, tuple(sigs))


class _NotEnvelopeError(Exception):
    """What is missing or of the wrong kind; ``from_json`` adds the source."""


def _kind(value: object) -> str:
    """How a JSON value is named in errors: by its JSON type, never a Python one."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "null"


def _field(doc: dict[str, object], name: str, kind: type[_T], what: str, where: str = "") -> _T:
    path = f"{where}.{name}" if where else name
    if name not in doc:
        raise _NotEnvelopeError(f"{path} is missing")
    value = doc[name]
    if not isinstance(value, kind):
        raise _NotEnvelopeError(f"{path} must be {what}, got {_kind(value)}")
    return value


def _base64(text: str, path: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error) as exc:  # a str with non-ASCII characters is a ValueError
        raise _NotEnvelopeError(f"{path} is not base64: {exc}") from exc


def _sign(key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def sign_envelope(payload_type: str, payload: bytes, key: PrivateKey, key_id: bytes) -> Envelope:
    return Envelope(payload_type, payload, ((key_id.hex(), _sign(key, pae(payload_type, payload))),))


def verify_envelope(env: Envelope, payload_type: str, certs: tuple[Certificate, ...], source: str) -> bytes:
    """Return the payload if one signature verifies with one of ``certs``; TrustError otherwise."""
    if env.payload_type != payload_type:
        raise TrustError(f"{source}: payload type {env.payload_type!r}, expected {payload_type!r}",
                         reason="wrong-payload-type")
    if len(env.signatures) > MAX_SIGNATURES:
        # Each try costs a public-key operation; an envelope nobody has authenticated yet must not
        # buy hours of CPU with thousands of one-byte signatures (audit).
        raise TrustError(f"{source}: {len(env.signatures)} signatures; an envelope may carry at most "
                         f"{MAX_SIGNATURES}", reason="bad-envelope-signature")  # fmt: skip
    # The message is hashed once, whatever the number of tries (it may be tens of MiB).
    digest = hashlib.sha256(pae(env.payload_type, env.payload)).digest()
    prehashed = utils.Prehashed(hashes.SHA256())
    tried: set[tuple[str, bytes]] = set()
    for keyid, sig in env.signatures:
        if (keyid, sig) in tried:
            continue
        tried.add((keyid, sig))
        for cert in certs:
            if cert.key_id.hex() != keyid:
                continue
            key = cert.public_key
            try:
                if isinstance(key, rsa.RSAPublicKey):
                    key.verify(sig, digest, padding.PKCS1v15(), prehashed)
                else:
                    key.verify(sig, digest, ec.ECDSA(prehashed))
            except InvalidSignature:
                continue
            return env.payload
    raise TrustError(f"{source}: no signature verifies with a trusted authority certificate",
                     reason="bad-envelope-signature")
