"""Fixtures of the VM lab tests (marker ``vm``): one booted scenario run per session, shared.

The image is built on first use (~5 min cold, cached under ~/.cache/imaguard/lab). Every test
module checks at teardown that no qemu or swtpm process the runner started is still alive.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "vagrant" / "lab"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from imaguard_lab.build import Image, build
from imaguard_lab.enrolled import Enrolled, build_enrolled
from imaguard_lab.runner import RunResult, RunSpec, alive, run

_TOOLS = ("qemu-system-x86_64", "qemu-img", "swtpm", "debootstrap", "mkfs.ext4", "debugfs")
_started: list[int] = []


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "the VM lab needs root (debootstrap, mkfs.ext4 -d)"
    missing = [t for t in _TOOLS if shutil.which(t) is None]
    if missing:
        return f"VM lab tools missing: {', '.join(missing)} (apt-get install qemu-system-x86 qemu-utils swtpm debootstrap e2fsprogs)"
    return None


@pytest.fixture(scope="session")
def lab_image() -> Image:
    reason = _missing()
    if reason:
        # IMAGUARD_LAB_REQUIRED=1 (CI) turns a skipped lab into a failure instead of a silent pass.
        if os.environ.get("IMAGUARD_LAB_REQUIRED") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return build()


def boot(
    image: Image, params: dict[str, object], *, entry: str = "appraise.py", keys_dir: Path | None = None, **kw: object
) -> RunResult:
    spec = RunSpec(entry=entry, params=params, **kw)  # type: ignore[arg-type]
    result = run(spec, image, keys_dir=keys_dir)
    _started.extend(result.started_pids)
    return result


@pytest.fixture(scope="session")
def appraise_run(lab_image: Image) -> RunResult:
    result = boot(lab_image, {})
    problem = result.problem()
    assert problem is None, problem
    assert result.status == 0, f"guest scenario exited {result.status}; serial tail:\n{result.serial_tail()}"
    return result


@pytest.fixture(scope="session")
def skip_sign_run(lab_image: Image) -> RunResult:
    result = boot(lab_image, {"mutation": "skip-sign"})
    problem = result.problem()
    assert problem is None, problem
    return result


@pytest.fixture(scope="session")
def enrolled(lab_image: Image) -> Enrolled:
    """The lab image labelled by `imaguard enroll --root` on the host (cached; ~25 s to make)."""
    return build_enrolled()


@pytest.fixture(scope="session")
def enforce_run(enrolled: Enrolled) -> RunResult:
    result = boot(enrolled.image, {}, entry="enforce_enrolled.py", keys_dir=enrolled.guest_keys)
    problem = result.problem()
    assert problem is None, problem
    assert result.status == 0, f"guest scenario exited {result.status}; serial tail:\n{result.serial_tail()}"
    return result


@pytest.fixture(scope="session")
def skip_enroll_run(lab_image: Image, enrolled: Enrolled) -> RunResult:
    """The same scenario and certificate on the *unenrolled* base image (test-only mutation)."""
    return boot(lab_image, {"mutation": "skip-enroll"}, entry="enforce_enrolled.py", keys_dir=enrolled.guest_keys)


@pytest.fixture(autouse=True)
def _no_stray_processes() -> Iterator[None]:
    yield
    stray = [pid for pid in _started if alive(pid)]
    assert not stray, f"lab processes still running after the test: {stray}"
