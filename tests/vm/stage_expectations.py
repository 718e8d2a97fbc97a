"""Host-side judgement of the issue-6 stage runs (tests/vm/guest/stage_cycle.py, stage_gate.py).

Pure functions over the guest's records; each failure message says what the kernel or imaguard did.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "GAP_KINDS",
    "appraisal_failures",
    "by_boot",
    "gap_kind",
    "key_ids_in",
    "unexpected_gaps",
]

# Executables the enforce gate finds unsigned on the enrolled lab image, and why each kind exists.
# The test asserts that the gate lists these and nothing else.
# dpkg's maintainer scripts are labelled by `enroll` (from the verified .deb's control.tar) and the
# initramfs hook and script by `keys install --sign-key`: neither may appear here.
GAP_KINDS: tuple[tuple[str, str], ...] = (
    (r"/usr/local/lib/imaguard-lab/[^/]+", "the lab's own programs (no package ships them)"),
)
_AUDIT = re.compile(
    r"type=1800 .*?op=(?P<op>\S+) cause=(?P<cause>\S+) comm=\"(?P<comm>[^\"]*)\" name=\"(?P<name>[^\"]*)\""
)


def gap_kind(path: str) -> str | None:
    for pattern, why in GAP_KINDS:
        if re.fullmatch(pattern, path):
            return why
    return None


def unexpected_gaps(uncovered: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [u for u in uncovered if gap_kind(u["path"]) is None]


def by_boot(results: list[dict[str, Any]]) -> dict[int, dict[str, dict[str, Any]]]:
    """``{boot: {check: record}}`` (the last record of a name in a boot wins)."""
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for rec in results:
        if "check" in rec:
            out.setdefault(int(rec.get("boot", 1)), {})[str(rec["check"])] = rec
    return out


def appraisal_failures(lines: list[str]) -> list[dict[str, str]]:
    """The audit ``type=1800`` (INTEGRITY_DATA) records in kernel log lines."""
    return [m.groupdict() for m in (_AUDIT.search(line) for line in lines) if m]


def key_ids_in(keys_show: dict[str, Any], ring: str = "_ima") -> list[str]:
    """Key ids in ``ring`` from ``imaguard keys show --json``."""
    for kr in keys_show["keyrings"]:
        if kr["name"] == ring:
            return [k["key_id"] for k in kr["keys"]]
    return []
