"""``report verify`` against genuine swtpm quotes reused where they do not belong (test-suite audit, 1.1 and 1.2).

Each forgery keeps everything the AK signed intact, so the signature verifies and only the one
check named in the test can refuse it:

* replay: a report made for an old nonce, its ``nonce`` field rewritten to the verifier's fresh one,
  the old quote left as it is (``verify.py``: the quote's nonce must be the report's);
* selection: a real quote by the same AK, for the right nonce, over another PCR (the resettable
  debug PCR 16, extended here to hold exactly PCR 10's value) or over PCR 10 and 16 together,
  spliced into the report (``tpmquote.py``: the quote must select PCR 10 only).

With either check removed the forgery verified (exit 0) or failed on a later check's message; the
tests assert the exact message and reason, so they fail then.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from test_report_quote import LOG, _extend_lab_log, _report, index_dir, tpm  # noqa: F401 - fixtures

from imaguard.cli.main import main
from imaguard.ima.measurements import iter_binary
from imaguard.report import quote as quote_module
from imaguard.report.tpmquote import nonce_data, parse_attest, pcr_digest

FRESH = "fresh-nonce-of-the-verifier"


def _forge(tmp_path: Path, doc: dict[str, object]) -> Path:
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(doc))
    return forged


def _verify(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["report", "verify", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_rewritten_report_nonce_with_the_old_quote_is_refused(tpm, tmp_path, index_dir, capsys):  # noqa: F811
    _extend_lab_log(tpm)
    out = _report(tmp_path, index_dir, "--nonce", "abc")
    doc = json.loads(out.read_bytes())
    assert doc["nonce"] == doc["quote"]["nonce"] == "abc"
    # Only the report's nonce is changed: quote.nonce and the TPM's qualifying data still say 'abc'.
    doc["nonce"] = FRESH
    forged = _forge(tmp_path, doc)
    message = f"{forged}: the quote was made for nonce 'abc', the report says '{FRESH}'"
    assert _verify(capsys, "--nonce", FRESH, str(forged)) == (3, "", f"imaguard: error: {message}\n")
    code, out_json, err = _verify(capsys, "--json", "--nonce", FRESH, str(forged))
    assert (code, err) == (3, f"imaguard: error: {message}\n")
    assert json.loads(out_json) == {"error": {"reason": "wrong-nonce", "message": message}}
    # Without --nonce of its own the verifier checks the nonce the report states: refused all the same.
    assert _verify(capsys, str(forged)) == (3, "", f"imaguard: error: {message}\n")


def test_a_quote_nonce_rewritten_too_is_refused_by_the_signed_qualifying_data(tpm, tmp_path, index_dir, capsys):  # noqa: F811
    # Both JSON fields say the fresh nonce; the AK signed SHA-256 of the old one (the extra data).
    _extend_lab_log(tpm)
    doc = json.loads(_report(tmp_path, index_dir, "--nonce", "abc").read_bytes())
    assert parse_attest(base64.b64decode(doc["quote"]["attest"])).extra_data == nonce_data("abc")
    doc["nonce"] = doc["quote"]["nonce"] = FRESH
    forged = _forge(tmp_path, doc)
    message = f"{forged}: the TPM quote was made for another nonce (qualifying data differs)"
    code, out_json, err = _verify(capsys, "--json", "--nonce", FRESH, str(forged))
    assert (code, err) == (3, f"imaguard: error: {message}\n")
    assert json.loads(out_json) == {"error": {"reason": "quote-nonce", "message": message}}


def _extend_pcr16_like_pcr10(tcti: str) -> None:
    """Extend the debug PCR 16 (reset at TPM start, extendable by anyone) with the lab log, as PCR 10 was."""
    for e in iter_binary(LOG.read_bytes()):
        sha256 = hashlib.sha256(e.template_data).hexdigest()
        subprocess.run(["tpm2_pcrextend", f"16:sha1={e.template_digest.hex()},sha256={sha256}"],
                       env={"TPM2TOOLS_TCTI": tcti}, check=True, capture_output=True)  # fmt: skip


def _tpm(tcti: str, d: Path, *argv: str) -> None:
    subprocess.run(list(argv), cwd=d, env={"TPM2TOOLS_TCTI": tcti}, check=True, capture_output=True, timeout=120)


def _quote_over(tcti: str, d: Path, selection: str, nonce: str) -> tuple[bytes, bytes, bytes]:
    """A genuine tpm2_quote over ``selection`` by the AK imaguard uses (its template), as imaguard calls
    it but for the selection: (attest, signature, AK public key PEM)."""
    d.mkdir()
    _tpm(tcti, d, "tpm2_flushcontext", "--transient-object")
    _tpm(tcti, d, "tpm2_createprimary", *quote_module._AK_TEMPLATE, "-c", "ak.ctx")
    _tpm(tcti, d, "tpm2_flushcontext", "--transient-object")
    _tpm(tcti, d, "tpm2_readpublic", "-c", "ak.ctx", "-o", "ak.pem", "-f", "pem")
    _tpm(tcti, d, "tpm2_flushcontext", "--transient-object")
    _tpm(tcti, d, "tpm2_quote", "-c", "ak.ctx", "-l", selection, "-q", nonce_data(nonce).hex(), "-m", "quote.msg",
         "-s", "quote.sig", "-f", "plain", "-g", "sha256")  # fmt: skip
    _tpm(tcti, d, "tpm2_flushcontext", "--transient-object")
    return (d / "quote.msg").read_bytes(), (d / "quote.sig").read_bytes(), (d / "ak.pem").read_bytes()


def test_a_genuine_quote_over_another_pcr_of_the_same_value_is_refused(tpm, tmp_path, index_dir, capsys):  # noqa: F811
    _extend_lab_log(tpm)
    _extend_pcr16_like_pcr10(tpm)
    doc = json.loads(_report(tmp_path, index_dir, "--nonce", "abc").read_bytes())
    pcr10 = bytes.fromhex(doc["quote"]["pcr10"])
    assert doc["quote"]["bank"] == "sha256"
    assert pcr10 == bytes.fromhex(doc["log"]["replay"]["pcr10"]["sha256"])

    attest, signature, ak = _quote_over(tpm, tmp_path / "pcr16", "sha256:16", "abc")
    info = parse_attest(attest)
    # Only the selection is wrong: same AK, same nonce, and the PCR digest is the one of PCR 10's value.
    assert ak.decode() == doc["quote"]["ak_public_pem"]
    assert info.extra_data == nonce_data("abc")
    assert info.selection == (("sha256", (16,)),)
    assert info.pcr_digest == pcr_digest("sha256", [pcr10])
    doc["quote"]["attest"] = base64.b64encode(attest).decode()
    doc["quote"]["signature"] = base64.b64encode(signature).decode()
    forged = _forge(tmp_path, doc)
    message = f"{forged}: the TPM quote selects (('sha256', (16,)),), expected only PCR 10 of sha256"
    assert _verify(capsys, "--nonce", "abc", str(forged)) == (3, "", f"imaguard: error: {message}\n")
    code, out_json, err = _verify(capsys, "--json", "--nonce", "abc", str(forged))
    assert (code, err) == (3, f"imaguard: error: {message}\n")
    assert json.loads(out_json) == {"error": {"reason": "quote-selection", "message": message}}

    # PCR 10 and 16 quoted together: a real quote that covers PCR 10, but not PCR 10 alone.
    attest, signature, _ = _quote_over(tpm, tmp_path / "pcr10-16", "sha256:10,16", "abc")
    info = parse_attest(attest)
    assert info.extra_data == nonce_data("abc")
    assert (info.selection, info.pcr_digest) == ((("sha256", (10, 16)),), pcr_digest("sha256", [pcr10, pcr10]))
    doc["quote"]["attest"] = base64.b64encode(attest).decode()
    doc["quote"]["signature"] = base64.b64encode(signature).decode()
    forged = _forge(tmp_path, doc)
    message = f"{forged}: the TPM quote selects (('sha256', (10, 16)),), expected only PCR 10 of sha256"
    code, out_json, err = _verify(capsys, "--json", "--nonce", "abc", str(forged))
    assert (code, err) == (3, f"imaguard: error: {message}\n")
    assert json.loads(out_json) == {"error": {"reason": "quote-selection", "message": message}}
