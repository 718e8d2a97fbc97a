"""The enrollment journal: which packages an interrupted run already settled.

A package is recorded only once every file has an outcome that a rerun would reach again
(``sign.plan.settled``): a refused file or a skip that may resolve (no bundle yet, .deb not cached,
immutable) keeps its package to be examined, and reported, by the resuming run.

Written atomically (temp file, fsync, rename, fsync of the directory), at most about once a
second, so a SIGKILL loses at most a second of work and never leaves a torn file. The journal is
keyed by the run's configuration; a run that completes removes it, so the next run re-examines
everything (cheaply: valid signatures are ``already-signed``).
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from imaguard.errors import HostStateError
from imaguard.fsio import write_atomically

__all__ = ["Journal", "atomic_write"]

_FLUSH_INTERVAL = 1.0


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` (mode 0600, parents made) with ``data`` whole; HostStateError on failure."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(path, data)
    except OSError as exc:
        raise HostStateError(f"{path}: cannot write: {exc.strerror}", reason="state-write", errno=exc.errno,
                             path=str(path)) from exc


class Journal:
    def __init__(self, path: Path, config: str, done: set[str]) -> None:
        self.path = path
        self.config = config
        self.done = done
        self._dirty = False
        self._last = time.monotonic()

    @classmethod
    def load(cls, path: Path, config: str) -> Journal:
        """The journal of an interrupted run with the same configuration, or an empty one."""
        try:
            doc = json.loads(path.read_bytes())
            if doc.get("config") == config:
                return cls(path, config, {str(x) for x in doc["done"]})
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable or torn by hand: start over, which is always safe
        return cls(path, config, set())

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

    def finish(self) -> None:
        """The run completed: nothing to resume."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
