"""Where measurement lists come from: securityfs (per-bank files when the kernel has them) or a file.

I/O adapter for ``imaguard.ima.measurements``: it only opens files and picks names; parsing
stays in the pure module, which reads the opened file in bounded chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from imaguard.errors import HostStateError, UnsupportedError
from imaguard.ima.securityfs import ASCII_MEASUREMENTS, BINARY_MEASUREMENTS, IMA_DIR

__all__ = ["LogFile", "locate", "open_log"]


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
