"""IMA template descriptors and field codecs (pure: bytes in, typed values out).

Follows the kernel's ``security/integrity/ima/ima_template.c`` (``builtin_templates[]``,
``supported_fields[]``) and ``ima_template_lib.c`` (field init and show functions), Linux 6.1.
A template is an ordered list of field ids; a custom ``ima_template_fmt`` template appears in
the log under its format string (``d-ng|n-ng|sig``), since its descriptor has no name.

Template data (what the template hash covers, except for ``ima``) is, per field, a length
(u32, host byte order, or little-endian with ``ima_canonical_fmt``) followed by the field bytes.
The legacy ``ima`` template is different: in the binary log ``d`` has no length and ``n`` has
no NUL; its template hash is ``sha1(d || n zero-padded to 256 bytes)``.
"""

from __future__ import annotations

import binascii
import dataclasses
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from imaguard.digests import HashAlgo
from imaguard.errors import FormatError

__all__ = [
    "BUILTIN_TEMPLATES",
    "DIGEST_PREFIX_SIZES",
    "IMA_NAME_LEN",
    "ByteOrder",
    "FileDigest",
    "Template",
    "ascii_decoder",
    "build_template_data",
    "check_digest_field",
    "field_from_ascii",
    "field_to_ascii",
    "ima_hashed_data",
    "parse_digest_field",
    "split_template_data",
    "template_for",
]

ByteOrder = Literal["little", "big"]

# ima_template.c builtin_templates[] (6.1); ima-ngv2/ima-sigv2 came with fs-verity (5.19).
BUILTIN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "ima": ("d", "n"),
    "ima-ng": ("d-ng", "n-ng"),
    "ima-ngv2": ("d-ngv2", "n-ng"),
    "ima-sig": ("d-ng", "n-ng", "sig"),
    "ima-sigv2": ("d-ngv2", "n-ng", "sig"),
    "ima-buf": ("d-ng", "n-ng", "buf"),
    "ima-modsig": ("d-ng", "n-ng", "sig", "d-modsig", "modsig"),
    "evm-sig": ("d-ng", "n-ng", "evmsig", "xattrnames", "xattrlengths", "xattrvalues", "iuid", "igid", "imode"),
}

# supported_fields[] (6.1): how each field is shown in the ASCII list.
_DIGEST_FIELDS = frozenset({"d-ng", "d-ngv2", "d-modsig"})
_STRING_FIELDS = frozenset({"n", "n-ng", "xattrnames"})
_HEX_FIELDS = frozenset({"d", "sig", "buf", "modsig", "evmsig", "xattrlengths", "xattrvalues"})
# ima_eventinode_{uid,gid,mode}_init: uid_t/gid_t are u32 on Linux, umode_t is u16.
_UINT_FIELDS: dict[str, int] = {"iuid": 4, "igid": 4, "imode": 2}
KNOWN_FIELDS = _DIGEST_FIELDS | _STRING_FIELDS | _HEX_FIELDS | frozenset(_UINT_FIELDS)

# IMA_EVENT_NAME_LEN_MAX + 1: the `ima` template hashes its name zero-padded to this size.
IMA_NAME_LEN = 256
# Field ids are short identifiers (IMA_TEMPLATE_FIELD_ID_MAX_LEN is 16).
_FIELD_ID_MAX = 16


@dataclass(frozen=True, slots=True)
class Template:
    """A template: its name as logged and its field ids (``?`` for fields of an unknown template)."""

    name: str
    fields: tuple[str, ...]
    known: bool = True
    # The legacy ``ima`` template: no data length in the binary log, special hash layout. Derived
    # from the name, kept as a field because the parser's hot loop reads it for every entry.
    is_ima: bool = dataclasses.field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_ima", self.name == "ima")

    def index(self, field_id: str) -> int | None:
        try:
            return self.fields.index(field_id)
        except ValueError:
            return None


def template_for(name: str) -> Template:
    """The template a log names: built-in, custom format (``d-ng|n-ng|…``), or unknown (raw fields)."""
    fields = BUILTIN_TEMPLATES.get(name)
    if fields is not None:
        return Template(name, fields)
    if "|" in name or name in KNOWN_FIELDS:
        ids = tuple(name.split("|"))
        if any(not f or len(f) > _FIELD_ID_MAX for f in ids):
            raise FormatError(f"template format {name!r} has an empty or overlong field id")
        return Template(name, ids, known=all(f in KNOWN_FIELDS for f in ids))
    # A template this code does not know: every non-`ima` template is a list of length-prefixed
    # fields, so the data still splits; the fields stay raw and the count is whatever the data holds.
    return Template(name, (), known=False)


