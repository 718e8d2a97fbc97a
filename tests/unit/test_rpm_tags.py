"""The pure RPM header helpers: region parsing, tag values, digest algorithm ids, file signatures."""

from __future__ import annotations

import contextlib
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imaguard.digests import HashAlgo
from imaguard.errors import FormatError, UnsupportedError
from imaguard.ima.xattr import ImaSignature, XattrType
from imaguard.packages.model import FileKind
from imaguard.packages.rpmheader import (
    HeaderBlob,
    Tag,
    decode_file_signature,
    file_kind,
    hash_algo_from_rpm,
    parse_source_rpm,
    vendor_signature,
)

ROOT = Path(__file__).resolve().parents[2]
ENTRY = struct.Struct(">IIiI")
STRING, BIN, STRING_ARRAY, INT32, INT16, CHAR = 6, 7, 8, 4, 3, 1


def value(typ: int, v: object) -> tuple[int, int, bytes]:
    """(type, count, data) of a tag value."""
    if typ == STRING:
        return typ, 1, v + b"\0"  # type: ignore[operator]
    if typ == STRING_ARRAY:
        return typ, len(v), b"".join(s + b"\0" for s in v)  # type: ignore[arg-type, union-attr]
    if typ == INT32:
        return typ, len(v), struct.pack(f">{len(v)}I", *v)  # type: ignore[arg-type]
    if typ == INT16:
        return typ, len(v), struct.pack(f">{len(v)}H", *v)  # type: ignore[arg-type]
    if typ == CHAR:
        return typ, len(v), bytes(v)  # type: ignore[arg-type]
    return typ, len(v), v  # type: ignore[arg-type, return-value]


def build(region: dict[int, tuple[int, int, bytes]], dribble: dict[int, tuple[int, int, bytes]] | None = None,
          *, with_region: bool = True) -> bytes:
    """A header blob as rpm exports it: region entries first, their data, the trailer, then dribbles."""
    index, data = [], b""

    def put(tag: int, typ: int, count: int, raw: bytes) -> None:
        nonlocal data
        align = {INT32: 4, INT16: 2}.get(typ, 1)
        data += b"\0" * (-len(data) % align)
        index.append(ENTRY.pack(tag, typ, len(data), count))
        data += raw

    for tag, (typ, count, raw) in sorted(region.items()):
        put(tag, typ, count, raw)
    if with_region:
        ril = len(region) + 1
        trailer_at = len(data)
        data += ENTRY.pack(63, BIN, -16 * ril, 16)
        index.insert(0, ENTRY.pack(63, BIN, trailer_at, 16))
    for tag, (typ, count, raw) in sorted((dribble or {}).items()):
        put(tag, typ, count, raw)
    return struct.pack(">II", len(index), len(data)) + b"".join(index) + data


REGION = {
    Tag.NAME: value(STRING, b"hello"),
    Tag.FILEDIGESTS: value(STRING_ARRAY, [b"aa" * 32, b""]),
    Tag.FILEMODES: value(INT16, [0o100755, 0o40755]),
    Tag.BASENAMES: value(STRING_ARRAY, [b"caf\xe9 x", b"dir"]),
}


def test_region_values_as_raw_bytes():
    h = HeaderBlob.parse(build(REGION))
    assert h.string(Tag.NAME) == b"hello"
    assert h.strings(Tag.BASENAMES) == (b"caf\xe9 x", b"dir")
    assert h.strings(Tag.FILEDIGESTS) == (b"aa" * 32, b"")
    assert h.ints(Tag.FILEMODES) == (0o100755, 0o40755)
    assert h.ints(Tag.EPOCH) is None
    assert h.signed_tags == ()


def test_dribble_never_replaces_a_trusted_region_value():
    forged = {Tag.FILEDIGESTS: value(STRING_ARRAY, [b"ff" * 32, b""]), Tag.RSAHEADER: value(BIN, b"sig"),
              Tag.FILESTATES: value(CHAR, [0, 2])}
    h = HeaderBlob.parse(build(REGION, forged))
    assert h.strings(Tag.FILEDIGESTS) == (b"aa" * 32, b"")
    assert h.strings(Tag.FILEDIGESTS, trusted=False) == (b"ff" * 32, b"")  # rpm's API would answer this
    assert h.ints(Tag.FILESTATES) is None
    assert h.ints(Tag.FILESTATES, trusted=False) == (0, 2)
    assert h.signed_tags == (Tag.RSAHEADER,)


