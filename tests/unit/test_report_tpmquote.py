"""TPM quotes: a real quote from the lab's swtpm (tests/data/report/quote.json) parsed and verified;
every truncation and random mutation of the attestation is a FormatError or a failed check, nothing else."""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imaguard.errors import FormatError, TrustError
from imaguard.report.tpmquote import Quote, nonce_data, parse_attest, verify_quote

DATA = json.loads((Path(__file__).resolve().parents[1] / "data" / "report" / "quote.json").read_text())
QUOTE = Quote(base64.b64decode(DATA["attest"]), base64.b64decode(DATA["signature"]), DATA["ak_public_pem"].encode(),
              DATA["bank"], bytes.fromhex(DATA["pcr10"]))  # fmt: skip
PCR10 = bytes.fromhex(DATA["replayed_pcr10"]["sha256"])


def test_the_lab_quote_verifies_for_its_nonce_and_log():
    info = verify_quote(QUOTE, nonce=DATA["nonce"], expected_pcr10=PCR10)
    assert info.selection == (("sha256", (10,)),)
    assert info.extra_data == nonce_data(DATA["nonce"])
    assert info.qualified_signer[:2] == b"\x00\x0b"  # a sha256 name


@pytest.mark.parametrize(("change", "reason", "message"), [
    ({"nonce": "other"}, "quote-nonce", "the TPM quote was made for another nonce (qualifying data differs)"),
    ({"expected_pcr10": bytes(32)}, "quote-log-mismatch",
     "PCR 10 (sha256) in the quote differs from the replayed measurement log"),
])  # fmt: skip
def test_wrong_nonce_or_log_fails(change, reason, message):
    kw = {"nonce": DATA["nonce"], "expected_pcr10": PCR10, **change}
    with pytest.raises(TrustError) as err:
        verify_quote(QUOTE, **kw)
    assert (err.value.reason, str(err.value)) == (reason, message)


def test_a_pcr_value_that_is_not_the_quoted_one_fails():
    forged = Quote(QUOTE.attest, QUOTE.signature, QUOTE.ak_public_pem, "sha256", bytes(32))
    with pytest.raises(TrustError, match="PCR digest does not match the PCR 10 value in the report"):
        verify_quote(forged, nonce=DATA["nonce"], expected_pcr10=bytes(32))


def test_every_truncation_is_a_format_error():
    for n in range(len(QUOTE.attest)):
        with pytest.raises(FormatError) as err:
            parse_attest(QUOTE.attest[:n])
        assert err.value.reason == "bad-quote"


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 255))
def test_mutations_fail_closed(pos, xor):
    data = bytearray(QUOTE.attest)
    data[pos % len(data)] ^= xor
    with contextlib.suppress(FormatError):
        parse_attest(bytes(data))
    with pytest.raises((TrustError, FormatError)):
        verify_quote(Quote(bytes(data), QUOTE.signature, QUOTE.ak_public_pem, "sha256", QUOTE.pcr_value),
                     nonce=DATA["nonce"], expected_pcr10=PCR10)  # fmt: skip
