"""Running processes: each one's executable and every file-backed executable mapping.

Processes are enumerated with psutil (pid, name, start time, executable). The mappings come from
``/proc/<pid>/maps`` directly: psutil's ``memory_maps()`` reads ``smaps``, which makes the kernel
walk every page table to count RSS, ten times slower for a line we do not need. Only mappings
with the ``x`` permission and a path are kept (``fs/proc/task_mmu.c`` ``show_map_vma``, 6.1):
those are what ``MMAP_CHECK`` measures and what ran as code. Paths are bytes, as the kernel wrote
them; a mapping of a file deleted or replaced since shows `` (deleted)`` and is marked so.
"""

from __future__ import annotations

import os

import psutil

from imaguard.report.facts import Mapping, ProcessInfo

__all__ = ["Mapping", "ProcessInfo", "list_processes", "parse_maps"]

_DELETED = b" (deleted)"
# A maps file of a huge process is a few hundred KiB; more than this is not a process we can trace.
_MAPS_LIMIT = 16 << 20


def parse_maps(data: bytes) -> tuple[Mapping, ...]:
    """The distinct file-backed executable mappings of one ``/proc/<pid>/maps`` text, in order."""
    seen: dict[bytes, Mapping] = {}
    for line in data.split(b"\n"):
        # address perms offset dev inode pathname: the path starts after five fields and spaces.
        parts = line.split(None, 5)
        if len(parts) < 6 or b"x" not in parts[1] or not parts[5].startswith(b"/"):
            continue
        path = parts[5]
        deleted = path.endswith(_DELETED)
        if deleted:
            path = path[: -len(_DELETED)]
        if path not in seen:
            seen[path] = Mapping(path, deleted)
    return tuple(seen.values())


def _read_maps(pid: int) -> bytes:
    fd = os.open(f"/proc/{pid}/maps", os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
            total += len(chunk)
            if total > _MAPS_LIMIT:
                break
        return b"".join(chunks)
    finally:
        os.close(fd)


def _info(proc: psutil.Process) -> ProcessInfo | None:
    pid = proc.pid
    try:
        with proc.oneshot():
            name = proc.name()
            start = proc.create_time()
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:
        return ProcessInfo(pid, "", None, exe_deleted=False, start_time=0.0, mappings=(), error="access-denied")
    exe: bytes | None = None
    deleted = False
    error = ""
    try:
        # readlink of /proc/<pid>/exe: empty for kernel threads.
        raw = os.readlink(f"/proc/{pid}/exe")  # noqa: PTH115 - str in, fsencode'd below
        if raw:
            exe = os.fsencode(raw)
            if exe.endswith(_DELETED):
                exe, deleted = exe[: -len(_DELETED)], True
    except FileNotFoundError:
        error = "gone" if not psutil.pid_exists(pid) else ""  # kernel threads have no exe link
    except PermissionError:
        error = "access-denied"
    except OSError as exc:
        error = f"unreadable: {exc.strerror}"
    mappings: tuple[Mapping, ...] = ()
    if exe is not None:
        try:
            mappings = parse_maps(_read_maps(pid))
        except FileNotFoundError:
            error = "gone"
        except PermissionError:
            error = "access-denied"
        except OSError as exc:
            error = f"unreadable: {exc.strerror}"
    return ProcessInfo(pid, name, exe, deleted, start, mappings, error)


def list_processes() -> tuple[ProcessInfo, ...]:
    """Every process visible to us, by pid; processes that exit meanwhile are left out."""
    found: list[ProcessInfo] = []
    for proc in psutil.process_iter():
        info = _info(proc)
        if info is not None:
            found.append(info)
    return tuple(sorted(found, key=lambda p: p.pid))
