"""``imaguard report --format keylime-policy`` on this host (I/O): the digest index, the log's boot_aggregate.

Kept apart from ``collect.py`` so that the export imports no process, TPM or X.509 code: it
reads 100,000 index rows and should take well under a second.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imaguard.digests import HashAlgo
from imaguard.errors import UnsupportedError
from imaguard.packages.index import DigestIndex
from imaguard.report.formats.keylime_policy import PolicyStats, keylime_policy
from imaguard.report.paths import usr_aliases

if TYPE_CHECKING:
    from collections.abc import Sequence

    from imaguard.keys.material import Certificate

__all__ = ["PolicyExport", "keylime_policy_here"]


def _boot_aggregate(log_file: Path | None) -> tuple[str | None, str | None]:
    """The boot_aggregate digest (hex) of the log's first entry (or None), and the list read (None on
    a host without IMA and no --file).

    The list is read and checked whole, as for the other formats (``ima.logsource``): a missing,
    unreadable or malformed --file fails the same way there and here, naming the file.
    """
    from imaguard.ima.logsource import read_log, replay_bytes  # noqa: PLC0415 - only when a log is read

    try:
        data, source = read_log(log_file)
    except UnsupportedError:
        return None, None  # no --file and no IMA here (a build host): a policy without boot_aggregate
    first = replay_bytes(data, source, keep_entries=False).boot_aggregate
    if first is None or first.digest is None:
        return None, source
    return first.digest.digest.hex(), source


@dataclass(frozen=True, slots=True)
class PolicyExport:
    """The policy, its counts, and the list its boot_aggregate was looked for in (None: no list here)."""

    policy: dict[str, Any]
    stats: PolicyStats
    log_source: str | None
    boot_aggregate: str | None


def keylime_policy_here(
    state_dir: Path, certificates: Sequence[Certificate], log_file: Path | None, candidates: Sequence[str]
) -> PolicyExport:
    """The Keylime runtime policy of the installed packages, excludes for candidate directories that
    exist here and hold no package file (under either merged-/usr name)."""
    boot, source = _boot_aggregate(log_file)
    with DigestIndex.open(state_dir, read_only=True) as index:
        unowned = [c for c in candidates if Path(c).is_dir()
                   and not any(index.has_files_under(a) for a in usr_aliases(c.encode()))]  # fmt: skip
        _, total = index.counts()
        policy, stats = keylime_policy(
            index.iter_digests(HashAlgo.SHA256), certificates=certificates, exclude_dirs=unowned,
            boot_aggregate=boot, timestamp=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )  # fmt: skip
    return PolicyExport(policy, PolicyStats(stats.files, stats.paths, total - stats.files), source, boot)
