"""Named limits and configuration, built once in the entry point and passed down (no globals)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Every reader takes one of these and raises a typed error past it."""

    # Files larger than this are not hashed: a package file of 16 GiB is not an executable.
    max_file_size: int = 16 << 30
    # XATTR_SIZE_MAX (include/uapi/linux/limits.h): no security.ima value can be larger.
    max_xattr_size: int = 65536
