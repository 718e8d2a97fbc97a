"""``imaguard report verify`` on changed reports: what it must refuse (regressions named after the bug)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from imaguard.cli.main import main
from imaguard.errors import TrustError
from imaguard.ima.measurements import iter_binary
from imaguard.ima.replay import replay
from imaguard.packages.index import DigestIndex
from imaguard.report.build import build_report
from imaguard.report.model import HostFacts
from imaguard.report.verify import verify_report

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reportlib import resummarized

from logbuilder import LogBuilder, d_ng, n_ng

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "tests" / "data" / "lab"
HOST = HostFacts("m" * 32, "b", "h", "6.1.0-50-amd64", "#1", "gone", None, ())


def _report_doc(tmp_path: Path, log: Path) -> dict:
    with DigestIndex.open(tmp_path / "idx") as idx:
        report = build_report(replay(iter_binary(log.read_bytes())), source=str(log), lookup=idx, processes=(),
                              host=HOST, generator="imaguard test", created="2026-12-06T00:00:00Z")  # fmt: skip
    return report.to_json()


def _verify_cli(tmp_path: Path, doc: dict | str, capsys) -> tuple[int, str]:
    path = tmp_path / "r.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    code = main(["report", "verify", str(path)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("bad", ["1e999", "true", "10.0", '"10"', "null"])
def test_pcr_that_is_not_an_integer_is_a_schema_error_not_a_crash(tmp_path, capsys, bad):
    doc = _report_doc(tmp_path, LAB / "ima-ng" / "binary_runtime_measurements")
    text = json.dumps(doc).replace('"pcr":10', f'"pcr":{bad}', 1).replace('"pcr": 10', f'"pcr": {bad}', 1)
    code, err = _verify_cli(tmp_path, text, capsys)
    assert code == 3
    assert err.count("\n") == 1
    assert err.startswith(f"imaguard: error: verification failed: {tmp_path}/r.json: entry 0 has no integer pcr")


LAB_LOGS = [LAB / "binary_runtime_measurements",
            *(LAB / d / "binary_runtime_measurements" for d in ("ima-ng", "evm-sig", "ima-modsig", "canonical-custom"))]


@pytest.mark.parametrize("log", LAB_LOGS, ids=lambda p: p.parent.name)
def test_real_reports_of_every_lab_template_verify(tmp_path, log):
    doc = _report_doc(tmp_path, log)
    result = verify_report(json.dumps(doc).encode(), certs=(), nonce=None, source="r.json")
    assert result.checks == ("schema-version", "entries", "replay", "summary")


def test_r3_entry_claiming_another_path_and_digest_is_refused(tmp_path, capsys):
    """The reviewer's r3: entry 2 (/usr/bin/true) restated as /usr/bin/sshd with another digest and a
    package match, extended digests untouched, so the replay and the quote still agree."""
    doc = _report_doc(tmp_path, LAB / "ima-ng" / "binary_runtime_measurements")
    assert doc["entries"][2]["path"] == "/usr/bin/true"
    doc["entries"][2].update({"path": "/usr/bin/sshd", "class": "package"})
    code, err = _verify_cli(tmp_path, doc, capsys)
    assert (code, err) == (3, f"imaguard: error: {tmp_path}/r.json: entry 2 states path '/usr/bin/sshd', "
                              "its template data says '/usr/bin/true'\n")  # fmt: skip
    doc["entries"][2]["path"] = "/usr/bin/true"
    doc["entries"][2]["digest"] = "sha256:" + "ab" * 32
    with pytest.raises(TrustError, match="entry 2 states digest 'sha256:abab") as err:
        verify_report(json.dumps(doc).encode(), certs=(), nonce=None, source="r.json")
    assert err.value.reason == "entry-mismatch"


def test_template_data_must_hash_to_the_extended_digests(tmp_path):
    """Swapping in another entry's template data (with its path and digest) breaks the hash link."""
    doc = _report_doc(tmp_path, LAB / "ima-ng" / "binary_runtime_measurements")
    other = doc["entries"][3]
    doc["entries"][2].update({k: other[k] for k in ("path", "digest", "template_data")})
    with pytest.raises(TrustError, match=r"entry 2 states extended sha1 '[0-9a-f]{40}', its template data says") as e:
        verify_report(json.dumps(doc).encode(), certs=(), nonce=None, source="r.json")
    assert e.value.reason == "entry-mismatch"


