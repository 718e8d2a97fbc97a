"""The dpkg database under a root: status (through python-apt), file lists, md5sums, diversions.

``apt_pkg`` is imported here and in ``aptrepo.py`` only, lazily, so ``import imaguard`` works
without python-apt. Paths read from the database stay bytes: dpkg stores them undecoded.
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from imaguard.errors import FormatError, HostStateError, UnsupportedError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

__all__ = [
    "Diversion",
    "DpkgPackage",
    "apt_pkg_module",
    "info_file",
    "parse_diversions",
    "parse_list",
    "parse_md5sums",
    "read_diversions",
    "read_info",
    "read_status",
]

DPKG_DIR = "var/lib/dpkg"
# dpkg-query's "installed enough to own files" states (dpkg(1) "Package states").
_FILE_STATES = frozenset({"installed", "unpacked", "half-configured", "triggers-awaited", "triggers-pending"})


def apt_pkg_module() -> Any:
    """The python-apt binding, initialised once; UnsupportedError naming the package when absent."""
    try:
        import apt_pkg  # noqa: PLC0415 - optional binding, imported lazily (DESIGN.md §3)
    except ImportError as exc:
        raise UnsupportedError(
            "the deb package source needs python-apt: apt-get install python3-apt", reason="missing-binding"
        ) from exc
    if not apt_pkg.config.find("Dir"):
        apt_pkg.init_config()
    return apt_pkg


@dataclass(frozen=True, slots=True)
class DpkgPackage:
    """One package as dpkg's status file records it."""

    name: str
    version: str
    architecture: str
    source_name: str
    source_version: str
    conffiles: Mapping[bytes, bytes | None] = field(default_factory=dict)  # path → md5 (None: newconffile)


@dataclass(frozen=True, slots=True)
class Diversion:
    """``dpkg-divert``: files at ``path`` of packages other than ``by`` go to ``to`` (by ``:``: local)."""

    path: bytes
    to: bytes
    by: str

    def applies_to(self, package: str) -> bool:
        return self.by != package


def _read(path: Path, *, missing_ok: bool = False) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError as exc:
        if missing_ok and exc.errno == errno.ENOENT:
            return None
        raise HostStateError(
            f"{path}: cannot read: {exc.strerror}", reason="read-error", errno=exc.errno, path=str(path)
        ) from exc


def _conffiles(value: bytes, where: str) -> dict[bytes, bytes | None]:
    out: dict[bytes, bytes | None] = {}
    for line in value.split(b"\n"):
        words = line.strip().split(b" ")
        if not line.strip():
            continue
        # " /etc/foo md5 [obsolete|remove-on-upgrade]": a path with spaces keeps them, so parse from the right.
        while len(words) > 2 and words[-1] in (b"obsolete", b"remove-on-upgrade"):
            words.pop()
        if len(words) < 2:
            raise FormatError(f"{where}: bad Conffiles line {line!r}")
        md5 = words[-1]
        path = b" ".join(words[:-1])
        out[path] = bytes.fromhex(md5.decode()) if len(md5) == 32 and _is_hex(md5) else None
    return out


_HEX = re.compile(rb"[0-9a-fA-F]*")


def _is_hex(b: bytes) -> bool:
    return _HEX.fullmatch(b) is not None


def read_status(root: Path) -> list[DpkgPackage]:
    """Packages that own files, from ``var/lib/dpkg/status``, sorted by name then architecture."""
    apt_pkg = apt_pkg_module()
    path = root / DPKG_DIR / "status"
    try:
        with path.open("rb") as fh:
            sections = [dict(s) for s in apt_pkg.TagFile(fh, bytes=True)]
    except OSError as exc:
        raise HostStateError(f"{path}: cannot read: {exc.strerror}", errno=exc.errno, path=str(path)) from exc
    except apt_pkg.Error as exc:
        raise FormatError(f"{path}: {exc}") from exc
    out = []
    for s in sections:
        status = s.get("Status", b"").split()
        if len(status) != 3 or status[2].decode() not in _FILE_STATES:
            continue
        name = s["Package"].decode()
        version = s["Version"].decode()
        arch = s.get("Architecture", b"").decode()
        src, _, src_ver = s.get("Source", b"").decode().partition(" ")
        out.append(
            DpkgPackage(
                name,
                version,
                arch,
                src or name,
                src_ver.strip("()") or version,
                _conffiles(s.get("Conffiles", b""), f"{path}: {name}"),
            )
        )
    out.sort(key=lambda p: (p.name, p.architecture))
    return out


