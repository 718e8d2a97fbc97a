"""The work disk: a small ext4 image (guest ``/dev/vdb`` at ``/lab``) carrying the run in and out.

In: the project tree (``/lab/src/agent``, importable through the image's ``.pth``, and the policy
templates ``/lab/src/policies``), the guest-side
scenario scripts (``/lab/src/tests/vm/guest``), the run's keys (``/lab/keys``), its parameters
(``/lab/params.json``) and the entry point ``/lab/run``. Out: everything the guest writes under
``/lab/out`` (results.jsonl, exit-status, dmesg, measurement lists), read back on the host with
``debugfs rdump`` — no loop mount, so the host never mounts guest-written filesystems.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

__all__ = ["make_work_disk", "read_out"]

_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache", ".pytest_cache")


def make_work_disk(
    image: Path,
    *,
    repo: Path,
    keys_dir: Path,
    entry: str,
    params: dict[str, object],
    size_mib: int = 64,
) -> None:
    """Build the work disk at ``image`` for guest script ``tests/vm/guest/<entry>``."""
    stage = image.with_suffix(".stage")
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "src" / "tests" / "vm").mkdir(parents=True)
    shutil.copytree(repo / "agent", stage / "src" / "agent", ignore=_IGNORE)
    # the policy templates, where imaguard looks for them in a source tree (agent/../policies)
    shutil.copytree(repo / "policies", stage / "src" / "policies", ignore=_IGNORE)
    shutil.copytree(repo / "tests" / "vm" / "guest", stage / "src" / "tests" / "vm" / "guest", ignore=_IGNORE)
    shutil.copytree(keys_dir, stage / "keys")
    (stage / "out").mkdir()
    (stage / "params.json").write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
    run = stage / "run"
    # -B: the work disk is the only writable place for .pyc and we want it clean for read-back.
    run.write_text(f"#!/bin/sh\nexec python3 -B /lab/src/tests/vm/guest/{entry} /lab/params.json\n")
    run.chmod(0o755)
    subprocess.run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            "labwork",
            "-E",
            "root_owner=0:0",
            "-d",
            str(stage),
            str(image),
            f"{size_mib}M",
        ],
        check=True,
        capture_output=True,
    )
    shutil.rmtree(stage)


def read_out(image: Path, dest: Path) -> Path:
    """Copy ``/out`` of the work disk to ``dest/out`` and return that directory."""
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / "out"
    shutil.rmtree(out, ignore_errors=True)
    # debugfs does not replay the journal. A guest that could not unmount (an enforcing policy
    # refusing umount, a timeout) leaves fsync'd results only in the journal: replay it first.
    subprocess.run(["e2fsck", "-fy", str(image)], capture_output=True, check=False)
    proc = subprocess.run(
        ["debugfs", "-R", f"rdump /out {dest}", str(image)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0 or not out.is_dir():
        raise RuntimeError(f"debugfs could not read /out from {image}: {proc.stderr.strip()}")
    return out