def test_signature_and_structural_class_claims_are_checked(tmp_path):
    doc = _report_doc(tmp_path, LAB / "binary_runtime_measurements")
    signed = doc["entries"][3]
    assert (signed["path"], signed["signature"]["status"]) == ("/opt/imaguard-lab/signed-echo", "logged-key")
    changes = [
        (3, "signature", {"status": "verified", "key_id": "00000000"}, "signature key id '00000000'"),
        (3, "signature", {"status": "unsigned", "key_id": signed["signature"]["key_id"]}, "signature status 'unsigned'"),
        (4, "signature", {"status": "verified", "key_id": None}, "signature status 'verified'"),
        (4, "signature", {"status": [], "key_id": None}, "signature status \\[\\]"),  # was a TypeError traceback
        (1, "class", "package", "class 'package', its template data says 'buffer'"),
        (2, "class", "violation", "class 'violation', its template data says 'package, modified or unknown'"),
    ]
    for n, key, value, message in changes:
        changed = json.loads(json.dumps(doc))
        changed["entries"][n][key] = value
        with pytest.raises(TrustError, match=f"entry {n} states {message}"):
            verify_report(json.dumps(changed).encode(), certs=(), nonce=None, source="r.json")
    # What verify cannot tell (docs/report.md): the package class is the reporter's claim from its index
    # (its counts must follow: they are the tally of the entries).
    doc["entries"][4]["class"] = "package"
    with pytest.raises(TrustError, match=r"counts.entries states .* but the report's entries give") as e:
        verify_report(json.dumps(doc).encode(), certs=(), nonce=None, source="r.json")
    assert e.value.reason == "summary-mismatch"
    verify_report(json.dumps(resummarized(doc)).encode(), certs=(), nonce=None, source="r.json")


def test_entries_of_other_pcrs_are_refused_and_big_endian_logs_verify(tmp_path):
    b = LogBuilder(byteorder="big")
    b.boot_aggregate()
    b.file("/usr/bin/tool", b"v1", template="ima-ng")
    b.ima("/usr/bin/legacy", b"old template")
    b.violation("/var/log/x")
    log = tmp_path / "big.log"
    log.write_bytes(b.binary())
    with DigestIndex.open(tmp_path / "idx") as idx:
        report = build_report(replay(iter_binary(log.read_bytes(), byteorder="big")), source="b", lookup=idx,
                              processes=(), host=HOST, generator="g", created="c", byteorder="big")  # fmt: skip
    assert verify_report(report.to_bytes(), certs=(), nonce=None, source="b").entries == 4
    b.add("ima-ng", (d_ng(b"\1" * 32), n_ng("/usr/bin/elsewhere")), pcr=11)
    with DigestIndex.open(tmp_path / "idx") as idx:
        report = build_report(replay(iter_binary(b.binary(), byteorder="big")), source="b", lookup=idx,
                              processes=(), host=HOST, generator="g", created="c", byteorder="big")  # fmt: skip
    with pytest.raises(TrustError, match="entry 4 extends PCR 11: the report attests PCR 10 only") as err:
        verify_report(report.to_bytes(), certs=(), nonce=None, source="b")
    assert err.value.reason == "unattested-pcr"


def test_nonce_asked_of_a_report_made_without_one_says_so(tmp_path, capsys):
    """Regression: it said "the report was made for nonce None, not 'abc'"."""
    doc = _report_doc(tmp_path, LAB / "ima-ng" / "binary_runtime_measurements")
    assert doc["nonce"] is None
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    assert main(["report", "verify", str(path), "--nonce", "abc"]) == 3
    assert capsys.readouterr().err == (
        f"imaguard: error: {path}: the report was made without a nonce, not for 'abc'\n")


@pytest.mark.parametrize(("text", "why"), [("", "Expecting value: line 1 column 1 (char 0)"),
                                           ("{", "Expecting property name enclosed in double quotes: line 1 "
                                                 "column 2 (char 1)")])  # fmt: skip
def test_a_report_that_is_not_json_is_named(tmp_path, capsys, text, why):
    """Regression: "verification failed: not JSON (…)" did not say which file."""
    code, err = _verify_cli(tmp_path, text, capsys)
    assert (code, err) == (3, f"imaguard: error: verification failed: {tmp_path}/r.json: not JSON ({why})\n")


def test_a_report_without_its_replay_or_nonce_says_which_field(tmp_path, capsys):
    # Review: the message carried Python's KeyError text, e.g. "report without a replayed PCR 10 ('pcr10')".
    doc = _report_doc(tmp_path, LAB / "ima-ng" / "binary_runtime_measurements")
    path = f"{tmp_path}/r.json"
    cases = [
        (lambda d: d["log"]["replay"].pop("pcr10"),
         "report without a replayed PCR 10 (log.replay.pcr10: an object of bank: hex)"),
        (lambda d: d.__setitem__("log", 7), "report without a replayed PCR 10 (log.replay.pcr10: an object of bank: hex)"),
        (lambda d: d["log"]["replay"]["pcr10"].__setitem__("sha1", "zz"), "log.replay.pcr10 holds a value that is not hex"),
        (lambda d: d.pop("nonce"), "report without its nonce field (null when none was given)"),
    ]
    for change, message in cases:
        changed = json.loads(json.dumps(doc))
        change(changed)
        code, err = _verify_cli(tmp_path, changed, capsys)
        assert (code, err) == (3, f"imaguard: error: verification failed: {path}: {message}\n")
