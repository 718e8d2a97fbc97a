"""Read and write boot files under a root directory (``--root DIR``), atomically, and say what changed (I/O).

Every file is written as temp file (O_EXCL) + fsync + ``rename`` + fsync of the directory, so a
crash leaves the old or the new content, whole (STYLE.md §9); a directory made on the way is
fsynced into its parent too. A file whose content, mode and owner are already right is not
touched and reported ``unchanged``, so reruns are no-ops.

Paths under the root are walked one component at a time, each opened relative to the descriptor
of the one before with O_NOFOLLOW (``rootfs.open_dir_nofollow``): a symlink anywhere below the
root is refused (``symlink-in-path``), never followed, and nothing is walked twice by name, so an
image's ``/etc`` symlinked to the host's — or swapped for such a symlink while we work — is never
written through. Reads never block on a FIFO and are bounded (``fsio.read_regular``).

What is installed here is trusted at the next boot (the initramfs loads every certificate of
``etc/keys/ima`` into the IMA keyring; the hook and script run as root), so every directory on
the way and every existing target must be root's and writable by no one else: otherwise the
install is refused (``unsafe-key-dir``, ``unsafe-install-dir``, ``unsafe-install-file``) instead
of trusting a directory another user may already have planted a key in.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from imaguard.errors import HostStateError, UsageError
from imaguard.fsio import read_regular
from imaguard.ima.bootfiles import KEY_DIR
from imaguard.rootfs import open_dir_nofollow, write_in_dir

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

__all__ = [
    "Change",
    "FileChange",
    "check_install_targets",
    "install_file",
    "list_root_dir",
    "read_root_file",
    "root_dir",
    "root_file_stat",
]

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


def _split(relpath: str) -> tuple[str, str]:
    parts = relpath.split("/")
    if relpath.startswith("/") or ".." in parts or not parts[-1]:
        raise ValueError(f"not a path inside the root: {relpath!r}")
    return "/".join(parts[:-1]), parts[-1]


@contextlib.contextmanager
def _root_fd(root: Path) -> Iterator[int]:
    # The root itself is the operator's choice (a mount point, maybe a symlink to one): followed.
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def _walk_error(root: Path, exc: OSError, verb: str) -> HostStateError:
    where = root / str(exc.filename or "")
    if exc.errno == errno.ELOOP:
        return HostStateError(f"{where} is a symlink: refusing to {verb} through it", reason="symlink-in-path",
                              path=str(where))  # fmt: skip
    return HostStateError(f"{where}: {exc.strerror}", reason="install-write" if verb == "write" else "unreadable",
                          errno=exc.errno, path=str(where))  # fmt: skip


def _problem(st: os.stat_result) -> str | None:
    """Why another user could change this directory or file (None: root's alone)."""
    if st.st_uid not in (0, os.geteuid()):
        return f"owned by uid {st.st_uid}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _is_key_path(relpath: str) -> bool:
    return relpath == KEY_DIR or relpath.startswith(f"{KEY_DIR}/")


def _dir_checker(root: Path, relpath: str) -> Callable[[str, os.stat_result], None]:
    """Refuse a directory on the way to ``relpath`` that another user could write into."""

    def check(shown: str, st: os.stat_result) -> None:
        problem = _problem(st)
        if problem is None:
            return
        key = _is_key_path(relpath)
        what = ("the IMA certificates in it are loaded into the kernel keyring at every boot" if key else
                "what imaguard installs there is trusted at boot")  # fmt: skip
        raise HostStateError(
            f"{root / shown}: {problem}; {what}, so it must be writable by root only (chown root, chmod go-w, and "
            f"review what it holds): refusing to install {root / relpath}",
            reason="unsafe-key-dir" if key else "unsafe-install-dir", path=str(root / shown))  # fmt: skip

    return check


def _check_file(root: Path, relpath: str, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise HostStateError(f"{root / relpath} exists and is not a regular file", reason="not-regular-file",
                             path=str(root / relpath))  # fmt: skip
    problem = _problem(st)
    if problem is not None:
        key = _is_key_path(relpath)
        raise HostStateError(
            f"{root / relpath}: {problem}; it is trusted at boot{' (an IMA certificate)' if key else ''}, so it must "
            "be writable by root only (chown root, chmod go-w, and review its content): refusing to install it",
            reason="unsafe-key-dir" if key else "unsafe-install-file", path=str(root / relpath))  # fmt: skip


def _lstat_in(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def check_install_targets(root: Path, relpaths: Iterable[str]) -> None:
    """Refuse, before anything is written, targets ``install_file`` would refuse: a symlink on the
    way, a directory on the way or an existing file another user could write (see module doc).
    Missing directories are fine (they will be made root's, 0755)."""
    with _root_fd(root) as rfd:
        for relpath in relpaths:
            parent, name = _split(relpath)
            try:
                dfd = open_dir_nofollow(rfd, parent, check=_dir_checker(root, relpath))
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise _walk_error(root, exc, "write") from exc
            try:
                st = _lstat_in(dfd, name)
            finally:
                os.close(dfd)
            if st is not None and stat.S_ISLNK(st.st_mode):
                raise HostStateError(f"{root / relpath} is a symlink: refusing to replace it",
                                     reason="symlink-in-path", path=str(root / relpath))  # fmt: skip
            if st is not None:
                _check_file(root, relpath, st)


def _read_in(root: Path, relpath: str, dir_fd: int, name: str) -> bytes | None:
    target = root / relpath
    try:
        data = read_regular(Path(name), _MAX_READ, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise HostStateError(f"{target} is a symlink: refusing to read through it", reason="symlink-in-path",
                                 path=str(target)) from exc  # fmt: skip
        if exc.errno == errno.EFBIG:
            raise HostStateError(f"{target}: larger than {_MAX_READ} bytes, not a configuration file",
                                 reason="unreadable", path=str(target)) from exc  # fmt: skip
        code, why = exc.errno, exc.strerror
        st = _lstat_in(dir_fd, name) if code == errno.EINVAL else None
        if st is not None and stat.S_ISDIR(st.st_mode):
            code, why = errno.EISDIR, os.strerror(errno.EISDIR)
        raise HostStateError(f"cannot read {target}: {why}", reason="unreadable", errno=code,
                             path=str(target)) from exc  # fmt: skip
    return data


@contextlib.contextmanager
def _dir_in_root(root: Path, relpath: str) -> Iterator[int | None]:
    """A descriptor of the directory ``ROOT/relpath`` reached without following a symlink on the
    way (``symlink-in-path``), or None if it does not exist; closed on leaving."""
    with _root_fd(root) as rfd:
        try:
            dfd = open_dir_nofollow(rfd, relpath)
        except FileNotFoundError:
            dfd = None
        except OSError as exc:
            raise _walk_error(root, exc, "read") from exc
        try:
            yield dfd
        finally:
            if dfd is not None:
                os.close(dfd)


def read_root_file(root: Path, relpath: str) -> bytes | None:
    """The content of ``ROOT/relpath``, None if it does not exist; a symlink on the way
    (``symlink-in-path``), a FIFO, device or directory, or more than 1 MiB (a prefix would be
    rewritten as the whole file) is an error (``unreadable``). Never blocks."""
    parent, name = _split(relpath)
    with _dir_in_root(root, parent) as dfd:
        return None if dfd is None else _read_in(root, relpath, dfd, name)


def root_file_stat(root: Path, relpath: str) -> os.stat_result | None:
    """``lstat`` of ``ROOT/relpath`` reached without following a symlink on the way (None if missing)."""
    parent, name = _split(relpath)
    with _dir_in_root(root, parent) as dfd:
        return None if dfd is None else _lstat_in(dfd, name)


def list_root_dir(root: Path, relpath: str) -> list[str] | None:
    """The sorted names in the directory ``ROOT/relpath`` (None if it does not exist), reached
    without following a symlink: globbing ``ROOT/boot`` would list the host's ``/boot`` through an
    image's ``boot -> /boot``."""
    with _dir_in_root(root, relpath) as dfd:
        return None if dfd is None else sorted(os.listdir(dfd))  # noqa: PTH208 - a directory descriptor


def install_file(root: Path, relpath: str, data: bytes, mode: int) -> FileChange:
    """Make ``ROOT/relpath`` hold ``data`` with ``mode`` (and its group, if it exists); created,
    updated or unchanged. Missing directories are made root's, 0755. Every write goes through
    descriptors of directories checked as they were opened (``check_install_targets``)."""
    target = root / relpath
    parent, name = _split(relpath)
    try:
        with _root_fd(root) as rfd:
            try:
                dfd = open_dir_nofollow(rfd, parent, create=(0o755, 0o755), check=_dir_checker(root, relpath))
            except OSError as exc:
                raise _walk_error(root, exc, "write") from exc
            try:
                return _install_in(root, relpath, dfd, name, data=data, mode=mode)
            finally:
                os.close(dfd)
    except OSError as exc:
        raise HostStateError(f"{target}: cannot write: {exc.strerror}", reason="install-write", errno=exc.errno,
                             path=str(target)) from exc  # fmt: skip


def _install_in(root: Path, relpath: str, dfd: int, name: str, *, data: bytes, mode: int) -> FileChange:
    target = root / relpath
    st = _lstat_in(dfd, name)
    if st is not None and stat.S_ISLNK(st.st_mode):
        raise HostStateError(f"{target} is a symlink: refusing to replace it", reason="symlink-in-path",
                             path=str(target))  # fmt: skip
    if st is not None:
        _check_file(root, relpath, st)
        if stat.S_IMODE(st.st_mode) == mode and _read_in(root, relpath, dfd, name) == data:
            return FileChange(str(target), Change.UNCHANGED, mode)
    # An updated file keeps its group (a configuration file may belong to its admin group); its
    # owner is root (or us), as _check_file made sure.
    write_in_dir(dfd, name, data, mode, None if st is None else (st.st_uid, st.st_gid))
    return FileChange(str(target), Change.CREATED if st is None else Change.UPDATED, mode)
