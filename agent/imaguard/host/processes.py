"""Running processes: each one's executable and every file-backed executable mapping.

Processes are enumerated with psutil (pid, name, start time, executable). The mappings come from
``/proc/<pid>/maps`` directly: psutil's ``memory_maps()`` reads ``smaps``, which makes the kernel
walk every page table to count RSS, ten times slower for a line we do not need. Only mappings
with the ``x`` permission and a path are kept (``fs/proc/task_mmu.c`` ``show_map_vma``, 6.1):
those are what ``MMAP_CHECK`` measures and what ran as code. Paths are bytes, as the kernel wrote
them; a mapping of a file deleted or replaced since shows `` (deleted)`` and is marked so.

The path alone does not say which file runs: the file at it may have been replaced since, and a
process in another mount namespace (a container, a bind mount over ``/usr/bin/x``) shows a path
that names another file here. So each running file's (st_dev, st_ino) — ``stat`` of
``/proc/<pid>/exe`` and of ``/proc/<pid>/map_files/<range>`` — is compared with ``stat`` of its
path in our namespace (``same_file``); the report traces a file by its path only when they agree.
An equal inode in another mount namespace is the same file (a service's private namespace), so the
namespace alone does not decide. maps is
streamed line by line and only the executable file mappings are kept; a process past a bound
(line length, distinct files) gets the error ``maps-truncated`` instead of silently losing the
mappings after it (a library injected late in a huge maps file).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import psutil

from imaguard.config import Limits
from imaguard.digests import HashAlgo, hash_fd
from imaguard.errors import ImaguardError
from imaguard.ima.xattr_store import open_regular
from imaguard.report.facts import FileId, Mapping, ProcessInfo

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

__all__ = ["MAPS_DISTINCT_LIMIT", "MAPS_LINE_LIMIT", "MappedFile", "Mapping", "ProcessInfo", "RunningDigests",
           "list_processes", "parse_maps"]  # fmt: skip

_DELETED = b" (deleted)"
# A process maps ld.so and a few hundred libraries executable; more distinct files than this is not
# a process we can trace. Only these are kept, so memory is bounded whatever the size of maps.
MAPS_DISTINCT_LIMIT = 4096
# One maps line: addresses, perms, offset, dev, inode, then a path of at most PATH_MAX bytes whose
# newlines the kernel escapes as \012 (seq_file_path): 4 x 4096 plus the fields fits.
MAPS_LINE_LIMIT = 1 << 16


@dataclass(frozen=True, slots=True)
class MappedFile:
    """One executable file mapping as maps shows it: the first address range it was seen at, and
    the device and inode the kernel prints (``MAJOR(sb->s_dev)``, ``MINOR``, ``i_ino``)."""

    path: bytes
    deleted: bool
    start: int
    end: int
    dev: int  # os.makedev(major, minor)
    ino: int


def _parse_line(line: bytes) -> MappedFile | None:
    # address perms offset dev inode pathname: the path starts after five fields and spaces.
    parts = line.rstrip(b"\n").split(None, 5)
    if len(parts) < 6 or b"x" not in parts[1] or not parts[5].startswith(b"/"):
        return None
    path = parts[5]
    deleted = path.endswith(_DELETED)
    if deleted:
        path = path[: -len(_DELETED)]
    try:
        start, end = (int(a, 16) for a in parts[0].split(b"-", 1))
        major, minor = (int(d, 16) for d in parts[3].split(b":", 1))
        return MappedFile(path, deleted, start, end, os.makedev(major, minor), int(parts[4]))
    except ValueError:
        return None  # not the kernel's format; nothing we could trace


def parse_maps(lines: Iterable[bytes], limit: int = MAPS_DISTINCT_LIMIT) -> tuple[tuple[MappedFile, ...], bool]:
    """The distinct file-backed executable mappings of ``/proc/<pid>/maps`` lines, in order, and
    whether the scan stopped early (a line longer than :data:`MAPS_LINE_LIMIT`, or more than
    ``limit`` distinct files): then later mappings are missing, which the caller must report."""
    seen: dict[tuple[bytes, bool, int, int], MappedFile] = {}
    for line in lines:
        if len(line) >= MAPS_LINE_LIMIT and not line.endswith(b"\n"):
            return tuple(seen.values()), True
        found = _parse_line(line)
        if found is None:
            continue
        key = (found.path, found.deleted, found.dev, found.ino)
        if key not in seen:
            if len(seen) >= limit:
                return tuple(seen.values()), True
            seen[key] = found
    return tuple(seen.values()), False


def _maps_lines(pid: int) -> Iterator[bytes]:
    """The lines of ``/proc/<pid>/maps``, streamed (a process may have 65530 mappings of long paths)."""
    with Path(f"/proc/{pid}/maps").open("rb") as f:
        while line := f.readline(MAPS_LINE_LIMIT):
            yield line


class _Here:
    """(st_dev, st_ino) of the file each path names in *our* mount namespace, cached for one listing."""

    def __init__(self) -> None:
        self._ids: dict[bytes, tuple[int, int] | OSError | None] = {}

    def same_file(self, path: bytes, running: tuple[int, int] | None) -> bool | None:
        """Whether ``running`` is the file at ``path`` here: False when another file or none is
        there (replaced, another mount namespace, a bind mount, a chroot); None when not comparable."""
        if running is None:
            return None
        if path not in self._ids:
            try:
                st = os.stat(path)  # noqa: PTH116 - bytes path, follows symlinks as exec did
                self._ids[path] = (st.st_dev, st.st_ino)
            except (FileNotFoundError, NotADirectoryError):
                self._ids[path] = None
            except OSError as exc:
                self._ids[path] = exc
        here = self._ids[path]
        if isinstance(here, OSError):
            return None
        return here == running


def _stat_id(link: str) -> tuple[int, int] | None:
    try:
        st = os.stat(link)  # noqa: PTH116 - a /proc magic link: stat follows it to the running file
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _mapping(pid: int, m: MappedFile, here: _Here) -> Mapping:
    """The running file of one mapping is the one ``map_files`` links to (root only:
    ``proc_map_files_get_link`` wants CAP_SYS_ADMIN); without it, maps' own device and inode."""
    running = _stat_id(f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}") or (m.dev, m.ino)
    same = None if m.deleted else here.same_file(m.path, running)
    return Mapping(m.path, m.deleted, same, running if same else None)


