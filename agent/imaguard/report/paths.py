"""Path names on merged-/usr systems (pure): dpkg lists ``/bin/ls``, the kernel logs ``/usr/bin/ls``."""

from __future__ import annotations

__all__ = ["usr_aliases"]

_MERGED = frozenset((b"bin", b"sbin", b"lib", b"lib32", b"lib64", b"libx32"))


def usr_aliases(path: bytes) -> tuple[bytes, ...]:
    """``path`` and its other name on a merged-/usr system."""
    parts = path.split(b"/", 3)
    if len(parts) >= 3:
        if parts[1] == b"usr" and parts[2] in _MERGED:
            return (path, path[4:])
        if parts[1] in _MERGED:
            return (path, b"/usr" + path)
    return (path,)
