"""``imaguard log --pcr-from-tpm`` against a real (software) TPM: swtpm extended by tpm2_pcrextend.

The TPM does the PCR arithmetic; the test only feeds it what the kernel would extend (the sha1
template digest, sha256 of the template data, 0xff for a violation), then reads it through
imaguard's own tpm2_pcrread path. Needs swtpm and tpm2-tools (scripts/setup.sh); no root.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imaguard.cli.main import main
from imaguard.ima.pcrs import parse_pcrread, read_pcrs
from logbuilder import LogBuilder
from swtpmlib import start_swtpm

pytestmark = pytest.mark.skipif(
    not (shutil.which("swtpm") and shutil.which("tpm2_pcrextend")) and os.environ.get("IMAGUARD_LAB_REQUIRED") != "1",
    reason="needs swtpm and tpm2-tools"
)


@pytest.fixture
def swtpm(tmp_path, monkeypatch):
    proc, tcti = start_swtpm(tmp_path)
    monkeypatch.setenv("TPM2TOOLS_TCTI", tcti)
    yield tcti
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)


def _extend(entry) -> None:
    """What the kernel extends PCR 10 with for this entry, in both banks."""
    if entry.is_violation:
        sha1, sha256 = "ff" * 20, "ff" * 32
    else:
        sha1, sha256 = entry.template_digest.hex(), hashlib.sha256(entry.template_data).hexdigest()
    subprocess.run(["tpm2_pcrextend", f"10:sha1={sha1},sha256={sha256}"], check=True, capture_output=True)


def test_replay_equals_the_tpm_then_a_grown_list_then_a_forged_one(swtpm, tmp_path, capsys):
    b = LogBuilder()
    b.boot_aggregate(template="ima-sig")
    b.file("/usr/bin/true", b"true")
    b.violation("/etc/busy")
    b.buf("_ima", b"\x30\x82cert")
    for e in b.entries:
        _extend(e)
    log = tmp_path / "list"
    log.write_bytes(b.binary())
    assert read_pcrs() == {bank: {10: replay_value} for bank, replay_value in _replayed(log).items()}
    assert main(["log", "--file", str(log), "--pcr-from-tpm", "--summary"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "the TPM vouches for this list: every compared PCR equals the replay"
    )
    # The list grows after the PCR read: still vouched for, up to the PCR.
    b.file("/usr/bin/late", b"late")
    log.write_bytes(b.binary())
    assert main(["log", "--file", str(log), "--pcr-from-tpm", "--summary"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "the TPM vouches for the first 4 entries; 1 more were added after PCR 10 was read (the list grew)"
    )
    # A measurement the list does not show was extended: no prefix matches any more.
    subprocess.run(["tpm2_pcrextend", f"10:sha1={'11' * 20},sha256={'11' * 32}"], check=True, capture_output=True)
    assert main(["log", "--file", str(log), "--pcr-from-tpm", "--summary"]) == 3
    assert capsys.readouterr().out.splitlines()[-1] == "the list does NOT match the TPM"


def _replayed(log: Path) -> dict[str, bytes]:
    from imaguard.ima.measurements import iter_binary  # noqa: PLC0415
    from imaguard.ima.replay import replay  # noqa: PLC0415

    r = replay(iter_binary(log.read_bytes()))
    return {"sha1": r.pcr(10, "sha1"), "sha256": r.pcr(10, "sha256")}


def test_parse_pcrread_output():
    text = "  sha1:\n    10: 0xD6EBC4E04E1612A1AE465C51C090608BC5E6E174\n  sha256:\n    10: 0x" + "AB" * 32 + "\n"
    assert parse_pcrread(text) == {
        "sha1": {10: bytes.fromhex("d6ebc4e04e1612a1ae465c51c090608bc5e6e174")},
        "sha256": {10: b"\xab" * 32},
    }
    assert parse_pcrread("  sha384:\n") == {}  # a bank the TPM does not have prints no values
    with pytest.raises(Exception, match="tpm2_pcrread output line 1 is not understood: 'garbage'"):
        parse_pcrread("garbage\n")


def test_no_tpm_is_unsupported(monkeypatch, capsys):
    monkeypatch.delenv("TPM2TOOLS_TCTI", raising=False)
    if Path("/dev/tpmrm0").exists():
        pytest.skip("this host has a TPM")
    assert main(["log", "--file", "/dev/null", "--pcr-from-tpm"]) == 77
    assert capsys.readouterr().err == "imaguard: error: no TPM: /dev/tpmrm0 does not exist\n"
