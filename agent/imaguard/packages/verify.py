"""Compare files on disk with their trusted package digests (``imaguard packages verify``)."""

from __future__ import annotations

import errno
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imaguard.errors import HostStateError, UsageError
from imaguard.ima import xattr_store
from imaguard.packages.model import Evidence, FileKind

if TYPE_CHECKING:
    from imaguard.config import Limits
    from imaguard.packages.model import InstalledPackage, PackageFile
    from imaguard.rootfs import Root

__all__ = ["FAILED_STATUSES", "FileCheck", "check_file", "weakest_evidence"]

# Statuses that mean the disk differs from what the package shipped.
FAILED_STATUSES = frozenset({"digest-mismatch", "missing", "not-regular-file", "link-mismatch"})


@dataclass(frozen=True, slots=True)
class FileCheck:
    """One package file checked on disk. ``status``: ok, digest-mismatch, missing, not-regular-file,
    link-mismatch, no-digest (nothing trusted to compare with) or unreadable."""

    package: InstalledPackage
    file: PackageFile
    status: str
    actual: bytes | None = None
    detail: str = ""

    def to_json(self) -> dict[str, object]:
        f = self.file
        out: dict[str, object] = {
            "package": self.package.ident,
            "path": f.path.decode("utf-8", "surrogateescape"),
            "status": self.status,
            "evidence": str(f.evidence),
        }
        if f.evidence_reason:
            out["evidence_reason"] = f.evidence_reason
        if f.digest is not None and f.digest_algo is not None:
            out["algo"] = f.digest_algo.kernel_name
            out["expected"] = f.digest.hex()
        if self.actual is not None:
            out["actual"] = self.actual.hex()
        if f.config:
            out["config"] = True
        if f.diverted_to is not None:
            out["diverted_to"] = f.diverted_to.decode("utf-8", "surrogateescape")
        if self.detail:
            out["detail"] = self.detail
        return out


def _lstat_mode(root: Root, path: bytes) -> int | None:
    try:
        return root.lstat(path).st_mode
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise


def check_file(
    pkg: InstalledPackage, pf: PackageFile, root: Root, limits: Limits
) -> FileCheck | None:
    """Check one file; None for entries with nothing to check (directories, ghosts)."""
    if pf.ghost or pf.kind is FileKind.DIRECTORY:
        return None
    path = pf.disk_path
    try:
        mode = _lstat_mode(root, path)
    except OSError as exc:
        return FileCheck(pkg, pf, "unreadable", detail=exc.strerror or str(exc))
    if mode is None:
        return FileCheck(pkg, pf, "missing")
    if pf.kind is FileKind.SYMLINK:
        if pf.link_target is None or not stat.S_ISLNK(mode):
            return None if pf.link_target is None else FileCheck(pkg, pf, "not-regular-file", detail="not a symlink")
        target = root.readlink(path)
        return FileCheck(pkg, pf, "ok" if target == pf.link_target else "link-mismatch",
                         detail="" if target == pf.link_target else f"points to {target!r}")
    if pf.digest is None or pf.digest_algo is None:
        if pf.kind is FileKind.UNKNOWN and not stat.S_ISREG(mode):
            return None  # dpkg lists directories and symlinks without saying which
        return FileCheck(pkg, pf, "no-digest")
    if not stat.S_ISREG(mode):
        return FileCheck(pkg, pf, "not-regular-file")
    try:
        with xattr_store.open_regular(path, root) as (fd, _st):
            actual = xattr_store.hash_file(fd, pf.digest_algo, limits, path.decode("utf-8", "surrogateescape"))
    except (HostStateError, UsageError) as exc:
        if exc.reason in ("missing", "not-regular-file"):
            return FileCheck(pkg, pf, exc.reason)
        return FileCheck(pkg, pf, "unreadable", detail=str(exc))
    if actual != pf.digest:
        return FileCheck(pkg, pf, "digest-mismatch", actual=actual)
    return FileCheck(pkg, pf, "ok", actual=actual)


def weakest_evidence(checks: list[FileCheck]) -> Evidence:
    """The weakest evidence among checked regular files: what a package's result can claim."""
    levels = [c.file.evidence for c in checks if c.file.digest is not None]
    return min(levels, key=lambda e: e.rank) if levels else Evidence.NONE
