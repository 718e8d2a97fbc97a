"""RPM header blobs, parsed strictly, with the signed immutable region kept apart (pure).

A header blob (rpm ``headerExport``, what the rpmdb stores, without the 8-byte magic) is
``be32 il | be32 dl | il x (be32 tag, type, offset, count) | dl bytes of data``. In a signed
header the first entry is the region tag ``HEADERIMMUTABLE`` (63); its 16-byte trailer in the data
says how many index entries (``ril``) and data bytes (``rdl``) the region spans. The header
signature and digests (``RSAHEADER``, ``SHA256HEADER``…) cover exactly that region; rpm adds
install-time entries after it ("dribbles": install time, file states, the merged signature-header
tags, ``FILESIGNATURES`` among them), which no signature covers. When rpm loads a header, a dribble
entry *replaces* a region entry of the same tag, so a value read through rpm's API may be one
nobody signed. This module therefore keeps the two apart: trusted values come from ``region``
only. Layout per rpm 4.18 ``lib/header.c`` (``hdrblobVerifyRegion``, ``hdrchkAlign``) and
``lib/header_internal.h``.
"""

from __future__ import annotations

import enum
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from imaguard.digests import HashAlgo
from imaguard.errors import FormatError
from imaguard.ima.xattr import ImaSignature, XattrType, parse_xattr
from imaguard.packages.model import FileKind

__all__ = [
    "DEFAULT_PGP_HASH",
    "MAX_HEADER_SIZE",
    "SIGNATURE_TAGS",
    "FileState",
    "HeaderBlob",
    "Tag",
    "decode_file_signature",
    "file_kind",
    "hash_algo_from_rpm",
    "parse_source_rpm",
    "vendor_signature",
]

# rpm refuses headers with more than 0xffff entries or 256 MiB of data (hdrchkTags, hdrchkData).
MAX_HEADER_SIZE = 0x0FFFFFFF
_MAX_ENTRIES = 0xFFFF
_INTRO = struct.Struct(">II")
_ENTRY = struct.Struct(">IIiI")
_REGION_TAG_TYPE = 7  # RPM_BIN_TYPE
_REGION_TAG_COUNT = 16


class Tag(enum.IntEnum):
    """Tags read by imaguard (rpm 4.18 ``include/rpm/rpmtag.h``)."""

    HEADERIMMUTABLE = 63
    DSAHEADER = 267
    RSAHEADER = 268
    SHA1HEADER = 269
    SHA256HEADER = 273
    NAME = 1000
    VERSION = 1001
    RELEASE = 1002
    EPOCH = 1003
    VENDOR = 1011
    ARCH = 1022
    OLDFILENAMES = 1027
    FILESTATES = 1029
    FILEMODES = 1030
    FILEDIGESTS = 1035
    FILELINKTOS = 1036
    FILEFLAGS = 1037
    SOURCERPM = 1044
    DIRINDEXES = 1116
    BASENAMES = 1117
    DIRNAMES = 1118
    FILEDIGESTALGO = 5011
    FILESIGNATURES = 5090
    FILESIGNATURELENGTH = 5091


# Header signature tags: each covers the region (rpm 4.18; OPENPGP 278 only exists from 4.20 on).
SIGNATURE_TAGS = (Tag.RSAHEADER, Tag.DSAHEADER)


class FileState(enum.IntEnum):
    """``rpmfileState`` (rpm 4.18 ``include/rpm/rpmfiles.h``): an install-time, unsigned fact."""

    NORMAL = 0
    REPLACED = 1
    NOT_INSTALLED = 2
    NET_SHARED = 3
    WRONG_COLOR = 4


class _Type(enum.IntEnum):
    """``rpmTagType`` on the wire (``include/rpm/rpmtag.h``)."""

    NULL = 0
    CHAR = 1
    INT8 = 2
    INT16 = 3
    INT32 = 4
    INT64 = 5
    STRING = 6
    BIN = 7
    STRING_ARRAY = 8
    I18NSTRING = 9


_INT_FORMATS = {_Type.CHAR: "B", _Type.INT8: "B", _Type.INT16: "H", _Type.INT32: "I", _Type.INT64: "Q"}
_STRING_TYPES = (_Type.STRING, _Type.STRING_ARRAY, _Type.I18NSTRING)


@dataclass(frozen=True, slots=True)
class _Entry:
    type: _Type
    offset: int  # in the data area
    count: int
    limit: int  # the value must end by here: the region's end for region entries


def _check_value(etype: _Type, offset: int, count: int, limit: int) -> None:
    """Fixed-size values are bounds-checked here; strings when read (a header has many thousands)."""
    fmt = _INT_FORMATS.get(etype)
    if fmt is not None:
        size = struct.calcsize(fmt)
        if offset % size:  # hdrchkAlign
            raise FormatError(f"offset {offset} not aligned to {size}")
        end = offset + size * count
    elif etype is _Type.BIN:
        end = offset + count
    elif etype is _Type.STRING and count != 1:
        raise FormatError(f"STRING with count {count}")
    else:
        end = offset + count  # at least one NUL per string
    if end > limit:
        raise FormatError(f"data ends at {end}, past {limit}")


