"""The IMA measurement list, binary and ASCII, parsed as a stream (pure: bytes or a reader in).

Binary record (kernel ``ima_fs.c`` ``ima_measurements_show``, Linux 6.1), integers in host byte
order, or little-endian when booted with ``ima_canonical_fmt``::

    u32 pcr | u8 template_digest[20] | u32 name_len | name | u32 data_len | data
    (`ima` template: no data_len; data is d[20] | u32 len | name without NUL)

The per-bank files of newer kernels (``binary_runtime_measurements_sha256``) carry a template
digest of the bank's size. Each entry's template digest is recomputed from its data and checked;
an all-zero digest marks a violation and is not checked (the kernel logs zeros, extends 0xff).

A stream ends cleanly at the last whole record when the input stops inside one (a log that grew
while read): ``LogStream.truncated`` says where. Anything else malformed is a FormatError with
the absolute byte offset, raised before any later entry is yielded.
"""

from __future__ import annotations

import binascii
import dataclasses
import hashlib
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from imaguard.errors import FormatError
from imaguard.ima.templates import (
    DIGEST_PREFIX_SIZES,
    IMA_NAME_LEN,
    ByteOrder,
    FileDigest,
    Template,
    ascii_decoder,
    build_template_data,
    check_digest_field,
    field_to_ascii,
    ima_hashed_data,
    parse_digest_field,
    split_template_data,
    template_for,
)

if TYPE_CHECKING:
    from imaguard.ima.xattr import XattrValue

__all__ = [
    "BANK_DIGEST_SIZES",
    "MAX_PCR",
    "MAX_TEMPLATE_DATA",
    "Entry",
    "LogReader",
    "LogStream",
    "RecordSink",
    "Truncated",
    "detect_byteorder",
    "iter_ascii",
    "iter_binary",
    "scan_binary",
]

# TPM 2.0 PC Client PCRs are 0..23; anything far beyond means a wrong byte order or garbage.
MAX_PCR = 63
# A record's template data: n-ng is at most PATH_MAX+1, buf (keys, critical data) a few KiB,
# modsig a PKCS#7 blob. 16 MiB bounds memory per record whatever the input claims.
MAX_TEMPLATE_DATA = 16 << 20
# Template names: built-in names are short; a custom format is a '|'-list of field ids.
_MAX_NAME = 255
BANK_DIGEST_SIZES = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64, "sm3": 32}
_CHUNK = 1 << 20
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
        _check_fields(entry)
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
# Template name -> the (index, field id) pairs _check_fields looks at; templates are few, entries many.
_CHECKS: dict[str, tuple[tuple[int, str], ...]] = {}


def _field_checks(t: Template) -> tuple[tuple[int, str], ...]:
    checks = _CHECKS.get(t.name)
    if checks is None:
        checks = tuple((i, f) for i, f in enumerate(t.fields) if f in _CHECKED_IDS) if t.known else ()
        _CHECKS[t.name] = checks
    return checks


def _check_fields(entry: Entry) -> None:
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


def _rebased(exc: FormatError, where: int, what: str) -> FormatError:
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
        self._it = gen(self)

    def __iter__(self) -> Iterator[Entry]:
        return self._it

    def __next__(self) -> Entry:
        return next(self._it)


def _hasher(bank: str) -> Callable[[bytes], hashlib._Hash]:
    if bank not in BANK_DIGEST_SIZES:
        raise FormatError(f"unknown PCR bank {bank!r}")
    fn: Callable[[bytes], hashlib._Hash] = getattr(hashlib, bank, None) or (lambda b: hashlib.new(bank, b))
    return fn


# parse(buf, pos, base) yields the whole records of buf from pos, advancing stream.end past each.
_Parse = Callable[[bytes, int, int], Iterator[Entry]]


