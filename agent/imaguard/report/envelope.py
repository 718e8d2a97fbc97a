"""Signed reports: the report document as the payload of a DSSE envelope (keys/dsse.py does the crypto).

The payload type names the schema, so an envelope of another kind (a signature bundle) never
verifies as a report even when signed by the same key.
"""

from __future__ import annotations

from imaguard import strictjson
from imaguard.errors import FormatError
from imaguard.keys.dsse import Envelope, sign_envelope, verify_envelope
from imaguard.keys.material import Certificate, PrivateKey
from imaguard.report.model import PAYLOAD_TYPE

__all__ = ["is_envelope", "open_envelope", "sign_report"]


def sign_report(document: bytes, key: PrivateKey, cert: Certificate) -> bytes:
    return sign_envelope(PAYLOAD_TYPE, document, key, cert.key_id).to_json()


def is_envelope(data: bytes) -> bool:
    """A DSSE envelope (``payloadType`` at the top) rather than a bare report document."""
    try:
        doc = strictjson.loads(data)
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"not JSON ({exc})", reason="bad-report") from exc
    return isinstance(doc, dict) and "payloadType" in doc


def open_envelope(data: bytes, certs: tuple[Certificate, ...], source: str) -> tuple[bytes, str]:
    """The report document inside a signed envelope and who signed it; TrustError unless a signature verifies."""
    env = Envelope.from_json(data, source)
    payload = verify_envelope(env, PAYLOAD_TYPE, certs, source)
    # verify_envelope only tries certificates whose key id an envelope signature names.
    named = [c.subject for c in certs if c.key_id.hex() in {k for k, _ in env.signatures}]
    return payload, named[0] if len(named) == 1 else "one of the given certificates"
