"""``imaguard report --nonce --sign`` and ``report verify`` with a real TPM (swtpm) holding the lab log's PCR 10.

The swtpm's PCR 10 is extended with the lab capture's entries (sha1: the template digest, sha256:
sha256 of the template data, as the kernel does), so the real tpm2-tools quote over PCR 10 matches
the real log. Then every verification failure the issue names is provoked: a changed byte, a wrong
nonce, a quote from another log.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from imaguard.cli.main import main
from imaguard.digests import HashAlgo
from imaguard.ima.measurements import iter_binary
from imaguard.packages.index import DigestIndex
from imaguard.packages.model import Evidence, FileKind, InstalledPackage, PackageFile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from swtpmlib import start_swtpm

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "tests" / "data" / "lab"
KEYS = ROOT / "tests" / "data" / "keys"
LOG = LAB / "binary_runtime_measurements"

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.skipif((shutil.which("swtpm") is None or shutil.which("tpm2_quote") is None) and os.environ.get("IMAGUARD_LAB_REQUIRED") != "1",
                                reason="needs swtpm and tpm2-tools")]  # fmt: skip


@pytest.fixture
def tpm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    state = tmp_path / "tpm"
    state.mkdir()
    proc, tcti = start_swtpm(state)
    try:
        monkeypatch.setenv("TPM2TOOLS_TCTI", tcti)
        yield tcti
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _extend_lab_log(tcti: str) -> None:
    for e in iter_binary(LOG.read_bytes()):
        sha256 = hashlib.sha256(e.template_data).hexdigest()
        subprocess.run(["tpm2_pcrextend", f"10:sha1={e.template_digest.hex()},sha256={sha256}"],
                       env={"TPM2TOOLS_TCTI": tcti}, check=True, capture_output=True)  # fmt: skip


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    tpm2 = next(e for e in iter_binary(LOG.read_bytes()) if e.path == b"/usr/bin/tpm2")
    with DigestIndex.open(d) as idx:
        idx.replace_package(InstalledPackage("tpm2-tools", "5.4-1", "amd64", "tpm2-tools", "5.4-1"), [
            PackageFile(b"/bin/tpm2", FileKind.REGULAR, Evidence.REPO_VERIFIED, tpm2.digest.digest, HashAlgo.SHA256)])
    return d


def _report(tmp_path: Path, index_dir: Path, *extra: str) -> Path:
    out = tmp_path / "report.json"
    argv = ["report", "--file", str(LOG), "--index", str(index_dir), "--no-processes", "-o", str(out), *extra]
    assert main(argv) == 0
    return out


def _ak_of(report: Path) -> str:
    """The fingerprint of the AK that signed a report's quote: SHA-256 of its SubjectPublicKeyInfo."""
    doc = json.loads(report.read_bytes())
    if "payload" in doc:  # a signed report: the DSSE envelope's payload
        doc = json.loads(base64.b64decode(doc["payload"]))
    key = serialization.load_pem_public_key(doc["quote"]["ak_public_pem"].encode())
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def test_signed_quoted_report_verifies_and_every_change_fails(tpm, tmp_path, index_dir, capsys):
    _extend_lab_log(tpm)
    out = _report(tmp_path, index_dir, "--nonce", "n-4711", "--sign", str(KEYS / "ima-test-rsa2048.key"),
                  "--cert", str(KEYS / "ima-test-rsa2048.pem"))  # fmt: skip
    cert = str(KEYS / "ima-test-rsa2048.pem")
    capsys.readouterr()
    assert main(["report", "verify", "--cert", cert, "--nonce", "n-4711", str(out)]) == 0
    fingerprint = _ak_of(out)
    assert capsys.readouterr().out == (f"{out}: verified (signature, payload-type, schema-version, entries, replay, "
                                       "summary, nonce, quote); signed by CN=imaguard TEST ONLY IMA key (public\\, do not trust); nonce 'n-4711'"
                                       f"; quoted by AK {fingerprint} (not pinned: --ak)\n")  # fmt: skip

    assert main(["report", "verify", "--cert", cert, "--nonce", "n-4712", str(out)]) == 3
    assert capsys.readouterr().err == f"imaguard: error: {out}: the report was made for nonce 'n-4711', not 'n-4712'\n"

    # One flipped bit in the signed payload, re-encoded so the envelope itself stays well-formed
    # (flipping a byte of the file's base64 text gave one of three errors depending on which
    # character the report's length put in the middle).
    envelope = json.loads(out.read_bytes())
    payload = bytearray(base64.b64decode(envelope["payload"]))
    payload[len(payload) // 2] ^= 0x01
    envelope["payload"] = base64.b64encode(bytes(payload)).decode()
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(envelope))
    assert main(["report", "verify", "--cert", cert, str(changed)]) == 3
    assert capsys.readouterr().err == f"imaguard: error: {changed}: no signature verifies with a trusted authority certificate\n"
    # And a file that is not base64 where the envelope needs it is named as such, not a traceback.
    envelope["payload"] = "!" + envelope["payload"][1:]
    changed.write_text(json.dumps(envelope))
    assert main(["report", "verify", "--cert", cert, str(changed)]) == 3
    assert capsys.readouterr().err == (f"imaguard: error: verification failed: {changed}: not a DSSE envelope "
                                       "(payload is not base64: Only base64 data is allowed)\n")  # fmt: skip


