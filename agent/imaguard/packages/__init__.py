"""Package truth: installed packages and their files with evidence levels, from deb or rpm.

The bindings (python-apt, rpm) are imported lazily inside ``deb.py`` / ``rpm.py`` only, so
``import imaguard`` works on hosts without them; ``open_source`` turns a missing binding into an
UnsupportedError that names the Debian package to install.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from imaguard.errors import UnsupportedError, UsageError
from imaguard.packages.model import Evidence, FileKind, InstalledPackage, PackageFile, PackageSource

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "DEFAULT_STATE_DIR",
    "Evidence",
    "FileKind",
    "InstalledPackage",
    "PackageFile",
    "PackageSource",
    "detect_kind",
    "open_source",
]

DEFAULT_STATE_DIR = Path("/var/lib/imaguard")

_DPKG_STATUS = "var/lib/dpkg/status"
_RPMDB_DIRS = ("usr/lib/sysimage/rpm", "var/lib/rpm")


def detect_kind(root: Path) -> str:
    """``deb`` or ``rpm``: which package database rules the tree at ``root``.

    A Debian host may carry an (empty) rpmdb because the rpm tool is installed; dpkg wins there.
    """
    status = root / _DPKG_STATUS
    if status.is_file() and status.stat().st_size > 0:
        return "deb"
    for d in _RPMDB_DIRS:
        db = root / d
        if db.is_dir() and any(db.iterdir()):
            return "rpm"
    raise UnsupportedError(f"{root}: no dpkg or rpm database found", reason="no-package-db")


def open_source(
    root: Path,
    state_dir: Path,
    kind: str | None = None,
    *,
    fetch: bool = True,
    trusted_keyrings: Sequence[Path] = (),
) -> PackageSource:
    """The package source for ``root``; ``fetch``: may the deb chain download missing .debs via apt.

    ``trusted_keyrings`` (``--trusted-keyring``): OpenPGP keyrings that replace every trust anchor.
    Without them a source trusts this host's keyrings (apt's, or the rpmdb's), whatever ``root``
    is — never the tree's own: an image must not vouch for itself.
    """
    kind = kind or detect_kind(root)
    if kind == "deb":
        from imaguard.packages.deb import DebSource  # noqa: PLC0415 - optional binding, imported lazily

        return DebSource(root, state_dir, fetch=fetch, trusted_keyrings=trusted_keyrings)
    if kind == "rpm":
        from imaguard.packages.rpm import RpmSource  # noqa: PLC0415 - optional binding, imported lazily

        return RpmSource(root, state_dir, trusted_keyrings)
    raise UsageError(f"unknown package source {kind!r} (deb or rpm)")
