"""Shared by the guest scenarios: one JSON line per check in /lab/out/results.jsonl, the kernel log.

Runs inside the lab VM (Debian's python3), next to the scenario scripts.
"""

from __future__ import annotations

import errno
import json
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

__all__ = ["ART", "KEYS", "LAB", "OUT", "close_results", "open_results", "read_kmsg", "record", "settled_kmsg", "step"]

LAB = Path("/lab")
OUT = LAB / "out"
ART = OUT / "artifacts"
KEYS = LAB / "keys"

# The open results file; a dict so record() needs no global statement.
_out: dict[str, TextIO] = {}


def open_results() -> None:
    OUT.mkdir(exist_ok=True)
    ART.mkdir(exist_ok=True)
    _out["results"] = (OUT / "results.jsonl").open("a")


def close_results() -> None:
    _out.pop("results").close()


def record(check: str, **facts: Any) -> dict[str, Any]:
    rec = {"check": check, "t": round(time.monotonic(), 2), **facts}
    line = json.dumps(rec, sort_keys=True, default=str)
    results = _out["results"]
    results.write(line + "\n")
    results.flush()
    os.fsync(results.fileno())
    print(f"LAB-CHECK {line}", flush=True)
    return rec


def step(check: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one step; an unexpected exception becomes a recorded fact, not a lost run."""
    try:
        return record(check, **fn())
    except Exception as exc:  # noqa: BLE001 - the record carries the failure to the host
        return record(check, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())


def settled_kmsg(quiet: float = 1.5, timeout: float = 30) -> list[str]:
    """The kernel log once it has stopped growing for ``quiet`` seconds (at most ``timeout``): kauditd
    prints audit records from its own thread after the refused exec returned, and under TCG a read
    right after the exec could miss the last ones (a CI run of the stage cycle did)."""
    deadline = time.monotonic() + timeout
    lines = read_kmsg()
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = read_kmsg()
        if len(now) == len(lines):
            return now
        lines = now
    return lines


def read_kmsg() -> list[str]:
    """All kernel log records so far (non-blocking /dev/kmsg: no dmesg exec needed)."""
    lines: list[str] = []
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    try:
        while True:
            try:
                raw = os.read(fd, 8192)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # a record was overwritten; keep reading
                    continue
                raise
            if not raw:
                break
            meta, _, msg = raw.decode(errors="replace").partition(";")
            lines.append(msg.splitlines()[0] if msg else meta)
    finally:
        os.close(fd)
    return lines
