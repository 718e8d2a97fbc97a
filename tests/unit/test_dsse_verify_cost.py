"""An envelope nobody has authenticated yet cannot buy unbounded CPU (audit): at most
MAX_SIGNATURES tries, the message hashed once, and signatures still verify as before (RSA and EC,
the signing side unchanged, so every envelope made before verifies)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from imaguard.errors import TrustError
from imaguard.keys.dsse import MAX_SIGNATURES, Envelope, pae, sign_envelope, verify_envelope
from imaguard.keys.material import load_certificate, load_private_key

KEYS = Path(__file__).resolve().parents[1] / "data" / "keys"

TYPE = "application/vnd.imaguard.test+json"


@pytest.fixture(scope="module")
def signer():
    cert = load_certificate(KEYS / "ima-test-rsa2048.pem")
    return load_private_key(KEYS / "ima-test-rsa2048.key", None, cert), cert


def test_a_signed_envelope_still_verifies_among_spare_bad_signatures(signer):
    key, cert = signer
    env = sign_envelope(TYPE, b'{"x": 1}', key, cert.key_id)
    keyid, good = env.signatures[0]
    spare = [(keyid, b"\x00")] * 3 + [(keyid, good)]  # duplicates are tried once
    assert verify_envelope(Envelope(TYPE, env.payload, tuple(spare)), TYPE, (cert,), "e") == b'{"x": 1}'
    # What was signed is PAE over type and payload: the prehashed check agrees with a plain one.
    key.public_key().verify(good, pae(TYPE, env.payload), padding.PKCS1v15(), hashes.SHA256())


def test_more_than_the_cap_is_refused_before_any_public_key_operation(signer):
    key, cert = signer
    payload = b"x" * (8 << 20)
    env = sign_envelope(TYPE, payload, key, cert.key_id)
    keyid, good = env.signatures[0]
    flood = Envelope(TYPE, payload, ((keyid, b"\x01"),) * 2000 + ((keyid, good),))
    t0 = time.monotonic()
    with pytest.raises(TrustError) as err:
        verify_envelope(flood, TYPE, (cert,), "flood.json")
    assert time.monotonic() - t0 < 1.0  # the audit measured 13.7 ms per try over 8 MB: ~27 s for this
    assert str(err.value) == f"flood.json: 2001 signatures; an envelope may carry at most {MAX_SIGNATURES}"
    assert err.value.reason == "bad-envelope-signature"


def test_the_cap_full_of_bad_signatures_costs_one_hash_of_the_message(signer, monkeypatch):
    _, cert = signer
    payload = b"y" * (1 << 20)
    keyid = cert.key_id.hex()
    env = Envelope(TYPE, payload, tuple((keyid, bytes([i])) for i in range(MAX_SIGNATURES)))
    hashed = []
    real = hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda data=b"": hashed.append(len(data)) or real(data))
    with pytest.raises(TrustError, match="no signature verifies"):
        verify_envelope(env, TYPE, (cert,), "e")
    assert hashed == [len(pae(TYPE, payload))]
