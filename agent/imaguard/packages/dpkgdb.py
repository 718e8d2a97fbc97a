"""The dpkg database under a root: status, file lists, md5sums, diversions.

The status file is parsed here, in Python: python-apt's ``TagFile`` dereferences a NULL (SIGSEGV)
for a field name that is not UTF-8 and cuts names at a NUL, and ``--root`` trees are not trusted
input. ``apt_pkg`` is imported here and in ``aptrepo.py`` only, lazily, so ``import imaguard``
works without python-apt. Paths read from the database stay bytes: dpkg stores them undecoded.

Every file of the database is read confined to the root (``openat2(RESOLVE_IN_ROOT)``, ``rootfs``),
bounded, and only if it is a regular file: an image's ``info/foo.list -> /dev/zero``, a FIFO or a
symlink into the host is one error naming the file, never a hang, an OOM or a host file read.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imaguard.errors import FormatError, HostStateError, UnsupportedError
from imaguard.fsio import read_open_regular
from imaguard.rootfs import Root

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "DIVERSIONS_MAX",
    "INFO_MAX",
    "STATUS_MAX",
    "Diversion",
    "DpkgPackage",
    "apt_pkg_module",
    "info_file",
    "parse_diversions",
    "parse_list",
    "parse_md5sums",
    "parse_status",
    "read_diversions",
    "read_info",
    "read_status",
]

DPKG_DIR = "var/lib/dpkg"
# Bounds on each file read from the database (a --root tree is untrusted input: a huge or sparse
# file there must not exhaust memory), far above what dpkg writes: a status file of ~1,500
# packages is under 1 MiB, the largest info file seen (google-cloud-cli.md5sums) 5 MiB.
STATUS_MAX = 256 << 20
INFO_MAX = 64 << 20  # one package's info/<pkg>.list, .md5sums
DIVERSIONS_MAX = 16 << 20
# dpkg-query's "installed enough to own files" states (dpkg(1) "Package states"), and the others.
_FILE_STATES = frozenset({b"installed", b"unpacked", b"half-configured", b"triggers-awaited", b"triggers-pending"})
_STATES = _FILE_STATES | {b"not-installed", b"config-files", b"half-installed"}
# dpkg's pkg_name_is_illegal and dpkg_arch_name_is_illegal (lib/dpkg/parsehelp.c, arch.c). Names,
# architectures and versions become file names (info/<pkg>:<arch>.list, <pkg>_<ver>_<arch>.deb):
# no '/', NUL or whitespace gets through.
_PKG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9+._-]*")
_ARCH = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9-]*)?")
# parseversion's character set (epoch ':', upstream, '-' revision); dpkg only warns past it, we refuse.
_VERSION = re.compile(r"[A-Za-z0-9.+~:-]+")


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

    def __post_init__(self) -> None:
        if _PKG_NAME.fullmatch(self.name) is None or _PKG_NAME.fullmatch(self.source_name) is None:
            raise FormatError(f"bad package name {self.name!r} (source {self.source_name!r})")
        if _VERSION.fullmatch(self.version) is None or _VERSION.fullmatch(self.source_version) is None:
            raise FormatError(f"bad version {self.version!r} (source {self.source_version!r})")
        if _ARCH.fullmatch(self.architecture) is None:
            raise FormatError(f"bad architecture {self.architecture!r}")


@dataclass(frozen=True, slots=True)
class Diversion:
    """``dpkg-divert``: files at ``path`` of packages other than ``by`` go to ``to`` (by ``:``: local)."""

    path: bytes
    to: bytes
    by: str

    def applies_to(self, package: str) -> bool:
        return self.by != package


class _Roots:
    """The ``Root`` of each root path, opened once per process.

    The database is read per package (``.list``, ``.md5sums``): each read costs one ``openat2``
    inside a held root descriptor, never a fresh walk to the root. ``read_status``, the first read
    of every package source, opens the root again when the directory at its path is no longer
    the one held (a tree rebuilt at the same path). The host (``/``) needs no descriptor.
    """

    _MAX = 8  # a process reads one root (--root); tests and long-lived callers a few more

    def __init__(self) -> None:
        self._held: dict[str, Root] = {}

    def get(self, root: Path, *, fresh: bool = False) -> Root:
        key = os.fspath(root)
        if key == "/":
            return Root.host()
        held = self._held.get(key)
        if held is not None and (not fresh or _same_directory(held, root)):
            return held
        opened = Root.at(key)
        if held is not None:
            del self._held[key]
            held.close()
        self._held[key] = opened
        while len(self._held) > self._MAX:
            self._held.pop(next(iter(self._held))).close()
        return opened


def _same_directory(held: Root, root: Path) -> bool:
    try:
        st = root.stat()
    except OSError:
        return False
    ref = os.fstat(held.dir_fd) if held.dir_fd is not None else Path("/").stat()
    return (st.st_dev, st.st_ino) == (ref.st_dev, ref.st_ino)


_ROOTS = _Roots()
# On the host, dpkg's own root-owned files: one open, never a symlink, never blocking on a FIFO.
_HOST_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_KINDS = ((stat.S_ISLNK, "a symbolic link (not followed)"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))  # fmt: skip


def _shown(root: Path, path: bytes) -> str:
    return str(root / os.fsdecode(path.lstrip(b"/")))


def _read_in(fsroot: Root, path: bytes, limit: int, name: str) -> bytes:
    if fsroot.is_host:
        fd = os.open(path, _HOST_FLAGS)
    else:
        # Inside an image, look before opening (O_PATH): opening a device runs its driver (a
        # watchdog arms, a tape rewinds), so only a regular file is opened for reading.
        handle = fsroot.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(handle).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", name)
            fd = fsroot.reopen(handle, path, _HOST_FLAGS)
        finally:
            os.close(handle)
    try:
        return read_open_regular(fd, limit, name)
    finally:
        os.close(fd)


def _why(fsroot: Root | None, path: bytes, exc: OSError) -> str:
    """What is wrong with ``path``, for the one error line: its kind when it is not a regular file."""
    if fsroot is not None and exc.errno in (errno.ELOOP, errno.EINVAL):
        try:
            mode = fsroot.lstat(path).st_mode
        except OSError:
            mode = 0
        kind = next((what for test, what in _KINDS if test(mode)), None)
        if kind is not None:
            return f"not a regular file but {kind}"
    return exc.strerror or str(exc)


def _read(root: Path, path: bytes, limit: int, *, missing_ok: bool = False, fresh: bool = False) -> bytes | None:
    """``path`` (absolute inside ``root``, resolved there): a regular file of at most ``limit``
    bytes; None when absent and ``missing_ok``, else HostStateError naming the file and why."""
    fsroot = None
    name = _shown(root, path)
    try:
        fsroot = _ROOTS.get(root, fresh=fresh)
        return _read_in(fsroot, path, limit, name)
    except OSError as exc:
        if missing_ok and exc.errno == errno.ENOENT:
            return None
        raise HostStateError(
            f"{name}: cannot read: {_why(fsroot, path, exc)}", reason="read-error", errno=exc.errno, path=name
        ) from exc


def _conffiles(value: bytes) -> dict[bytes, bytes | None]:
    out: dict[bytes, bytes | None] = {}
    if not value:
        return out
    for line in value.split(b"\n"):
        words = line.strip().split(b" ")
        if not line.strip():
            continue
        # " /etc/foo md5 [obsolete|remove-on-upgrade]": a path with spaces keeps them, so parse from the right.
        while len(words) > 2 and words[-1] in (b"obsolete", b"remove-on-upgrade"):
            words.pop()
        md5 = words[-1]
        path = b" ".join(words[:-1])
        if len(words) < 2 or not path.startswith(b"/") or b"\0" in path:
            raise FormatError(f"bad Conffiles line {line[:80]!r}")
        out[path] = bytes.fromhex(md5.decode()) if len(md5) == 32 and _is_hex(md5) else None
    return out


_HEX = re.compile(rb"[0-9a-fA-F]*")


def _is_hex(b: bytes) -> bool:
    return _HEX.fullmatch(b) is not None


# The status file as dpkg reads it (lib/dpkg/parse.c, deb822(5)): "Name: value" lines, continuation
# lines starting with a space or tab, paragraphs separated by empty lines. dpkg refuses a
# whitespace-only line ("blank line in value of field") and a paragraph opening with a
# continuation ("empty field name"); so do we. A name is what dpkg reads as one: any bytes but
# whitespace, ':' (and NUL), then blanks allowed before the ':'. dpkg-deb builds, and dpkg installs
# into this file, fields such as "#Recommends" or non-ASCII names from a local package's control
# file; refusing them would refuse the whole host's database (review finding).
_NAME = rb"[^\s:\x00]+"
# After a newline, a bad line: none of field, continuation, empty line; whitespace only; a
# continuation after an empty line. The text is scanned with "\n\n" prepended, so the first line
# is checked like any other.
_BAD = rb"(?![ \t]|%s[ \t]*:)[^\n]|[ \t]+(?:\n|\Z)|\n[ \t]" % _NAME
_BAD_LINE = re.compile(rb"\n(?:%s)" % _BAD)
# One pass yields (name, value, b"") for the fields read here, (b"", b"", b"") where a paragraph
# starts and (b"", b"", bad) for a bad line; the other fields' lines are stepped over. Searching
# for a literal "\n" is what keeps this about as fast as python-apt's C parser. Names are matched
# as dpkg writes them: dpkg would also read "version:" as Version, but a paragraph holding only
# that is refused here ("no Version field") and one holding both is refused by dpkg.
_VALUE = rb"[^\n]*(?:\n[ \t]+[^ \t\n][^\n]*)*"
_USED = rb"Package|S(?:tatus|ource)|Version|Architecture|Conffiles"  # a trie: sre tries branches in turn
_SCAN = re.compile(rb"\n(?:(%s):[ \t]*(%s)|(?=\n[^ \t\n])|(%s))" % (_USED, _VALUE, _BAD))
_PARAGRAPH_START = re.compile(rb"\n\n(?=[^ \t\n])")
_SOURCE = re.compile(rb"([^ \t()]+)(?:[ \t]+\(([^()]*)\))?")


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def _paragraphs(data: bytes, name: str) -> list[dict[bytes, bytes]]:
    """The fields of ``_USED`` of each paragraph (value: from the first non-blank after ':', continuations raw).

    Every line is checked to be a field, a continuation or an empty line: a field regex alone
    would skip garbage between fields instead of refusing it.
    """
    text = b"\n\n" + data
    out: list[dict[bytes, bytes]] = []
    fields: dict[bytes, bytes] = {}
    for key, value, bad in _SCAN.findall(text):
        if key:
            if key in fields:
                raise FormatError(f"{_where(data, name, len(out) - 1)}: field {key.decode()} appears twice")
            fields[key] = value
        elif not bad:
            fields = {}
            out.append(fields)
        else:
            m = _BAD_LINE.search(text)
            at = max(m.start() - 1, 0) if m else 0  # the offending line, in ``data``
            line = data[at : at + 100].split(b"\n", 1)[0][:40]
            raise FormatError(f"{name}:{_line_of(data, at)}: not a field, continuation or empty line: {line!r}")
    return out


def _where(data: bytes, name: str, index: int) -> str:
    """``name:line`` of the first line of paragraph ``index`` (found again: errors only)."""
    for i, m in enumerate(_PARAGRAPH_START.finditer(b"\n\n" + data)):
        if i == index:
            return f"{name}:{_line_of(data, m.end() - 2)}"
    return name


def _ascii(value: bytes, what: str) -> str:
    try:
        return value.strip().decode("ascii")
    except UnicodeDecodeError:
        raise FormatError(f"{what} is not ASCII: {value[:80]!r}") from None


def _package(fields: Mapping[bytes, bytes]) -> DpkgPackage | None:
    """The package a paragraph describes, if it owns files; FormatError (without location) if malformed."""
    raw_name = fields.get(b"Package")
    if raw_name is None:
        raise FormatError("paragraph without a Package field")
    raw_status = fields.get(b"Status")
    if raw_status is None:
        return None
    status = raw_status.split()
    if len(status) != 3 or status[2] not in _STATES:
        raise FormatError(f"bad Status {b' '.join(status)[:80]!r}")
    if status[2] not in _FILE_STATES:
        return None
    name = _ascii(raw_name, "Package")
    raw_version = fields.get(b"Version")
    if raw_version is None:
        raise FormatError(f"package {name!r} has no Version field")
    version = _ascii(raw_version, "Version")
    arch = _ascii(fields.get(b"Architecture", b""), "Architecture")
    src, src_ver = name, version
    raw_source = fields.get(b"Source", b"").strip()
    if raw_source:
        m = _SOURCE.fullmatch(raw_source)
        if m is None:
            raise FormatError(f"bad Source {raw_source[:80]!r}")
        src = _ascii(m[1], "Source")
        src_ver = _ascii(m[2], "Source version") if m[2] is not None else version
    return DpkgPackage(name, version, arch, src, src_ver, _conffiles(fields.get(b"Conffiles", b"")))


def parse_status(data: bytes, *, name: str) -> list[DpkgPackage]:
    """dpkg's status file: the packages that own files, sorted by name then architecture."""
    out = []
    for i, fields in enumerate(_paragraphs(data, name)):
        try:
            pkg = _package(fields)
        except FormatError as exc:
            raise FormatError(f"{_where(data, name, i)}: {exc}") from exc
        if pkg is not None:
            out.append(pkg)
    out.sort(key=lambda p: (p.name, p.architecture))
    return out


