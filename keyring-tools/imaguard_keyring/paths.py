"""Questions about the paths the user gave (``--out``, ``--ca``, ``--list``) that answer or refuse.

``Path.is_dir()``/``exists()``/``is_symlink()`` swallow only "no such file"-like errors (ENOENT,
ENOTDIR, EBADF, ELOOP); a name too long, EACCES or EIO raise an OSError that reached the user as a
traceback or an exit 1. Here they are a usage error (exit 2, ``bad-path``) that names the path.
"""

from __future__ import annotations

import errno
import stat
from typing import TYPE_CHECKING

from imaguard.errors import UsageError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["is_directory", "is_symlink", "lexists"]

_ABSENT = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP})  # what pathlib reads as False


def _mode(path: Path, *, follow: bool) -> int | None:
    """The file mode, or None when nothing is there; UsageError ``bad-path`` for any other error."""
    try:
        return (path.stat() if follow else path.lstat()).st_mode
    except OSError as exc:
        if exc.errno in _ABSENT:
            return None
        raise UsageError(f"{path}: {exc.strerror}", reason="bad-path") from exc
    except ValueError as exc:  # an embedded NUL byte
        raise UsageError(f"{path!r}: {exc}", reason="bad-path") from exc


def is_directory(path: Path) -> bool:
    """``path.is_dir()`` (following symlinks)."""
    mode = _mode(path, follow=True)
    return mode is not None and stat.S_ISDIR(mode)


def is_symlink(path: Path) -> bool:
    """``path.is_symlink()``."""
    mode = _mode(path, follow=False)
    return mode is not None and stat.S_ISLNK(mode)


def lexists(path: Path) -> bool:
    """Whether anything, a dangling symlink included, is at ``path``."""
    return _mode(path, follow=False) is not None
