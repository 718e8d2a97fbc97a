"""DSSE envelopes that are not envelopes are named by what is missing, never by Python internals (review finding).

Regression: ``verify --revocation-list X`` with X holding ``42``, ``[]`` or ``{}`` printed
"'int' object is not subscriptable", "list indices must be integers or slices, not str" and
"('signatures')". Revocation lists, signature bundles and signed reports all parse with
``Envelope.from_json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from certlib import ca_pem, pki
from cryptography.hazmat.primitives import serialization

from imaguard.cli.main import main
from imaguard.errors import FormatError
from imaguard.keys.dsse import Envelope, sign_envelope
from imaguard.keys.revocation import PAYLOAD_TYPE, parse_ca_certificate, verify_revocation_list

CERT = Path(__file__).resolve().parents[1] / "data" / "keys" / "ima-test-rsa2048.pem"
OBJECT = "expected an object with payloadType, payload and signatures"

CASES = [
    ("42", f"{OBJECT}, got a number"),
    ("[]", f"{OBJECT}, got a list"),
    ('"x"', f"{OBJECT}, got a string"),
    ("null", f"{OBJECT}, got null"),
    ("{}", "payloadType is missing"),
    ('{"payloadType": 1}', "payloadType must be a string, got a number"),
    ('{"payloadType": "t"}', "payload is missing"),
    ('{"payloadType": "t", "payload": 5}', "payload must be a base64 string, got a number"),
    ('{"payloadType": "t", "payload": "!!"}', "payload is not base64: Only base64 data is allowed"),
    ('{"payloadType": "t", "payload": ""}', "signatures is missing"),
    ('{"payloadType": "t", "payload": "", "signatures": {}}', "signatures must be a list, got an object"),
    ('{"payloadType": "t", "payload": "", "signatures": "ab"}', "signatures must be a list, got a string"),
    ('{"payloadType": "t", "payload": "", "signatures": [1]}',
     "signatures[0] must be an object with keyid and sig, got a number"),
    ('{"payloadType": "t", "payload": "", "signatures": [{}]}', "signatures[0].keyid is missing"),
    ('{"payloadType": "t", "payload": "", "signatures": [{"keyid": 7, "sig": ""}]}',
     "signatures[0].keyid must be a string, got a number"),
    ('{"payloadType": "t", "payload": "", "signatures": [{"keyid": "a"}]}', "signatures[0].sig is missing"),
    ('{"payloadType": "t", "payload": "", "signatures": [{"keyid": "a", "sig": "é"}]}',
     "signatures[0].sig is not base64: string argument should contain only ASCII characters"),
]


@pytest.mark.parametrize(("text", "why"), CASES, ids=[c[0] for c in CASES])
def test_not_an_envelope_names_what_is_missing(text, why):
    with pytest.raises(FormatError) as err:
        Envelope.from_json(text.encode(), "X")
    assert str(err.value) == f"X: not a DSSE envelope ({why})"


def test_not_json_and_no_signatures():
    with pytest.raises(FormatError, match=r"^X: not a DSSE envelope \(not JSON: Expecting value: line 1 column 1 "):
        Envelope.from_json(b"", "X")
    with pytest.raises(FormatError, match=r"^X: DSSE envelope without signatures$"):
        Envelope.from_json(b'{"payloadType": "t", "payload": "", "signatures": []}', "X")


def test_round_trip():
    env = Envelope("t", b"\x00payload", (("01020304", b"sig"),))
    assert Envelope.from_json(env.to_json(), "X") == env


@pytest.mark.parametrize(("text", "why"), CASES[:5], ids=[c[0] for c in CASES[:5]])
def test_verify_revocation_list_that_is_not_an_envelope(tmp_path, capsys, text, why):
    listed = tmp_path / "X"
    listed.write_text(text)
    target = tmp_path / "f"
    target.write_bytes(b"hi\n")
    code = main(["verify", "--cert", str(CERT), "--revocation-list", str(listed),
                 "--revocation-ca", str(ca_pem(tmp_path)), str(target)])  # fmt: skip
    assert (code, capsys.readouterr().err) == (3, f"imaguard: error: {listed}: not a DSSE envelope ({why})\n")


def test_signed_report_that_is_not_an_envelope(tmp_path, capsys):
    report = tmp_path / "R"
    report.write_text('{"payloadType": "t", "payload": "", "signatures": [1]}')
    assert main(["report", "verify", "--cert", str(CERT), str(report)]) == 3
    assert capsys.readouterr().err == (
        f"imaguard: error: verification failed: {report}: not a DSSE envelope "
        "(signatures[0] must be an object with keyid and sig, got a number)\n")


def _signed_list(payload: object) -> tuple[bytes, object]:
    ca = parse_ca_certificate(pki().ca_cert.public_bytes(serialization.Encoding.DER), "CA")
    body = json.dumps(payload).encode()
    return sign_envelope(PAYLOAD_TYPE, body, pki().ca_key, ca.key_id).to_json(), ca


def test_revocation_list_names_missing_and_unknown_fields():
    data, ca = _signed_list({"format": 1, "type": "imaguard-revocation-list", "serial": 1, "extra": 0})
    with pytest.raises(FormatError) as err:
        verify_revocation_list(data, (ca,), "X")
    assert str(err.value) == "X: revocation list lacks issued, issuer_key_id, revoked and has unknown fields 'extra'"
    data, ca = _signed_list([])
    with pytest.raises(FormatError) as err:
        verify_revocation_list(data, (ca,), "X")
    assert str(err.value) == (
        "X: revocation list must be a JSON object with the fields format, issued, issuer_key_id, revoked, serial, type")


def test_revocation_list_format_must_be_the_integer_1():
    doc = {"format": True, "type": "imaguard-revocation-list", "serial": 1, "issued": "2026-11-22T03:00:00Z",
           "issuer_key_id": "01020304", "revoked": []}
    data, ca = _signed_list(doc)
    with pytest.raises(FormatError, match=r"^X: not an imaguard revocation list of format 1$"):
        verify_revocation_list(data, (ca,), "X")
