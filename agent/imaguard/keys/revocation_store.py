"""Load a revocation list from disk and remember the newest one accepted (the I/O side of ``keys/revocation.py``).

Rollback: a list is signed, but an old signed list is still signed. A host therefore keeps the
payload of the newest list it accepted from each CA (by CA key id) in its state directory, and
refuses a list whose serial is lower or that drops a key the kept one revokes
(``RevocationList.check_successor``). The kept payload is local state, written by root
atomically; it is not re-verified.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from imaguard.errors import FormatError, HostStateError, TrustError, UsageError
from imaguard.fsio import check_private_directory, ensure_directory, read_regular
from imaguard.keys.material import read_small_file
from imaguard.keys.revocation import RevocationList, parse_ca_certificate, verify_revocation_list
from imaguard.rootfs import open_dir_nofollow, write_in_dir

__all__ = ["accepted_list_path", "load_revoked"]

_MAX_LIST = 16 << 20


def _read(path: Path, what: str) -> bytes:
    return read_small_file(path, what, _MAX_LIST, reason="unreadable")


def accepted_list_path(state_dir: Path, issuer_key_id: bytes) -> Path:
    """Where the newest list accepted from the CA with ``issuer_key_id`` is kept (its payload)."""
    return state_dir / f"{_RECORD_PREFIX}{issuer_key_id.hex()}{_RECORD_SUFFIX}"


def load_revoked(
    list_path: Path | None,
    ca_path: Path | None,
    state_dir: Path | None = None,
    *,
    record: bool = True,
    root: Path | None = None,
) -> frozenset[bytes]:
    """Revoked key ids from a CA-signed list; a list that does not verify is an error, never "none".

    With ``state_dir``: a list older than the one accepted before from the same CA (lower serial,
    or a revoked key dropped) is refused (TrustError ``revocation-rollback``), and a newer one is
    recorded as accepted unless ``record`` is false (read-only commands check, never write). With
    ``root``, ``state_dir`` is a relative path inside that image, reached without following any
    symlink (``symlink-in-path``) and writable by root only (``unsafe-state-dir``). The record is
    read bounded, never through a symlink or from a FIFO, and written through the directory's
    descriptor (temp file O_EXCL, fsync, rename, fsync).
    """
    if list_path is None:
        if ca_path is not None:  # silently checking nothing would look like "nothing revoked"
            raise UsageError("--revocation-ca is the CA of a --revocation-list: give the list, or leave it out")
        # A list accepted before stays in force: leaving the option out (a script written before
        # revocation existed) must not un-revoke a key (audit).
        return frozenset() if state_dir is None else _recorded(_StateDir(state_dir, root))
    if ca_path is None:
        raise UsageError("--revocation-list needs --revocation-ca: the CA certificate that signs it")
    ca = parse_ca_certificate(_read(ca_path, "CA certificate"), str(ca_path))
    try:
        rl = verify_revocation_list(_read(list_path, "revocation list"), (ca,), str(list_path))
    except FormatError as exc:
        raise TrustError(str(exc), reason="bad-revocation-list") from exc
    if state_dir is None:
        return rl.key_ids
    state = _StateDir(state_dir, root)
    _check_and_record(rl, state, str(list_path), record=record)
    # The lists recorded for other CAs count too; this CA's record is a subset of ``rl`` (a list
    # never drops a key: check_successor), so the union adds nothing older for it.
    return rl.key_ids | _recorded(state)


_RECORD_PREFIX, _RECORD_SUFFIX = "revocation-accepted-", ".json"


def _recorded(state: _StateDir) -> frozenset[bytes]:
    """Every key id on the lists recorded as accepted in ``state`` (none if there is none)."""
    dir_fd = state.open(create=False)
    if dir_fd is None:
        return frozenset()
    out: set[bytes] = set()
    try:
        for name in sorted(os.listdir(dir_fd)):  # noqa: PTH208 - a directory descriptor
            if not (name.startswith(_RECORD_PREFIX) and name.endswith(_RECORD_SUFFIX)):
                continue
            path = state.shown / name
            kept = _read_record(dir_fd, path)
            if kept is None:  # removed meanwhile
                continue
            try:
                out |= RevocationList.from_payload(kept, str(path)).key_ids
            except FormatError as exc:  # fail closed, as when a list is given
                raise HostStateError(f"{exc}; the record of a revocation list accepted is damaged: remove it only "
                                     "if you know the newest list", reason="revocation-state",
                                     path=str(path)) from exc  # fmt: skip
    finally:
        os.close(dir_fd)
    return frozenset(out)


def _state_problem(st: os.stat_result) -> str | None:
    if st.st_uid not in (0, os.geteuid()):
        return f"owned by uid {st.st_uid}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


@dataclass(frozen=True, slots=True)
class _StateDir:
    """Where the record lives: ``path`` on this host (the operator's ``--state-dir``, followed like
    any path they give), or ``path`` inside ``root`` (an image: every component walked with
    O_NOFOLLOW, so an image's ``var/lib/imaguard -> /host/dir`` is refused, never written through)."""

    path: Path
    root: Path | None

    @property
    def shown(self) -> Path:
        return self.path if self.root is None else self.root / self.path

    def _check(self, shown: str, st: os.stat_result) -> None:
        # Inside an image the record's directories must be root's alone: whoever could write
        # them could remove the record and with it the rollback check.
        problem = _state_problem(st)
        if problem is not None and self.root is not None:
            raise HostStateError(f"{self.root / shown}: {problem}; the record of the newest revocation list accepted "
                                 "lies there, so it must be writable by root only (chown root, chmod go-w)",
                                 reason="unsafe-state-dir", path=str(self.root / shown))  # fmt: skip

    def open(self, *, create: bool) -> int | None:
        """A descriptor of the directory (None if it does not exist and ``create`` is false)."""
        try:
            if self.root is None:
                if create:
                    ensure_directory(self.path)
                elif not self.path.exists():
                    return None
                check_private_directory(self.path)  # the record is what stops a rollback: root's alone
                return os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            rfd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                return open_dir_nofollow(rfd, str(self.path), create=(0o755, 0o700) if create else None,
                                         check=self._check)  # fmt: skip
            finally:
                os.close(rfd)
        except FileNotFoundError:
            if create:
                raise
            return None
        except OSError as exc:
            where = self.shown if self.root is None else self.root / str(exc.filename or self.path)
            if exc.errno == errno.ELOOP:
                raise HostStateError(f"{where} is a symlink inside {self.root}: refusing to follow it out of the "
                                     "root for the revocation record", reason="symlink-in-path",
                                     path=str(where)) from exc  # fmt: skip
            raise HostStateError(f"{where}: cannot open the directory of the revocation record: {exc.strerror}",
                                 reason="revocation-state", errno=exc.errno, path=str(where)) from exc  # fmt: skip


def _read_record(dir_fd: int, path: Path) -> bytes | None:
    try:
        return read_regular(Path(path.name), _MAX_LIST, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        why = "a symlink (not followed)" if exc.errno == errno.ELOOP else exc.strerror
        raise HostStateError(f"cannot read {path}: {why}; the record of the last revocation list accepted must be "
                             "a regular file", reason="revocation-state", errno=exc.errno,
                             path=str(path)) from exc  # fmt: skip


def _check_and_record(rl: RevocationList, state: _StateDir, source: str, *, record: bool) -> None:
    path = accepted_list_path(state.shown, rl.issuer_key_id)
    dir_fd = state.open(create=False)
    try:
        kept = None if dir_fd is None else _read_record(dir_fd, path)
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    previous = None
    if kept is not None:
        try:
            previous = RevocationList.from_payload(kept, str(path))
        except FormatError as exc:  # fail closed: without the record, any old list would pass
            raise HostStateError(f"{exc}; the record of the last revocation list accepted is damaged: remove it "
                                 "only if you know the newest list", reason="revocation-state",
                                 path=str(path)) from exc  # fmt: skip
    if previous is not None:
        try:
            rl.check_successor(previous)
        except TrustError as exc:
            raise TrustError(f"{source}: {exc} (recorded in {path}); refusing an older revocation list",
                             reason=exc.reason) from exc  # fmt: skip
        if rl.serial == previous.serial:
            return
    if not record:
        return
    try:
        dir_fd = state.open(create=True)
        assert dir_fd is not None  # noqa: S101 - open(create=True) never returns None
        try:
            write_in_dir(dir_fd, path.name, rl.to_payload(), 0o644)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise HostStateError(f"cannot record the accepted revocation list in {path}: {exc.strerror}",
                             reason="revocation-state", errno=exc.errno, path=str(path)) from exc  # fmt: skip
