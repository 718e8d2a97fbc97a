"""The scenario's expectations can fail: with signing skipped (test-only switch) they must."""

from __future__ import annotations

import pytest
from expectations import expect_signed_runs, expect_tampered_refused, expect_unsigned_refused

from imaguard_lab.build import Image
from imaguard_lab.runner import RunResult, RunSpec, alive, run

pytestmark = [pytest.mark.vm, pytest.mark.slow]


def test_skip_sign_turns_expectations_into_failures(skip_sign_run: RunResult) -> None:
    checks = skip_sign_run.checks()
    assert checks["imaguard-sign"].get("skipped"), "the mutation did not reach the guest"
    # The signed copy is now unsigned: the kernel refuses it, and the test must say so.
    with pytest.raises(AssertionError, match=r"refused the copy imaguard signed .*signing step was skipped"):
        expect_signed_runs(checks)
    # The tampered copy is still refused, but without a signature the refusal proves nothing:
    # the tampered-copy expectation must fail, not pass by accident.
    with pytest.raises(AssertionError, match=r"carries no imaguard signature"):
        expect_tampered_refused(checks)
    # What does not depend on signing still holds (the run itself was sound).
    expect_unsigned_refused(checks)


def test_runner_timeout_kills_only_its_own_processes(lab_image: Image) -> None:
    # A whole-run limit far below boot time: the runner must kill qemu and swtpm and say why.
    result = run(RunSpec(entry="appraise.py", timeout_s=1, boot_allowance_s=8), lab_image)
    assert result.timed_out
    problem = result.problem()
    assert problem is not None
    assert "timed out" in problem
    assert "last lines of" in problem
    assert result.started_pids
    assert not [pid for pid in result.started_pids if alive(pid)]