@dataclass(frozen=True, slots=True)
class FileDigest:
    """A ``d``/``d-ng``/``d-ngv2``/``d-modsig`` value: algorithm name as logged, digest bytes.

    ``kind`` is the d-ngv2 digest type (``ima`` or ``verity``), empty otherwise. ``algo`` is None
    for algorithm names imaguard does not know (they are still carried verbatim).
    """

    algo_name: str
    digest: bytes
    kind: str = ""
    legacy: bool = False  # no "algo:" prefix (`d` field, or pre-4.x d-ng of sha1/md5)

    @property
    def algo(self) -> HashAlgo | None:
        return _ALGO_BY_NAME.get(self.algo_name)

    @property
    def is_zero(self) -> bool:
        """All zero: a violation record (the kernel zeroes the digest of ToMToU/open-writers)."""
        return not any(self.digest)

    def __str__(self) -> str:
        if self.legacy:
            return self.digest.hex()
        prefix = f"{self.kind}:" if self.kind else ""
        return f"{prefix}{self.algo_name}:{self.digest.hex()}"


_LEGACY_BY_LEN = {20: "sha1", 16: "md5"}
_ALGO_BY_NAME = {a.kernel_name: a for a in HashAlgo}
# b"sha256:\0" -> 32 (d-ng, d-modsig), b"ima:sha256:\0" -> 32 (d-ngv2): the well-formed prefixes of
# known algorithms, so checking a digest field in the parser's hot loop is one dict lookup.
DIGEST_PREFIX_SIZES = {f"{a.kernel_name}:".encode() + b"\x00": a.digest_size for a in HashAlgo}
_PREFIX_SIZES_V2 = {kind + p: n for p, n in DIGEST_PREFIX_SIZES.items() for kind in (b"ima:", b"verity:")}


def check_digest_field(field_id: str, data: bytes) -> None:
    """FormatError unless ``data`` is a well-formed digest field (fast path for known algorithms)."""
    sep = data.find(b":\x00")
    if sep > 0:
        size = (_PREFIX_SIZES_V2 if field_id == "d-ngv2" else DIGEST_PREFIX_SIZES).get(data[: sep + 2])
        if size is not None and len(data) == sep + 2 + size:
            return
    parse_digest_field(field_id, data)


def parse_digest_field(field_id: str, data: bytes) -> FileDigest | None:
    """Decode a digest field; None for an empty ``d-modsig`` (no appended signature)."""
    if field_id == "d":
        if len(data) != 20:
            raise FormatError(f"`d` field is {len(data)} bytes, not 20")
        return FileDigest("sha1", data, legacy=True)
    if not data:
        if field_id == "d-modsig":
            return None
        raise FormatError(f"`{field_id}` field is empty")
    sep = data.find(b":\x00")
    if sep < 0:
        # Kernels before 3.13's algo prefix wrote bare sha1/md5 digests in d-ng.
        legacy = _LEGACY_BY_LEN.get(len(data))
        if legacy is None or field_id == "d-ngv2":
            raise FormatError(f"`{field_id}` field has no 'algo:' prefix")
        return FileDigest(legacy, data, legacy=True)
    try:
        prefix = data[:sep].decode("ascii")
    except UnicodeDecodeError:
        raise FormatError(f"`{field_id}` algorithm name is not ASCII") from None
    kind = ""
    if field_id == "d-ngv2":
        kind, _, prefix = prefix.partition(":")
        if kind not in ("ima", "verity") or not prefix:
            raise FormatError(f"`d-ngv2` digest type {kind!r} is not ima or verity")
    if not prefix or not prefix.isprintable() or ":" in prefix:
        raise FormatError(f"`{field_id}` algorithm name {prefix!r} is malformed")
    fd = FileDigest(prefix, data[sep + 2 :], kind)
    algo = fd.algo
    if algo is not None and len(fd.digest) != algo.digest_size:
        raise FormatError(f"`{field_id}` {prefix} digest is {len(fd.digest)} bytes, not {algo.digest_size}")
    return fd


_U32 = {"little": struct.Struct("<I"), "big": struct.Struct(">I")}


def _len_struct(byteorder: ByteOrder) -> struct.Struct:
    return _U32[byteorder]