def test_quote_must_match_the_log_and_the_nonce(tpm, tmp_path, index_dir, capsys):
    # The TPM's PCR 10 was never extended: quoting for the lab log is refused before any report exists.
    argv = ["report", "--file", str(LOG), "--index", str(index_dir), "--no-processes", "--nonce", "x"]
    assert main(argv) == 3
    assert "differs from the replayed log" in capsys.readouterr().err
    _extend_lab_log(tpm)
    out = _report(tmp_path, index_dir, "--nonce", "abc")
    doc = json.loads(out.read_bytes())
    # A report whose stated nonce was rewritten still carries a quote made for the old one.
    doc["nonce"] = doc["quote"]["nonce"] = "other"
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["report", "verify", "--nonce", "other", str(forged)]) == 3
    assert capsys.readouterr().err == (f"imaguard: error: {forged}: the TPM quote was made for another nonce "
                                       "(qualifying data differs)\n")  # fmt: skip
    # The quote's signature covers the attestation: one flipped bit there fails the signature check.
    doc = json.loads(out.read_bytes())
    attest = bytearray(base64.b64decode(doc["quote"]["attest"]))
    attest[-1] ^= 1
    doc["quote"]["attest"] = base64.b64encode(bytes(attest)).decode()
    forged.write_text(json.dumps(doc))
    assert main(["report", "verify", str(forged)]) == 3
    assert "the TPM quote's signature does not verify with the AK public key in the report" in capsys.readouterr().err


def test_text_report_for_a_person_shows_the_quote_and_what_is_not_from_a_package(tpm, tmp_path, index_dir):
    _extend_lab_log(tpm)
    text = _report(tmp_path, index_dir, "--format", "text", "--nonce", "t-1").read_text().splitlines()
    assert text[5] == "quote       TPM quote over PCR 10 for nonce t-1"
    assert text[6] == "entries     package 1, unknown 3, boot-aggregate 1, buffer 1"
    assert "Measured files not traced to a package, or with a bad signature (class, entry, path):" in text
    assert "  unknown      #4      /opt/imaguard-lab/unsigned-echo" in text


def test_the_ak_is_the_same_for_every_quote_and_a_pinned_ak_refuses_another_tpm(tpm, tmp_path, index_dir, capsys,
                                                                               monkeypatch):  # fmt: skip
    _extend_lab_log(tpm)
    ak = tmp_path / "ak.pem"
    capsys.readouterr()
    assert main(["report", "ak", "-o", str(ak)]) == 0
    assert ak.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----\n")
    first = _report(tmp_path, index_dir, "--nonce", "one").rename(tmp_path / "one.json")
    second = _report(tmp_path, index_dir, "--nonce", "two")
    fingerprint = _ak_of(first)
    assert capsys.readouterr().err.startswith(f"attestation key {fingerprint}\n")
    for report in (first, second):  # a primary key of the endorsement hierarchy: the same key every time
        assert json.loads(report.read_bytes())["quote"]["ak_public_pem"].encode() == ak.read_bytes()

    assert main(["report", "verify", "--ak", str(ak), "--nonce", "one", str(first)]) == 0
    assert capsys.readouterr().out == (f"{first}: verified (schema-version, entries, replay, summary, nonce, quote, ak); "
                                       f"nonce 'one'; quoted by AK {fingerprint}\n")  # fmt: skip
    assert main(["report", "verify", "--ak", str(ak), "--json", str(second)]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert (doc["ak"], doc["ak_pinned"], doc["checks"][-1]) == (fingerprint, True, "ak")
    # Without a nonce of the verifier's own the pin says which TPM quoted, not when: said loudly.
    assert captured.err.startswith("imaguard: warning [W-NOT-FRESH]: --ak without --nonce: ")

    # A second TPM has another endorsement seed, so another AK: its quotes are refused with the first pinned.
    other_state = tmp_path / "tpm2"
    other_state.mkdir()
    proc, tcti = start_swtpm(other_state)
    try:
        monkeypatch.setenv("TPM2TOOLS_TCTI", tcti)
        _extend_lab_log(tcti)
        assert main(["report", "ak", "--json", "-o", str(tmp_path / "other.json")]) == 0
        other = json.loads((tmp_path / "other.json").read_bytes())
        foreign = _report(tmp_path, index_dir, "--nonce", "two")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert other["fingerprint"] == _ak_of(foreign) != fingerprint
    capsys.readouterr()
    assert main(["report", "verify", "--ak", str(ak), "--nonce", "two", str(foreign)]) == 3
    assert capsys.readouterr().err == (f"imaguard: error: {foreign}: the quote is signed by attestation key "
                                       f"{other['fingerprint']}, which is not one of the --ak keys given\n")  # fmt: skip
    (tmp_path / "other.pem").write_text(other["ak_public_pem"])
    assert main(["report", "verify", "--ak", str(ak), "--ak", str(tmp_path / "other.pem"), "--nonce", "two",
                 str(foreign)]) == 0  # fmt: skip

    # --ak needs a quote; and a file that is not a public key is a usage error, not a traceback.
    bare = _report(tmp_path, index_dir)
    capsys.readouterr()
    assert main(["report", "verify", "--ak", str(ak), str(bare)]) == 3
    assert capsys.readouterr().err.endswith(f"\nimaguard: error: {bare}: the report has no TPM quote, so no "
                                            "attestation key vouches for it\n")  # fmt: skip
    assert main(["report", "verify", "--ak", str(LOG), "--nonce", "one", str(first)]) == 2
    assert capsys.readouterr().err == (f"imaguard: error: {LOG}: not a PEM public key (give the output of "
                                       "`imaguard report ak`)\n")  # fmt: skip
    fifo = tmp_path / "ak.fifo"
    os.mkfifo(fifo)  # review: the pinned key was read with a blocking open
    assert main(["report", "verify", "--ak", str(fifo), "--nonce", "one", str(first)]) == 2
    assert capsys.readouterr().err == (f"imaguard: error: {fifo}: cannot read the attestation key: "
                                       "not a regular file\n")  # fmt: skip
