"""``imaguard report --format keylime-policy`` on this host (I/O): the digest index, the log's boot_aggregate.

Kept apart from ``collect.py`` so that the export imports no process, TPM or X.509 code: it
reads 100,000 index rows and should take well under a second.
"""

from __future__ import annotations

import datetime
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

__all__ = ["keylime_policy_here"]


def _boot_aggregate(log_file: Path | None) -> str | None:
    """The boot_aggregate digest (hex) of the log's first entry, or None on a host without IMA."""
    from imaguard.ima.logsource import LogFile, locate, open_log  # noqa: PLC0415 - only when a log is read
    from imaguard.ima.measurements import iter_binary  # noqa: PLC0415

    try:
        log = LogFile(str(log_file), ascii=False, bank="sha1") if log_file is not None else locate()
    except UnsupportedError:
        return None  # no IMA here (a build host): a policy without boot_aggregate
    with open_log(log) as f:
        first = next(iter(iter_binary(f, chunk_size=1 << 16)), None)  # only the first record is read
    if first is None or first.path != b"boot_aggregate" or first.digest is None:
        return None
    return first.digest.digest.hex()


def keylime_policy_here(
    state_dir: Path, certificates: Sequence[Certificate], log_file: Path | None, candidates: Sequence[str]
) -> tuple[dict[str, Any], PolicyStats]:
    """The Keylime runtime policy of the installed packages, excludes for candidate directories that
    exist here and hold no package file (under either merged-/usr name)."""
    boot = _boot_aggregate(log_file)
    with DigestIndex.open(state_dir, read_only=True) as index:
        unowned = [c for c in candidates if Path(c).is_dir()
                   and not any(index.has_files_under(a) for a in usr_aliases(c.encode()))]  # fmt: skip
        _, total = index.counts()
        policy, stats = keylime_policy(
            index.iter_digests(HashAlgo.SHA256), certificates=certificates, exclude_dirs=unowned,
            boot_aggregate=boot, timestamp=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )  # fmt: skip
    return policy, PolicyStats(stats.files, stats.paths, total - stats.files)
