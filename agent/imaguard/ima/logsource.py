"""Where measurement lists come from: securityfs (per-bank files when the kernel has them) or a file.

I/O adapter for ``imaguard.ima.measurements``: it only opens files and picks names; parsing
stays in the pure module, which reads the opened file in bounded chunks. ``read_log`` and
``replay_bytes`` are the one path by which the report and its exports read a whole list, so that
a missing, unreadable or malformed list fails the same way (and names the file) in each of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from imaguard.errors import FormatError, HostStateError, UnsupportedError, UsageError
from imaguard.ima.measurements import detect_byteorder, iter_binary
from imaguard.ima.replay import replay
from imaguard.ima.securityfs import ASCII_MEASUREMENTS, BINARY_MEASUREMENTS, IMA_DIR

if TYPE_CHECKING:
    from imaguard.ima.replay import ReplayedLog

__all__ = ["LOG_LIMIT", "LogFile", "locate", "log_path", "looks_ascii", "open_log", "read_bytes", "read_log",
           "replay_bytes"]  # fmt: skip

LOG_LIMIT = 256 << 20  # config Limits has no log size yet; a list this large is not a real host's
# An ASCII list line starts with the PCR index in decimal and a space ("10 1f3c..."); a binary one
# with a 4-byte integer, whose bytes are never digits for a PCR (0..63).
_ASCII_HEAD = re.compile(rb"[0-9]{1,2} ")


@dataclass(frozen=True, slots=True)
class LogFile:
    """A measurement list to read: its path, form, and the bank its template digests are in."""

    path: str
    ascii: bool
    bank: str  # "sha1" for the classic files, the suffix of a per-bank file otherwise


def locate(*, ascii_form: bool = False, bank: str = "sha1", ima_dir: str = IMA_DIR) -> LogFile:
    """The kernel's list for ``bank``: ``…_<bank>`` where the kernel has per-bank files (6.10+)."""
    base = ASCII_MEASUREMENTS if ascii_form else BINARY_MEASUREMENTS
    per_bank = Path(ima_dir) / f"{base}_{bank}"
    if per_bank.exists():
        return LogFile(str(per_bank), ascii_form, bank)
    classic = Path(ima_dir) / base
    if bank != "sha1":
        raise UnsupportedError(f"this kernel has no per-bank measurement list {per_bank}", reason="no-bank-log")
    if not classic.exists():
        raise UnsupportedError(
            f"{classic} does not exist: IMA is not enabled in this kernel or securityfs is not mounted",
            reason="ima-unavailable",
        )
    return LogFile(str(classic), ascii_form, "sha1")


def open_log(log: LogFile) -> BinaryIO:
    """Open unbuffered: securityfs reports size 0, and the parser reads in its own chunks."""
    try:
        return Path(log.path).open("rb", buffering=0)
    except OSError as exc:
        raise HostStateError(
            f"cannot read {log.path}: {exc.strerror}", reason="measurements-unreadable", errno=exc.errno,
            path=log.path,
        ) from exc


def looks_ascii(head: bytes) -> bool:
    """Whether the first bytes of a list look like the ASCII form (``ascii_runtime_measurements``)."""
    return _ASCII_HEAD.match(head) is not None


def read_bytes(path: str, limit: int = LOG_LIMIT) -> bytes:
    """The whole list at ``path``: missing is a usage error (reason ``missing``), unreadable a host error."""
    try:
        with Path(path).open("rb", buffering=0) as f:
            chunks: list[bytes] = []
            total = 0
            while chunk := f.read(1 << 20):
                total += len(chunk)
                if total > limit:
                    raise HostStateError(f"{path} is larger than {limit} bytes", reason="size-limit-exceeded",
                                         path=path)  # fmt: skip
                chunks.append(chunk)
    except FileNotFoundError as exc:
        raise UsageError(f"{path}: no such measurement list", reason="missing") from exc
    except OSError as exc:
        raise HostStateError(f"cannot read {path}: {exc.strerror}", reason="measurements-unreadable",
                             errno=exc.errno, path=path) from exc  # fmt: skip
    return b"".join(chunks)


def log_path(log_file: Path | None) -> str:
    """``log_file``, or the kernel's binary list (UnsupportedError without IMA)."""
    return str(log_file) if log_file is not None else locate().path


def read_log(log_file: Path | None) -> tuple[bytes, str]:
    """The bytes of ``log_file`` (or of the kernel's list) and the path they were read from."""
    path = log_path(log_file)
    return read_bytes(path), path


def replay_bytes(data: bytes, source: str = "", *, keep_entries: bool = True) -> ReplayedLog:
    """The replayed binary list ``data``; a FormatError names ``source`` (the list's path)."""
    try:
        return replay(iter_binary(data, byteorder=detect_byteorder(data)), keep_entries=keep_entries)
    except FormatError as exc:
        if not source:
            raise
        hint = ""
        if exc.offset == 0 and looks_ascii(data[:4]):
            hint = "; it looks like the ASCII list: give the binary one (binary_runtime_measurements)"
        named = FormatError(f"{source}: {exc}{hint}", reason=exc.reason)  # the offset stays in the message
        named.offset = exc.offset
        raise named from exc
