"""The authority's side of the revocation list: read it, add a key id, sign, write atomically.

The model and the parser live in the agent (``imaguard.keys.revocation``) so hosts read the very
same format. A list that exists but does not verify with the CA is never extended: that would
launder a tampered list with a fresh signature.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imaguard.errors import UsageError
from imaguard.keys.revocation import (
    MAX_REVOCATION_LIST_SIZE,
    RevocationList,
    sign_revocation_list,
    verify_revocation_list,
)
from imaguard.sign.journal import atomic_write

if TYPE_CHECKING:
    import datetime
    from pathlib import Path

    from imaguard.keys.material import Certificate
    from imaguard_keyring.ceremony import Authority

__all__ = ["add_revocation", "read_revocation_list"]


def read_revocation_list(path: Path, ca: Certificate) -> RevocationList | None:
    """The verified list at ``path``, or None if there is no file yet."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_REVOCATION_LIST_SIZE + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the revocation list: {exc.strerror}", reason="unreadable") from exc
    return verify_revocation_list(data, (ca,), str(path))


def add_revocation(
    path: Path,
    authority: Authority,
    key_id: bytes,
    *,
    reason: str,
    subject: str,
    now: datetime.datetime,
) -> RevocationList:
    """Add ``key_id`` to the list at ``path`` (created if missing), re-sign it and replace the file."""
    current = read_revocation_list(path, authority.cert)
    if current is None:
        current = RevocationList.empty(authority.cert.key_id, now)
    updated = current.with_revoked(key_id, now, reason, subject)
    atomic_write(path, sign_revocation_list(updated, authority.key).to_json())
    return updated
