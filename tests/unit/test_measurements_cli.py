"""``imaguard log`` through main(): output, JSON, exit codes, errors (no tracebacks)."""

from __future__ import annotations

import json
from pathlib import Path

from imaguard.cli.main import main
from imaguard.ima.measurements import iter_binary
from imaguard.ima.replay import replay

LAB = Path(__file__).resolve().parents[1] / "data" / "lab"
BINARY = LAB / "binary_runtime_measurements"
ASCII = LAB / "ascii_runtime_measurements"
PCR = json.loads((LAB / "pcr10.json").read_text())


def test_listing_and_replay_matching_given_pcrs(capsys):
    code = main(["log", "--file", str(BINARY), "--pcr", f"sha1:{PCR['sha1']}", "--pcr", f"sha256:{PCR['sha256']}"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0].split() == ["#", "PCR", "TEMPLATE", "DIGEST", "SIG", "PATH"]
    assert out[4].split() == [
        "3", "10", "ima-sig", "sha256:a049fb47554c6cde2ee452e5d87f6386abb63af7cdcae9cd0dc99fc80e0bcf35", "sig:baafaed8",
        "/opt/imaguard-lab/signed-echo",
    ]
    assert out[7:] == [
        f"{BINARY}: 6 entries (ima-buf 1, ima-sig 5), 0 violations, 2092 bytes checked",
        f"PCR 10 sha1: {PCR['sha1']} = expected (--pcr)",
        f"PCR 10 sha256: {PCR['sha256']} = expected (--pcr)",
        "the given values (--pcr; no TPM was read) match this list: every compared PCR equals the given value",
    ]


def test_a_differing_pcr_exits_3_and_says_so(capsys):
    code = main(["log", "--ascii", "--file", str(ASCII), "--summary", "--pcr", "sha256:" + "00" * 32])
    captured = capsys.readouterr()
    assert code == 3
    assert captured.out.splitlines()[-1] == "the list does NOT match the given PCR values (--pcr)"
    assert captured.err == f"imaguard: PCR 10 sha256: log replays to {PCR['sha256']}, --pcr expects {'00' * 32}\n"


def test_json_mismatches_of_given_values_do_not_name_a_tpm(capsys):
    code = main(["log", "--ascii", "--file", str(ASCII), "--summary", "--json", "--pcr", "sha256:" + "00" * 32])
    doc = json.loads(capsys.readouterr().out)
    assert code == 3
    assert (doc["pcr_source"], doc["matches_tpm"]) == ("given", False)
    assert doc["mismatches"] == [f"PCR 10 sha256: log replays to {PCR['sha256']}, --pcr expects {'00' * 32}"]


def test_json_is_one_document_with_entries_and_replay(capsys):
    assert main(["log", "--file", str(BINARY), "--replay", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["count"], doc["violations"], doc["end"], doc["truncated"]) == (6, 0, 2092, None)
    assert doc["replay"] == {"sha1": {"10": PCR["sha1"]}, "sha256": {"10": PCR["sha256"]}}
    assert [e["path"] for e in doc["entries"]][:3] == ["boot_aggregate", "_ima", "/usr/bin/tpm2"]
    assert doc["entries"][1]["buf"] == (LAB / "ima-rsa.cert.der").read_bytes().hex()
    assert doc["entries"][3]["sig"] == json.loads((LAB / "capture.json").read_text())["signed_file_xattr"]


def test_a_truncated_list_is_reported_not_refused(tmp_path, capsys):
    cut = tmp_path / "cut"
    cut.write_bytes(BINARY.read_bytes()[:1900])
    assert main(["log", "--file", str(cut), "--summary"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{cut}: 5 entries (ima-buf 1, ima-sig 4), 0 violations, 1704 bytes checked",
        "the file ends inside a record at byte 1704 (196 bytes of it present): a copy taken while the list grew, "
        "or bytes that are not a record; only the 5 entries before it were checked",
    ]


def test_junk_after_a_whole_list_is_not_vouched_for(tmp_path, capsys):
    """A saved copy with bytes after its last record: the TPM vouches for the records, and the
    output says that the rest was neither checked nor covered."""
    junk = tmp_path / "junk"
    junk.write_bytes(BINARY.read_bytes() + b"\x0a\x00\x00\x00" + b"J" * 16)  # PCR 10, then part of a digest
    code = main(["log", "--file", str(junk), "--summary", "--pcr", f"sha1:{PCR['sha1']}", "--pcr",
                 f"sha256:{PCR['sha256']}"])  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[1] == ("the file ends inside a record at byte 2092 (20 bytes of it present): a copy taken while the "
                      "list grew, or bytes that are not a record; only the 6 entries before it were checked")
    assert out[-1] == ("the given values (--pcr; no TPM was read) match the 6 whole entries of this list (not the "
                       "bytes after them): every compared PCR equals the given value")


def test_a_corrupt_list_is_an_error_naming_the_offset(tmp_path, capsys):
    bad = bytearray(BINARY.read_bytes())
    bad[1704 + 60] ^= 1
    path = tmp_path / "bad"
    path.write_bytes(bytes(bad))
    assert main(["log", "--file", str(path), "--summary"]) == 1
    assert capsys.readouterr().err == (
        f"imaguard: error: {path}: template digest of entry 5 does not match its data (at byte offset 1708)\n"
    )
    assert main(["log", "--file", str(path), "--json"]) == 1
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert len(doc["entries"]) == 5
    assert doc["error"] == {
        "reason": "malformed", "offset": 1708,
        "message": f"{path}: template digest of entry 5 does not match its data (at byte offset 1708)",
    }


def test_usage_errors(tmp_path, capsys):
    assert main(["log", "--file", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err == f"imaguard: error: {tmp_path / 'missing'}: cannot read: No such file or directory\n"
    assert main(["log", "--file", str(BINARY), "--pcr", "sha256:abcd"]) == 2
    assert capsys.readouterr().err == "imaguard: error: --pcr 'sha256:abcd': expected 64 hex digits for sha256\n"
    # Regression: a bank the replay does not compute was accepted and never compared (exit 0 with
    # "every compared PCR equals the replay" beside a correct sha1 value).
    for bank in ("sha384:" + "00" * 48, "md5:" + "00" * 16, "nocolon"):
        assert main(["log", "--file", str(BINARY), "--summary", "--pcr", bank]) == 2
        assert capsys.readouterr().err == (f"imaguard: error: --pcr {bank!r}: expected BANK:HEX, BANK sha1 or sha256 "
                                           "(the banks replayed)\n")  # fmt: skip


def test_a_list_that_grew_after_the_pcr_read_is_vouched_for_up_to_the_pcr(capsys):
    first5 = replay(iter_binary(BINARY.read_bytes()[:1704]))
    pcrs = [f"--pcr={bank}:{first5.pcr(10, bank).hex()}" for bank in ("sha1", "sha256")]
    assert main(["log", "--file", str(BINARY), "--summary", *pcrs]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "the given PCR 10 values (--pcr) match the first 5 entries; the list has 1 more that they do not cover "
        "(added after the values were taken)"
    )
    assert main(["log", "--file", str(BINARY), "--json", *pcrs]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["matches_tpm"], doc["vouched_entries"], doc["grew_after_pcr_read"]) == (False, 5, True)
    assert doc["pcr_source"] == "given"
    # Only one bank reached: not a grown list but a mismatch.
    assert main(["log", "--file", str(BINARY), "--summary", pcrs[0], f"--pcr=sha256:{'00' * 32}"]) == 3


def test_an_error_before_the_first_record_is_one_json_error_document(tmp_path, capsys):
    path = tmp_path / "garbage"
    path.write_bytes(b"\x01\x02\x03\x04" * 10)
    assert main(["log", "--file", str(path), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc == {"error": {"reason": "malformed", "message": (
        f"{path}: first PCR index 01020304 is not a PCR in either byte order (at byte offset 0)")}}
