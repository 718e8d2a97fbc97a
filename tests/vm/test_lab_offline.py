"""The lab's host-side logic without booting anything (no ``vm`` marker: runs everywhere)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from enforce_expectations import REFUSED_EXECS, expect_everyday_runs, expect_exec_refused, expect_no_other_denials
from expectations import (
    expect_signed_runs,
    expect_tampered_refused,
    expect_unsigned_refused,
    replay_pcr10,
)

from imaguard_lab.enrolled import pruned, unexpected_refusals
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


def test_pruned_paths_are_exactly_the_recipe_prunes() -> None:
    assert pruned("/usr/share/doc/coreutils/copyright")
    assert pruned("/usr/lib/modules/6.1.0-50-amd64/kernel/drivers/gpu/drm/drm.ko")
    assert pruned("/lib/modules/6.1.0-50-amd64/kernel/sound/core/snd.ko")  # as dpkg lists it (merged /usr)
    assert not pruned("/usr/lib/modules/6.1.0-50-amd64/kernel/drivers/net/virtio_net.ko")
    assert not pruned("/usr/bin/ls")
    assert not pruned("/usr/share/documentation")  # a prefix of a name is not its directory
    report = {"files": [
        {"path": "/usr/share/man/man1/ls.1.gz", "outcome": "refused", "reason": "missing"},
        {"path": "/usr/bin/ls", "outcome": "refused", "reason": "digest-mismatch"},
        {"path": "/usr/share/doc/x", "outcome": "refused", "reason": "digest-mismatch"},
    ]}  # fmt: skip
    assert [f["path"] for f in unexpected_refusals(report)] == ["/usr/bin/ls", "/usr/share/doc/x"]


def _enforce_checks(*, enrolled: bool) -> dict[str, dict[str, object]]:
    def ran(argv: list[str], out: str = "") -> dict[str, object]:
        return {"argv": argv, "started": True, "refused": False, "errno": None, "rc": 0, "stdout": out, "stderr": ""}

    def refused(argv: list[str]) -> dict[str, object]:
        path = "/usr/local/lib/imaguard-lab/imaguard" if argv[0] == "/usr/local/bin/imaguard" else argv[0]
        return {"argv": argv, "path": path, "started": False, "refused": True, "errno": 13, "strerror": "EACCES"}

    lib = "/opt/imaguard-lab/unlabelled-libz.so"
    audit = [
        f'audit: type=1800 op=appraise_data cause=IMA-signature-required name="{PATH}{n}" res=0'
        for n in ("unlabelled-echo", "site-hello")
    ] + [
        'audit: type=1800 op=appraise_data cause=IMA-signature-required name="/usr/local/lib/imaguard-lab/imaguard" res=0',
        f'audit: type=1800 op=appraise_data cause=IMA-signature-required name="{lib}" res=0',
        f"audit: type=1800 op=appraise_data cause={'invalid-signature' if enrolled else 'IMA-signature-required'} "
        f'name="{PATH}tampered-echo" res=0',
    ]
    ls = ["ls", "-l", "/usr/bin/python3"]
    if not enrolled:
        audit.append('audit: type=1800 op=appraise_data cause=IMA-signature-required name="/usr/bin/ls" res=0')
    return {
        "start": {"mutation": None if enrolled else "skip-enroll"},
        "run-ls": ran(ls) if enrolled else refused(ls),
        "prepared": {"tampered-copy": {"xattr": "030204aabbccdd" if enrolled else None}},
        "exec-tampered-copy": refused([f"{PATH}tampered-echo", "x"]),
        "exec-unlabelled-copy": refused([f"{PATH}unlabelled-echo", "x"]),
        "exec-unpackaged-script": refused([f"{PATH}site-hello"]),
        "exec-lab-wrapper": refused(["/usr/local/bin/imaguard", "--help"]),
        "mmap-unlabelled-lib": {"path": lib, "mmap_refused": True, "mmap_errno": 13, "dlopen_ok": False},
        "audit": {"type1800": audit},
    }


def test_enforce_expectations_pass_on_a_good_run_and_fail_without_enrollment() -> None:
    good = _enforce_checks(enrolled=True)
    expect_everyday_runs(good, "ls")
    for name in REFUSED_EXECS:
        expect_exec_refused(good, name)
    expect_no_other_denials(good)
    bad = _enforce_checks(enrolled=False)
    with pytest.raises(AssertionError, match=r"was refused: errno 13 .*not enrolled"):
        expect_everyday_runs(bad, "ls")
    with pytest.raises(AssertionError, match="carries no enrollment signature"):
        expect_exec_refused(bad, "exec-tampered-copy")
    with pytest.raises(AssertionError, match=r"1 other appraisal denials .*/usr/bin/ls"):
        expect_no_other_denials(bad)