def _error(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "gone"
    if isinstance(exc, PermissionError):
        return "access-denied"
    return f"unreadable: {exc.strerror}"


class _Exe(NamedTuple):
    path: bytes | None  # None for kernel threads
    deleted: bool = False
    same_file: bool | None = None
    file_id: FileId | None = None
    error: str = ""


def _exe(pid: int, here: _Here) -> _Exe:
    """The executable as the kernel names it, and whether it is the file at that path here."""
    try:
        # readlink of /proc/<pid>/exe: empty for kernel threads.
        raw = os.readlink(f"/proc/{pid}/exe")  # noqa: PTH115 - str in, fsencode'd below
    except FileNotFoundError:
        return _Exe(None, error="gone" if not psutil.pid_exists(pid) else "")  # kernel threads have no exe link
    except OSError as exc:
        return _Exe(None, error=_error(exc))
    if not raw:
        return _Exe(None)
    exe = os.fsencode(raw)
    if exe.endswith(_DELETED):
        return _Exe(exe[: -len(_DELETED)], deleted=True)
    running = _stat_id(f"/proc/{pid}/exe")
    same = here.same_file(exe, running)
    return _Exe(exe, same_file=same, file_id=running if same else None)


_PF_KTHREAD = 0x00200000  # include/linux/sched.h: "I am a kernel thread"


def _kernel_thread(pid: int) -> bool:
    """From ``/proc/<pid>/stat``'s flags (field 9), which anyone may read; comm may hold ')'."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        return bool(int(stat.rsplit(b")", 1)[1].split()[6]) & _PF_KTHREAD)
    except (OSError, IndexError, ValueError):
        return False


def _info(proc: psutil.Process, here: _Here) -> ProcessInfo | None:
    pid = proc.pid
    try:
        with proc.oneshot():
            name = proc.name()
            start = proc.create_time()
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:
        return ProcessInfo(pid, "", None, exe_deleted=False, start_time=0.0, mappings=(), error="access-denied")
    ex = _exe(pid, here)
    exe, error = ex.path, ex.error
    if exe is None and (error == "gone" or (error and _kernel_thread(pid))):
        return None  # exited meanwhile; or a kernel thread, whose exe link only root may find empty
    mappings: tuple[Mapping, ...] = ()
    if exe is not None:
        try:
            found, truncated = parse_maps(_maps_lines(pid))
            mappings = tuple(_mapping(pid, m, here) for m in found)
            if truncated:
                error = "maps-truncated"
        except OSError as exc:
            error = _error(exc)
    return ProcessInfo(pid, name, exe, ex.deleted, start, mappings, error, exe_same_file=ex.same_file,
                       exe_file_id=ex.file_id)  # fmt: skip


class RunningDigests:
    """``DigestHere`` for the report: hashes the file at a path only while it is still the running
    file (same device and inode through the descriptor it reads), once per file and algorithm."""

    def __init__(self, limits: Limits | None = None) -> None:
        self._limits = limits or Limits()
        self._done: dict[tuple[bytes, FileId, str], bytes | None] = {}

    def __call__(self, path: bytes, file_id: FileId, algo: str) -> bytes | None:
        key = (path, file_id, algo)
        if key not in self._done:
            self._done[key] = self._hash(path, file_id, algo)
        return self._done[key]

    def _hash(self, path: bytes, file_id: FileId, algo: str) -> bytes | None:
        try:
            hash_algo = HashAlgo.from_name(algo)
            with open_regular(path) as (fd, st):
                if (st.st_dev, st.st_ino) != file_id:
                    return None
                return hash_fd(fd, hash_algo, max_size=self._limits.max_file_size, path=os.fsdecode(path),
                               size_hint=st.st_size)  # fmt: skip
        except ImaguardError:
            return None


def list_processes() -> tuple[ProcessInfo, ...]:
    """Every process visible to us, by pid; processes that exit meanwhile are left out."""
    found: list[ProcessInfo] = []
    here = _Here()
    for proc in psutil.process_iter():
        info = _info(proc, here)
        if info is not None:
            found.append(info)
    return tuple(sorted(found, key=lambda p: p.pid))
