"""Load a revocation list from disk and remember the newest one accepted (the I/O side of ``keys/revocation.py``).

Rollback: a list is signed, but an old signed list is still signed. A host therefore keeps the
payload of the newest list it accepted from each CA (by CA key id) in its state directory, and
refuses a list whose serial is lower or that drops a key the kept one revokes
(``RevocationList.check_successor``). The kept payload is local state, written by root
atomically; it is not re-verified.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imaguard.errors import FormatError, HostStateError, TrustError, UsageError
from imaguard.fsio import write_atomically
from imaguard.keys.material import read_small_file
from imaguard.keys.revocation import RevocationList, parse_ca_certificate, verify_revocation_list

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["accepted_list_path", "load_revoked"]

_MAX_LIST = 16 << 20


def _read(path: Path, what: str) -> bytes:
    return read_small_file(path, what, _MAX_LIST, reason="unreadable")


def accepted_list_path(state_dir: Path, issuer_key_id: bytes) -> Path:
    """Where the newest list accepted from the CA with ``issuer_key_id`` is kept (its payload)."""
    return state_dir / f"revocation-accepted-{issuer_key_id.hex()}.json"


def load_revoked(
    list_path: Path | None, ca_path: Path | None, state_dir: Path | None = None, *, record: bool = True
) -> frozenset[bytes]:
    """Revoked key ids from a CA-signed list; a list that does not verify is an error, never "none".

    With ``state_dir``: a list older than the one accepted before from the same CA (lower serial,
    or a revoked key dropped) is refused (TrustError ``revocation-rollback``), and a newer one is
    recorded as accepted unless ``record`` is false (read-only commands check, never write).
    """
    if list_path is None:
        if ca_path is not None:  # silently checking nothing would look like "nothing revoked"
            raise UsageError("--revocation-ca is the CA of a --revocation-list: give the list, or leave it out")
        return frozenset()
    if ca_path is None:
        raise UsageError("--revocation-list needs --revocation-ca: the CA certificate that signs it")
    ca = parse_ca_certificate(_read(ca_path, "CA certificate"), str(ca_path))
    try:
        rl = verify_revocation_list(_read(list_path, "revocation list"), (ca,), str(list_path))
    except FormatError as exc:
        raise TrustError(str(exc), reason="bad-revocation-list") from exc
    if state_dir is not None:
        _check_and_record(rl, state_dir, str(list_path), record=record)
    return rl.key_ids


def _make_dirs(state_dir: Path) -> None:
    """``state_dir`` 0700 and its missing parents 0755 (``mkdir(parents=True)`` gives parents the
    umask's mode: 0777 under umask 000, in an image's var/lib)."""
    missing = []
    current = state_dir
    while not current.exists():
        missing.append(current)
        current = current.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700 if d == state_dir else 0o755, exist_ok=True)
        d.chmod(0o700 if d == state_dir else 0o755)  # mkdir's mode is masked by the umask


def _check_and_record(rl: RevocationList, state_dir: Path, source: str, *, record: bool) -> None:
    path = accepted_list_path(state_dir, rl.issuer_key_id)
    try:
        kept = path.read_bytes()
    except FileNotFoundError:
        previous = None
    except OSError as exc:
        raise HostStateError(f"cannot read {path}: {exc.strerror}", reason="revocation-state", errno=exc.errno,
                             path=str(path)) from exc  # fmt: skip
    else:
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
        _make_dirs(state_dir)
        write_atomically(path, rl.to_payload(), 0o644)
    except OSError as exc:
        raise HostStateError(f"cannot record the accepted revocation list in {path}: {exc.strerror}",
                             reason="revocation-state", errno=exc.errno, path=str(path)) from exc  # fmt: skip
