"""Issue 3 item 4: imaguard's keys, signatures and policy enforced by Debian 12's IMA kernel."""

from __future__ import annotations

import json

import pytest
from expectations import (
    expect_audit_names_refused,
    expect_ec_refused,
    expect_keyring_loaded,
    expect_measured_with_signature,
    expect_pcr10_extended,
    expect_policy_loaded_once,
    expect_signed_runs,
    expect_tampered_refused,
    expect_unsigned_refused,
    replay_pcr10,
)

from imaguard_lab.runner import RunResult

pytestmark = [pytest.mark.vm, pytest.mark.slow]


def test_imaguard_signed_with_its_own_cli(appraise_run: RunResult) -> None:
    sign = appraise_run.checks()["imaguard-sign"]
    assert not sign.get("skipped"), f"signing was skipped: {sign}"
    assert sign.get("rc") == 0, f"imaguard sign failed in the guest: {sign}"
    verify = appraise_run.checks()["imaguard-verify"]
    assert verify["signed_rc"] == 0, f"imaguard verify rejects its own signature: {verify}"
    assert verify["tampered_rc"] != 0, f"imaguard verify accepts the tampered copy: {verify}"


def test_evmctl_accepts_imaguard_signature(appraise_run: RunResult) -> None:
    rec = appraise_run.checks()["evmctl-verify"]
    assert rec["rc"] == 0, f"evmctl ima_verify rejects imaguard's signature: {rec['out']}"


def test_keyring_loaded(appraise_run: RunResult) -> None:
    expect_keyring_loaded(appraise_run.checks())


def test_ec_certificate_refused_with_clear_error(appraise_run: RunResult) -> None:
    expect_ec_refused(appraise_run.checks())


def test_policy_loaded_once(appraise_run: RunResult) -> None:
    expect_policy_loaded_once(appraise_run.checks())


def test_signed_copy_runs(appraise_run: RunResult) -> None:
    expect_signed_runs(appraise_run.checks())


def test_unsigned_copy_refused(appraise_run: RunResult) -> None:
    expect_unsigned_refused(appraise_run.checks())


def test_tampered_copy_refused(appraise_run: RunResult) -> None:
    expect_tampered_refused(appraise_run.checks())


def test_audit_records_name_refused_files(appraise_run: RunResult) -> None:
    expect_audit_names_refused(appraise_run.checks())


def test_measurement_list_carries_imaguard_signature(appraise_run: RunResult) -> None:
    expect_measured_with_signature(appraise_run.checks())


def test_pcr10_extended_and_replays(appraise_run: RunResult) -> None:
    checks = appraise_run.checks()
    expect_pcr10_extended(checks)
    assert checks["measurements"]["log_stable"], "the log changed while PCR 10 was read"
    assert appraise_run.out_dir is not None
    log = (appraise_run.out_dir / "artifacts" / "binary_runtime_measurements").read_bytes()
    pcr = json.loads((appraise_run.out_dir / "artifacts" / "pcr10.json").read_text())
    assert replay_pcr10(log) == pcr, "PCR 10 does not equal the replay of binary_runtime_measurements"
