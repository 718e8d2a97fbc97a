"""Open paths of another root tree (``--root DIR``) without ever leaving it.

A mounted image holds absolute symlinks (``/lib -> usr/lib``, ``/etc/alternatives/...``) that,
followed naively, point into the host. ``openat2(RESOLVE_IN_ROOT)`` (Linux 5.6) resolves every
component as if ``DIR`` were ``/``, so labelling or checking an image can never touch the host.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import platform
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Root", "open_dir_nofollow", "write_in_dir"]

# include/uapi/linux/openat2.h; x86_64 and aarch64 share the generic syscall number.
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "ppc64le": 437, "s390x": 437}
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


@functools.cache
def _openat2_nr() -> tuple[str, int | None]:
    # Once per process: platform.machine() builds a uname result each call (~5 µs, per file).
    arch = platform.machine()
    return arch, _SYS_OPENAT2.get(arch)


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


@dataclass(frozen=True, slots=True)
class Root:
    """A filesystem root: ``/`` (the host: plain ``open``) or a directory (``openat2`` inside it)."""

    path: bytes
    dir_fd: int | None = None

    @classmethod
    def host(cls) -> Root:
        return cls(b"/")

    @classmethod
    def at(cls, path: str | bytes) -> Root:
        """Open ``path`` as a root; OSError if it is not a directory."""
        raw = os.fsencode(path)
        if os.path.realpath(raw) == b"/":
            return cls.host()
        fd = os.open(raw, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return cls(raw, fd)

    @property
    def is_host(self) -> bool:
        return self.dir_fd is None

    def display(self, path: bytes) -> bytes:
        """How to show ``path`` (absolute inside the root) to a person: with the root prefix."""
        return path if self.is_host else self.path.rstrip(b"/") + path

    def open(self, path: bytes, flags: int) -> int:
        """Open an absolute in-root path; the last component's symlink rule comes from ``flags``."""
        if self.dir_fd is None:
            return os.open(path, flags)
        arch, nr = _openat2_nr()
        if nr is None:
            raise OSError(errno.ENOSYS, f"openat2 syscall number unknown on {arch}")
        how = _OpenHow(flags, 0, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
        fd = int(_syscall(nr, self.dir_fd, path.lstrip(b"/") or b".", ctypes.byref(how), ctypes.sizeof(how)))
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), os.fsdecode(self.display(path)))
        return fd

    def lstat(self, path: bytes) -> os.stat_result:
        """``lstat`` inside the root (the last component is not followed)."""
        if self.dir_fd is None:
            return os.lstat(path)
        fd = self.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def probe(self, path: bytes) -> tuple[os.stat_result, int | None]:
        """``lstat`` and, inside a root, the ``O_PATH`` descriptor it was taken from (the caller closes it).

        ``reopen`` turns that descriptor into a readable one for exactly the inode that was
        examined: one path walk through ``openat2`` per file instead of two, and nothing can be
        swapped in between. On the host (plain syscalls, no ctypes) the handle is None.
        """
        if self.dir_fd is None:
            return os.lstat(path), None
        fd = self.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            return os.fstat(fd), fd
        except OSError:
            os.close(fd)
            raise

    def reopen(self, handle: int, path: bytes, flags: int) -> int:
        """Open the inode behind an ``O_PATH`` handle from ``probe`` with ``flags`` (never a path walk).

        ``/proc/self/fd/N`` of an ``O_PATH`` descriptor opens that very inode; without ``/proc``
        the in-root path is opened again. ``O_NOFOLLOW`` is dropped: the magic link must be followed,
        and the handle already refers to the final, unfollowed component.
        """
        try:
            return os.open(f"/proc/self/fd/{handle}", flags & ~os.O_NOFOLLOW)
        except FileNotFoundError:
            if Path("/proc/self/fd").is_dir():
                raise
            return self.open(path, flags)

    def readlink(self, path: bytes) -> bytes:
        if self.dir_fd is None:
            return os.readlink(path)  # noqa: PTH115 - bytes paths; pathlib cannot hold them
        fd = self.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            # readlinkat(fd, "") reads the link an O_PATH descriptor refers to.
            return os.readlink(b"", dir_fd=fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        if self.dir_fd is not None:
            os.close(self.dir_fd)


# Writes under a root (``keys install``, ``policy install``, the revocation record): every component
# is opened relative to the descriptor of the one before, with O_NOFOLLOW, so no path is walked twice
# by name and a directory swapped for a symlink (by a writer inside the image) is refused, never
# followed out of the root.

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _parts(relpath: str) -> list[str]:
    parts = [p for p in relpath.split("/") if p not in ("", ".")]
    if relpath.startswith("/") or ".." in parts:
        raise ValueError(f"not a path inside the root: {relpath!r}")
    return parts


def open_dir_nofollow(dir_fd: int, relpath: str, *, create: tuple[int, int] | None = None,
                      check: Callable[[str, os.stat_result], None] | None = None) -> int:  # fmt: skip
    """A descriptor of the directory ``relpath`` below ``dir_fd``, reached without following any
    symlink. A symlink component raises OSError ELOOP, a file ENOTDIR, a missing one ENOENT (each
    with the components so far as ``filename``) unless ``create`` = (parents_mode, leaf_mode): then
    it is made, with exactly that mode, and its parent fsynced so the new entry survives a crash.
    ``check(components_so_far, stat)`` sees every directory below ``dir_fd`` as it is opened."""
    current = os.dup(dir_fd)
    parts = _parts(relpath)
    try:
        for n, part in enumerate(parts):
            shown = "/".join(parts[: n + 1])
            try:
                fd = os.open(part, _DIR_FLAGS, dir_fd=current)
            except FileNotFoundError:
                if create is None:
                    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), shown) from None
                try:
                    os.mkdir(part, 0o700, dir_fd=current)  # no wider than 0700 until fchmod sets the mode
                except FileExistsError:  # made meanwhile: judged like any existing one
                    fd = _open_existing_dir(current, part, shown)
                else:
                    fd = _open_existing_dir(current, part, shown)
                    try:
                        os.fchmod(fd, create[1] if n == len(parts) - 1 else create[0])
                        os.fsync(current)  # the new entry survives a crash, like the file later made in it
                    except BaseException:
                        os.close(fd)
                        raise
            except NotADirectoryError:
                fd = _open_existing_dir(current, part, shown)
            os.close(current)
            current = fd
            if check is not None:
                check(shown, os.fstat(current))
    except BaseException:
        os.close(current)
        raise
    return current


def _open_existing_dir(parent: int, part: str, shown: str) -> int:
    try:
        return os.open(part, _DIR_FLAGS, dir_fd=parent)
    except NotADirectoryError:
        # O_DIRECTORY|O_NOFOLLOW says ENOTDIR for a symlink too: tell the two apart.
        if stat.S_ISLNK(os.stat(part, dir_fd=parent, follow_symlinks=False).st_mode):
            raise OSError(errno.ELOOP, "a symlink (not followed)", shown) from None
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), shown) from None


def write_in_dir(dir_fd: int, name: str, data: bytes, mode: int, owner: tuple[int, int] | None = None) -> None:
    """Replace ``name`` in the directory ``dir_fd`` with ``data`` (``mode``, ``owner`` or ours),
    atomically: a temp file made with O_CREAT|O_EXCL|O_NOFOLLOW there, fsync, ``rename`` within
    the directory (no path walked by name), fsync of the directory. Raises OSError."""
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"not a file name: {name!r}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        tmp = f".{name}.{secrets.token_hex(6)}"
        try:
            fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(errno.EEXIST, "no unused temporary name", name)
    try:
        try:
            if owner is not None:
                os.fchown(fd, *owner)
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)
