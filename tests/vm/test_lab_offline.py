"""The lab's host-side logic without booting anything (no ``vm`` marker: runs everywhere)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from expectations import (
    expect_signed_runs,
    expect_tampered_refused,
    expect_unsigned_refused,
    replay_pcr10,
)

from imaguard_lab.recipe import Recipe
from imaguard_lab.runner import RunResult, _kill_group, alive

DATA = Path(__file__).resolve().parents[1] / "data" / "lab"
PATH = "/opt/imaguard-lab/"


def test_captured_log_replays_to_captured_pcr10() -> None:
    log = (DATA / "binary_runtime_measurements").read_bytes()
    assert replay_pcr10(log) == json.loads((DATA / "pcr10.json").read_text())


def test_recipe_keys_are_stable_and_sensitive() -> None:
    assert Recipe().image_key() == Recipe().image_key()
    assert Recipe().rootfs_key() != Recipe(packages=(*Recipe().packages, "strace")).rootfs_key()
    # the image key covers the rootfs inputs too
    assert Recipe().image_key() != Recipe(suite="trixie").image_key()


def _checks(*, signed: bool) -> dict[str, dict[str, object]]:
    sig = "030204deadbeef0100" + "00" * 256 if signed else None
    tampered_cause = "invalid-signature" if signed else "IMA-signature-required"
    audit = [
        f'audit: type=1800 op=appraise_data cause=IMA-signature-required name="{PATH}unsigned-echo" res=0',
        f'audit: type=1800 op=appraise_data cause={tampered_cause} name="{PATH}tampered-echo" res=0',
    ]
    if not signed:
        audit.append(f'audit: type=1800 op=appraise_data cause=IMA-signature-required name="{PATH}signed-echo" res=0')
    return {
        "imaguard-sign": {"skipped": not signed, "rc": 0 if signed else None},
        "exec-signed": (
            {"path": PATH + "signed-echo", "refused": False, "errno": None, "rc": 0, "stdout": "imaguard-lab-ok"}
            if signed
            else {"path": PATH + "signed-echo", "refused": True, "errno": 13, "strerror": "Permission denied"}
        ),
        "exec-unsigned": {"path": PATH + "unsigned-echo", "refused": True, "errno": 13},
        "exec-tampered": {"path": PATH + "tampered-echo", "refused": True, "errno": 13},
        "tamper": {"path": PATH + "tampered-echo", "xattr_after": sig},
        "audit": {"type1800": audit},
    }


def test_expectations_pass_on_a_good_run() -> None:
    checks = _checks(signed=True)
    expect_signed_runs(checks)
    expect_unsigned_refused(checks)
    expect_tampered_refused(checks)


def test_expectations_fail_clearly_when_signing_is_skipped() -> None:
    checks = _checks(signed=False)
    with pytest.raises(AssertionError, match="signing step was skipped"):
        expect_signed_runs(checks)
    with pytest.raises(AssertionError, match="carries no imaguard signature"):
        expect_tampered_refused(checks)


def test_expectations_fail_when_the_kernel_accepts_the_tampered_copy() -> None:
    checks = _checks(signed=True)
    checks["exec-tampered"] = {"path": PATH + "tampered-echo", "refused": False, "errno": None, "rc": 0}
    with pytest.raises(AssertionError, match="the kernel ran the TAMPERED copy"):
        expect_tampered_refused(checks)


def test_missing_check_is_named() -> None:
    with pytest.raises(AssertionError, match="no 'exec-unsigned' check"):
        expect_unsigned_refused({})


def test_kill_group_stops_the_whole_group() -> None:
    # a leader with a child in its own session: both must be gone afterwards
    proc = subprocess.Popen(
        [sys.executable, "-c", "import subprocess,time; subprocess.Popen(['sleep','300']); time.sleep(300)"],
        start_new_session=True,
    )
    try:
        children: list[int] = []
        for _ in range(50):
            out = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True, check=False)
            children = [int(p) for p in out.stdout.split() if int(p) != proc.pid]
            if children:
                break
            subprocess.run(["sleep", "0.1"], check=True)
        assert children, "test child did not start"
    finally:
        _kill_group(proc, grace_s=2)
    assert not alive(proc.pid)
    for pid in children:
        for _ in range(50):
            if not alive(pid):
                break
            subprocess.run(["sleep", "0.1"], check=True)
        assert not alive(pid), f"child {pid} of the killed group survived"


def test_problem_names_timeout_and_shows_serial_tail(tmp_path: Path) -> None:
    serial = tmp_path / "serial.log"
    serial.write_text("".join(f"line {i}\n" for i in range(100)))
    result = RunResult(tmp_path, None, serial, None, [], 1.0, True, False, [os.getpid()], "tcg")
    problem = result.problem()
    assert problem is not None
    assert "timed out" in problem
    assert "line 99" in problem
    assert "line 10\n" not in problem
