"""Load a revocation list from disk (the I/O side of ``keys/revocation.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from imaguard.errors import FormatError, TrustError, UsageError
from imaguard.keys.material import read_small_file
from imaguard.keys.revocation import parse_ca_certificate, verify_revocation_list

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["load_revoked"]

_MAX_LIST = 16 << 20


def _read(path: Path, what: str) -> bytes:
    return read_small_file(path, what, _MAX_LIST, reason="unreadable")


def load_revoked(list_path: Path | None, ca_path: Path | None) -> frozenset[bytes]:
    """Revoked key ids from a CA-signed list; a list that does not verify is an error, never "none"."""
    if list_path is None:
        return frozenset()
    if ca_path is None:
        raise UsageError("--revocation-list needs --revocation-ca: the CA certificate that signs it")
    ca = parse_ca_certificate(_read(ca_path, "CA certificate"), str(ca_path))
    try:
        rl = verify_revocation_list(_read(list_path, "revocation list"), (ca,), str(list_path))
    except FormatError as exc:
        raise TrustError(str(exc), reason="bad-revocation-list") from exc
    return rl.key_ids
