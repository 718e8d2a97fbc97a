"""Read a ``.deb`` in one sequential pass: its SHA256, its control fields, the SHA-256 of its
maintainer scripts and of every ``data.tar`` member.

One pass matters: the bytes hashed into the .deb's SHA256 are the very bytes decompressed and
hashed per member, so a file swapped between "check the .deb" and "read the .deb" cannot slip in.
The ar layout is parsed by ``debchain``; decompression uses the stdlib, or for zstd the
``zstandard`` module when present, else the ``zstd`` program fed through a pipe.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import io
import lzma
import os
import shutil
import subprocess
import tarfile
import threading
import zlib
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, cast

from imaguard.errors import FormatError, HostStateError, UnsupportedError
from imaguard.packages import debchain
from imaguard.packages.debchain import AR_HEADER_SIZE, AR_MAGIC, Compression
from imaguard.packages.model import FileKind

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["MAINTAINER_SCRIPTS", "DebContents", "DebMember", "read_deb"]

# The control.tar members dpkg installs as /var/lib/dpkg/info/<package>.<name> and executes
# (deb-preinst(5) and friends, debconf's config): under an appraisal policy each exec is appraised.
MAINTAINER_SCRIPTS = frozenset({"preinst", "postinst", "prerm", "postrm", "config"})

_CHUNK = 1 << 20
# dpkg writes file names raw; surrogateescape makes tarfile's str names a lossless view of them.
_TAR_ENCODING = {"encoding": "utf-8", "errors": "surrogateescape"}
# Members whose content tarfile reads whole into memory as the next member's metadata.
_METADATA_TYPES = frozenset({tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                             tarfile.SOLARIS_XHDTYPE})  # fmt: skip
_MAX_METADATA = 1 << 20  # a long name is at most PATH_MAX (4096); pax records are short


class _TarLimitError(tarfile.TarError):
    """A header tarfile must not act on (see ``_BoundedTarInfo``)."""


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile's header, refused before tarfile reads what it announces.

    tarfile reads a GNU long name or pax header at whatever size the header claims, in one
    allocation, and follows a GNU sparse header's extension blocks without end: a few KiB of xz
    would become GiBs of memory. dpkg's own tar reader knows no sparse members at all.
    """

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> _BoundedTarInfo:
        info = super().frombuf(buf, encoding, errors)
        if info.type in _METADATA_TYPES and info.size > _MAX_METADATA:
            raise _TarLimitError(f"tar metadata header of {info.size} bytes (limit {_MAX_METADATA})")
        if info.type == tarfile.GNUTYPE_SPARSE:
            raise _TarLimitError(f"GNU sparse member {info.name!r}: dpkg does not support sparse files")
        return info


@dataclass(frozen=True, slots=True)
class DebMember:
    """One ``data.tar`` member: absolute path (bytes), kind, mode, SHA-256 for regular files."""

    path: bytes
    kind: FileKind
    mode: int
    sha256: bytes | None = None
    link_target: bytes | None = None


@dataclass(frozen=True, slots=True)
class DebContents:
    """``scripts``: the maintainer scripts, each a DebMember whose path is its bare name (``b"postinst"``)."""

    sha256: bytes
    size: int
    control: dict[str, bytes]
    members: tuple[DebMember, ...]
    scripts: tuple[DebMember, ...] = ()


class _HashingReader:
    """Sequential reads of an fd from offset 0 with ``pread``; every byte read is hashed."""

    def __init__(self, fd: int, name: str, max_size: int) -> None:
        self.fd, self.name, self.max_size = fd, name, max_size
        self.offset = 0
        self.hash = hashlib.sha256()

    def read(self, n: int) -> bytes:
        try:
            data = os.pread(self.fd, n, self.offset)
        except OSError as exc:
            raise HostStateError(
                f"{self.name}: cannot read: {exc.strerror}", reason="read-error", errno=exc.errno, path=self.name
            ) from exc
        self.offset += len(data)
        if self.offset > self.max_size:
            raise HostStateError(f"{self.name}: larger than {self.max_size} bytes", reason="too-large", path=self.name)
        self.hash.update(data)
        return data

    def exact(self, n: int) -> bytes:
        data = self.read(n)
        if len(data) != n:
            raise FormatError(f"{self.name}: truncated", offset=self.offset)
        return data

    def skip(self, n: int) -> None:
        while n > 0:
            n -= len(self.exact(min(n, _CHUNK)))


