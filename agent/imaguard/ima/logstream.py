"""Measurement-list entries and the streaming machinery shared by the binary and ASCII parsers (pure).

``Entry`` is one checked measurement; ``LogStream`` iterates entries and records where the input
ended (``end``) and whether it stopped inside a record (``truncated``). ``drive`` feeds a parser
the whole input or successive chunks of a reader, keeping only the unparsed tail, so memory stays
bounded by one chunk plus one record. The public names are re-exported by
``imaguard.ima.measurements``; import them from there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from imaguard.errors import FormatError
from imaguard.ima.templates import (
    ByteOrder,
    FileDigest,
    Template,
    build_template_data,
    check_digest_field,
    field_to_ascii,
    ima_hashed_data,
    parse_digest_field,
    template_for,
)

if TYPE_CHECKING:
    from imaguard.ima.xattr import XattrValue

__all__ = [
    "BANK_DIGEST_SIZES",
    "CHUNK",
    "MAX_NAME",
    "MAX_PCR",
    "MAX_TEMPLATE_DATA",
    "Entry",
    "LogReader",
    "LogStream",
    "Parse",
    "Truncated",
    "check_fields",
    "detect_byteorder",
    "drive",
    "hasher",
    "rebased",
]

# TPM 2.0 PC Client PCRs are 0..23; anything far beyond means a wrong byte order or garbage.
MAX_PCR = 63
# A record's template data: n-ng is at most PATH_MAX+1, buf (keys, critical data) a few KiB,
# modsig a PKCS#7 blob. 16 MiB bounds memory per record whatever the input claims.
MAX_TEMPLATE_DATA = 16 << 20
# Template names: built-in names are short; a custom format is a '|'-list of field ids.
MAX_NAME = 255
BANK_DIGEST_SIZES = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64, "sm3": 32}
CHUNK = 1 << 20
_DIGEST_IDS = ("d-ng", "d-ngv2", "d")
_PATH_IDS = ("n-ng", "n")


class LogReader(Protocol):
    """Anything with ``read(size)`` returning bytes (an open file in binary mode, a pipe)."""

    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Truncated:
    """The input stopped inside a record: it starts at ``offset``; ``have`` of its bytes were present."""

    offset: int
    have: int


@dataclass(frozen=True, slots=True)
class Entry:
    """One measurement: where it is in the log, its PCR, template digest, template and data.

    ``template_data`` is exactly what the binary log carries after the data length (for `ima`:
    after the name), so serializing gives back the same bytes; ``fields`` is that data split
    into the template's fields. Build entries only through the parsers or ``Entry.build``.
    """

    offset: int = dataclasses.field(compare=False)
    pcr: int
    template_digest: bytes
    template: Template
    template_data: bytes
    fields: tuple[bytes, ...]

    @classmethod
    def build(
        cls,
        template_name: str,
        fields: tuple[bytes, ...],
        *,
        pcr: int = 10,
        bank: str = "sha1",
        byteorder: ByteOrder = "little",
        violation: bool = False,
        offset: int = 0,
    ) -> Entry:
        """An entry with its template digest computed (all-zero for a violation): for builders and tests."""
        template = template_for(template_name)
        data = build_template_data(template, fields, byteorder)
        hashed = ima_hashed_data(fields) if template.is_ima else data
        digest = bytes(BANK_DIGEST_SIZES[bank]) if violation else hashlib.new(bank, hashed).digest()
        entry = cls(offset, pcr, digest, template, data, fields)
        check_fields(entry)
        return entry

    @property
    def template_name(self) -> str:
        return self.template.name

    @property
    def is_violation(self) -> bool:
        return not any(self.template_digest)

    def field(self, field_id: str) -> bytes | None:
        """The raw bytes of a field by id; None when the template has no such field."""
        i = self.template.index(field_id)
        return None if i is None or i >= len(self.fields) else self.fields[i]

    @property
    def digest(self) -> FileDigest | None:
        """The file (or buffer) digest of ``d-ng``, ``d-ngv2`` or ``d``."""
        for fid in _DIGEST_IDS:
            raw = self.field(fid)
            if raw is not None:
                return parse_digest_field(fid, raw)
        return None

    @property
    def path(self) -> bytes:
        """The event name (``n-ng``/``n``) without its NUL: a path, ``boot_aggregate``, a keyring name."""
        for fid in _PATH_IDS:
            raw = self.field(fid)
            if raw is not None:
                return raw[:-1] if raw.endswith(b"\x00") else raw
        return b""

    @property
    def sig(self) -> bytes | None:
        """The ``sig`` field (a ``security.ima`` value) when present and non-empty."""
        return self.field("sig") or None

    @property
    def buf(self) -> bytes | None:
        """The ``buf`` field (``ima-buf``: e.g. the DER of a key for KEY_CHECK) when present and non-empty."""
        return self.field("buf") or None

    def signature(self) -> XattrValue | None:
        """The ``sig`` field parsed like ``security.ima`` (FormatError when it is malformed)."""
        from imaguard.ima.xattr import parse_xattr  # noqa: PLC0415 - only callers that look at signatures pay

        raw = self.sig
        return None if raw is None else parse_xattr(raw)

    def hashed_data(self) -> bytes:
        """The bytes the template digest covers (the data itself, except for the `ima` template)."""
        return ima_hashed_data(self.fields) if self.template.is_ima else self.template_data

    def to_binary(self, byteorder: ByteOrder = "little") -> bytes:
        """The record as ``binary_runtime_measurements`` carries it."""
        u32 = struct.Struct("<I" if byteorder == "little" else ">I").pack
        name = self.template.name.encode()
        head = u32(self.pcr) + self.template_digest + u32(len(name)) + name
        if self.template.is_ima:
            return head + self.template_data
        return head + u32(len(self.template_data)) + self.template_data

    def to_ascii(self, byteorder: ByteOrder = "little") -> bytes:
        """The line as ``ascii_runtime_measurements`` shows it, newline included."""
        ids = self.template.fields or ("?",) * len(self.fields)
        shown = b"".join(b" " + field_to_ascii(fid, f, byteorder) for fid, f in zip(ids, self.fields, strict=True))
        return b"%d %s %s%s\n" % (self.pcr, self.template_digest.hex().encode(), self.template.name.encode(), shown)


_CHECKED_IDS = frozenset({"d", "d-ng", "d-ngv2", "d-modsig", "n-ng"})
# Template name -> the (index, field id) pairs check_fields looks at; templates are few, entries many.
_CHECKS: dict[str, tuple[tuple[int, str], ...]] = {}


def _field_checks(t: Template) -> tuple[tuple[int, str], ...]:
    checks = _CHECKS.get(t.name)
    if checks is None:
        checks = tuple((i, f) for i, f in enumerate(t.fields) if f in _CHECKED_IDS) if t.known else ()
        _CHECKS[t.name] = checks
    return checks


def check_fields(entry: Entry) -> None:
    """Field-level invariants the kernel guarantees: a well-formed digest, a NUL-terminated n-ng."""
    t, fields = entry.template, entry.fields
    if t.fields and len(t.fields) != len(fields):
        raise FormatError(f"template {t.name} has {len(t.fields)} fields, data holds {len(fields)}")
    for i, fid in _field_checks(t):
        raw = fields[i]
        if fid == "n-ng":
            if not raw.endswith(b"\x00"):
                raise FormatError("`n-ng` field is not NUL-terminated")
        elif fid == "d":
            parse_digest_field(fid, raw)
        elif raw or fid != "d-modsig":
            check_digest_field(fid, raw)


def detect_byteorder(head: bytes) -> ByteOrder:
    """Guess the byte order from the first record's PCR index (small in the right order)."""
    if len(head) < 4:
        return "little"
    if int.from_bytes(head[:4], "little") <= MAX_PCR:
        return "little"
    if int.from_bytes(head[:4], "big") <= MAX_PCR:
        return "big"
    raise FormatError(f"first PCR index {head[:4].hex()} is not a PCR in either byte order", offset=0)


