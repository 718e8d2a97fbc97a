"""The Debian chain of trust, checked link by link on bytes (pure; no I/O).

InRelease (verified by gpgv, whose status lines and output payload arrive here as bytes) →
``Packages`` SHA256 → ``.deb`` SHA256 → ``data.tar`` members. Every break raises ``ChainError`` with
one of the stable ``ChainReason`` codes; malformed input raises ``FormatError`` and nothing else.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imaguard.errors import FormatError, TrustError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "AR_HEADER_SIZE",
    "AR_MAGIC",
    "ArMember",
    "ChainError",
    "ChainReason",
    "Compression",
    "IndexEntry",
    "IndexedVersion",
    "PackagesScanner",
    "Release",
    "StanzaCapture",
    "check_clearsigned",
    "check_deb",
    "check_deb_identity",
    "check_index",
    "choose_entry",
    "deb_member_role",
    "keyring_bytes",
    "parse_ar",
    "parse_ar_header",
    "parse_release",
    "parse_stanza",
    "trusted_signers",
]


class ChainReason(enum.StrEnum):
    """Why a deb file is not ``repo-verified`` (stable codes: reports and dashboards use them)."""

    UNTRUSTED_RELEASE = "untrusted-release"  # InRelease not signed by a key apt trusts for it
    INDEX_NOT_IN_RELEASE = "index-not-in-release"  # Packages hash absent from or different in InRelease
    DEB_HASH_MISMATCH = "deb-hash-mismatch"  # the .deb's SHA256 differs from its Packages stanza
    VERSION_NOT_IN_INDEX = "version-not-in-index"  # the index or the .deb holds another version
    NO_SIGNED_SOURCE = "no-signed-source"  # no configured repository lists the package (dpkg -i)
    DEB_UNAVAILABLE = "deb-unavailable"  # the .deb is neither in a cache nor fetchable
    DEB_MALFORMED = "deb-malformed"  # the verified .deb cannot be read as ar + tar
    INDEX_UNAVAILABLE = "index-unavailable"  # not found, but a configured index is missing or unreadable


class ChainError(TrustError):
    """One link of the chain did not hold; ``reason`` is a ``ChainReason`` code."""

    def __init__(self, code: ChainReason, message: str) -> None:
        super().__init__(message, reason=str(code))
        self.code = code

    @property
    def evidence_reason(self) -> str:
        """``code: message``, the form PackageFile.evidence_reason carries."""
        return f"{self.code}: {self}"


# --- OpenPGP keyrings and gpgv status ---------------------------------------------------------

_ARMOR = re.compile(rb"-----BEGIN PGP PUBLIC KEY BLOCK-----\r?\n(.*?)-----END PGP PUBLIC KEY BLOCK-----", re.DOTALL)


def _crc24_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
        table.append(crc & 0xFFFFFF)
    return tuple(table)


_CRC24_TABLE = _crc24_table()


def _crc24(data: bytes) -> int:
    # RFC 4880 §6.1, a byte at a time through a table: bit by bit, the 9 armored keyrings of a
    # Debian system took ~40 ms of every `enroll` start.
    crc, table = 0xB704CE, _CRC24_TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFF) ^ table[(crc >> 16) ^ byte]
    return crc


def keyring_bytes(data: bytes, *, name: str = "<keyring>") -> bytes:
    """Binary OpenPGP keyring from a file apt accepts (binary ``.gpg`` or armored ``.asc``).

    gpgv reads only binary keyrings, so armored ones (apt's ``.asc``, deb822 inline keys) are
    dearmored here, with their CRC-24 checked.
    """
    if data[:1] and data[0] & 0x80:
        return data  # an OpenPGP packet tag: already binary
    blocks = list(_ARMOR.finditer(data))
    if not blocks:
        raise FormatError(f"{name}: neither a binary keyring nor an armored public key block")
    out = bytearray()
    for m in blocks:
        header, sep, body = m.group(1).partition(b"\n\n")
        if not sep:
            header, sep, body = m.group(1).partition(b"\r\n\r\n")
        if not sep:
            body = header  # no armor headers and no blank line: tolerated as apt/gpg do
        lines = [ln.strip() for ln in body.splitlines() if ln.strip()]
        crc_line = lines.pop() if lines and lines[-1].startswith(b"=") else None
        try:
            raw = base64.b64decode(b"".join(lines), validate=True)
            crc = base64.b64decode(crc_line[1:], validate=True) if crc_line is not None else None
        except (binascii.Error, ValueError) as exc:
            raise FormatError(f"{name}: bad base64 in armored key", offset=m.start()) from exc
        if crc is not None and crc != _crc24(raw).to_bytes(3, "big"):
            raise FormatError(f"{name}: armor checksum mismatch", offset=m.start())
        out += raw
    return bytes(out)


# gpg's DETAILS: hash algorithm ids. MD5 (1), SHA1 (2) and RIPEMD160 (3) are refused as apt does.
_STRONG_DIGESTS = frozenset({8, 9, 10, 11})


def trusted_signers(status: bytes, allowed: frozenset[str] | None, *, name: str) -> tuple[str, ...]:
    """Fingerprints of good signatures in gpgv ``--status-fd`` output; ChainError when there is none.

    A signature counts only with GOODSIG and VALIDSIG, a strong digest, no expiry or revocation,
    and (when ``Signed-By`` names fingerprints) a fingerprint in ``allowed``: the signing key's or its
    primary key's, or, written ``FPR!`` as apt does, exactly the signing key's. Any BADSIG fails the
    whole file: a tampered signature is never outvoted by another one.
    """
    good: list[str] = []
    seen: list[str] = []
    state: dict[str, list[str]] = {}

    def close() -> None:
        valid = state.get("VALIDSIG")
        if valid is None or "GOODSIG" not in state:
            return
        if state.keys() & {"EXPKEYSIG", "REVKEYSIG", "EXPSIG"}:
            return
        # DETAILS: fingerprint … pubkey-algo hash-algo sig-class [primary-fpr]; shorter is malformed.
        if len(valid) < 8:
            return
        fpr = valid[0].upper()
        primary = valid[9].upper() if len(valid) > 9 else fpr
        try:
            algo = int(valid[7])
        except ValueError:
            return
        if algo not in _STRONG_DIGESTS:
            seen.append(f"{fpr} (weak digest algorithm {algo})")
        elif allowed is not None and fpr not in allowed and f"{fpr}!" not in allowed and primary not in allowed:
            seen.append(f"{fpr} (not a Signed-By key)")
        else:
            good.append(fpr)

    # gpgv ends status lines with \n only; splitlines() would also split on a stray \r.
    for raw in status.split(b"\n"):
        if not raw.startswith(b"[GNUPG:] "):
            continue
        words = raw[9:].decode("ascii", "replace").split()
        if not words:
            continue
        if words[0] == "NEWSIG":
            close()
            state = {}
        elif words[0] == "BADSIG":
            raise ChainError(ChainReason.UNTRUSTED_RELEASE, f"{name}: bad signature by key {words[1:2]}")
        else:
            state[words[0]] = words[1:]
    close()
    if not good:
        detail = f"signed only by {', '.join(seen)}" if seen else "no signature by a trusted key"
        raise ChainError(ChainReason.UNTRUSTED_RELEASE, f"{name}: {detail}")
    return tuple(good)


def check_clearsigned(raw: bytes, *, name: str) -> None:
    """One clearsigned message and nothing around it, as apt demands of InRelease (no smuggled text)."""
    lines = raw.strip().split(b"\n")
    heads = sum(ln.rstrip() == b"-----BEGIN PGP SIGNED MESSAGE-----" for ln in lines)
    sigs = sum(ln.rstrip() == b"-----BEGIN PGP SIGNATURE-----" for ln in lines)
    if lines[0].rstrip() != b"-----BEGIN PGP SIGNED MESSAGE-----" or heads != 1 or sigs != 1:
        raise FormatError(f"{name}: not exactly one clearsigned message")
    if lines[-1].rstrip() != b"-----END PGP SIGNATURE-----":
        raise FormatError(f"{name}: text after the signature")


# --- deb822 stanzas, Release and Packages -----------------------------------------------------


def parse_stanza(data: bytes, *, name: str = "<stanza>") -> dict[str, bytes]:
    """One deb822 paragraph: field → value (continuation lines joined by ``\\n``, first line stripped)."""
    fields: dict[str, bytes] = {}
    key: str | None = None
    offset = 0
    for line in data.split(b"\n"):
        if not line.strip():
            offset += len(line) + 1
            if fields:
                break
            continue
        if line[:1] in (b" ", b"\t"):
            if key is None:
                raise FormatError(f"{name}: continuation line before any field", offset=offset)
            fields[key] += b"\n" + line.strip()
        elif not line.startswith(b"#"):
            k, sep, v = line.partition(b":")
            if not sep or not k or any(c <= 0x20 or c >= 0x7F for c in k):
                raise FormatError(f"{name}: not a field line: {line[:60]!r}", offset=offset)
            key = k.decode("ascii")
            if key in fields:
                raise FormatError(f"{name}: duplicate field {key}", offset=offset)
            fields[key] = v.strip()
        offset += len(line) + 1
    return fields


def _text(value: bytes, field: str, name: str) -> str:
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        raise FormatError(f"{name}: non-ASCII {field}") from None
    if not text or any(c.isspace() for c in text):
        raise FormatError(f"{name}: bad {field} {text!r}")
    return text


@dataclass(frozen=True, slots=True)
class Release:
    """The signed payload of an InRelease: who publishes it and the SHA256 of every index."""

    origin: str
    suite: str
    codename: str
    sha256: Mapping[str, tuple[bytes, int]]  # index path (e.g. main/binary-amd64/Packages) → digest, size


def parse_release(payload: bytes, *, name: str = "InRelease") -> Release:
    """Parse the verified InRelease payload exactly as gpgv ``--output`` wrote it."""
    fields = parse_stanza(payload, name=name)
    block = fields.get("SHA256")
    if block is None:
        raise FormatError(f"{name}: no SHA256 field (MD5/SHA1-only releases are not trusted)")
    sha: dict[str, tuple[bytes, int]] = {}
    for line in block.split(b"\n"):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3 or len(parts[0]) != 64 or not parts[1].isdigit():
            raise FormatError(f"{name}: bad SHA256 line {line[:100]!r}")
        try:
            digest = bytes.fromhex(parts[0].decode("ascii"))
            path = parts[2].decode("ascii")
        except (ValueError, UnicodeDecodeError):
            raise FormatError(f"{name}: bad SHA256 line {line[:100]!r}") from None
        sha[path] = (digest, int(parts[1]))

    def opt(field: str) -> str:
        return fields.get(field, b"").decode("utf-8", "replace")

    return Release(opt("Origin"), opt("Suite"), opt("Codename"), sha)


def check_index(release: Release, candidates: Sequence[tuple[str, bytes, int]], *, name: str) -> None:
    """The Packages file is vouched for if one of ``(path, sha256, size)`` is listed identically.

    Candidates: the uncompressed content under the plain path, and the file as stored on disk
    under its compressed path (apt may keep indexes compressed).
    """
    listed = [p for p, _, _ in candidates if p in release.sha256]
    for path, digest, size in candidates:
        if release.sha256.get(path) == (digest, size):
            return
    if listed:
        raise ChainError(
            ChainReason.INDEX_NOT_IN_RELEASE,
            f"{name}: SHA256 {candidates[0][1].hex()} differs from the InRelease entry for {listed[0]}",
        )
    raise ChainError(ChainReason.INDEX_NOT_IN_RELEASE, f"{name}: {candidates[0][0]} is not listed in InRelease")


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One ``Packages`` stanza, reduced to what the chain needs."""

    name: str
    version: str
    architecture: str
    filename: str
    size: int
    sha256: bytes

    def __post_init__(self) -> None:
        if len(self.sha256) != 32 or self.size < 0:
            raise FormatError(f"{self.name} {self.version}: bad SHA256 or Size in Packages")


def _entry(fields: Mapping[str, bytes], name: str) -> IndexEntry:
    try:
        sha = bytes.fromhex(fields["SHA256"].decode("ascii"))
        size = int(fields["Size"])
        return IndexEntry(
            _text(fields["Package"], "Package", name),
            _text(fields["Version"], "Version", name),
            _text(fields["Architecture"], "Architecture", name),
            fields["Filename"].decode("utf-8", "replace"),
            size,
            sha,
        )
    except KeyError as exc:
        raise FormatError(f"{name}: stanza without {exc.args[0]}") from None
    except (ValueError, UnicodeDecodeError):
        raise FormatError(f"{name}: bad SHA256 or Size in stanza") from None


class PackagesScanner:
    """Incremental parser of a ``Packages`` file: feed decompressed chunks, keep wanted stanzas.

    Streaming keeps memory flat on Debian's 50 MB indexes; only stanzas of ``wanted`` package names
    (None: all) are parsed in full.
    """

    __slots__ = ("_buf", "_entries", "_name", "_offset", "_spans", "_wanted")

    def __init__(self, wanted: frozenset[str] | None, *, name: str = "Packages") -> None:
        self._wanted = None if wanted is None else frozenset(w.encode() for w in wanted)
        self._buf = b""
        self._entries: list[IndexEntry] = []
        self._spans: list[tuple[int, int]] = []
        self._name = name
        self._offset = 0

    @property
    def spans(self) -> list[tuple[int, int]]:
        """(offset, length) in the stream of each kept stanza, for ``StanzaCapture`` next time."""
        return self._spans

    def feed(self, chunk: bytes) -> None:
        data = self._buf + chunk
        cut = data.rfind(b"\n\n")
        if cut < 0:
            self._buf = data
            return
        self._scan(data[: cut + 1])
        self._offset += cut + 2
        self._buf = data[cut + 2 :]

    def finish(self) -> list[IndexEntry]:
        if self._buf.strip():
            self._scan(self._buf)
        self._buf = b""
        return self._entries

    def _scan(self, block: bytes) -> None:
        pos = self._offset
        for stanza in block.split(b"\n\n"):
            text = stanza.lstrip(b"\n")
            start = pos + len(stanza) - len(text)
            pos += len(stanza) + 2
            if not text.strip():
                continue
            if self._wanted is not None and text.startswith(b"Package: "):
                end = text.find(b"\n")
                if text[9 : end if end >= 0 else None].strip() not in self._wanted:
                    continue  # the fast path: skip without parsing
            fields = parse_stanza(text, name=f"{self._name} near byte {self._offset}")
            if self._wanted is not None and fields.get("Package") not in self._wanted:
                continue
            self._entries.append(_entry(fields, self._name))
            self._spans.append((start, len(text.rstrip(b"\n"))))


class StanzaCapture:
    """Re-read known stanzas of a ``Packages`` stream without scanning it: the cheap path of a cache.

    Fed the same decompressed chunks that are hashed against the InRelease, it copies out only
    the spans a previous scan recorded (plus two bytes each side). ``entries`` then parses them,
    each checked to be one whole stanza of the stream (``\n\n`` or the stream's edge on both
    sides, none inside): a recorded span can only select verified stanzas, never forge one
    from a part of another (a Description line such as `` Package: bash``). A wrong or stale
    span raises FormatError; a missing one can only leave a package without an entry, which
    lowers its evidence and never raises it.
    """

    __slots__ = ("_got", "_next", "_offset", "_spans")

    def __init__(self, spans: Iterable[tuple[int, int]]) -> None:
        self._spans = sorted({(start, length) for start, length in spans if start >= 0 and length > 0})
        self._got = [bytearray() for _ in self._spans]
        self._next = 0  # first span not yet complete
        self._offset = 0

    def feed(self, chunk: bytes) -> None:
        lo, hi = self._offset, self._offset + len(chunk)
        i = self._next
        while i < len(self._spans):
            start, length = self._spans[i]
            a, b = max(start - 2, 0), start + length + 2
            if a >= hi:
                break
            if b > lo:
                self._got[i] += chunk[max(a, lo) - lo : min(b, hi) - lo]
            if b <= hi and i == self._next:
                self._next += 1
            i += 1
        self._offset = hi

    def entries(self, wanted: frozenset[str], *, name: str = "Packages") -> list[IndexEntry]:
        """The wanted entries among the captured stanzas; FormatError if a span is not a whole stanza."""
        total = self._offset
        names = {w.encode() for w in wanted}
        out: list[IndexEntry] = []
        for (start, length), got in zip(self._spans, self._got, strict=True):
            a, end = max(start - 2, 0), start + length
            if end > total or len(got) != min(end + 2, total) - a:
                raise FormatError(f"{name}: recorded stanza at byte {start} lies past the end")
            before, text, after = bytes(got[: start - a]), bytes(got[start - a : end - a]), bytes(got[end - a :])
            if (
                before != b"\n" * len(before)
                or text[:1] == b"\n"
                or text[-1:] == b"\n"
                or b"\n\n" in text
                or after not in (b"", b"\n", b"\n\n")
                or (after == b"\n" and end + 1 != total)
            ):
                raise FormatError(f"{name}: recorded span at byte {start} is not a whole stanza")
            fields = parse_stanza(text, name=f"{name} near byte {start}")
            if fields.get("Package", b"").strip() in names:
                out.append(_entry(fields, name))
        return out


@dataclass(frozen=True, slots=True)
class IndexedVersion:
    """An index entry and the trust of the index it came from (``broken``: None when verified)."""

    entry: IndexEntry
    index: str
    broken: ChainError | None = None


def choose_entry(candidates: Iterable[IndexedVersion], name: str, version: str, arch: str) -> IndexedVersion:
    """The verified index entry of the installed (name, version, arch), or the precise break.

    Order of diagnosis: a verified entry wins; else the break of an unverified index that lists
    this exact version; else the versions verified indexes do list; else no signed source at all.
    """
    same = [c for c in candidates if c.entry.name == name and c.entry.architecture == arch]
    exact = [c for c in same if c.entry.version == version]
    for c in exact:
        if c.broken is None:
            return c
    for c in exact:
        if c.broken is not None:
            raise c.broken
    others = sorted({c.entry.version for c in same if c.broken is None})
    if others:
        raise ChainError(
            ChainReason.VERSION_NOT_IN_INDEX,
            f"{name}:{arch} {version} is installed; signed indexes list only {', '.join(others)}",
        )
    raise ChainError(ChainReason.NO_SIGNED_SOURCE, f"{name}:{arch} {version} is in no signed repository index")


def check_deb(entry: IndexEntry, sha256: bytes, size: int, *, name: str) -> None:
    """The .deb's own hash and size must be the ones the verified Packages stanza gives."""
    if sha256 != entry.sha256 or size != entry.size:
        raise ChainError(
            ChainReason.DEB_HASH_MISMATCH,
            f"{name}: SHA256 {sha256.hex()} ({size} bytes), Packages says {entry.sha256.hex()} ({entry.size} bytes)",
        )


def check_deb_identity(control: Mapping[str, bytes], name: str, version: str, arch: str, *, deb: str) -> None:
    """The .deb's control file must name the installed package, version and architecture."""
    got = tuple(control.get(f, b"").decode("utf-8", "replace") for f in ("Package", "Version", "Architecture"))
    if got != (name, version, arch):
        raise ChainError(
            ChainReason.VERSION_NOT_IN_INDEX,
            f"{deb} is {got[0]} {got[1]}/{got[2]}; installed is {name} {version}/{arch}",
        )


# --- ar archive (the .deb container) ----------------------------------------------------------

AR_MAGIC = b"!<arch>\n"
AR_HEADER_SIZE = 60


@dataclass(frozen=True, slots=True)
class ArMember:
    """One ar member: ``data_offset`` is where its ``size`` bytes start; members are 2-byte aligned."""

    name: str
    header_offset: int
    size: int

    @property
    def data_offset(self) -> int:
        return self.header_offset + AR_HEADER_SIZE

    @property
    def next_offset(self) -> int:
        return self.data_offset + self.size + (self.size & 1)


def parse_ar_header(header: bytes, offset: int) -> ArMember:
    """Parse the 60-byte ar member header found at ``offset`` of the archive (deb(5), ar(5))."""
    if len(header) != AR_HEADER_SIZE:
        raise FormatError("truncated ar member header", offset=offset)
    if header[58:60] != b"`\n":
        raise FormatError("bad ar member header magic", offset=offset + 58)
    raw_name = header[0:16].rstrip(b" ")
    if raw_name.endswith(b"/"):
        raw_name = raw_name[:-1]  # GNU ar terminates names with '/'
    size_field = header[48:58].strip(b" ")
    if not raw_name or not size_field.isdigit():
        raise FormatError("bad ar member name or size", offset=offset)
    try:
        name = raw_name.decode("ascii")
    except UnicodeDecodeError:
        raise FormatError("non-ASCII ar member name", offset=offset) from None
    return ArMember(name, offset, int(size_field))


def parse_ar(data: bytes) -> tuple[ArMember, ...]:
    """Every member header of a whole ar archive held in memory (tests and small archives)."""
    if not data.startswith(AR_MAGIC):
        raise FormatError("not an ar archive", offset=0)
    members = []
    offset = len(AR_MAGIC)
    while offset < len(data):
        m = parse_ar_header(data[offset : offset + AR_HEADER_SIZE], offset)
        if m.data_offset + m.size > len(data):
            raise FormatError(f"ar member {m.name} runs past the end", offset=offset)
        members.append(m)
        offset = m.next_offset
    return tuple(members)


class Compression(enum.StrEnum):
    """Compressions dpkg-deb accepts for control.tar and data.tar (deb(5))."""

    NONE = ""
    GZIP = ".gz"
    XZ = ".xz"
    ZSTD = ".zst"
    BZIP2 = ".bz2"
    LZMA = ".lzma"


def deb_member_role(member: ArMember, index: int) -> tuple[str, Compression] | None:
    """``("debian-binary"|"control"|"data", compression)`` for the members dpkg reads, in deb(5) order.

    Returns None for members dpkg ignores (names starting with ``_``); FormatError otherwise.
    """
    if index == 0:
        if member.name != "debian-binary":
            raise FormatError("first member of a .deb must be debian-binary", offset=member.header_offset)
        return ("debian-binary", Compression.NONE)
    if member.name.startswith("_"):
        return None
    for role in ("control", "data"):
        prefix = f"{role}.tar"
        if member.name.startswith(prefix):
            try:
                return (role, Compression(member.name[len(prefix) :]))
            except ValueError:
                break
    raise FormatError(f"unexpected .deb member {member.name!r}", offset=member.header_offset)
