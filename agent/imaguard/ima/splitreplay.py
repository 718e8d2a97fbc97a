"""Replay a long binary list saved in a regular file on two cores: one process per PCR bank (I/O).

The banks are independent hash chains, so a forked child replays the second bank while this
process replays the first; each reads the file itself, in bounded chunks, up to the size it had
when the replay began. Both walk every record with every framing check and take the full check of
any unusual record; of the fused loop's two checks of a common ``d-ng|n-ng|…`` record, this
process makes the template-digest one and half the field-layout ones, the child the other half
(``scan_binary``'s ``checks``), so together they check exactly what the one-process replay
checks, and where both find an error the one reported is the one the one-process replay reports.
Their counts, end offsets and truncation must agree, the CRC-32 of the bytes each read must be the
same, and the file's size, times and inode must not have moved while they read, or nothing is
reported (a write through a shared mapping moves no time: the CRC sees it).

For saved lists only: the kernel's securityfs list grows while it is read and reports size 0, so
two readers would see two lists (``splittable`` says no to it). Where fork fails (a process
limit), the same replay runs in this process. SIGINT and the signals of ``imaguard.interrupts``
are blocked across the fork; the child ignores them (the parent stops it with SIGKILL, the kernel
when the parent dies).
"""

from __future__ import annotations

import binascii
import marshal
import os
import signal
import stat
import sys
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from imaguard.errors import FormatError, HostStateError
from imaguard.ima.measurements import Checks
from imaguard.ima.replay import ReplayedLog, replay_binary
from imaguard.ima.templates import ByteOrder
from imaguard.interrupts import INTERRUPT_SIGNALS, ignore_interrupts

__all__ = ["SPLIT_MIN_BYTES", "replay_file", "splittable"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_CHUNK = 1 << 20
# Blocked across the fork: neither process may act on them before its own handling is in place.
_STOP_SIGNALS = {signal.SIGINT, *INTERRUPT_SIGNALS}
# Below ~5,000 records the fork and the second read cost more than the second core saves.
SPLIT_MIN_BYTES = 1 << 20


class _Pread:
    """A reader of the first ``size`` bytes of ``fd`` with its own position (``os.pread``), so the
    two processes sharing the descriptor do not move each other's offset. ``crc`` is the CRC-32 of
    the bytes read: after ``drain`` the two processes compare theirs (the same file, both times)."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size, self.pos, self.crc = fd, size, 0, 0

    def read(self, n: int = -1, /) -> bytes:
        left = self.size - self.pos
        if left <= 0:
            return b""
        data = os.pread(self.fd, left if n < 0 else min(n, left), self.pos)
        self.pos += len(data)
        self.crc = binascii.crc32(data, self.crc)  # ~0.3 ms per MiB
        return data

    def drain(self) -> int:
        """Read the rest (a scan stopped early by an error) and return the CRC of all ``size`` bytes."""
        while self.read(_CHUNK):
            pass
        return self.crc


def splittable(fd: int, banks: tuple[str, ...]) -> os.stat_result | None:
    """``fd``'s status now, to replay it on two cores (``replay_file``), or None: not a regular file
    of at least SPLIT_MIN_BYTES (securityfs files report 0), not exactly two banks, or a process with
    threads (the fork would be unsafe)."""
    st = os.fstat(fd)
    if len(banks) != 2 or not stat.S_ISREG(st.st_mode) or st.st_size < SPLIT_MIN_BYTES:
        return None
    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > 1:
        return None  # a fork copies one thread of many, and any lock another one held
    return st


def _same_file(before: os.stat_result, after: os.stat_result) -> bool:
    """Nothing wrote to the file in between: a write moves its modification and change times."""
    fields = ("st_dev", "st_ino", "st_size", "st_mtime_ns", "st_ctime_ns")
    return all(getattr(before, f) == getattr(after, f) for f in fields)


Scan = Callable[[], ReplayedLog]


def _outcome(scan: Scan, reader: _Pread) -> dict[str, Any]:
    """Run one bank's scan; its result or its FormatError, and the CRC of the file's bytes, as plain
    data (it crosses a pipe)."""
    try:
        r = scan()
    except FormatError as exc:
        return {"error": (str(exc), exc.offset, exc.reason, exc.record), "crc": reader.drain()}
    return {
        "pcrs": {bank: dict(v) for bank, v in r.pcrs.items()}, "count": r.count, "violations": r.violations,
        "end": r.end, "truncated": (r.truncated.offset, r.truncated.have) if r.truncated else None,
        "templates": dict(r.templates), "matched": dict(r.matched), "crc": reader.drain(),
    }


def _first_error(mine: FormatError | None, theirs: tuple[str, int | None, str, int | None] | None) -> None:
    """Raise the error the one-process replay raises: the lower record's; at one record the child's
    (the field-layout check comes before the digest check there)."""
    if theirs is not None:
        message, offset, reason, record = theirs
        if mine is None or mine.record is None or (record is not None and record <= mine.record):
            exc = FormatError(message, reason=reason)  # the offset is in the message already
            exc.offset, exc.record = offset, record
            raise exc
    if mine is not None:
        raise mine


def _received(data: bytes, status: int) -> dict[str, Any]:
    code = os.waitstatus_to_exitcode(status)
    if not data or code != 0:
        how = f"signal {-code}" if code < 0 else f"exit status {code}"
        raise HostStateError(f"the second replay process ended without a result ({how})", reason="replay-failed")
    got: dict[str, Any] = marshal.loads(data)  # noqa: S302 - written by our own forked child: plain data
    return got


def _child(wfd: int, scan: Scan, reader: _Pread, parent: int, mask: set[int | signal.Signals]) -> NoReturn:
    """In the forked child: run, write the outcome, and leave without running any of the parent's code."""
    code = 1
    try:
        # Ctrl-C and kill reach the whole process group: the parent stops this process with SIGKILL
        # (or the kernel does, below), so it ignores them. They were blocked across the fork, so no
        # handler of the parent's can run here before this line.
        ignore_interrupts()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        # A parent killed outright (SIGKILL) cannot reap this process: die with it, not read on
        # alone. ctypes is loaded here only, so the parent's start-up does not pay for it.
        import ctypes  # noqa: PLC0415

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == parent:  # else it died before the prctl: nobody will read the outcome
            view = memoryview(marshal.dumps(_outcome(scan, reader)))
            while view:
                view = view[os.write(wfd, view) :]
            code = 0
    finally:
        os._exit(code)


def replay_file(
    fd: int,
    status: os.stat_result,
    *,
    byteorder: ByteOrder,
    bank: str,
    banks: tuple[str, ...],
    expect: Mapping[str, bytes] | None = None,
) -> ReplayedLog:
    """``replay_binary`` of ``fd`` (its first ``status.st_size`` bytes; ``status`` from ``splittable``)
    with ``banks[0]`` replayed here and ``banks[1]`` in a forked child: the same result and the same
    FormatError, on two cores. HostStateError ``list-changed`` when the file was written meanwhile."""
    first, second = banks
    expect = expect or {}
    size = status.st_size

    def scan(which: str, checks: Checks, reader: _Pread) -> Scan:
        return lambda: replay_binary(
            reader, byteorder=byteorder, bank=bank, banks=(which,), checks=checks,
            expect={which: expect[which]} if which in expect else None,
        )

    rfd, wfd = os.pipe()
    parent = os.getpid()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        pid = os.fork()
    except OSError:  # a process limit (EAGAIN): the same replay, on one core
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(rfd)
        os.close(wfd)
        return replay_binary(_Pread(fd, size), byteorder=byteorder, bank=bank, banks=banks, expect=expect or None)
    if pid == 0:  # pragma: no cover - the child leaves through os._exit; its outcome is checked here
        os.close(rfd)
        theirs_reader = _Pread(fd, size)
        _child(wfd, scan(second, "fields", theirs_reader), theirs_reader, parent, mask)
    os.close(wfd)
    mine: ReplayedLog | None = None
    failed: FormatError | None = None
    reader = _Pread(fd, size)
    with os.fdopen(rfd, "rb") as r:
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a signal that came meanwhile acts now
            try:
                mine = scan(first, "digest", reader)()
            except FormatError as exc:
                failed = exc
            crc = reader.drain()
            data = r.read()
        except BaseException:
            os.kill(pid, signal.SIGKILL)  # interrupted: stop it, never leave it behind
            raise
        finally:
            _, wait_status = os.waitpid(pid, 0)
    theirs = _received(data, wait_status)
    if theirs["crc"] != crc or not _same_file(status, os.fstat(fd)):
        raise _changed(size)
    _first_error(failed, theirs.get("error"))
    assert mine is not None  # noqa: S101 - _first_error raised when this scan failed
    return _merged(mine, theirs, banks, size)


def _changed(size: int) -> HostStateError:
    return HostStateError(
        f"the list changed while it was read (it was written to, or two reads of its first {size} bytes "
        "differ): read it again",
        reason="list-changed",
    )


def _merged(mine: ReplayedLog, theirs: dict[str, Any], banks: tuple[str, ...], size: int) -> ReplayedLog:
    """This process's replay of ``banks[0]`` with the child's of ``banks[1]``: both must have read the
    same records (they did unless the file changed between the reads)."""
    first, second = banks
    here = {"count": mine.count, "violations": mine.violations, "end": mine.end,
            "truncated": (mine.truncated.offset, mine.truncated.have) if mine.truncated else None,
            "templates": dict(mine.templates)}  # fmt: skip
    if any(theirs[k] != v for k, v in here.items()):
        raise _changed(size)
    return ReplayedLog(
        pcrs={first: mine.pcrs[first], second: theirs["pcrs"][second]}, count=mine.count,
        violations=mine.violations, boot_aggregate=mine.boot_aggregate, entries=None, end=mine.end,
        truncated=mine.truncated, templates=mine.templates, matched={**mine.matched, **theirs["matched"]},
    )
