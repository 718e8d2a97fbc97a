"""DSSE envelopes (github.com/secure-systems-lab/dsse, protocol v1), signed and verified.

Used for signature bundles and signed reports: the signature covers
``PAE(payloadType, payload)``, never the JSON around it, so re-serialising cannot change meaning.
Key ids in envelopes are the hex IMA key id of the signing certificate.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from imaguard.errors import FormatError, TrustError
from imaguard.keys.material import Certificate, PrivateKey

__all__ = ["Envelope", "pae", "sign_envelope", "verify_envelope"]


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
        try:
            doc = json.loads(data)
            sigs = tuple((str(s["keyid"]), base64.b64decode(s["sig"], validate=True)) for s in doc["signatures"])
            env = cls(str(doc["payloadType"]), base64.b64decode(doc["payload"], validate=True), sigs)
        except (ValueError, KeyError, TypeError, binascii.Error, RecursionError) as exc:
            raise FormatError(f"{source}: not a DSSE envelope ({exc})") from exc
        if not env.signatures:
            raise FormatError(f"{source}: DSSE envelope without signatures")
        return env


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
    message = pae(env.payload_type, env.payload)
    for keyid, sig in env.signatures:
        for cert in certs:
            if cert.key_id.hex() != keyid:
                continue
            key = cert.public_key
            try:
                if isinstance(key, rsa.RSAPublicKey):
                    key.verify(sig, message, padding.PKCS1v15(), hashes.SHA256())
                else:
                    key.verify(sig, message, ec.ECDSA(hashes.SHA256()))
            except InvalidSignature:
                continue
            return env.payload
    raise TrustError(f"{source}: no signature verifies with a trusted authority certificate",
                     reason="bad-envelope-signature")
