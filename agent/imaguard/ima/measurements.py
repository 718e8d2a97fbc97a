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

import struct
from collections.abc import Callable, Iterator
from typing import Literal

from imaguard.errors import FormatError
from imaguard.ima.asciilog import iter_ascii
from imaguard.ima.logstream import (
    BANK_DIGEST_SIZES,
    CHUNK,
    MAX_NAME,
    MAX_PCR,
    MAX_TEMPLATE_DATA,
    Entry,
    LogReader,
    LogStream,
    Parse,
    Truncated,
    check_fields,
    detect_byteorder,
    drive,
    hasher,
    rebased,
)
from imaguard.ima.templates import (
    DIGEST_PREFIX_SIZES,
    IMA_NAME_LEN,
    ByteOrder,
    Template,
    split_template_data,
    template_for,
)

__all__ = [
    "BANK_DIGEST_SIZES",
    "MAX_PCR",
    "MAX_TEMPLATE_DATA",
    "Checks",
    "Entry",
    "LogReader",
    "LogStream",
    "Record",
    "RecordSink",
    "Truncated",
    "detect_byteorder",
    "iter_ascii",
    "iter_binary",
    "scan_binary",
]


# Which of the fused loop's record checks a scan makes (scan_binary).
Checks = Literal["all", "digest", "fields"]


class _BinaryParser:
    """Record framing and checks for one byte order and template-digest bank."""

    def __init__(self, stream: LogStream, byteorder: ByteOrder, bank: str, max_template_data: int) -> None:
        size = BANK_DIGEST_SIZES.get(bank)
        if size is None:
            raise FormatError(f"unknown PCR bank {bank!r}")
        bo = "<" if byteorder == "little" else ">"
        self.stream = stream
        self.byteorder: ByteOrder = byteorder
        self.hfn = hasher(bank)
        self.head = struct.Struct(f"{bo}I{size}sI")
        self.u32 = struct.Struct(f"{bo}I").unpack_from
        self.zero = bytes(size)
        self.max_data = max_template_data
        self.templates: dict[bytes, Template] = {}
        self.shapes: dict[str, bool] = {}

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
            raise rebased(exc, where, "template name") from exc
        self.templates[raw] = t
        # A known template starting d-ng|n-ng: the fused loop's records (scan, common_ok).
        self.shapes[t.name] = t.fields[:2] == ("d-ng", "n-ng") and t.known
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
            raise self.too_long(dlen, base + p)
        return p + 4, p + 4 + dlen

    def too_long(self, dlen: int, where: int) -> FormatError:
        return FormatError(f"template data length {dlen} exceeds the limit {self.max_data}", offset=where)

    def parse(self, buf: bytes, pos: int, base: int) -> Iterator[Entry]:
        stream, head, hlen = self.stream, self.head, self.head.size
        n = len(buf)
        while n - pos >= hlen:
            pcr, td, nlen = head.unpack_from(buf, pos)
            if pcr > MAX_PCR:
                raise FormatError(f"PCR index {pcr} is out of range (byte order?)", offset=base + pos)
            if not 0 < nlen <= MAX_NAME:
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
            check_fields(entry)
        except FormatError as exc:
            raise rebased(exc, base + start, f"{t.name} template data") from exc
        if td != self.zero and self.hfn(entry.hashed_data()).digest() != td:
            raise FormatError(
                f"template digest of entry {self.stream.count} does not match its data", offset=base + pos + 4
            )
        return entry

    def common_ok(self, t: Template, data: bytes) -> bool:
        """The fast check of a ``d-ng|n-ng|…`` record: field lengths add up, d-ng has a known
        ``algo:\\0`` prefix and its size, n-ng ends in NUL. False means: take the full path."""
        if not self.shapes[t.name]:
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

    def scan(self, sink: RecordSink, checks: Checks = "all") -> Parse:  # noqa: PLR0915 - one fused loop (below)
        """``parse`` without Entry objects, for replaying long lists: the same checks, in a fused loop
        for templates starting ``d-ng|n-ng`` (ima-ng, ima-sig, ima-buf, …), each record handed to
        ``sink``; the first record, other templates and anything unusual go through ``entry``
        (differential-tested against ``parse``). The first record's Entry is kept as ``stream.first``.

        ``checks`` splits the fused loop's two record checks between two scans of one list (see
        ``scan_binary``); framing checks and the full ``entry`` path run in every scan."""
        stream, hlen, zero, hfn = self.stream, self.head.size, self.zero, self.hfn
        unpack_head, templates = self.head.unpack_from, self.templates
        data_span, common_ok, shapes, u32 = self.data_span, self.common_ok, self.shapes, self.u32
        max_data = self.max_data
        # The layout check runs where count & mask == want: on every record, or on every other one.
        mask, want = (0, 0) if checks == "all" else (1, 1) if checks == "digest" else (1, 0)
        check_digest = checks != "fields"

        # One function on purpose: a call per record is most of what it saves over ``parse``.
        def parse(buf: bytes, pos: int, base: int) -> Iterator[Entry]:  # noqa: PLR0912
            n, count = len(buf), stream.count
            records: list[Record] = []  # this buffer's, handed over in one call
            add = records.append
            try:
                while n - pos >= hlen:
                    pcr, td, nlen = unpack_head(buf, pos)
                    if pcr > MAX_PCR:
                        raise FormatError(f"PCR index {pcr} is out of range (byte order?)", offset=base + pos)
                    if not 0 < nlen <= MAX_NAME:
                        raise FormatError(
                            f"template name length {nlen} is out of range", offset=base + pos + hlen - 4
                        )
                    p = pos + hlen + nlen
                    if p > n:
                        break
                    raw_name = buf[pos + hlen : p]
                    t = templates.get(raw_name) or self.template(raw_name, base + pos + hlen)
                    if t.is_ima:
                        span = data_span(t, buf, p, base)
                        if span is None:
                            break
                        start, end = span
                    else:  # data_span, inline: this runs once per record of lists of 100,000s
                        if p + 4 > n:
                            break
                        (dlen,) = u32(buf, p)
                        if dlen > max_data:
                            raise self.too_long(dlen, base + p)
                        start = p + 4
                        end = start + dlen
                    if end > n:
                        break
                    data = buf[start:end]
                    if count and (common_ok(t, data) if count & mask == want else shapes[t.name]):
                        if check_digest and td != zero and hfn(data).digest() != td:
                            raise FormatError(
                                f"template digest of entry {count} does not match its data", offset=base + pos + 4
                            )
                    else:
                        stream.count = count  # entry() names the entry in its errors
                        entry = self.entry(t, buf, pos, base, span=(start, end), head=(pcr, td))
                        if not count:
                            stream.first = entry
                        data = entry.hashed_data()
                    add((pcr, td, t, data))
                    pos = end
                    count += 1
            except FormatError as exc:
                exc.record = count  # the failing record's index: the split scans' errors are ordered by it
                raise
            sink(records)
            stream.end, stream.count = base + pos, count
            return
            yield  # a generator that yields nothing: records go to the sink

        return parse


