"""Issue 5 item 6: the lab image enrolled by `imaguard enroll`, enforced for every root exec and mmap.

The image is labelled on the host (``imaguard enroll --root COPY --source local:KEY --cert CERT``,
vagrant/lab/imaguard_lab/enrolled.py); the guest loads the certificate and the policy

    appraise func=BPRM_CHECK uid=0 appraise_type=imasig
    appraise func=MMAP_CHECK mask=MAY_EXEC uid=0 appraise_type=imasig   (+ measure rules, ima-sig)

and must keep working, while changed, unpackaged and unlabelled files are refused with EACCES.
"""

from __future__ import annotations

import pytest
from enforce_expectations import (
    EVERYDAY,
    REFUSED_EXECS,
    expect_everyday_runs,
    expect_exec_refused,
    expect_keyring_and_policy,
    expect_labelled_copy_runs,
    expect_measured_files_labelled,
    expect_mmap_refused,
    expect_no_other_denials,
)

from imaguard_lab.enrolled import Enrolled, merged_usr, pruned, unexpected_refusals
from imaguard_lab.runner import RunResult

pytestmark = [pytest.mark.vm, pytest.mark.slow]

# Programs the scenario and the lab's init run after the policy; each must have been signed
# (merged /usr: dpkg lists /bin/ls, the same file as /usr/bin/ls).
_MUST_BE_SIGNED = (
    "/usr/bin/python3.11", "/usr/bin/ls", "/usr/bin/apt-get", "/usr/bin/dpkg", "/usr/bin/dpkg-query",
    "/usr/bin/systemctl", "/usr/bin/dash", "/usr/bin/dmesg", "/usr/bin/sync", "/usr/bin/umount", "/usr/bin/sleep", "/usr/bin/timeout", "/usr/bin/kmod",
    "/usr/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13",
)  # fmt: skip


def test_enrollment_is_repo_verified_and_complete(enrolled: Enrolled) -> None:
    report = enrolled.report()
    assert report["source"] == "local"
    assert report["unsafe_trust_dpkg_md5sums"] is False, "enrollment must not rely on dpkg's md5sums"
    files = report["files"]
    outcomes = {(f["outcome"], f.get("reason", "")) for f in files}
    # Every in-scope file had a verified chain: no file was skipped for weak or missing evidence.
    weak = [f for f in files if f.get("reason") in ("local-db-evidence", "no-evidence", "no-digest")]
    assert not weak, f"{len(weak)} files without repo-verified evidence, e.g. {weak[:5]}"
    # The only refusals are files the lab pruned on purpose (docs, unused kernel modules): missing.
    assert not unexpected_refusals(report), unexpected_refusals(report)[:10]
    refused = [f for f in files if f["outcome"] == "refused"]
    assert all(f["reason"] == "missing" and pruned(f["path"]) for f in refused)
    signed = {merged_usr(f["path"]) for f in files if f["outcome"] == "signed"}
    assert len(signed) > 1000, f"only {len(signed)} files signed; outcomes {sorted(outcomes)}"
    missing = [p for p in _MUST_BE_SIGNED if p not in signed]
    assert not missing, f"not signed by enroll: {missing}"


def test_keyring_and_policy_loaded(enforce_run: RunResult) -> None:
    expect_keyring_and_policy(enforce_run.checks())


@pytest.mark.parametrize("name", [n for n in EVERYDAY if n != "systemctl"])
def test_everyday_command_runs(enforce_run: RunResult, name: str) -> None:
    rec = expect_everyday_runs(enforce_run.checks(), name)
    assert rec["rc"] == 0, f"{name} started but failed: {rec}"


def test_python_c_extensions_load(enforce_run: RunResult) -> None:
    rec = expect_everyday_runs(enforce_run.checks(), "python3")
    assert rec["stdout"].strip() == "python ok", rec


def test_systemctl_is_permitted(enforce_run: RunResult) -> None:
    # PID 1 is the lab's init script, so systemctl says so and exits non-zero: the point is that the
    # kernel let it (and libsystemd-shared) run, not what it reports.
    rec = expect_everyday_runs(enforce_run.checks(), "systemctl")
    assert rec["errno"] is None
    assert rec["rc"] != 0, rec
    assert "has not been booted with systemd" in rec["stderr"] + rec["stdout"], rec


def test_labelled_copy_of_package_binary_runs(enforce_run: RunResult) -> None:
    expect_labelled_copy_runs(enforce_run.checks())


@pytest.mark.parametrize("name", sorted(REFUSED_EXECS))
def test_refused_with_eacces(enforce_run: RunResult, name: str) -> None:
    expect_exec_refused(enforce_run.checks(), name)


def test_unlabelled_library_mmap_refused(enforce_run: RunResult) -> None:
    expect_mmap_refused(enforce_run.checks())


def test_no_denials_but_the_deliberate_ones(enforce_run: RunResult) -> None:
    expect_no_other_denials(enforce_run.checks())


def test_every_measured_file_was_labelled(enforce_run: RunResult) -> None:
    expect_measured_files_labelled(enforce_run.checks())


def test_init_finished_under_the_policy(enforce_run: RunResult) -> None:
    # init runs dmesg, sync and umount after the scenario: signed, so dmesg.txt has the kernel log.
    assert enforce_run.out_dir is not None
    dmesg = (enforce_run.out_dir / "dmesg.txt").read_text(errors="replace")
    assert "Linux version" in dmesg, f"init's dmesg did not run after the policy: {dmesg[:300]!r}"


def test_skip_enroll_fails_clearly_and_still_powers_off(skip_enroll_run: RunResult) -> None:
    """Mutation: the unenrolled base image under the same policy. The run must end, not hang, and fail."""
    assert skip_enroll_run.problem() is None, skip_enroll_run.problem()
    checks = skip_enroll_run.checks()
    assert checks["start"]["mutation"] == "skip-enroll"
    with pytest.raises(AssertionError, match=r"ls: ls -l .* was refused: errno 13 .*not enrolled"):
        expect_everyday_runs(checks, "ls")
    with pytest.raises(AssertionError, match=r"python3: .* was refused: errno 13"):
        expect_everyday_runs(checks, "python3")
    with pytest.raises(AssertionError, match=r"other appraisal denials — the image was not enrolled"):
        expect_no_other_denials(checks)
    # a refusal of an unlabelled "tampered" copy proves nothing: the expectation must say so
    with pytest.raises(AssertionError, match=r"carries no enrollment signature"):
        expect_exec_refused(checks, "exec-tampered-copy")
    # what does not depend on enrollment still holds
    expect_exec_refused(checks, "exec-unpackaged-script")
    expect_keyring_and_policy(checks)
