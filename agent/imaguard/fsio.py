"""File-system primitives every writer and reader of trusted state shares (I/O).

- ``write_atomically`` (STYLE.md §9): temp file, fsync, rename, fsync of the directory; a crash at
  any moment leaves the old content or the new, whole; never a torn file.
- ``ensure_directory``: make a directory and its missing parents with exact modes, whatever the
  umask (``mkdir(parents=True)`` gives parents ``0777 & ~umask``: 0777 under umask 000).
- ``check_private_directory``: refuse a state directory another user could write into, or that
  lies under one they could rename: caches there are trusted (a planted deb-chain cache entry
  would be read as ``repo-verified``).
- ``read_regular``: read a file that must be a regular file, bounded, without following a
  symlink in its last component or blocking on a FIFO; ``read_open_regular``: the same checks
  and bound for a descriptor opened elsewhere (inside a root, with ``openat2``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

from imaguard.errors import HostStateError

__all__ = [
    "check_private_directory",
    "ensure_directory",
    "ensure_private_directory",
    "read_open_regular",
    "read_regular",
    "write_atomically",
]


def write_atomically(path: Path, data: bytes, mode: int = 0o600, owner: tuple[int, int] | None = None) -> None:
    """Replace ``path`` with ``data`` (file mode ``mode``, ``owner`` (uid, gid) or ours); the
    directory must exist. Raises OSError."""
    tmp = ""
    try:  # mkstemp inside: an interrupt right after it returns must not leave the temp file
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            if owner is not None:
                os.fchown(f.fileno(), *owner)
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).replace(path)
    except BaseException:
        if tmp:
            with contextlib.suppress(OSError):
                Path(tmp).unlink()
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def ensure_directory(path: Path, mode: int = 0o700, parents_mode: int = 0o755) -> None:
    """Create ``path`` with ``mode`` and each missing parent with ``parents_mode``, whatever the
    umask; existing directories are left as they are. Raises OSError (ENOTDIR where a component
    is a file, EEXIST where ``path`` is not a directory)."""
    missing: list[Path] = []
    current = path
    while not os.path.lexists(current):
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(0o700)  # no wider than 0700 until fchmod sets the mode asked for
        except FileExistsError:
            continue  # made meanwhile by someone else: check_private_directory judges it
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(fd, mode if directory == path else parents_mode)
        finally:
            os.close(fd)
    if not path.is_dir():
        raise FileExistsError(errno.EEXIST, "exists and is not a directory", str(path))


def _writable_by_others(st: os.stat_result, *, leaf: bool) -> bool:
    # Any group write counts, root's group too (the rule of keys install's checks as well: members
    # of group root are not root). Above the leaf, a sticky directory (/tmp) is fine: nobody else
    # may rename or remove what root made in it.
    return bool(st.st_mode & (stat.S_IWOTH | stat.S_IWGRP)) and (leaf or not st.st_mode & stat.S_ISVTX)


def check_private_directory(path: Path, what: str = "state directory") -> None:
    """Refuse (HostStateError ``unsafe-state-dir``) a directory whose content another user could
    change: it, or a directory above it, not owned by root or by us, or writable by others
    (see ``_writable_by_others``). A symlink to a safe place is followed and judged there."""
    euid = os.geteuid()
    resolved = path.resolve()
    for current in (resolved, *resolved.parents):
        try:
            st = current.stat()
        except OSError as exc:
            raise HostStateError(f"{path}: cannot check the {what}: {exc.strerror}", reason="state-dir",
                                 path=str(path)) from exc  # fmt: skip
        problem = None
        if st.st_uid not in (0, euid):
            problem = f"owned by uid {st.st_uid}"
        elif _writable_by_others(st, leaf=current == resolved):
            problem = f"writable by other users (mode {stat.S_IMODE(st.st_mode):04o})"
        if problem is not None:
            where = "is" if current == resolved else f"lies under {current}, which is"
            raise HostStateError(
                f"{path}: the {what} {where} {problem}; what it holds is trusted, so it must be "
                "writable by root only (chown root, chmod go-w)",
                reason="unsafe-state-dir", path=str(path))  # fmt: skip


def read_regular(path: Path, limit: int, *, dir_fd: int | None = None) -> bytes:
    """The content of ``path`` (relative to ``dir_fd`` when given), which must be a regular file
    of at most ``limit`` bytes. Never follows a symlink in the last component (ELOOP), never
    blocks on a FIFO or device (EINVAL: not a regular file), never reads past ``limit`` (EFBIG).
    Raises OSError with the path as ``filename``."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(path, flags, dir_fd=dir_fd)
    try:
        return read_open_regular(fd, limit, str(path))
    finally:
        os.close(fd)


def read_open_regular(fd: int, limit: int, name: str) -> bytes:
    """The content of the open descriptor ``fd`` (the caller opened and closes it), which must be a
    regular file of at most ``limit`` bytes: ``read_regular`` for a file opened another way (inside
    a root with ``openat2``). Raises OSError (EINVAL not a regular file, EFBIG past ``limit``) with
    ``name`` as ``filename``."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "not a regular file", name)
    if st.st_size > limit:  # a sparse or huge file is refused before a byte is read
        raise OSError(errno.EFBIG, f"larger than {limit} bytes", name)
    chunks: list[bytes] = []
    left = limit + 1  # the size can grow after fstat: the read itself is bounded too
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    if left <= 0:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes", name)
    return b"".join(chunks)


def ensure_private_directory(path: Path, what: str = "state directory") -> None:
    """``ensure_directory`` (0700, parents 0755) then ``check_private_directory``: a directory
    made now is judged like one found, since a parent, or the directory itself made meanwhile by
    someone else, may not be ours. Raises OSError (cannot make it) or HostStateError."""
    ensure_directory(path)
    check_private_directory(path, what)
