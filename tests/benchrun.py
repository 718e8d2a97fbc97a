"""Run a benchmark under bench/ with ``--json`` and return its document (for the bench smoke tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def bench(name: str, *args: str, timeout: int = 300) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / name), *args, "--json"],
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"bench/{name} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc
