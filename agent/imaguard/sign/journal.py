"""The enrollment journal: which packages an interrupted run already settled.

A package is recorded only once every file has an outcome that a rerun would reach again
(``sign.plan.settled``): a refused file or a skip that may resolve (no bundle yet, .deb not cached,
immutable) keeps its package to be examined, and reported, by the resuming run.

Written atomically (temp file, fsync, rename, fsync of the directory), at most about once a
second, so a SIGKILL loses at most a second of work and never leaves a torn file. The journal is
keyed by the run's configuration; a run that completes removes it, so the next run re-examines
everything (cheaply: valid signatures are ``already-signed``).

The journal decides which packages a run skips, so it is trusted: its directory (the state
directory) must be writable by root only (``unsafe-state-dir``), checked before it is read and
after it is made.
"""

from __future__ import annotations

import errno
import json
import time
from pathlib import Path

from imaguard.errors import HostStateError
from imaguard.fsio import check_private_directory, ensure_private_directory, read_regular, write_atomically

__all__ = ["Journal", "atomic_write"]

_FLUSH_INTERVAL = 1.0
# The journal lists package idents (~40 bytes each): a host of 10,000 packages writes ~400 KiB.
# Past this it is not a journal of ours: started over, never read into memory.
JOURNAL_MAX = 16 << 20


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` (mode 0600) with ``data`` whole; HostStateError on failure. Its directory
    is made if missing (0700, parents 0755) and must be writable by root only."""
    try:
        ensure_private_directory(path.parent)
        write_atomically(path, data)
    except OSError as exc:
        raise HostStateError(f"{path}: cannot write: {exc.strerror}", reason="state-write", errno=exc.errno,
                             path=str(path)) from exc


class Journal:
    def __init__(self, path: Path, config: str, done: set[str]) -> None:
        self.path = path
        self.config = config
        self.done = done
        self.discarded = ""  # why the file at ``path`` was not a journal and was started over
        self._dirty = False
        self._last = time.monotonic()

    @classmethod
    def load(cls, path: Path, config: str) -> Journal:
        """The journal of an interrupted run with the same configuration, or an empty one.

        A file that is not a journal (torn or edited by hand) is started over, which is always safe;
        ``discarded`` then says why. A state directory that cannot hold the journal, or that others
        could write (``unsafe-state-dir``), is a HostStateError.
        """
        if path.parent.is_dir():  # a missing one is checked once made (``atomic_write``)
            check_private_directory(path.parent)
        try:
            raw = read_regular(path, JOURNAL_MAX)
        except FileNotFoundError:
            return cls(path, config, set())
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EINVAL, errno.EFBIG):  # a symlink, FIFO, device, or huge
                why = "a symbolic link" if exc.errno == errno.ELOOP else str(exc.strerror)
                return cls._discard(path, config, why)
            raise HostStateError(f"{path}: cannot read the enroll journal: {exc.strerror}", reason="state-read",
                                 errno=exc.errno, path=str(path)) from exc
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError too; nesting past the recursion limit
            return cls._discard(path, config, f"not JSON: {exc}")
        if not isinstance(doc, dict):
            return cls._discard(path, config, f"a JSON {type(doc).__name__}, not an object")
        done = doc.get("done")
        if not isinstance(doc.get("config"), str) or not isinstance(done, list) \
                or not all(isinstance(x, str) for x in done):
            return cls._discard(path, config, 'no "config" string and "done" list of strings')
        if doc["config"] != config:
            return cls(path, config, set())  # another configuration's run: not this one to resume
        return cls(path, config, set(done))

    @classmethod
    def _discard(cls, path: Path, config: str, why: str) -> Journal:
        journal = cls(path, config, set())
        journal.discarded = why
        return journal

    def mark(self, ident: str) -> None:
        self.done.add(ident)
        self._dirty = True
        if time.monotonic() - self._last >= _FLUSH_INTERVAL:
            self.flush()

    def flush(self) -> None:
        if self._dirty:
            atomic_write(self.path, json.dumps({"config": self.config, "done": sorted(self.done)}).encode())
            self._dirty = False
        self._last = time.monotonic()

    def begin(self) -> None:
        """Write the journal now: a state directory that cannot hold it fails before any file is labelled."""
        self._dirty = True
        self.flush()

    def finish(self) -> None:
        """The run completed: nothing to resume. HostStateError when the journal cannot be removed."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise HostStateError(f"{self.path}: cannot remove the enroll journal of this completed run: "
                                 f"{exc.strerror}", reason="state-write", errno=exc.errno,
                                 path=str(self.path)) from exc
