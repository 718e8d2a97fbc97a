"""A revocation list counts only for the CA that signed it: with two trusted CAs, a list signed by
one that names the other as its issuer is refused (a mutation audit found this check untested)."""

from __future__ import annotations

import datetime

import pytest

from imaguard.errors import TrustError
from imaguard.keys.dsse import sign_envelope
from imaguard.keys.material import load_private_key
from imaguard.keys.revocation import (
    PAYLOAD_TYPE,
    RevocationList,
    parse_ca_certificate,
    sign_revocation_list,
    verify_revocation_list,
)
from imaguard_keyring.cli import main as keyring_main

NOW = datetime.datetime(2026, 12, 6, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def two_cas(tmp_path_factory):
    cas = []
    for name in ("a", "b"):
        out = tmp_path_factory.mktemp("ca") / name
        assert keyring_main(["ca", "create", "--out", str(out), "--key-type", "p256", "--subject", f"CA {name}"]) == 0
        cert = parse_ca_certificate((out / "ca.pem").read_bytes(), f"{name}/ca.pem")
        cas.append((cert, load_private_key(out / "ca.key")))
    return cas


def test_a_list_naming_another_trusted_ca_as_issuer_is_refused(two_cas):
    (cert_a, key_a), (cert_b, _key_b) = two_cas
    revoked = bytes.fromhex("01020304")
    # CA A signs a list that claims to be CA B's: it would stand in for B's own list (and its serial).
    forged = RevocationList.empty(cert_b.key_id, NOW).with_revoked(revoked, NOW)
    envelope = sign_envelope(PAYLOAD_TYPE, forged.to_payload(), key_a, cert_a.key_id).to_json()
    with pytest.raises(TrustError) as refused:
        verify_revocation_list(envelope, (cert_a, cert_b), "forged.json")
    assert str(refused.value) == f"forged.json: the list names issuer {cert_b.key_id.hex()}, which did not sign it"
    assert refused.value.reason == "bad-envelope-signature"


def test_each_ca_list_verifies_as_its_own(two_cas):
    for cert, key in two_cas:
        own = RevocationList.empty(cert.key_id, NOW).with_revoked(bytes.fromhex("0a0b0c0d"), NOW)
        envelope = sign_revocation_list(own, key).to_json()
        got = verify_revocation_list(envelope, tuple(c for c, _ in two_cas), "own.json")
        assert (got.issuer_key_id, got.key_ids) == (cert.key_id, frozenset({bytes.fromhex("0a0b0c0d")}))