def test_header_without_region_has_nothing_trusted():
    h = HeaderBlob.parse(build(REGION, with_region=False))
    assert h.region == {}
    assert h.string(Tag.NAME) is None
    assert h.string(Tag.NAME, trusted=False) == b"hello"


def test_region_entry_pointing_past_the_region_is_refused():
    blob = bytearray(build(REGION, {Tag.VENDOR: value(STRING, b"evil")}))
    il = struct.unpack_from(">I", blob)[0]
    # Point NAME (index 1) at the dribble data: its bytes would not be covered by the signature.
    tag, typ, _off, count = ENTRY.unpack_from(blob, 8 + 16)
    assert tag == Tag.NAME
    dl = struct.unpack_from(">I", blob, 4)[0]
    ENTRY.pack_into(blob, 8 + 16, tag, typ, dl - 5, count)
    assert il == 6
    with pytest.raises(FormatError, match="outside"):
        HeaderBlob.parse(bytes(blob))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:-1], "blob has"),
        (lambda b: b"\0\0\0\0" + b[4:], "0 entries"),
        (lambda b: b[:8] + ENTRY.pack(63, BIN, 0, 15) + b[24:], "region tag"),
        (lambda b: b[:8] + ENTRY.pack(63, BIN, 1, 16) + b[24:], "region trailer"),
    ],
    ids=["short", "no-entries", "region-count", "trailer-moved"],
)
def test_malformed_blobs(mutate, message):
    with pytest.raises(FormatError, match=message):
        HeaderBlob.parse(mutate(build(REGION)))


def test_unaligned_integer_is_refused():
    blob = bytearray(build({Tag.FILEFLAGS: value(INT32, [1])}))
    tag, typ, off, count = ENTRY.unpack_from(blob, 24)
    ENTRY.pack_into(blob, 24, tag, typ, off + 1, count)
    with pytest.raises(FormatError, match="aligned"):
        HeaderBlob.parse(bytes(blob))


def test_duplicate_tag_and_unknown_type():
    dup = build({Tag.NAME: value(STRING, b"a")}, {Tag.NAME: value(STRING, b"b"), Tag.VENDOR: value(STRING, b"v")})
    HeaderBlob.parse(dup)  # one in the region, one dribble: allowed (rpm's own layout)
    blob = bytearray(build({Tag.NAME: value(STRING, b"a"), Tag.VENDOR: value(STRING, b"b")}))
    ENTRY.pack_into(blob, 40, Tag.NAME, STRING, ENTRY.unpack_from(blob, 40)[2], 1)
    with pytest.raises(FormatError, match="twice"):
        HeaderBlob.parse(bytes(blob))
    blob = bytearray(build({Tag.NAME: value(STRING, b"a")}))
    ENTRY.pack_into(blob, 24, Tag.NAME, 42, 0, 1)
    with pytest.raises(FormatError, match="unknown type 42"):
        HeaderBlob.parse(bytes(blob))


def test_unterminated_string_array_is_refused_when_read():
    h = HeaderBlob.parse(build({Tag.BASENAMES: (STRING_ARRAY, 3, b"a\0b\0")}))
    with pytest.raises(FormatError, match="do not end"):
        h.strings(Tag.BASENAMES)


def test_type_confusion_is_refused():
    h = HeaderBlob.parse(build(REGION))
    with pytest.raises(FormatError, match="not an integer"):
        h.ints(Tag.NAME)
    with pytest.raises(FormatError, match="not a string"):
        h.strings(Tag.FILEMODES)


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_fuzz_random_bytes_only_format_errors(data):
    try:
        h = HeaderBlob.parse(data)
    except FormatError:
        return
    _read_everything(h)


@settings(max_examples=300)
@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=255))
def test_fuzz_one_byte_changes_only_format_errors(pos, byte):
    blob = bytearray(build(REGION, {Tag.RSAHEADER: value(BIN, b"s" * 20)}))
    blob[pos % len(blob)] = byte
    try:
        h = HeaderBlob.parse(bytes(blob))
    except FormatError:
        return
    _read_everything(h)


