"""Issue 6 acceptance on the real kernel: multi-boot runs (same overlay, TPM state and work disk
across boots) and systemd as PID 1. See vagrant/lab/README.md, "Multi-boot runs"."""

from __future__ import annotations

import pytest
from conftest import boot

from imaguard_lab.build import Image
from imaguard_lab.runner import RunResult

pytestmark = [pytest.mark.vm, pytest.mark.slow]


@pytest.fixture(scope="module")
def twoboot_run(lab_image: Image) -> RunResult:
    result = boot(lab_image, {}, entry="stage_twoboot.py", max_boots=3)
    problem = result.problem()
    assert problem is None, problem
    return result


def test_two_boots_share_the_disk_and_the_second_runs_systemd(twoboot_run: RunResult) -> None:
    boots = twoboot_run.boots
    assert [(b.number, b.mode) for b in boots] == [(1, "init"), (2, "systemd")], [b.next for b in boots]
    assert [b.status for b in boots] == [0, 0]
    # the guest did not rebuild its initramfs: the second boot loaded the very same initrd, read from its disk
    assert boots[0].initrd_sha256 == boots[1].initrd_sha256
    recs = {r["boot"]: r for r in twoboot_run.results if r.get("check") == "boot"}
    assert recs[1]["pid1"] == "imaguard-lab-in"  # comm is cut to 15 characters
    assert recs[2]["pid1"] == "systemd"
    assert recs[2]["mark"] == "written in boot 1\n", "the root disk did not survive the reboot"
    assert recs[2]["state"] == "running", recs[2]
    assert recs[2]["failed_units"] == []
