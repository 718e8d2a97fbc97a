"""The ASCII measurement list (``ascii_runtime_measurements``), parsed as a stream (pure).

One line per entry: ``PCR template-hash template-name`` then each field as the kernel's show
function prints it (``ima_template_lib.c``, Linux 6.1), each preceded by one space, empty fields
printing nothing. The template data is rebuilt from the shown fields and its digest checked
against the line's template hash, so the entries equal those of the binary list. Re-exported by
``imaguard.ima.measurements``.
"""

from __future__ import annotations

import binascii
import hashlib
from collections.abc import Callable, Iterator

from imaguard.errors import FormatError
from imaguard.ima.logstream import (
    BANK_DIGEST_SIZES,
    CHUNK,
    MAX_PCR,
    MAX_TEMPLATE_DATA,
    Entry,
    LogReader,
    LogStream,
    check_fields,
    drive,
    hasher,
    rebased,
)
from imaguard.ima.templates import ByteOrder, Template, ascii_decoder, build_template_data, template_for

__all__ = ["iter_ascii"]


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
            self.hashers.setdefault(size, hasher(bank))
        # Template name as shown -> the template and one decoder per field (names are few, lines many).
        self.templates: dict[bytes, tuple[Template, tuple[Callable[[bytes], bytes], ...]]] = {}

    def template(self, name_s: bytes, where: int) -> tuple[Template, tuple[Callable[[bytes], bytes], ...]]:
        try:
            t = template_for(name_s.decode("ascii"))
        except UnicodeDecodeError:
            raise FormatError("template name is not ASCII", offset=where) from None
        except FormatError as exc:
            raise rebased(exc, where, "template name") from exc
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
                fields = tuple([dec(tok) if tok else b"" for dec, tok in zip(decoders, toks, strict=True)])
            except (ValueError, OverflowError):
                raise FormatError("a field is not what the kernel prints") from None
            entry = Entry(where, pcr, td, t, build_template_data(t, fields, self.byteorder), fields)
            check_fields(entry)
        except FormatError as exc:
            raise rebased(exc, where, f"entry {self.stream.count}") from exc
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
    chunk_size: int = CHUNK,
) -> LogStream:
    """Stream the entries of ``ascii_runtime_measurements`` (or a per-bank ASCII file).

    The template data is rebuilt from the shown fields and its digest checked against the line's
    template hash, so the entries equal those of the binary log. Offsets are line starts. The bank
    follows from the template hash's length. A last line without its newline is a truncation.
    """

    def gen(stream: LogStream) -> Iterator[Entry]:
        parser = _AsciiParser(stream, byteorder)
        yield from drive(source, stream, parser.parse, chunk_size, max(2 * MAX_TEMPLATE_DATA + 4096, chunk_size))

    return LogStream(gen)