def rebased(exc: FormatError, where: int, what: str) -> FormatError:
    """The same error, located at an absolute offset in the log."""
    message = str(exc).split(" (at byte offset", 1)[0]
    return FormatError(f"{what}: {message}", offset=where + (exc.offset or 0))


class LogStream:
    """An iterator of entries; after it is exhausted, ``end`` and ``truncated`` say where it stopped.

    ``end`` is the offset just after the last whole record; ``truncated`` is set when bytes of an
    incomplete record followed. Iterate once.
    """

    def __init__(self, gen: Callable[[LogStream], Iterator[Entry]]) -> None:
        self.end = 0
        self.count = 0
        self.truncated: Truncated | None = None
        self.first: Entry | None = None  # set by scan_binary, which makes no other Entry
        self._it = gen(self)

    def __iter__(self) -> Iterator[Entry]:
        return self._it

    def __next__(self) -> Entry:
        return next(self._it)


def hasher(bank: str) -> Callable[[bytes], hashlib._Hash]:
    if bank not in BANK_DIGEST_SIZES:
        raise FormatError(f"unknown PCR bank {bank!r}")
    fn: Callable[[bytes], hashlib._Hash] = getattr(hashlib, bank, None) or (lambda b: hashlib.new(bank, b))
    return fn


# parse(buf, pos, base) yields the whole records of buf from pos, advancing stream.end past each.
Parse = Callable[[bytes, int, int], Iterator[Entry]]


def drive(
    source: bytes | bytearray | memoryview | LogReader, stream: LogStream, parse: Parse, chunk_size: int,
    max_pending: int,
) -> Iterator[Entry]:
    """Feed ``parse`` whole input or successive chunks; keep only the unparsed tail between reads."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        buf, reader = bytes(source), None
    else:
        buf, reader = b"", source
    base = pos = 0
    while True:
        yield from parse(buf, pos, base)
        pos = stream.end - base
        if len(buf) - pos > max_pending:
            raise FormatError(f"no record ends within {max_pending} bytes", offset=stream.end)
        chunk = reader.read(chunk_size) if reader is not None else b""
        if not chunk:
            break
        # Drop the parsed buffer before joining: peak memory is two chunks, not three.
        tail, buf = buf[pos:], b""
        buf, tail, chunk = tail + chunk, b"", b""
        base += pos
        pos = 0
    if pos < len(buf):
        stream.truncated = Truncated(base + pos, len(buf) - pos)
