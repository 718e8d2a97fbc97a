"""What package metadata says about installed files, and how far that word can be trusted (pure).

Every ``PackageFile`` carries an ``Evidence`` level (DESIGN.md §1.2). Only ``repo-verified`` and
``vendor-signed`` digests are good enough to sign; ``local-db`` (dpkg's unsigned MD5 lists, an
unverifiable RPM header) is a hint, and the reason a file is not better is always recorded.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from imaguard.digests import HashAlgo
from imaguard.errors import FormatError

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "Evidence",
    "FileKind",
    "InstalledPackage",
    "PackageFile",
    "PackageSource",
]


class Evidence(enum.StrEnum):
    """How the trusted digest of a file is known, best first (codes are part of the JSON contract)."""

    REPO_VERIFIED = "repo-verified"  # chain from a signed repository (InRelease, or a verified RPM header)
    # A verified digest plus the vendor's per-file IMA signature (RPM FILESIGNATURES). rpmsign puts
    # those in the signature header, which the header signature does not cover: the IMA signature
    # proves itself against the vendor's IMA certificate before it is used.
    VENDOR_SIGNED = "vendor-signed"
    LOCAL_DB = "local-db"  # only the local package database says so (dpkg md5sums, unverified header)
    NONE = "none"  # no digest at all (directories, ghosts, files dpkg lists without md5sum)

    @property
    def rank(self) -> int:
        return _RANK[self]

    @property
    def trusted(self) -> bool:
        """Good enough to sign without an explicitly named unsafe override."""
        return self in (Evidence.REPO_VERIFIED, Evidence.VENDOR_SIGNED)


_RANK = {Evidence.REPO_VERIFIED: 3, Evidence.VENDOR_SIGNED: 2, Evidence.LOCAL_DB: 1, Evidence.NONE: 0}


class FileKind(enum.StrEnum):
    REGULAR = "regular"
    DIRECTORY = "directory"
    SYMLINK = "symlink"
    OTHER = "other"  # device nodes, FIFOs, sockets shipped by a package
    UNKNOWN = "unknown"  # dpkg lists paths without types; known only once looked at on disk


@dataclass(frozen=True, slots=True)
class InstalledPackage:
    """One installed package version. ``origin``: the repository or vendor it came from, or ``""``."""

    name: str
    version: str
    architecture: str
    source_name: str = ""
    source_version: str = ""
    origin: str = ""

    def __post_init__(self) -> None:
        if not self.name or not self.version:
            raise FormatError(f"package without name or version: {self.name!r} {self.version!r}")
        if any(c.isspace() for c in self.name + self.version + self.architecture):
            raise FormatError(f"whitespace in package identity {self.name!r} {self.version!r}")

    @property
    def ident(self) -> str:
        """``name=version/arch``: how reports and errors name a package."""
        return f"{self.name}={self.version}/{self.architecture}"


@dataclass(frozen=True, slots=True)
class PackageFile:
    """A file as its package shipped it. ``path`` is absolute, bytes end to end (no decoding)."""

    path: bytes
    kind: FileKind
    evidence: Evidence
    digest: bytes | None = None
    digest_algo: HashAlgo | None = None
    # Why the evidence is not the best level (e.g. "no signed repository has this version").
    evidence_reason: str = ""
    mode: int | None = None
    config: bool = False
    ghost: bool = False
    doc: bool = False
    # dpkg-divert: the package's file was moved here; the path on disk holds someone else's.
    diverted_to: bytes | None = None
    link_target: bytes | None = None
    # A vendor's security.ima value for this file, exactly as shipped (RPM FILESIGNATURES).
    vendor_signature: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.path.startswith(b"/") or b"\0" in self.path:
            raise FormatError(f"package file path must be absolute and NUL-free: {self.path!r}")
        if (self.digest is None) != (self.digest_algo is None):
            raise FormatError(f"{self.path!r}: digest and its algorithm go together")
        if self.digest is not None and self.digest_algo is not None:
            if len(self.digest) != self.digest_algo.digest_size:
                raise FormatError(
                    f"{self.path!r}: {self.digest_algo.kernel_name} digest must be "
                    f"{self.digest_algo.digest_size} bytes, got {len(self.digest)}"
                )
        elif self.evidence is not Evidence.NONE:
            raise FormatError(f"{self.path!r}: evidence {self.evidence} without a digest")
        if self.evidence is Evidence.VENDOR_SIGNED and self.vendor_signature is None:
            raise FormatError(f"{self.path!r}: vendor-signed without a vendor signature")

    @property
    def disk_path(self) -> bytes:
        """Where the package's content really is: the diversion target if diverted."""
        return self.diverted_to if self.diverted_to is not None else self.path


class PackageSource(Protocol):
    """A package database (deb or rpm) seen through one interface; callers never branch on kind."""

    @property
    def kind(self) -> str: ...

    def packages(self) -> Iterator[InstalledPackage]:
        """Every installed package, sorted by name then architecture."""
        ...

    def package(self, name: str) -> InstalledPackage:
        """One installed package; UsageError (reason ``not-installed``) when absent."""
        ...

    def files(self, pkg: InstalledPackage) -> Iterator[PackageFile]:
        """The package's files with the best evidence this source can establish."""
        ...