def _read_everything(h: HeaderBlob) -> None:
    for tag in [*h.region, *h.dribble]:
        for trusted in (True, False):
            for read in (h.strings, h.ints):
                with contextlib.suppress(FormatError):
                    read(tag, trusted=trusted)


@pytest.mark.parametrize(
    ("pgp_id", "algo"),
    [(1, HashAlgo.MD5), (2, HashAlgo.SHA1), (3, HashAlgo.RIPE_MD_160), (8, HashAlgo.SHA256),
     (9, HashAlgo.SHA384), (10, HashAlgo.SHA512), (11, HashAlgo.SHA224)],
)
def test_rpm_digest_algo_ids(pgp_id, algo):
    assert hash_algo_from_rpm(pgp_id) is algo


@pytest.mark.parametrize("pgp_id", [0, 4, 5, 6, 7, 12, 4096])
def test_unknown_rpm_digest_algo_ids(pgp_id):
    assert hash_algo_from_rpm(pgp_id) is None


SIG = ImaSignature(HashAlgo.SHA256, b"\x01\x02\x03\x04", b"\x55" * 256).to_xattr()


def test_file_signature_hex():
    assert decode_file_signature(b"") is None
    assert decode_file_signature(SIG.hex().encode()) == SIG
    assert decode_file_signature(SIG.hex().upper().encode()) == SIG
    for bad in (b"0", b"zz", b"03 02"):
        with pytest.raises(FormatError):
            decode_file_signature(bad)


def test_vendor_signature_checks():
    sig = vendor_signature(SIG, HashAlgo.SHA256, len(SIG))
    assert (sig.algo, sig.keyid, sig.version) == (HashAlgo.SHA256, b"\x01\x02\x03\x04", 2)
    cases = [
        (SIG, HashAlgo.SHA512, None, "vendor-signature-algo-mismatch"),
        (SIG[:12], HashAlgo.SHA256, None, "vendor-signature-malformed"),
        (SIG, HashAlgo.SHA256, len(SIG) - 1, "vendor-signature-malformed"),
        (b"\x04\x04" + b"\0" * 32, HashAlgo.SHA256, None, "vendor-signature-unsupported"),
        (ImaSignature(HashAlgo.SHA256, b"abcd", b"x", 3).to_xattr(), HashAlgo.SHA256, None,
         "vendor-signature-unsupported"),
        (ImaSignature(HashAlgo.SHA256, b"abcd", b"x", 3, XattrType.VERITY_DIGSIG).to_xattr(), HashAlgo.SHA256,
         None, "vendor-signature-unsupported"),
    ]
    for raw, algo, max_len, reason in cases:
        with pytest.raises(FormatError) as info:
            vendor_signature(raw, algo, max_len)
        assert info.value.reason == reason, raw.hex()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (b"hello-2.10-1.fc38.src.rpm", ("hello", "2.10-1.fc38")),
        (b"python-foo-bar-1.0-0.rc1.el9.nosrc.rpm", ("python-foo-bar", "1.0-0.rc1.el9")),
        (b"hello-2.10.src.rpm", ("", "")),
        (b"hello-2.10-1.noarch.rpm", ("", "")),
        (b"", ("", "")),
    ],
)
def test_source_rpm_names(name, expected):
    assert parse_source_rpm(name) == expected


@pytest.mark.parametrize(
    ("mode", "kind"),
    [(0o100644, FileKind.REGULAR), (0o40755, FileKind.DIRECTORY), (0o120777, FileKind.SYMLINK),
     (0o20644, FileKind.OTHER), (0o10644, FileKind.OTHER), (0, FileKind.OTHER)],
)
def test_file_kind_from_mode(mode, kind):
    assert file_kind(mode) is kind


def test_missing_binding_names_the_debian_package(tmp_path):
    code = (
        "import sys, pathlib\n"
        "sys.modules['rpm'] = None\n"
        "from imaguard.errors import UnsupportedError\n"
        "from imaguard.packages.rpm import RpmSource\n"
        "try:\n"
        "    RpmSource(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[1]))\n"
        "except UnsupportedError as exc:\n"
        "    print(exc.reason, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout
    assert out.startswith("missing-binding ")
    assert "python3-rpm" in out
    assert UnsupportedError.exit_code == 77
