"""Running processes: each one's executable and every file-backed executable mapping.

Processes are enumerated with psutil (pid, name, start time, executable). The mappings come from
``/proc/<pid>/maps`` directly: psutil's ``memory_maps()`` reads ``smaps``, which makes the kernel
walk every page table to count RSS, ten times slower for a line we do not need. Only mappings
with the ``x`` permission and a path are kept (``fs/proc/task_mmu.c`` ``show_map_vma``, 6.1):
those are what ``MMAP_CHECK`` measures and what ran as code. Paths are bytes, as the kernel wrote
them; a mapping of a file deleted or replaced since shows `` (deleted)`` and is marked so. maps is
streamed line by line and only the executable file mappings are kept; a process past a bound
(line length, distinct files) gets the error ``maps-truncated`` instead of silently losing the
mappings after it (a library injected late in a huge maps file).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from imaguard.report.facts import Mapping, ProcessInfo

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

__all__ = ["MAPS_DISTINCT_LIMIT", "MAPS_LINE_LIMIT", "Mapping", "ProcessInfo", "list_processes", "parse_maps"]

_DELETED = b" (deleted)"
# A process maps ld.so and a few hundred libraries executable; more distinct files than this is not
# a process we can trace. Only these are kept, so memory is bounded whatever the size of maps.
MAPS_DISTINCT_LIMIT = 4096
# One maps line: addresses, perms, offset, dev, inode, then a path of at most PATH_MAX bytes whose
# newlines the kernel escapes as \012 (seq_file_path): 4 x 4096 plus the fields fits.
MAPS_LINE_LIMIT = 1 << 16


def parse_maps(lines: Iterable[bytes], limit: int = MAPS_DISTINCT_LIMIT) -> tuple[tuple[Mapping, ...], bool]:
    """The distinct file-backed executable mappings of ``/proc/<pid>/maps`` lines, in order, and
    whether the scan stopped early (a line longer than :data:`MAPS_LINE_LIMIT`, or more than
    ``limit`` distinct files): then later mappings are missing, which the caller must report."""
    seen: dict[bytes, Mapping] = {}
    for line in lines:
        if len(line) >= MAPS_LINE_LIMIT and not line.endswith(b"\n"):
            return tuple(seen.values()), True
        # address perms offset dev inode pathname: the path starts after five fields and spaces.
        parts = line.rstrip(b"\n").split(None, 5)
        if len(parts) < 6 or b"x" not in parts[1] or not parts[5].startswith(b"/"):
            continue
        path = parts[5]
        deleted = path.endswith(_DELETED)
        if deleted:
            path = path[: -len(_DELETED)]
        if path not in seen:
            if len(seen) >= limit:
                return tuple(seen.values()), True
            seen[path] = Mapping(path, deleted)
    return tuple(seen.values()), False


def _maps_lines(pid: int) -> Iterator[bytes]:
    """The lines of ``/proc/<pid>/maps``, streamed (a process may have 65530 mappings of long paths)."""
    with Path(f"/proc/{pid}/maps").open("rb") as f:
        while line := f.readline(MAPS_LINE_LIMIT):
            yield line


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
            mappings, truncated = parse_maps(_maps_lines(pid))
            if truncated:
                error = "maps-truncated"
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