def read_info(root: Path, pkg: DpkgPackage, suffix: str) -> bytes | None:
    """``info/<pkg>:<arch>.<suffix>`` (Multi-Arch: same) or ``info/<pkg>.<suffix>``; None when absent."""
    info = root / DPKG_DIR / "info"
    for stem in (f"{pkg.name}:{pkg.architecture}", pkg.name):
        data = _read(info / f"{stem}.{suffix}", missing_ok=True)
        if data is not None:
            return data
    return None


def info_file(root: Path, pkg: DpkgPackage, suffix: str) -> bytes:
    """The path (absolute inside ``root``) dpkg gives ``info/<stem>.<suffix>`` of this package.

    dpkg names every info file of a package alike: ``<pkg>:<arch>`` for Multi-Arch: same, else
    ``<pkg>``; its ``.list`` file, which every installed package has, shows which.
    """
    qualified = f"{pkg.name}:{pkg.architecture}"
    stem = qualified if (root / DPKG_DIR / "info" / f"{qualified}.list").exists() else pkg.name
    return f"/{DPKG_DIR}/info/{stem}.{suffix}".encode()


def parse_list(data: bytes) -> list[bytes]:
    """A ``.list`` file: one absolute path per line (dpkg refuses newlines in names); ``/.`` dropped."""
    return [p for p in data.split(b"\n") if p and p != b"/."]


def _md5sum_name(raw: bytes) -> bytes:
    # md5sum(1) escapes names holding '\\' or '\n' and marks the line with a leading backslash.
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i : i + 1] == b"\\" and i + 1 < len(raw):
            out += b"\n" if raw[i + 1 : i + 2] == b"n" else raw[i + 1 : i + 2]
            i += 2
        else:
            out += raw[i : i + 1]
            i += 1
    return bytes(out)


def parse_md5sums(data: bytes, *, name: str) -> dict[bytes, bytes]:
    """``md5sums``: absolute path → MD5 digest. Lines are ``HEX  relative/path``."""
    out: dict[bytes, bytes] = {}
    for lineno, line in enumerate(data.split(b"\n"), 1):
        if not line:
            continue
        escaped = line.startswith(b"\\")
        body = line[1:] if escaped else line
        digest, sep, path = body.partition(b"  ")
        if not sep or len(digest) != 32 or not _is_hex(digest) or not path:
            raise FormatError(f"{name}:{lineno}: bad md5sums line {line[:80]!r}")
        if escaped:
            path = _md5sum_name(path)
        out[b"/" + path.lstrip(b"/")] = bytes.fromhex(digest.decode())
    return out


def parse_diversions(data: bytes, *, name: str) -> dict[bytes, Diversion]:
    """``diversions``: groups of three lines (from, to, package or ``:``)."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if len(lines) % 3:
        raise FormatError(f"{name}: {len(lines)} lines, not a multiple of 3")
    out = {}
    for i in range(0, len(lines), 3):
        src, to, by = lines[i : i + 3]
        if not src.startswith(b"/") or not to.startswith(b"/"):
            raise FormatError(f"{name}:{i + 1}: diversion paths must be absolute")
        out[src] = Diversion(src, to, by.decode("utf-8", "replace"))
    return out


def read_diversions(root: Path) -> dict[bytes, Diversion]:
    path = root / DPKG_DIR / "diversions"
    data = _read(path, missing_ok=True)
    return {} if data is None else parse_diversions(data, name=str(path))
