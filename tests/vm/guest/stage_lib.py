"""Shared by the multi-boot (stage) scenarios: which boot this is, and asking the host for the next one.

The runner (vagrant/lab/imaguard_lab/runner.py) passes ``lab.boot=N`` on the kernel command line and
boots again only if the guest wrote ``/lab/out/next.json`` before powering off. Results of every
boot go to the same ``/lab/out/results.jsonl``, each record carrying its ``boot``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from guestlib import OUT, record

__all__ = ["boot_number", "brecord", "cmdline_words", "request_reboot", "system_state"]


def cmdline_words() -> list[str]:
    return Path("/proc/cmdline").read_text().split()


def boot_number() -> int:
    for word in cmdline_words():
        if word.startswith("lab.boot="):
            return int(word.partition("=")[2])
    return 1


def brecord(check: str, **facts: Any) -> dict[str, Any]:
    """``guestlib.record`` with this boot's number."""
    return record(check, boot=boot_number(), **facts)


def request_reboot(mode: str, cmdline: list[str]) -> None:
    """Ask the host for another boot: PID 1 ``mode`` (init | systemd), IMA command line words ``cmdline``."""
    path = OUT / "next.json"
    with path.open("w") as f:
        json.dump({"action": "reboot", "mode": mode, "cmdline": cmdline}, f)
        f.flush()
        os.fsync(f.fileno())


def system_state(timeout_s: int = 240) -> dict[str, Any]:
    """``systemctl is-system-running --wait`` and the failed units (systemd mode)."""
    try:
        state = subprocess.run(["systemctl", "is-system-running", "--wait"], capture_output=True, text=True,
                               timeout=timeout_s, check=False)  # fmt: skip
        text = state.stdout.strip()
    except subprocess.TimeoutExpired:
        text = "timeout"
    failed = subprocess.run(["systemctl", "list-units", "--failed", "--plain", "--no-legend", "--no-pager"],
                            capture_output=True, text=True, check=False)  # fmt: skip
    jobs = subprocess.run(["systemctl", "list-jobs", "--no-legend", "--no-pager"], capture_output=True, text=True,
                          check=False)  # fmt: skip
    return {"state": text, "failed_units": [ln.split()[0] for ln in failed.stdout.splitlines() if ln.strip()],
            "jobs": jobs.stdout.strip().splitlines(), "pid1": Path("/proc/1/comm").read_text().strip()}  # fmt: skip
