"""Decide, for one package file, what enrollment does with it (pure: typed facts in, decision out).

Two steps, because the second needs the file's content hashed: ``prefilter`` decides from package
metadata and ``lstat`` alone (cheap, no open), ``decide`` from what was read through the open fd.
Reason codes are part of the JSON contract (STYLE.md §7).
"""

from __future__ import annotations

import enum
import re
import stat
from dataclasses import dataclass

from imaguard.packages.model import Evidence, FileKind, PackageFile

__all__ = [
    "Action",
    "Decision",
    "Observed",
    "Options",
    "Scope",
    "decide",
    "disk_kind",
    "in_scope",
    "prefilter",
    "settled",
]


class Scope(enum.StrEnum):
    EXECUTABLES = "executables"  # exec bit, shared objects, kernel modules: what BPRM/MMAP/MODULE_CHECK see
    ALL = "all"


class Action(enum.StrEnum):
    WRITE = "signed"  # a new signature is (or, in a dry run, would be) written
    KEEP = "already-signed"  # a valid signature over the trusted digest is there: nothing to do
    SKIP = "skipped"  # deliberately not labelled, with a reason
    REFUSE = "refused"  # the disk disagrees with the package: never signed, exit code 1


# Skips that a rerun with the same options reaches again: facts of the package (ghost, directory,
# not-regular-file, no-digest, no-vendor-signature, not-in-bundle), of the admin (config-modified,
# out-of-scope by mode) or of the filesystem type (unsupported-fs). Every other skip (unreadable,
# local-db-evidence and no-evidence until the .deb is cached, no-bundle, bundle-unavailable, read-only,
# immutable, xattr-space) and every refusal may come out differently next time: an unknown code too.
_SETTLED_SKIPS = frozenset({
    "ghost", "directory", "not-regular-file", "out-of-scope", "no-digest", "config-modified", "unsupported-fs",
    "no-vendor-signature", "not-in-bundle",
})


def settled(action: Action, reason: str) -> bool:
    """Whether a rerun may take this outcome as final (the enroll journal skips such packages)."""
    if action is Action.REFUSE:
        return False  # reported again by every run until the disk agrees with the package
    return action is not Action.SKIP or reason in _SETTLED_SKIPS


@dataclass(frozen=True, slots=True)
class Options:
    scope: Scope = Scope.EXECUTABLES
    # Loudly named: dpkg's md5sums are unsigned and MD5 (DESIGN.md §1.2).
    unsafe_trust_local_db: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Observed:
    """What was read through the open descriptor of a regular file."""

    actual_digest: bytes  # hashed with the package file's digest algorithm
    existing_valid: bool  # security.ima holds a sig v2 that verifies over this content with a trusted key
    first_of_inode: bool  # False for the 2nd+ hard link to an inode labelled in this run


_SHARED_OBJECT = re.compile(rb"\.so(\.[0-9][0-9A-Za-z.]*)?$")
_KERNEL_MODULE = re.compile(rb"\.ko(\.(xz|zst|gz))?$")


def in_scope(path: bytes, mode: int, scope: Scope) -> bool:
    if scope is Scope.ALL:
        return True
    if mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH):
        return True
    name = path.rsplit(b"/", 1)[-1]
    return bool(_SHARED_OBJECT.search(name) or _KERNEL_MODULE.search(name))


def disk_kind(mode: int) -> str:
    """What an ``lstat`` mode is, in words for a report line."""
    for test, name in ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symbolic link"),
                       (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return f"file of type {stat.S_IFMT(mode):#o}"


def _type_changed(disk_mode: int) -> Decision:
    # The package installed a regular file here and something else took its place: a replaced
    # binary must not hide behind a harmless skip (a deleted one is refused too: ``missing``).
    detail = f"the package installed a regular file; on disk: {disk_kind(disk_mode)}"
    return Decision(Action.REFUSE, "type-changed", detail)


def prefilter(pf: PackageFile, disk_mode: int | None, opts: Options) -> Decision | None:
    """A decision that needs no file content, or None to go on and read the file.

    ``disk_mode`` is the ``lstat`` mode of the path, None when it does not exist.
    """
    if pf.ghost:
        return Decision(Action.SKIP, "ghost")
    if pf.kind is FileKind.REGULAR and disk_mode is not None and not stat.S_ISREG(disk_mode):
        return _type_changed(disk_mode)
    if pf.kind is FileKind.DIRECTORY or (disk_mode is not None and stat.S_ISDIR(disk_mode)):
        return Decision(Action.SKIP, "directory")
    if pf.kind in (FileKind.SYMLINK, FileKind.OTHER):
        return Decision(Action.SKIP, "not-regular-file")
    if disk_mode is None:
        # A deleted doc page is no reason to fail an executables run: judge scope by the shipped mode.
        if pf.mode is not None and not in_scope(pf.path, pf.mode, opts.scope):
            return Decision(Action.SKIP, "out-of-scope")
        return Decision(Action.REFUSE, "missing")
    if not stat.S_ISREG(disk_mode):
        return Decision(Action.SKIP, "not-regular-file")  # dpkg lists paths without their type
    if not in_scope(pf.path, disk_mode, opts.scope):
        return Decision(Action.SKIP, "out-of-scope")
    if pf.digest is None:
        return Decision(Action.SKIP, "no-digest")
    if not pf.evidence.trusted and not (pf.evidence is Evidence.LOCAL_DB and opts.unsafe_trust_local_db):
        return Decision(Action.SKIP, "local-db-evidence" if pf.evidence is Evidence.LOCAL_DB else "no-evidence")
    return None


def decide(pf: PackageFile, seen: Observed) -> Decision:
    """The decision once the content was hashed through the fd that will be labelled."""
    if seen.actual_digest != pf.digest:
        # A locally edited conffile is the admin's business; anything else is tampering or damage.
        return Decision(Action.SKIP, "config-modified") if pf.config else Decision(Action.REFUSE, "digest-mismatch")
    if not seen.first_of_inode:
        return Decision(Action.KEEP, "same-inode")
    if seen.existing_valid:
        return Decision(Action.KEEP, "already-signed")
    return Decision(Action.WRITE)