def read_status(root: Path) -> list[DpkgPackage]:
    """Packages that own files, from ``var/lib/dpkg/status``, sorted by name then architecture."""
    path = f"/{DPKG_DIR}/status".encode()
    data = _read(root, path, STATUS_MAX, fresh=True)
    assert data is not None  # noqa: S101 - not missing_ok
    return parse_status(data, name=_shown(root, path))


def read_info(root: Path, pkg: DpkgPackage, suffix: str) -> bytes | None:
    """``info/<pkg>:<arch>.<suffix>`` (Multi-Arch: same) or ``info/<pkg>.<suffix>``; None when absent."""
    for stem in (f"{pkg.name}:{pkg.architecture}", pkg.name):
        data = _read(root, f"/{DPKG_DIR}/info/{stem}.{suffix}".encode(), INFO_MAX, missing_ok=True)
        if data is not None:
            return data
    return None


def info_file(root: Path, pkg: DpkgPackage, suffix: str) -> bytes:
    """The path (absolute inside ``root``) dpkg gives ``info/<stem>.<suffix>`` of this package.

    dpkg names every info file of a package alike: ``<pkg>:<arch>`` for Multi-Arch: same, else
    ``<pkg>``; its ``.list`` file, which every installed package has, shows which.
    """
    qualified = f"{pkg.name}:{pkg.architecture}"
    try:  # looked up inside the root, like every read here
        _ROOTS.get(root).lstat(f"/{DPKG_DIR}/info/{qualified}.list".encode())
        stem = qualified
    except OSError:
        stem = pkg.name
    return f"/{DPKG_DIR}/info/{stem}.{suffix}".encode()


def parse_list(data: bytes, *, name: str = "dpkg .list file") -> list[bytes]:
    """A ``.list`` file: one absolute path per line (dpkg refuses newlines in names); ``/.`` dropped."""
    out = [p for p in data.split(b"\n") if p and p != b"/."]
    if b"\0" in data or any(p[:1] != b"/" for p in out):
        bad = next(i for i, p in enumerate(data.split(b"\n"), 1) if p and (p[:1] != b"/" or b"\0" in p))
        raise FormatError(f"{name}:{bad}: not an absolute, NUL-free path")
    return out


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
        if not src.startswith(b"/") or not to.startswith(b"/") or b"\0" in src + to:
            raise FormatError(f"{name}:{i + 1}: diversion paths must be absolute and NUL-free")
        out[src] = Diversion(src, to, by.decode("utf-8", "replace"))
    return out


def read_diversions(root: Path) -> dict[bytes, Diversion]:
    path = f"/{DPKG_DIR}/diversions".encode()
    data = _read(root, path, DIVERSIONS_MAX, missing_ok=True)
    return {} if data is None else parse_diversions(data, name=_shown(root, path))
