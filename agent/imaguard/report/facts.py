"""Facts about running processes that the report joins (pure types; ``host/processes.py`` fills them).

They live here, below ``host/`` in the layering (DESIGN.md §3): the adapter imports them, the
report builder never imports an adapter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DigestHere", "FileId", "Mapping", "ProcessInfo"]

FileId = tuple[int, int]  # (st_dev, st_ino)
# The digest ("algo" as in the log: "sha256") of the file at a path here, if it is still the
# running file ``FileId``; None when it cannot be read or is another file by now.
DigestHere = Callable[[bytes, FileId, str], bytes | None]


@dataclass(frozen=True, slots=True)
class Mapping:
    """A file mapped executable into a process."""

    path: bytes
    deleted: bool = False
    # The running file has the device and inode of the file at ``path`` in the reporter's mount
    # namespace: True; another file or none is there: False; not compared (deleted, unreadable): None.
    same_file: bool | None = None
    file_id: FileId | None = None  # the running file's, when same_file


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One process as seen at enumeration time; ``exe`` None for kernel threads or when unreadable."""

    pid: int
    name: str
    exe: bytes | None
    exe_deleted: bool
    start_time: float  # seconds since the epoch (psutil create_time)
    mappings: tuple[Mapping, ...]
    error: str = ""  # why exe or mappings could not be read ("access-denied", "gone", "maps-truncated")
    exe_same_file: bool | None = None  # as Mapping.same_file, for the executable
    exe_file_id: FileId | None = None  # as Mapping.file_id