def _drive(
    source: bytes | bytearray | memoryview | LogReader, stream: LogStream, parse: _Parse, chunk_size: int,
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


class _BinaryParser:
    """Record framing and checks for one byte order and template-digest bank."""

    def __init__(self, stream: LogStream, byteorder: ByteOrder, bank: str, max_template_data: int) -> None:
        size = BANK_DIGEST_SIZES.get(bank)
        if size is None:
            raise FormatError(f"unknown PCR bank {bank!r}")
        bo = "<" if byteorder == "little" else ">"
        self.stream = stream
        self.byteorder: ByteOrder = byteorder
        self.hfn = _hasher(bank)
        self.head = struct.Struct(f"{bo}I{size}sI")
        self.u32 = struct.Struct(f"{bo}I").unpack_from
        self.zero = bytes(size)
        self.max_data = max_template_data
        self.templates: dict[bytes, Template] = {}

    def template(self, raw: bytes, where: int) -> Template:
        try:
            name = raw.decode("ascii")
        except UnicodeDecodeError:
            raise FormatError("template name is not ASCII", offset=where) from None
        if not name.isprintable():
            raise FormatError(f"template name {name!r} is not printable", offset=where)
        try:
            t = template_for(name)
        except FormatError as exc:
            raise _rebased(exc, where, "template name") from exc
        self.templates[raw] = t
        return t

    def data_span(self, t: Template, buf: bytes, p: int, base: int) -> tuple[int, int] | None:
        """Start and end of the template data after the name at ``p``; None when not all present."""
        n = len(buf)
        if t.is_ima:
            if p + 24 > n:
                return None
            (dlen,) = self.u32(buf, p + 20)
            if dlen >= IMA_NAME_LEN:
                raise FormatError(f"`ima` name length {dlen} is out of range", offset=base + p + 20)
            return p, p + 24 + dlen
        if p + 4 > n:
            return None
        (dlen,) = self.u32(buf, p)
        if dlen > self.max_data:
            raise FormatError(f"template data length {dlen} exceeds the limit {self.max_data}", offset=base + p)
        return p + 4, p + 4 + dlen

    def parse(self, buf: bytes, pos: int, base: int) -> Iterator[Entry]:
        stream, head, hlen = self.stream, self.head, self.head.size
        n = len(buf)
        while n - pos >= hlen:
            pcr, td, nlen = head.unpack_from(buf, pos)
            if pcr > MAX_PCR:
                raise FormatError(f"PCR index {pcr} is out of range (byte order?)", offset=base + pos)
            if not 0 < nlen <= _MAX_NAME:
                raise FormatError(f"template name length {nlen} is out of range", offset=base + pos + hlen - 4)
            p = pos + hlen + nlen
            if p > n:
                return
            raw_name = buf[pos + hlen : p]
            t = self.templates.get(raw_name) or self.template(raw_name, base + pos + hlen)
            span = self.data_span(t, buf, p, base)
            if span is None or span[1] > n:
                return
            entry = self.entry(t, buf, pos, base, span=span, head=(pcr, td))
            pos = span[1]
            stream.end = base + pos
            stream.count += 1
            yield entry


    def entry(
        self, t: Template, buf: bytes, pos: int, base: int, *, span: tuple[int, int], head: tuple[int, bytes]
    ) -> Entry:
        """The full path: split, check and hash-check one record (raises the precise FormatError)."""
        pcr, td = head
        start, end = span
        data = buf[start:end]
        try:
            fields = split_template_data(t, data, self.byteorder)
            entry = Entry(base + pos, pcr, td, t, data, fields)
            _check_fields(entry)
        except FormatError as exc:
            raise _rebased(exc, base + start, f"{t.name} template data") from exc
        if td != self.zero and self.hfn(entry.hashed_data()).digest() != td:
            raise FormatError(
                f"template digest of entry {self.stream.count} does not match its data", offset=base + pos + 4
            )
        return entry

    def common_ok(self, t: Template, data: bytes) -> bool:
        """The fast check of a ``d-ng|n-ng|…`` record: field lengths add up, d-ng has a known
        ``algo:\\0`` prefix and its size, n-ng ends in NUL. False means: take the full path."""
        if t.fields[:2] != ("d-ng", "n-ng") or not t.known:
            return False
        u32, dlen = self.u32, len(data)
        if dlen < 8:  # two u32 lengths
            return False
        (fl,) = u32(data, 0)
        q = 4 + fl  # end of d-ng
        if q + 4 > dlen:
            return False
        sep = data.find(b":\x00", 4, q)
        if sep < 0 or DIGEST_PREFIX_SIZES.get(data[4 : sep + 2]) != q - sep - 2:
            return False
        (fl,) = u32(data, q)
        q += 4 + fl  # end of n-ng
        if fl == 0 or q > dlen or data[q - 1] != 0:
            return False
        k = 2
        while q < dlen:
            if dlen - q < 4:  # a u32 length
                return False
            (fl,) = u32(data, q)
            q += 4 + fl
            k += 1
        return q == dlen and k == len(t.fields)

    def scan(self, sink: RecordSink) -> _Parse:
        """``parse`` without Entry objects, for replaying long lists: the same checks, in a fused loop
        for templates starting ``d-ng|n-ng`` (ima-ng, ima-sig, ima-buf, …), each record handed to
        ``sink``; other templates and anything unusual go through ``entry`` (differential-tested)."""
        stream, hlen, zero, hfn = self.stream, self.head.size, self.zero, self.hfn
        unpack_head, templates, common_ok = self.head.unpack_from, self.templates, self.common_ok

        def parse(buf: bytes, pos: int, base: int) -> Iterator[Entry]:
            n = len(buf)
            while n - pos >= hlen:
                pcr, td, nlen = unpack_head(buf, pos)
                if pcr > MAX_PCR:
                    raise FormatError(f"PCR index {pcr} is out of range (byte order?)", offset=base + pos)
                if not 0 < nlen <= _MAX_NAME:
                    raise FormatError(f"template name length {nlen} is out of range", offset=base + pos + hlen - 4)
                p = pos + hlen + nlen
                if p > n:
                    return
                raw_name = buf[pos + hlen : p]
                t = templates.get(raw_name) or self.template(raw_name, base + pos + hlen)
                span = self.data_span(t, buf, p, base)
                if span is None or span[1] > n:
                    return
                start, end = span
                data = buf[start:end]
                ok = common_ok(t, data)
                if ok:
                    if td != zero and hfn(data).digest() != td:
                        raise FormatError(
                            f"template digest of entry {stream.count} does not match its data", offset=base + pos + 4
                        )
                else:
                    data = self.entry(t, buf, pos, base, span=span, head=(pcr, td)).template_data
                sink(pcr, td, t, data)
                pos = end
                stream.end = base + pos
                stream.count += 1
            return
            yield  # a generator that yields nothing: records go to the sink

        return parse


# scan_binary hands each checked record to a sink: PCR index, template digest, template, template data.
RecordSink = Callable[[int, bytes, Template, bytes], None]


def scan_binary(
    source: bytes | bytearray | memoryview | LogReader,
    sink: RecordSink,
    *,
    byteorder: ByteOrder = "little",
    bank: str = "sha1",
    max_template_data: int = MAX_TEMPLATE_DATA,
    chunk_size: int = _CHUNK,
) -> LogStream:
    """Check every record of a binary list like ``iter_binary``, handing each to ``sink`` instead of
    yielding an Entry (the replay of long lists). Returns the exhausted LogStream (end, truncation);
    FormatError as ``iter_binary`` raises it."""

    def gen(stream: LogStream) -> Iterator[Entry]:
        parser = _BinaryParser(stream, byteorder, bank, max_template_data)
        pending = max_template_data + parser.head.size + _MAX_NAME + 4
        yield from _drive(source, stream, parser.scan(sink), chunk_size, max(pending, chunk_size))

    stream = LogStream(gen)
    for _ in stream:
        pass
    return stream


def iter_binary(
    source: bytes | bytearray | memoryview | LogReader,
    *,
    byteorder: ByteOrder = "little",
    bank: str = "sha1",
    max_template_data: int = MAX_TEMPLATE_DATA,
    chunk_size: int = _CHUNK,
) -> LogStream:
    """Stream the entries of a binary measurement list.

    ``bank`` is the template-digest algorithm of the file (``sha1`` for the classic file, the
    bank of a per-bank ``binary_runtime_measurements_<bank>``). A reader is consumed in
    ``chunk_size`` reads, so memory stays bounded by one chunk plus one record.
    """

    def gen(stream: LogStream) -> Iterator[Entry]:
        parser = _BinaryParser(stream, byteorder, bank, max_template_data)
        pending = max_template_data + parser.head.size + _MAX_NAME + 4
        yield from _drive(source, stream, parser.parse, chunk_size, max(pending, chunk_size))

    return LogStream(gen)


def _split_ascii(t: Template, tokens: list[bytes]) -> list[bytes]:
    """Field tokens of one line; a name with spaces (shown verbatim) spans the surplus tokens."""
    k = len(t.fields)
    if len(tokens) == k:
        return tokens
    name_at = next((i for i, f in enumerate(t.fields) if f in ("n-ng", "n")), None)
    if len(tokens) < k or name_at is None:
        raise FormatError(f"{t.name} line has {len(tokens)} fields, the template has {k}")
    right = k - name_at - 1
    middle = tokens[name_at : len(tokens) - right]
    return [*tokens[:name_at], b" ".join(middle), *tokens[len(tokens) - right :]]


class _AsciiParser:
    """One line per entry; the template data is rebuilt from the shown fields and its hash checked."""

    def __init__(self, stream: LogStream, byteorder: ByteOrder) -> None:
        self.stream = stream
        self.byteorder: ByteOrder = byteorder
        # The bank follows from the hash's length; 32 bytes is sha256 (an sm3 list cannot be told apart).
        self.hashers: dict[int, Callable[[bytes], hashlib._Hash]] = {}
        for bank, size in BANK_DIGEST_SIZES.items():
            self.hashers.setdefault(size, _hasher(bank))
        # Template name as shown -> the template and one decoder per field (names are few, lines many).
        self.templates: dict[bytes, tuple[Template, tuple[Callable[[bytes], bytes], ...]]] = {}

    def template(self, name_s: bytes, where: int) -> tuple[Template, tuple[Callable[[bytes], bytes], ...]]:
        try:
            t = template_for(name_s.decode("ascii"))
        except UnicodeDecodeError:
            raise FormatError("template name is not ASCII", offset=where) from None
        except FormatError as exc:
            raise _rebased(exc, where, "template name") from exc
        if not t.fields:
            raise FormatError(f"template {t.name!r} is unknown: its ASCII fields cannot be rebuilt; use the binary log",
                              offset=where)
        decoders = tuple(ascii_decoder(f, self.byteorder, ima=t.is_ima) for f in t.fields)
        self.templates[name_s] = (t, decoders)
        return t, decoders

    def entry(self, line: bytes, where: int) -> Entry:
        tokens = line.split(b" ")
        if len(tokens) < 3:  # PCR, template hash, template name
            raise FormatError("line has fewer than 3 columns", offset=where)
        pcr_s, hash_s, name_s = tokens[0], tokens[1], tokens[2]
        try:
            pcr = int(pcr_s) if pcr_s.isdigit() else -1
            td = binascii.a2b_hex(hash_s)
        except ValueError:
            raise FormatError("template hash is not hex", offset=where) from None
        if not 0 <= pcr <= MAX_PCR:
            raise FormatError(f"PCR index {pcr_s[:12]!r} is out of range", offset=where)
        hfn = self.hashers.get(len(td))
        if hfn is None:
            raise FormatError(f"template hash of {len(td)} bytes fits no PCR bank", offset=where)
        t, decoders = self.templates.get(name_s) or self.template(name_s, where)
        try:
            toks = _split_ascii(t, tokens[3:])
            try:
                fields = tuple(dec(tok) if tok else b"" for dec, tok in zip(decoders, toks, strict=True))
            except (ValueError, OverflowError):
                raise FormatError("a field is not what the kernel prints") from None
            entry = Entry(where, pcr, td, t, build_template_data(t, fields, self.byteorder), fields)
            _check_fields(entry)
        except FormatError as exc:
            raise _rebased(exc, where, f"entry {self.stream.count}") from exc
        if any(td) and hfn(entry.hashed_data()).digest() != td:
            raise FormatError(f"template hash of entry {self.stream.count} does not match its fields", offset=where)
        return entry

    def parse(self, buf: bytes, pos: int, base: int) -> Iterator[Entry]:
        stream = self.stream
        while (nl := buf.find(b"\n", pos)) >= 0:
            entry = self.entry(buf[pos:nl], base + pos)
            pos = nl + 1
            stream.end = base + pos
            stream.count += 1
            yield entry


def iter_ascii(
    source: bytes | LogReader,
    *,
    byteorder: ByteOrder = "little",
    chunk_size: int = _CHUNK,
) -> LogStream:
    """Stream the entries of ``ascii_runtime_measurements`` (or a per-bank ASCII file).

    The template data is rebuilt from the shown fields and its digest checked against the line's
    template hash, so the entries equal those of the binary log. Offsets are line starts. The bank
    follows from the template hash's length. A last line without its newline is a truncation.
    """

    def gen(stream: LogStream) -> Iterator[Entry]:
        parser = _AsciiParser(stream, byteorder)
        yield from _drive(source, stream, parser.parse, chunk_size, max(2 * MAX_TEMPLATE_DATA + 4096, chunk_size))

    return LogStream(gen)