def _parse_entries(blob: bytes, span: range, limit: int) -> dict[int, _Entry]:
    """Index entries ``span`` whose data must lie within the first ``limit`` data bytes."""
    entries: dict[int, _Entry] = {}
    for i in span:
        pos = 8 + i * _ENTRY.size
        tag, typ, offset, count = _ENTRY.unpack_from(blob, pos)
        try:
            etype = _Type(typ)
        except ValueError:
            raise FormatError(f"tag {tag}: unknown type {typ}", offset=pos) from None
        if etype is _Type.NULL or count == 0 or count > MAX_HEADER_SIZE:
            raise FormatError(f"tag {tag}: type {etype.name} with count {count}", offset=pos)
        if not 0 <= offset < limit:
            raise FormatError(f"tag {tag}: data offset {offset} outside 0..{limit}", offset=pos)
        try:
            _check_value(etype, offset, count, limit)
        except FormatError as exc:
            raise FormatError(f"tag {tag}: {exc}", offset=pos) from None
        if tag in entries:
            raise FormatError(f"tag {tag} appears twice", offset=pos)
        entries[tag] = _Entry(etype, offset, count, limit)
    return entries


@dataclass(frozen=True, slots=True)
class HeaderBlob:
    """A parsed header: ``region`` (what the header signature covers) and ``dribble`` (the rest).

    ``region`` is empty when the header has no immutable region (never signed).
    """

    blob: bytes
    region: Mapping[int, _Entry]
    dribble: Mapping[int, _Entry]

    @classmethod
    def parse(cls, blob: bytes) -> HeaderBlob:
        if len(blob) < _INTRO.size:
            raise FormatError("header blob shorter than its intro", offset=0)
        il, dl = _INTRO.unpack_from(blob)
        if not 0 < il <= _MAX_ENTRIES or dl > MAX_HEADER_SIZE:
            raise FormatError(f"header with {il} entries and {dl} data bytes", offset=0)
        data_start = 8 + il * _ENTRY.size
        if data_start + dl != len(blob):
            raise FormatError(f"header says {data_start + dl} bytes, blob has {len(blob)}", offset=0)
        tag, typ, offset, count = _ENTRY.unpack_from(blob, 8)
        if tag != Tag.HEADERIMMUTABLE:
            return cls(blob, {}, _parse_entries(blob, range(il), dl))
        if typ != _REGION_TAG_TYPE or count != _REGION_TAG_COUNT or not 0 <= offset <= dl - _REGION_TAG_COUNT:
            raise FormatError("malformed immutable region tag", offset=8)
        ttag, ttyp, toffset, tcount = _ENTRY.unpack_from(blob, data_start + offset)
        ril = -toffset // _ENTRY.size
        if (
            (ttag, ttyp, tcount) != (Tag.HEADERIMMUTABLE, _REGION_TAG_TYPE, _REGION_TAG_COUNT)
            or toffset >= 0
            or -toffset % _ENTRY.size
            or ril > il
        ):
            raise FormatError("malformed immutable region trailer", offset=data_start + offset)
        # Region entries' data ends where the trailer starts (rpm: rdl = trailer offset + 16).
        region = _parse_entries(blob, range(1, ril), offset)
        dribble = _parse_entries(blob, range(ril, il), dl)
        return cls(blob, region, dribble)

    @property
    def signed_tags(self) -> tuple[Tag, ...]:
        """Header signature tags present (outside the region, as rpm stores them)."""
        return tuple(t for t in SIGNATURE_TAGS if t in self.dribble or t in self.region)

    def _entry(self, tag: int, trusted: bool) -> _Entry | None:
        if trusted:
            return self.region.get(tag)
        return self.dribble.get(tag, self.region.get(tag))

    def _data(self, entry: _Entry, size: int | None = None) -> bytes:
        """The value's bytes: ``size`` of them, or up to the entry's limit (strings)."""
        start = 8 + _INTRO.unpack_from(self.blob)[0] * _ENTRY.size + entry.offset
        end = start - entry.offset + entry.limit if size is None else start + size
        return self.blob[start:end]

    def strings(self, tag: int, *, trusted: bool = True) -> tuple[bytes, ...] | None:
        """A STRING, STRING_ARRAY or I18NSTRING value as raw bytes (no decoding), or None."""
        entry = self._entry(tag, trusted)
        if entry is None:
            return None
        if entry.type not in _STRING_TYPES:
            raise FormatError(f"tag {tag} is {entry.type.name}, not a string")
        if entry.count == 1:
            # The common single string: find its end instead of copying the rest of the region.
            start = 8 + _INTRO.unpack_from(self.blob)[0] * _ENTRY.size
            nul = self.blob.find(b"\0", start + entry.offset, start + entry.limit)
            if nul < 0:
                raise FormatError(f"tag {tag}: string does not end within {entry.limit} bytes")
            return (self.blob[start + entry.offset : nul],)
        parts = self._data(entry).split(b"\0", entry.count)
        if len(parts) <= entry.count:
            raise FormatError(f"tag {tag}: {entry.count} strings do not end within {entry.limit} bytes")
        return tuple(parts[: entry.count])

    def string(self, tag: int, *, trusted: bool = True) -> bytes | None:
        values = self.strings(tag, trusted=trusted)
        return None if values is None else values[0]

    def ints(self, tag: int, *, trusted: bool = True) -> tuple[int, ...] | None:
        entry = self._entry(tag, trusted)
        if entry is None:
            return None
        fmt = _INT_FORMATS.get(entry.type)
        if fmt is None:
            raise FormatError(f"tag {tag} is {entry.type.name}, not an integer")
        return struct.unpack(f">{entry.count}{fmt}", self._data(entry, struct.calcsize(fmt) * entry.count))


