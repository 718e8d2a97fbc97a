"""Read, hash and write ``security.ima`` through one open file descriptor.

Everything happens on the fd opened with ``O_NOFOLLOW|O_NONBLOCK`` and checked with ``fstat``,
so a path swapped for a symlink, FIFO or device between checks is never followed, blocked on or
labelled. A write is read back and compared; on any failure the previous value is restored.
Writers are kept out by a read lease where the filesystem grants one (``hold_read_lease``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import stat
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imaguard.digests import HashAlgo, hash_fd
from imaguard.errors import HostStateError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from imaguard.config import Limits
    from imaguard.rootfs import Root

__all__ = [
    "IMA_XATTR",
    "FileStamp",
    "hash_file",
    "hold_read_lease",
    "open_regular",
    "read_ima",
    "restore_ima",
    "stamp",
    "write_ima",
]

IMA_XATTR = "security.ima"

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
# linux/fs.h: FS_IOC_GETFLAGS = _IOR('f', 1, long); flags FS_IMMUTABLE_FL, FS_APPEND_FL.
_FS_IOC_GETFLAGS = 0x80086601
_FS_IMMUTABLE_FL = 0x00000010
_FS_APPEND_FL = 0x00000020


@dataclass(frozen=True, slots=True)
class FileStamp:
    """What must not change while a file is hashed and labelled (setxattr itself moves only ctime)."""

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStamp:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _error(exc: OSError, path: str, action: str, fd: int | None = None) -> HostStateError:
    """Map an OSError to a typed error with a stable reason code."""
    code = exc.errno
    if code in (errno.EOPNOTSUPP, errno.ENOTSUP):
        reason = "unsupported-fs"
        detail = "the filesystem does not support security.* extended attributes"
    elif code == errno.EROFS:
        reason, detail = "read-only", "read-only filesystem"
    elif code in (errno.ENOSPC, errno.E2BIG, errno.EDQUOT):
        reason, detail = "xattr-space", "no space left for extended attributes on this inode"
    elif code == errno.EPERM and fd is not None and _is_immutable(fd):
        reason, detail = "immutable", "the file is immutable or append-only (chattr +i/+a)"
    elif code in (errno.EPERM, errno.EACCES):
        reason, detail = "permission-denied", f"{exc.strerror} (security.ima needs CAP_SYS_ADMIN)"
    elif code == errno.ELOOP:
        reason, detail = "not-regular-file", "is a symbolic link"
    elif code == errno.ENOENT:
        reason, detail = "missing", "no such file"
    else:
        reason, detail = "host-error", exc.strerror or str(exc)
    return HostStateError(f"{path}: cannot {action}: {detail}", reason=reason, errno=code, path=path)


def _is_immutable(fd: int) -> bool:
    try:
        raw = fcntl.ioctl(fd, _FS_IOC_GETFLAGS, b"\0" * 8)
    except OSError:
        return False
    # Declared as long, but the kernel's ioctl_getflags writes an unsigned int.
    (flags,) = struct.unpack_from("=I", raw)
    return bool(flags & (_FS_IMMUTABLE_FL | _FS_APPEND_FL))


_lease_signal_ignored = False


def hold_read_lease(fd: int, path: str) -> bool:
    """Take a read lease on ``fd``: until it is closed, no writer goes unnoticed.

    The kernel grants it only while nobody has the file open for writing, a writable shared
    mapping included (writes through one that is already dirty move no mtime, so the size/mtime
    stamp cannot see them), and breaks it when someone opens the file for writing or truncates it;
    ``write_ima`` then refuses. Closing the fd releases it. Returns False where no lease is to be
    had (the filesystem, ``fs.leases-enable=0``, not the owner without CAP_LEASE): the stamp is
    all that guards the file then. Raises ``open-for-write`` while a writer holds the file.
    """
    global _lease_signal_ignored  # noqa: PLW0603 - once per process
    if not _lease_signal_ignored:
        # A broken lease is announced with SIGIO, whose default action kills the process; it is
        # polled with F_GETLEASE instead. signal() works only in the main thread: no lease elsewhere.
        try:
            signal.signal(signal.SIGIO, signal.SIG_IGN)
        except ValueError:
            return False
        _lease_signal_ignored = True
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EBUSY):
            raise HostStateError(
                f"{path}: open for writing by another process; not labelled", reason="open-for-write", path=path
            ) from exc
        return False
    return True


def _lease_broken(fd: int) -> bool:
    return fcntl.fcntl(fd, fcntl.F_GETLEASE) != fcntl.F_RDLCK


@contextlib.contextmanager
def open_regular(
    path: str | bytes, root: Root | None = None, handle: int | None = None
) -> Iterator[tuple[int, os.stat_result]]:
    """Open a regular file for reading without following a final symlink or blocking on a FIFO.

    With ``root``, ``path`` is absolute inside that tree and resolved without leaving it; with
    ``handle`` (an ``O_PATH`` descriptor from ``root.probe(path)``) that inode is reopened instead.
    """
    name = os.fsdecode(path if root is None else root.display(os.fsencode(path)))
    try:
        if root is None:
            fd = os.open(path, _OPEN_FLAGS)
        elif handle is not None:
            fd = root.reopen(handle, os.fsencode(path), _OPEN_FLAGS)
        else:
            fd = root.open(os.fsencode(path), _OPEN_FLAGS)
    except OSError as exc:
        raise _error(exc, name, "open") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise HostStateError(f"{name}: not a regular file", reason="not-regular-file", path=name)
        yield fd, st
    finally:
        os.close(fd)


def stamp(fd: int) -> FileStamp:
    return FileStamp.of(os.fstat(fd))


def hash_file(
    fd: int,
    algo: HashAlgo,
    limits: Limits,
    path: str,
    progress: Callable[[int], None] | None = None,
    *,
    size_hint: int | None = None,
) -> bytes:
    return hash_fd(fd, algo, max_size=limits.max_file_size, path=path, progress=progress, size_hint=size_hint)


def read_ima(fd: int, path: str, limits: Limits) -> bytes | None:
    """The current ``security.ima`` value, or None when the file has none."""
    try:
        value = os.getxattr(fd, IMA_XATTR)
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            return None
        raise _error(exc, path, "read security.ima", fd) from exc
    if len(value) > limits.max_xattr_size:
        raise HostStateError(f"{path}: security.ima larger than {limits.max_xattr_size} bytes", path=path)
    return value


def _unless_nodata(call: Callable[[int, str], bytes | None], fd: int) -> bytes | None:
    try:
        return call(fd, IMA_XATTR)
    except OSError as exc:
        if exc.errno != errno.ENODATA:
            raise
        return None


def restore_ima(fd: int, previous: bytes | None) -> str:
    """Put back what was there before (nothing, or the old value); never raises.

    Returns "" when the file holds exactly ``previous`` again, else what to tell the user: a label
    left behind that may not match the content must not be reported as rolled back.
    """
    try:
        # Most failures (immutable, read-only, no space) changed nothing: then there is nothing to
        # put back, and writing again would fail and report a damage that did not happen.
        if _unless_nodata(os.getxattr, fd) == previous:
            return ""
    except OSError:
        pass
    try:
        if previous is not None:
            os.setxattr(fd, IMA_XATTR, previous)
        else:
            _unless_nodata(os.removexattr, fd)
        now = _unless_nodata(os.getxattr, fd)
    except OSError as exc:
        return f"; the previous label could NOT be restored ({exc.strerror}): check it with imaguard verify"
    if now != previous:
        return "; the previous label could NOT be restored: check it with imaguard verify"
    return ""


def write_ima(
    fd: int, path: str, value: bytes, previous: bytes | None, before: FileStamp, *, leased: bool = False
) -> None:
    """Write ``value`` over ``previous`` if the file still matches ``before``; read back; roll back.

    ``before`` is the stamp taken before hashing: a file written to since (size or mtime moved)
    would get a signature over content it no longer has, so it is refused. With ``leased`` (a read
    lease taken before hashing), a lease broken by a writer's open refuses it too.
    """
    if stamp(fd) != before:
        raise HostStateError(
            f"{path}: changed while it was being hashed; not labelled", reason="changed-during-sign", path=path
        )
    if leased and _lease_broken(fd):
        raise HostStateError(
            f"{path}: opened for writing while it was being hashed; not labelled", reason="open-for-write", path=path
        )
    try:
        os.setxattr(fd, IMA_XATTR, value)
    except OSError as exc:
        # A failed setxattr leaves the old value in place, but be certain.
        failed = restore_ima(fd, previous)
        err = _error(exc, path, "write security.ima", fd)
        raise HostStateError(f"{err}{failed}", reason=err.reason, errno=exc.errno, path=path) from exc
    try:
        readback = os.getxattr(fd, IMA_XATTR)
    except OSError as exc:
        failed = restore_ima(fd, previous)
        err = _error(exc, path, "read back security.ima", fd)
        raise HostStateError(f"{err}{failed}", reason=err.reason, errno=exc.errno, path=path) from exc
    if readback != value:
        failed = restore_ima(fd, previous)
        raise HostStateError(f"{path}: security.ima read back differs from what was written{failed}", path=path,
                             reason="readback-mismatch")
    if stamp(fd) != before:
        # Written to between our check and our write: the new label may not match the content.
        failed = restore_ima(fd, previous)
        raise HostStateError(
            f"{path}: changed while it was being labelled; {failed[2:] or 'previous label restored'}",
            reason="changed-during-sign",
            path=path,
        )
    if leased and _lease_broken(fd):
        # A writer's open waits for us to close: the label matches the content now, but not for
        # long, and a label made in a race is not one to keep.
        failed = restore_ima(fd, previous)
        raise HostStateError(
            f"{path}: opened for writing while it was being labelled; {failed[2:] or 'previous label restored'}",
            reason="open-for-write",
            path=path,
        )
