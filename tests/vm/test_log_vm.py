"""Issue 7 in the lab guest: ``imaguard log --pcr-from-tpm`` on the real kernel's list and TPM.

One boot of tests/vm/guest/measure_log.py with the ``ima-ng`` template: executables, reads, a
name with spaces and one open-writers violation are measured; the guest then saves the lists
around a PCR 10 read and runs ``imaguard log --pcr-from-tpm --summary --json`` itself.
"""

from __future__ import annotations

import json

import pytest

from conftest import boot
from imaguard.ima.measurements import iter_ascii, iter_binary
from imaguard.ima.replay import compare, replay
from imaguard_lab.build import Image
from imaguard_lab.runner import RunResult

pytestmark = [pytest.mark.vm, pytest.mark.slow]


@pytest.fixture(scope="module")
def log_run(lab_image: Image) -> RunResult:
    result = boot(lab_image, {}, entry="measure_log.py", cmdline=("ima_template=ima-ng", "ima_hash=sha256"))
    problem = result.problem()
    assert problem is None, problem
    assert result.status == 0, f"guest scenario exited {result.status}; serial tail:\n{result.serial_tail()}"
    return result


def test_imaguard_log_in_the_guest_is_vouched_for_by_the_tpm(log_run):
    rec = log_run.checks()["imaguard-log"]
    assert "error" not in rec, rec
    assert rec["rc"] == 0, rec["stderr"]
    doc = rec["doc"]
    # The list may have grown (imaguard's own exec) after the PCR read: then a prefix is vouched for.
    assert doc["matches_tpm"] or (doc["grew_after_pcr_read"] and doc["vouched_entries"] >= 8), doc
    assert doc["violations"] == 1
    assert set(doc["templates"]) == {"ima-ng"}
    assert doc["boot_aggregate"].startswith("sha256:")
    assert doc["truncated"] is None


def test_the_saved_lists_replay_to_the_guest_pcr10(log_run):
    art = log_run.out_dir / "artifacts"
    binary = replay(iter_binary((art / "binary_runtime_measurements").read_bytes()))
    tpm = {bank: {10: bytes.fromhex(v)} for bank, v in json.loads((art / "pcr10.json").read_text()).items()}
    assert compare(binary, tpm) == []
    assert replay(iter_ascii((art / "ascii_runtime_measurements").read_bytes())).entries == binary.entries
    paths = [e.path for e in binary.entries]
    assert b"/opt/imaguard-log/name_with_spaces.txt" in paths  # the kernel stores '_' for ' '
    assert [e.path for e in binary.entries if e.is_violation] == [b"/opt/imaguard-log/busy.txt"]
