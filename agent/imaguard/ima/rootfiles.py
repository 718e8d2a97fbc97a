"""Write boot files under a root directory (``--root DIR``), atomically, and say what changed (I/O).

Every file is written as temp file + fsync + ``rename`` + fsync of the directory, so a crash
leaves the old or the new content, whole (STYLE.md §9). A file whose content and mode are already
right is not touched and reported ``unchanged``, so reruns are no-ops.

Paths are resolved under the root by refusing symlinks in every component below it: an image's
``/etc`` symlinked to the host's would otherwise be written through.
"""

from __future__ import annotations

import enum
import stat
from dataclasses import dataclass
from pathlib import Path

from imaguard.errors import HostStateError, UsageError
from imaguard.fsio import write_atomically

__all__ = ["Change", "FileChange", "install_file", "read_root_file", "root_dir"]

_MAX_READ = 1 << 20


class Change(enum.Enum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


@dataclass(frozen=True, slots=True)
class FileChange:
    path: str  # as shown to people: the root prefix included
    change: Change
    mode: int


def root_dir(root: str) -> Path:
    """The root directory, checked to exist."""
    path = Path(root)
    if not path.is_dir():
        raise UsageError(f"--root {root}: not a directory")
    return path


def _target(root: Path, relpath: str) -> Path:
    if relpath.startswith("/") or ".." in relpath.split("/"):
        raise ValueError(f"not a path inside the root: {relpath!r}")
    current = root
    for part in relpath.split("/")[:-1]:
        current = current / part
        if current.is_symlink():
            raise HostStateError(f"{current} is a symlink: refusing to write through it",
                                 reason="symlink-in-path", path=str(current))  # fmt: skip
    target = root / relpath
    if target.is_symlink():
        raise HostStateError(f"{target} is a symlink: refusing to replace it", reason="symlink-in-path",
                             path=str(target))  # fmt: skip
    return target


def read_root_file(root: Path, relpath: str) -> bytes | None:
    """The content of ``ROOT/relpath``, None if it does not exist; larger than 1 MiB is an error
    (a prefix would be rewritten as the whole file)."""
    target = _target(root, relpath)
    try:
        with target.open("rb") as f:
            data = f.read(_MAX_READ + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HostStateError(f"cannot read {target}: {exc.strerror}", reason="unreadable", errno=exc.errno,
                             path=str(target)) from exc  # fmt: skip
    if len(data) > _MAX_READ:
        raise HostStateError(f"{target}: larger than {_MAX_READ} bytes, not a configuration file",
                             reason="unreadable", path=str(target))  # fmt: skip
    return data


def _mkdirs(root: Path, relpath: str) -> None:
    current = root
    for part in relpath.split("/")[:-1]:
        current = current / part
        if not current.exists():
            current.mkdir(mode=0o755)


def install_file(root: Path, relpath: str, data: bytes, mode: int) -> FileChange:
    """Make ``ROOT/relpath`` hold ``data`` with ``mode`` (and its owner, if it exists); created,
    updated or unchanged."""
    target = _target(root, relpath)
    try:
        try:
            st = target.lstat()
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise HostStateError(f"{target} exists and is not a regular file", reason="not-regular-file",
                                 path=str(target))  # fmt: skip
        if st is not None and stat.S_IMODE(st.st_mode) == mode and read_root_file(root, relpath) == data:
            return FileChange(str(target), Change.UNCHANGED, mode)
        _mkdirs(root, relpath)
        # An updated file keeps its owner (a configuration file may belong to its admin group).
        write_atomically(target, data, mode, None if st is None else (st.st_uid, st.st_gid))
    except OSError as exc:
        raise HostStateError(f"{target}: cannot write: {exc.strerror}", reason="install-write", errno=exc.errno,
                             path=str(target)) from exc  # fmt: skip
    return FileChange(str(target), Change.CREATED if st is None else Change.UPDATED, mode)
