"""The authority's side of the revocation list: read it, add a key id, sign, write atomically.

The model and the parser live in the agent (``imaguard.keys.revocation``) so hosts read the very
same format. A list that exists but does not verify with the CA is never extended: that would
launder a tampered list with a fresh signature.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from typing import TYPE_CHECKING

from imaguard.errors import FormatError, HostStateError, TrustError, UsageError
from imaguard.fsio import write_atomically
from imaguard.keys.revocation import (
    MAX_REVOCATION_LIST_SIZE,
    RevocationList,
    sign_revocation_list,
    verify_revocation_list,
)
from imaguard_keyring import paths

if TYPE_CHECKING:
    import datetime
    from collections.abc import Iterator
    from pathlib import Path

    from imaguard.keys.material import Certificate
    from imaguard_keyring.ceremony import Authority

__all__ = ["add_revocation", "read_revocation_list"]

_NEW_LIST_MODE = 0o644  # public: hosts fetch it; only its signature matters


def read_revocation_list(path: Path, ca: Certificate) -> RevocationList | None:
    """The verified list at ``path``, or None if there is no file yet; TrustError (exit 3) when it does
    not verify: a bad signature or another CA's, or no signature or no envelope at all
    (``bad-revocation-list``)."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_REVOCATION_LIST_SIZE + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the revocation list: {exc.strerror}", reason="unreadable") from exc
    try:
        return verify_revocation_list(data, (ca,), str(path))
    except FormatError as exc:
        # Stripped signatures, a truncated, empty or garbage file: a list that does not verify (exit 3,
        # as `imaguard keys install` says of the same file), not a failure of this tool.
        raise TrustError(str(exc), reason="bad-revocation-list") from exc


def add_revocation(
    path: Path,
    authority: Authority,
    key_id: bytes,
    *,
    reason: str,
    subject: str,
    now: datetime.datetime,
    new: bool = False,
) -> RevocationList:
    """Add ``key_id`` to the list at ``path``, re-sign it and replace the file.

    A missing list is started (serial 1) only with ``new``: a mistyped or unmounted path would
    otherwise start a fresh list that lacks every key revoked so far, which hosts that never saw
    the real one would accept. No directory is ever created, for the same reason.
    """
    if paths.is_symlink(path):
        # os.replace would turn the link into a regular file and leave the published target behind.
        raise UsageError(f"{path}: is a symbolic link; give the list's own path ({path.resolve()})",
                         reason="symlink-in-path")  # fmt: skip
    if not paths.is_directory(path.parent):
        if not new:
            raise UsageError(f"{path}: no revocation list there; to start a new one (serial 1) give --new",
                             reason="no-revocation-list")  # fmt: skip
        raise UsageError(f"{path.parent}: no such directory (it is not created)", reason="no-revocation-list")
    with _locked(path):
        return _add_locked(path, authority, key_id, reason=reason, subject=subject, now=now, new=new)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``path``'s directory: two revocations at once must both end in the
    list (read, sign and replace are one step), not the last writer's alone. The directory, not a
    lock file, so the published directory gains no file; the list itself is replaced, so it cannot
    carry the lock."""
    try:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(f"{path.parent}: cannot open: {exc.strerror}", reason="unreadable") from exc
    try:
        fcntl.flock(dfd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(dfd)  # releases the lock


def _add_locked(
    path: Path,
    authority: Authority,
    key_id: bytes,
    *,
    reason: str,
    subject: str,
    now: datetime.datetime,
    new: bool,
) -> RevocationList:
    current = read_revocation_list(path, authority.cert)
    if current is None:
        if not new:
            raise UsageError(f"{path}: no revocation list there; to start a new one (serial 1) give --new",
                             reason="no-revocation-list")  # fmt: skip
        current = RevocationList.empty(authority.cert.key_id, now)
    elif new:
        raise UsageError(f"{path}: a revocation list (serial {current.serial}) is already there: --new only starts "
                         "a list where there is none", reason="revocation-list-exists")  # fmt: skip
    updated = current.with_revoked(key_id, now, reason, subject)
    # The list is published (a web server or config management serves it): the new one keeps the
    # old one's mode and owner, and a new list is world-readable; 0600 root would stop the serving.
    mode, owner = _NEW_LIST_MODE, None
    with contextlib.suppress(FileNotFoundError):
        st = path.stat()
        mode, owner = stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid)
    try:
        write_atomically(path, sign_revocation_list(updated, authority.key).to_json(), mode, owner)
    except OSError as exc:
        raise HostStateError(f"{path}: cannot write: {exc.strerror}", reason="state-write", errno=exc.errno,
                             path=str(path)) from exc  # fmt: skip
    return updated