def hash_algo_from_rpm(pgp_id: int) -> HashAlgo | None:
    """``FILEDIGESTALGO`` (an OpenPGP hash id, RFC 4880 §9.4; rpm ``pgpHashAlgo``) → kernel id.

    None for ids the kernel and hashlib cannot both name (md2, tiger192, haval, unknown).
    """
    return _PGP_HASHES.get(pgp_id)


_PGP_HASHES = {
    1: HashAlgo.MD5,
    2: HashAlgo.SHA1,
    3: HashAlgo.RIPE_MD_160,
    8: HashAlgo.SHA256,
    9: HashAlgo.SHA384,
    10: HashAlgo.SHA512,
    11: HashAlgo.SHA224,
}
# rpm's default when FILEDIGESTALGO is absent (packages older than rpm 4.6): md5.
DEFAULT_PGP_HASH = 1


def file_kind(mode: int) -> FileKind:
    if stat.S_ISREG(mode):
        return FileKind.REGULAR
    if stat.S_ISDIR(mode):
        return FileKind.DIRECTORY
    if stat.S_ISLNK(mode):
        return FileKind.SYMLINK
    return FileKind.OTHER


def decode_file_signature(value: bytes) -> bytes | None:
    """One ``FILESIGNATURES`` element: lowercase hex of a ``security.ima`` value; ``""`` is none."""
    if not value:
        return None
    if len(value) % 2 or value.strip(b"0123456789abcdefABCDEF"):
        raise FormatError(f"file signature is not hex ({len(value)} characters)")
    return bytes.fromhex(value.decode("ascii"))


def vendor_signature(raw: bytes, digest_algo: HashAlgo, max_len: int | None = None) -> ImaSignature:
    """Check that ``raw`` is a sig v2 ``security.ima`` value over a ``digest_algo`` digest.

    ``max_len``: ``FILESIGNATURELENGTH``, the longest value rpmsign wrote for this package.

    FormatError with reason ``vendor-signature-malformed``, ``vendor-signature-unsupported`` (an
    other form: rpm only ships sig v2 here) or ``vendor-signature-algo-mismatch``.
    """
    if max_len is not None and len(raw) > max_len:
        raise FormatError(
            f"vendor signature of {len(raw)} bytes exceeds FILESIGNATURELENGTH {max_len}",
            reason="vendor-signature-malformed",
        )
    try:
        value = parse_xattr(raw)
    except FormatError as exc:
        raise FormatError(f"vendor signature: {exc}", reason="vendor-signature-malformed") from exc
    if not isinstance(value, ImaSignature) or value.version != 2 or value.xattr_type is not XattrType.DIGSIG:
        raise FormatError(f"vendor signature is {value.form}, not sigv2", reason="vendor-signature-unsupported")
    if value.algo is not digest_algo:
        raise FormatError(
            f"vendor signature over {value.algo.kernel_name}, file digest is {digest_algo.kernel_name}",
            reason="vendor-signature-algo-mismatch",
        )
    return value


def parse_source_rpm(name: bytes) -> tuple[str, str]:
    """``hello-2.10-1.fc38.src.rpm`` → (``hello``, ``2.10-1.fc38``); ("", "") when not of that form."""
    text = name.decode("utf-8", "replace")
    for suffix in (".src.rpm", ".nosrc.rpm"):
        if text.endswith(suffix):
            text = text[: -len(suffix)]
            break
    else:
        return "", ""
    parts = text.rsplit("-", 2)
    if len(parts) != 3 or not all(parts):
        return "", ""
    return parts[0], f"{parts[1]}-{parts[2]}"