# scan_binary hands checked records to a sink, a list per read buffer (thousands: one call each
# rather than one per record). A record: PCR index, template digest, template, and the bytes the
# template digest covers (the template data; for `ima` its padded form); every template digest of
# one list has the same size.
Record = tuple[int, bytes, Template, bytes]
RecordSink = Callable[[list[Record]], None]


def scan_binary(
    source: bytes | bytearray | memoryview | LogReader,
    sink: RecordSink,
    *,
    byteorder: ByteOrder = "little",
    bank: str = "sha1",
    max_template_data: int = MAX_TEMPLATE_DATA,
    chunk_size: int = CHUNK,
    checks: Checks = "all",
) -> LogStream:
    """Check every record of a binary list like ``iter_binary``, handing them to ``sink`` instead of
    yielding an Entry (the replay of long lists). Returns the exhausted LogStream (end, truncation);
    FormatError as ``iter_binary`` raises it, with ``record`` the failing record's index.

    ``checks`` other than ``"all"`` is for two scans of the same list, one with each, that share the
    fused loop's two checks of a ``d-ng|n-ng|…`` record: ``"digest"`` checks every template digest and
    the field layout of odd-numbered records, ``"fields"`` the field layout of even-numbered ones (an
    unusual record gets every check in both). Together they check what one ``"all"`` scan checks;
    alone, either checks less. Where both fail, the error of the lower record index is the one
    ``"all"`` raises, and at the same index the ``"fields"`` scan's.
    """

    def gen(stream: LogStream) -> Iterator[Entry]:
        parser = _BinaryParser(stream, byteorder, bank, max_template_data)
        pending = max_template_data + parser.head.size + MAX_NAME + 4
        yield from drive(source, stream, parser.scan(sink, checks), chunk_size, max(pending, chunk_size))

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
    chunk_size: int = CHUNK,
) -> LogStream:
    """Stream the entries of a binary measurement list.

    ``bank`` is the template-digest algorithm of the file (``sha1`` for the classic file, the
    bank of a per-bank ``binary_runtime_measurements_<bank>``). A reader is consumed in
    ``chunk_size`` reads, so memory stays bounded by one chunk plus one record.
    """

    def gen(stream: LogStream) -> Iterator[Entry]:
        parser = _BinaryParser(stream, byteorder, bank, max_template_data)
        pending = max_template_data + parser.head.size + MAX_NAME + 4
        yield from drive(source, stream, parser.parse, chunk_size, max(pending, chunk_size))

    return LogStream(gen)
