"""Regressions of the `log`/`report` CLI audit: --pcr values are not the TPM's, keylime-policy reads
--file like the other formats, --json with --format text, -o over an input, options before
`report verify|ak`, and the ASCII list given as a binary one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from imaguard.cli.main import main
from imaguard.packages.index import DigestIndex

LAB = Path(__file__).resolve().parents[1] / "data" / "lab"
BINARY = LAB / "binary_runtime_measurements"
ASCII = LAB / "ascii_runtime_measurements"
PCR = json.loads((LAB / "pcr10.json").read_text())
ZERO256 = "00" * 32


@pytest.fixture
def index(tmp_path: Path) -> Path:
    """An empty digest index: enough for every format to read the list."""
    with DigestIndex.open(tmp_path / "state"):
        pass
    return tmp_path / "state"


def _json(capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, object], str]:
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


# A. --pcr values are what the user expects, not what a TPM holds.


def test_given_pcrs_are_not_called_the_tpm(capsys):
    assert main(["log", "--file", str(BINARY), "--summary", "--pcr", f"sha256:{PCR['sha256']}"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        f"PCR 10 sha1: {PCR['sha1']}",
        f"PCR 10 sha256: {PCR['sha256']} = expected (--pcr)",
        "the given values (--pcr; no TPM was read) match this list: every compared PCR equals the given value",
    ]
    assert main(["log", "--file", str(BINARY), "--summary", "--pcr", f"sha256:{ZERO256}"]) == 3
    captured = capsys.readouterr()
    assert captured.out.splitlines()[2:] == [
        f"PCR 10 sha256: {PCR['sha256']} != expected (--pcr) {ZERO256}",
        "the list does NOT match the given PCR values (--pcr)",
    ]
    assert captured.err == f"imaguard: PCR 10 sha256: log replays to {PCR['sha256']}, --pcr expects {ZERO256}\n"


def test_json_says_where_the_compared_values_come_from(capsys, monkeypatch):
    assert main(["log", "--file", str(BINARY), "--summary", "--json", "--pcr", f"sha256:{PCR['sha256']}"]) == 0
    doc, _ = _json(capsys)
    # "tpm" and "matches_tpm" keep their names for existing readers; "pcr_source" tells them apart.
    assert (doc["pcr_source"], doc["tpm"], doc["matches_tpm"]) == ("given", {"sha256": {"10": PCR["sha256"]}}, True)
    assert main(["log", "--file", str(BINARY), "--summary", "--json", "--replay"]) == 0
    assert "pcr_source" not in _json(capsys)[0]  # nothing compared

    import imaguard.ima.pcrs  # noqa: PLC0415

    tpm = {bank: {10: bytes.fromhex(PCR[bank])} for bank in ("sha1", "sha256")}
    monkeypatch.setattr(imaguard.ima.pcrs, "read_pcrs", lambda banks, indexes: tpm)
    assert main(["log", "--file", str(BINARY), "--summary", "--json", "--pcr-from-tpm"]) == 0
    doc, _ = _json(capsys)
    assert (doc["pcr_source"], doc["matches_tpm"]) == ("tpm", True)
    assert main(["log", "--file", str(BINARY), "--summary", "--pcr-from-tpm"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        f"PCR 10 sha1: {PCR['sha1']} = TPM",
        f"PCR 10 sha256: {PCR['sha256']} = TPM",
        "the TPM vouches for this list: every compared PCR equals the replay",
    ]


def test_a_bank_given_twice_with_different_values_is_a_usage_error(capsys):
    argv = ["log", "--file", str(BINARY), "--summary", "--pcr", f"sha256:{PCR['sha256']}"]
    assert main([*argv, "--pcr", f"sha256:{ZERO256}"]) == 2
    assert capsys.readouterr().err == (
        "imaguard: error: --pcr sha256: given twice with different values; give one value per bank\n"
    )
    assert main([*argv, "--pcr", f"sha256:{PCR['sha256'].upper()}"]) == 0  # the same value twice: fine
    capsys.readouterr()
    assert main([*argv, "--pcr", f"sha1:{ZERO256[:40]}", "--pcr", f"sha1:{'11' * 20}", "--json"]) == 2
    assert _json(capsys)[0] == {"error": {"reason": "usage", "message": (
        "--pcr sha1: given twice with different values; give one value per bank")}}  # fmt: skip


def test_given_pcrs_and_the_tpm_do_not_mix(capsys):
    # The TPM's values silently replaced the given ones (and the TPM was read to do so).
    assert main(["log", "--file", str(BINARY), "--pcr", f"sha256:{PCR['sha256']}", "--pcr-from-tpm"]) == 2
    assert capsys.readouterr().err == "imaguard: error: --pcr and --pcr-from-tpm: give one (values typed, or the TPM's)\n"


# B. keylime-policy reads --file as the other formats do.


@pytest.mark.parametrize("fmt", ["keylime-policy", "cel", "json"])
def test_a_missing_list_is_a_usage_error_in_every_format(fmt, index, tmp_path, capsys):
    missing = tmp_path / "nope"
    argv = ["report", "--format", fmt, "--file", str(missing), "--index", str(index), "--no-processes"]
    assert main(argv) == 2
    assert capsys.readouterr().err == f"imaguard: error: {missing}: no such measurement list\n"
    assert main([*argv, "--json"]) == 2
    assert _json(capsys)[0] == {"error": {"reason": "missing", "message": f"{missing}: no such measurement list"}}


@pytest.mark.parametrize("fmt", ["keylime-policy", "cel"])
def test_a_malformed_list_fails_naming_the_file_in_every_format(fmt, index, tmp_path, capsys):
    out = tmp_path / "out.json"
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"garbage garbage garbage garbage")
    assert main(["report", "--format", fmt, "--file", str(garbage), "--index", str(index), "-o", str(out)]) == 1
    assert capsys.readouterr().err == (f"imaguard: error: {garbage}: first PCR index 67617262 is not a PCR in either "
                                       "byte order (at byte offset 0)\n")  # fmt: skip
    # A whole first record (boot_aggregate) and garbage after it: the policy was written from the
    # first record alone.
    tail = tmp_path / "tail"
    tail.write_bytes(BINARY.read_bytes()[:1704] + b"\xff" * 64)
    assert main(["report", "--format", fmt, "--file", str(tail), "--index", str(index), "-o", str(out),
                 "--json"]) == 1  # fmt: skip
    assert _json(capsys)[0] == {"error": {"reason": "malformed", "message": (
        f"{tail}: PCR index 4294967295 is out of range (byte order?) (at byte offset 1704)")}}  # fmt: skip
    assert not out.exists()


def test_keylime_policy_warns_when_the_list_has_no_boot_aggregate(index, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    out = tmp_path / "policy.json"
    assert main(["report", "--format", "keylime-policy", "--file", str(empty), "--index", str(index), "-o", str(out),
                 "--json"]) == 0  # fmt: skip
    assert capsys.readouterr().err == (
        f"imaguard: warning [W-NO-BOOT-AGGREGATE]: {empty}: the list does not start with a boot_aggregate entry: "
        "the policy has no boot_aggregate digest\n"
    )
    assert "boot_aggregate" not in json.loads(out.read_text())["digests"]
    assert main(["report", "--format", "keylime-policy", "--file", str(BINARY), "--index", str(index), "-o", str(out),
                 "--json"]) == 0  # fmt: skip
    assert capsys.readouterr().err == ""
    assert list(json.loads(out.read_text())["digests"]) == ["boot_aggregate"]


# C. --json promises JSON: not with the text report.


def test_json_with_the_text_report_is_a_usage_error(index, capsys):
    argv = ["report", "--format", "text", "--file", str(BINARY), "--index", str(index), "--no-processes", "--json"]
    assert main(argv) == 2
    doc, err = _json(capsys)
    message = ("--json asks for JSON, --format text is the report for a person: give --format json (the same report) "
               "or leave out --json")  # fmt: skip
    assert doc == {"error": {"reason": "usage", "message": message}}
    assert err == f"imaguard: error: {message}\n"


# D. -o never replaces an input.


def test_output_over_the_input_list_is_refused(index, tmp_path, capsys):
    saved = tmp_path / "saved.bin"
    saved.write_bytes(BINARY.read_bytes())
    for fmt in ("json", "cel", "keylime-policy"):
        assert main(["report", "--format", fmt, "--file", str(saved), "--index", str(index), "--no-processes",
                     "-o", str(saved)]) == 2  # fmt: skip
        assert capsys.readouterr().err == (f"imaguard: error: -o {saved} is the --file input {saved}: refusing to "
                                           "overwrite it; write the document elsewhere\n")  # fmt: skip
    link = tmp_path / "hardlink.bin"
    os.link(saved, link)
    assert main(["report", "--format", "cel", "--file", str(saved), "--index", str(index), "-o", str(link),
                 "--json"]) == 2  # fmt: skip
    assert _json(capsys)[0]["error"] == {"reason": "usage", "message": (
        f"-o {link} is the --file input {saved}: refusing to overwrite it; write the document elsewhere")}  # fmt: skip
    assert saved.read_bytes() == BINARY.read_bytes()
    db = index / "index.sqlite"
    assert main(["report", "--format", "cel", "--file", str(saved), "--index", str(index), "-o", str(db)]) == 2
    assert capsys.readouterr().err == (f"imaguard: error: -o {db} is the --index input {db}: refusing to overwrite "
                                       "it; write the document elsewhere\n")  # fmt: skip
    # An ordinary existing output file is replaced.
    out = tmp_path / "cel.json"
    out.write_text("old")
    assert main(["report", "--format", "cel", "--file", str(saved), "--index", str(index), "-o", str(out)]) == 0
    assert json.loads(out.read_text())[0]["recnum"] == 0


# E. Options of `report` given with `report verify|ak` were parsed and dropped.


def test_report_options_before_verify_or_ak_are_a_usage_error(index, tmp_path, capsys):
    report = tmp_path / "r.json"
    report.write_text("{}")
    assert main(["report", "--file", str(BINARY), "--index", str(index), "verify", str(report)]) == 2
    assert capsys.readouterr().err == ("imaguard: error: imaguard report: --file, --index apply to the report, not to "
                                       "`report verify`: give verify's own options after `verify`\n")  # fmt: skip
    # --nonce exists in both: `report --nonce N verify R` used to verify without any nonce.
    assert main(["report", "--nonce", "n1", "verify", "--json", str(report)]) == 2
    assert _json(capsys)[0] == {"error": {"reason": "usage", "message": (
        "imaguard report: --nonce applies to the report, not to `report verify`: give verify's own options after "
        "`verify`")}}  # fmt: skip
    assert main(["report", "-o", str(tmp_path / "ak.pem"), "ak"]) == 2
    assert capsys.readouterr().err == ("imaguard: error: imaguard report: -o/--output applies to the report, not to "
                                       "`report ak`: give ak's own options after `ak`\n")  # fmt: skip


# F. The ASCII list given as a binary one.


def test_the_ascii_list_without_ascii_gets_a_hint(tmp_path, capsys):
    assert main(["log", "--file", str(ASCII), "--summary"]) == 1
    assert capsys.readouterr().err == (f"imaguard: error: {ASCII}: first PCR index 31302032 is not a PCR in either "
                                       "byte order (at byte offset 0); it looks like the ASCII list: use --ascii\n")  # fmt: skip
    assert main(["log", "--file", str(ASCII), "--byteorder", "little", "--json"]) == 1
    assert _json(capsys)[0]["error"] == {"reason": "malformed", "offset": 0, "message": (
        f"{ASCII}: PCR index 840970289 is out of range (byte order?) (at byte offset 0); it looks like the ASCII "
        "list: use --ascii")}  # fmt: skip
    # Garbage that is not ASCII digits gets no hint.
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"garbage garbage garbage garbage")
    assert main(["log", "--file", str(garbage)]) == 1
    assert capsys.readouterr().err == (f"imaguard: error: {garbage}: first PCR index 67617262 is not a PCR in either "
                                       "byte order (at byte offset 0)\n")  # fmt: skip


def test_report_of_the_ascii_list_gets_a_hint(index, capsys):
    assert main(["report", "--format", "cel", "--file", str(ASCII), "--index", str(index)]) == 1
    assert capsys.readouterr().err == (
        f"imaguard: error: {ASCII}: first PCR index 31302032 is not a PCR in either byte order (at byte offset 0); "
        "it looks like the ASCII list: give the binary one (binary_runtime_measurements)\n"
    )