class _Bounded(io.RawIOBase):
    """A file object over the next ``size`` bytes of a reader (one ar member)."""

    def __init__(self, src: _HashingReader, size: int) -> None:
        self.src, self.left = src, size

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = min(len(b), self.left)
        if n == 0:
            return 0
        data = self.src.exact(n)
        b[: len(data)] = data
        self.left -= len(data)
        return len(data)

    def drain(self) -> None:
        self.src.skip(self.left)
        self.left = 0


@contextlib.contextmanager
def _zstd_cli(raw: _Bounded, name: str) -> Iterator[IO[bytes]]:
    """Decompress through ``zstd -dc``: a thread feeds the member while the caller reads stdout."""
    exe = shutil.which("zstd")
    if exe is None:
        raise UnsupportedError(f"{name}: zstd data needs python3-zstandard or the zstd program", reason="no-zstd")
    proc = subprocess.Popen([exe, "-dcq"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdin is not None  # noqa: S101 - a PIPE
    assert proc.stdout is not None  # noqa: S101 - a PIPE
    failure: list[BaseException] = []

    def feed(stdin: IO[bytes] = proc.stdin) -> None:
        try:
            while chunk := raw.read(_CHUNK):
                stdin.write(chunk)
        except BrokenPipeError:
            pass  # zstd stopped early: its exit status reports why
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread and re-raised there
            failure.append(exc)
        finally:
            with contextlib.suppress(BrokenPipeError):
                stdin.close()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        yield proc.stdout
        proc.stdout.read()  # let the feeder finish the member even if tar stopped at its end blocks
    finally:
        proc.stdout.close()
        feeder.join()
        rc = proc.wait()
    if failure:
        raise failure[0]
    if rc != 0:
        raise FormatError(f"{name}: zstd failed with status {rc}")


@contextlib.contextmanager
def _decompressed(raw: _Bounded, comp: Compression, name: str) -> Iterator[IO[bytes]]:
    buffered = io.BufferedReader(raw, _CHUNK)
    if comp is Compression.NONE:
        yield buffered
    elif comp is Compression.GZIP:
        with gzip.GzipFile(fileobj=buffered, mode="rb") as gz:
            yield cast("IO[bytes]", gz)
    elif comp in (Compression.XZ, Compression.LZMA):
        fmt = lzma.FORMAT_XZ if comp is Compression.XZ else lzma.FORMAT_ALONE
        with lzma.LZMAFile(buffered, format=fmt) as xz:
            yield xz
    elif comp is Compression.BZIP2:
        with bz2.BZ2File(buffered) as bz:
            yield bz
    else:
        try:
            import zstandard  # noqa: PLC0415 - optional, Debian python3-zstandard
        except ImportError:
            with _zstd_cli(raw, name) as out:
                yield out
        else:
            yield zstandard.ZstdDecompressor().stream_reader(buffered, read_across_frames=True)


def _stream_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged member raises: tarfile's, each decompressor's, and short reads."""
    errors: tuple[type[BaseException], ...] = (tarfile.TarError, lzma.LZMAError, EOFError, OSError, zlib.error)
    with contextlib.suppress(ImportError):
        import zstandard  # noqa: PLC0415 - optional, Debian python3-zstandard

        errors += (zstandard.ZstdError,)
    return errors


def _relative(raw: bytes) -> bytes:
    """A tar member name as dpkg files it: leading ``/`` and ``./`` skipped, and nothing else.

    dpkg's ``path_skip_slash_dotslash`` (lib/dpkg/path.c): ``.bashrc`` stays ``.bashrc``. tarfile
    drops a directory's trailing ``/``, so the tree's own ``./`` arrives as ``.``.
    """
    while raw.startswith((b"/", b"./")):
        raw = raw[1:]
    return b"" if raw == b"." else raw.rstrip(b"/")


def _path(name: str) -> bytes:
    return b"/" + _relative(name.encode("utf-8", "surrogateescape"))


def _members(tar: tarfile.TarFile, name: str) -> list[DebMember]:
    out: list[DebMember] = []
    regular: dict[bytes, bytes] = {}
    for info in tar:
        path = _path(info.name)
        mode = info.mode & 0o7777
        if info.isreg():
            digest = _sha256(tar, info, name)
            regular[path] = digest
            out.append(DebMember(path, FileKind.REGULAR, mode, digest))
        elif info.islnk():
            # A hard link shares its target's content, which came earlier in the stream.
            target = regular.get(_path(info.linkname))
            if target is None:
                raise FormatError(f"{name}: hard link {info.name!r} to unknown {info.linkname!r}")
            out.append(DebMember(path, FileKind.REGULAR, mode, target))
        elif info.issym():
            out.append(DebMember(path, FileKind.SYMLINK, mode, link_target=info.linkname.encode(**_TAR_ENCODING)))
        elif info.isdir():
            out.append(DebMember(path, FileKind.DIRECTORY, mode))
        else:
            out.append(DebMember(path, FileKind.OTHER, mode))
    return out


def _sha256(tar: tarfile.TarFile, info: tarfile.TarInfo, name: str) -> bytes:
    f = tar.extractfile(info)
    if f is None:
        raise FormatError(f"{name}: cannot read member {info.name!r}")
    h = hashlib.sha256()
    while chunk := f.read(_CHUNK):
        h.update(chunk)
    return h.digest()


def _control(tar: tarfile.TarFile, name: str) -> tuple[dict[str, bytes], tuple[DebMember, ...]]:
    fields: dict[str, bytes] | None = None
    scripts: list[DebMember] = []
    for info in tar:
        member = _relative(info.name.encode("utf-8", "surrogateescape")).decode("utf-8", "surrogateescape")
        if not info.isreg():
            continue
        if member == "control":
            f = tar.extractfile(info)
            if f is None or info.size > 1 << 20:
                raise FormatError(f"{name}: control file unreadable or over 1 MiB")
            fields = debchain.parse_stanza(f.read(), name=f"{name}: control")
        elif member in MAINTAINER_SCRIPTS:
            path = member.encode()
            if any(m.path == path for m in scripts):  # two bytes-wise different "postinst": which does dpkg run?
                raise FormatError(f"{name}: control.tar holds {member} twice")
            scripts.append(DebMember(path, FileKind.REGULAR, info.mode & 0o7777, _sha256(tar, info, name)))
    if fields is None:
        raise FormatError(f"{name}: control.tar has no control file")
    return fields, tuple(sorted(scripts, key=lambda m: m.path))


def _in_order(role: str, have_control: bool, have_data: bool) -> bool:
    # deb(5): control.tar comes before data.tar, each exactly once.
    return not have_data and (role == "control") != have_control


def read_deb(fd: int, name: str, *, max_size: int) -> DebContents:
    """Read the whole .deb at ``fd`` once; FormatError when it is not a well-formed .deb."""
    src = _HashingReader(fd, name, max_size)
    if src.read(len(AR_MAGIC)) != AR_MAGIC:
        raise FormatError(f"{name}: not a .deb (no ar magic)", offset=0)
    control: dict[str, bytes] | None = None
    scripts: tuple[DebMember, ...] = ()
    members: list[DebMember] | None = None
    index = 0
    while header := src.read(AR_HEADER_SIZE):
        member = debchain.parse_ar_header(header, src.offset - len(header))
        role = debchain.deb_member_role(member, index)
        index += 1
        raw = _Bounded(src, member.size)
        where = f"{name}: {member.name}"
        try:
            if role is not None and role[0] == "debian-binary":
                if not raw.read(member.size).startswith(b"2."):
                    raise FormatError(f"{where}: unsupported format version")
            elif role is not None and _in_order(role[0], control is not None, members is not None):
                with (
                    _decompressed(raw, role[1], where) as stream,
                    tarfile.open(fileobj=stream, mode="r|", tarinfo=_BoundedTarInfo, **_TAR_ENCODING) as tar,  # type: ignore[call-overload]
                ):
                    if role[0] == "control":
                        control, scripts = _control(tar, where)
                    else:
                        members = _members(tar, where)
            elif role is not None:
                raise FormatError(f"{where}: out of order or repeated", offset=member.header_offset)
        except _stream_errors() as exc:
            raise FormatError(f"{where}: {exc}") from exc
        raw.drain()
        if member.size & 1:
            src.exact(1)
    if control is None or members is None:
        raise FormatError(f"{name}: missing control.tar or data.tar")
    return DebContents(src.hash.digest(), src.offset, control, tuple(members), scripts)