def split_template_data(
    template: Template, data: bytes, byteorder: ByteOrder = "little"
) -> tuple[bytes, ...]:
    """Split template data (as in the binary log) into its fields' bytes.

    FormatError (offset relative to ``data``) when lengths overrun or bytes are left over.
    """
    if template.is_ima:
        if len(data) < 24:
            raise FormatError("`ima` template data shorter than its digest and name length", offset=len(data))
        (nlen,) = _len_struct(byteorder).unpack_from(data, 20)
        if nlen != len(data) - 24 or nlen >= IMA_NAME_LEN:
            raise FormatError(f"`ima` name length {nlen} does not fit the record", offset=20)
        return (data[:20], data[24:])
    unpack = _len_struct(byteorder).unpack_from
    out: list[bytes] = []
    pos, end = 0, len(data)
    while pos < end:
        if pos + 4 > end:
            raise FormatError("field length cut off inside template data", offset=pos)
        (flen,) = unpack(data, pos)
        pos += 4
        if flen > end - pos:
            raise FormatError(f"field length {flen} exceeds the template data", offset=pos - 4)
        out.append(data[pos : pos + flen])
        pos += flen
    if template.fields and len(out) != len(template.fields):
        raise FormatError(f"template {template.name} has {len(template.fields)} fields, data holds {len(out)}")
    return tuple(out)


def build_template_data(template: Template, fields: tuple[bytes, ...], byteorder: ByteOrder = "little") -> bytes:
    """Serialize fields back into template data, the exact inverse of ``split_template_data``."""
    pack = _len_struct(byteorder).pack
    if template.is_ima:
        d, n = fields
        return d + pack(len(n)) + n
    return b"".join([pack(len(f)) + f for f in fields])


def ima_hashed_data(fields: tuple[bytes, ...]) -> bytes:
    """What the `ima` template hash covers: ``d`` then the name zero-padded to 256 bytes."""
    d, n = fields
    return d + n.ljust(IMA_NAME_LEN, b"\x00")


def field_to_ascii(field_id: str, data: bytes, byteorder: ByteOrder = "little") -> bytes:
    """The field as ``ascii_runtime_measurements`` shows it (empty bytes for an empty field)."""
    if not data:
        return b""
    if field_id in _DIGEST_FIELDS:
        # The kernel prints the prefix up to its NUL, then the digest after ':' '\0' in hex.
        sep = data.find(b":\x00")
        if sep < 0:
            return data.hex().encode()
        return data[: sep + 1] + data[sep + 2 :].hex().encode()
    if field_id in _STRING_FIELDS:
        nul = data.find(b"\x00")
        return data if nul < 0 else data[:nul]
    if field_id in _UINT_FIELDS and len(data) in (1, 2, 4, 8):
        return str(int.from_bytes(data, byteorder)).encode()
    return data.hex().encode()


def _hex(token: bytes) -> bytes:
    return binascii.a2b_hex(token)


def _digest(token: bytes) -> bytes:
    sep = token.rfind(b":")
    if sep < 0:
        return binascii.a2b_hex(token)
    return token[: sep + 1] + b"\x00" + binascii.a2b_hex(token[sep + 1 :])


def _string_nul(token: bytes) -> bytes:
    return token + b"\x00"


def _string(token: bytes) -> bytes:
    return token


def ascii_decoder(field_id: str, byteorder: ByteOrder = "little", *, ima: bool = False) -> Callable[[bytes], bytes]:
    """The inverse of ``field_to_ascii`` for one field id, for a non-empty token.

    Raises ValueError or OverflowError on a token the kernel would not print (callers turn it
    into a FormatError with the line's offset). ``ima`` marks the legacy template, whose ``n``
    carries no NUL in the binary form.
    """
    if field_id in _DIGEST_FIELDS:
        return _digest
    if field_id in _STRING_FIELDS:
        return _string if ima else _string_nul
    size = _UINT_FIELDS.get(field_id)
    if size is not None:
        def uint(token: bytes) -> bytes:
            if not token.isdigit():
                raise ValueError(token)
            return int(token).to_bytes(size, byteorder)

        return uint
    return _hex


def field_from_ascii(field_id: str, token: bytes, byteorder: ByteOrder = "little", *, ima: bool = False) -> bytes:
    """Inverse of ``field_to_ascii`` for the fields the kernel shows unambiguously."""
    if not token:
        return b""
    try:
        return ascii_decoder(field_id, byteorder, ima=ima)(token)
    except (ValueError, OverflowError):
        raise FormatError(f"`{field_id}` value {token[:40]!r} is not what the kernel prints") from None
