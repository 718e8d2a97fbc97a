"""security.ima codec: known layouts, round trips, and malformed input naming the byte offset."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imaguard.digests import HashAlgo
from imaguard.errors import FormatError
from imaguard.ima.xattr import (
    MODSIG_MAGIC,
    ImaDigest,
    ImaSignature,
    OtherForm,
    XattrType,
    find_modsig,
    parse_xattr,
)

SHA256_OF_EMPTY = bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")


def test_digest_ng_layout_is_type_algo_digest():
    value = ImaDigest(HashAlgo.SHA256, SHA256_OF_EMPTY)
    assert value.to_xattr() == b"\x04\x04" + SHA256_OF_EMPTY  # what `evmctl ima_hash` writes
    assert parse_xattr(value.to_xattr()) == value


def test_legacy_digest_is_sha1_without_algo_byte():
    raw = b"\x01" + bytes(range(20))
    parsed = parse_xattr(raw)
    assert parsed == ImaDigest(HashAlgo.SHA1, bytes(range(20)), legacy=True)
    assert parsed.form == "digest"
    assert parsed.to_xattr() == raw


def test_sig_v2_header_is_big_endian():
    sig = ImaSignature(HashAlgo.SHA512, bytes.fromhex("93514cfa"), b"\xaa" * 256)
    raw = sig.to_xattr()
    assert raw[:9] == bytes.fromhex("0302" "06" "93514cfa" "0100")
    assert len(raw) == 9 + 256
    assert parse_xattr(raw) == sig
    assert sig.form == "sigv2"


def test_sig_v3_and_verity_are_recognised_not_verified():
    v3 = parse_xattr(bytes.fromhex("030304" "01020304" "0002") + b"\x01\x02")
    assert isinstance(v3, ImaSignature)
    assert v3.form == "sigv3"
    verity = parse_xattr(bytes.fromhex("060304" "01020304" "0001") + b"\x01")
    assert isinstance(verity, ImaSignature)
    assert verity.form == "fs-verity"
    assert verity.xattr_type is XattrType.VERITY_DIGSIG


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (bytes.fromhex("0301") + b"\x00" * 20, "sigv1"),
        (b"\x02" + b"\x00" * 20, "evm-hmac"),
        (bytes.fromhex("050204" "01020304" "0001") + b"\x01", "evm-portable"),
    ],
)
def test_other_forms_are_named_and_round_trip(raw, kind):
    parsed = parse_xattr(raw)
    assert isinstance(parsed, OtherForm)
    assert parsed.form == kind
    assert parsed.to_xattr() == raw


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "empty security.ima value (at byte offset 0)"),
        (b"\x07abc", "unknown security.ima type 0x07 (at byte offset 0)"),
        (b"\x04", "digest-ng value ends before its algorithm byte (at byte offset 1)"),
        (b"\x04\x63" + b"\x00" * 32, "unknown hash algorithm id 99 (at byte offset 1)"),
        (b"\x04\x04" + b"\x00" * 31, "sha256 digest must be 32 bytes, got 31 (at byte offset 2)"),
        (b"\x01" + b"\x00" * 19, "legacy digest of 19 bytes is neither sha1 nor md5 (at byte offset 1)"),
        (b"\x03", "signature ends before its version byte (at byte offset 1)"),
        (b"\x03\x09", "unknown signature header version 9 (at byte offset 1)"),
        (bytes.fromhex("030204010203"), "signature header needs 9 bytes, got 6 (at byte offset 6)"),
        (bytes.fromhex("030204" "01020304" "0003") + b"\x00\x00", "signature size field says 3 bytes but 2 follow (at byte offset 7)"),
        (bytes.fromhex("030204" "01020304" "0001") + b"\x00\x00", "signature size field says 1 bytes but 2 follow (at byte offset 7)"),
        (bytes.fromhex("030204" "01020304" "0000"), "signature size is zero (at byte offset 7)"),
        (bytes.fromhex("030263" "01020304" "0001") + b"\x00", "unknown hash algorithm id 99 (at byte offset 2)"),
        (bytes.fromhex("060204" "01020304" "0001") + b"\x00", "fs-verity signature (0x06) with a version other than 3 (at byte offset 1)"),
    ],
)
def test_malformed_values_name_the_offset(raw, message):
    with pytest.raises(FormatError) as err:
        parse_xattr(raw)
    assert str(err.value) == message


def test_constructors_refuse_invalid_objects():
    with pytest.raises(FormatError, match="key id must be 4 bytes"):
        ImaSignature(HashAlgo.SHA256, b"\x01\x02\x03", b"sig")
    with pytest.raises(FormatError, match="sha256 digest must be 32 bytes"):
        ImaDigest(HashAlgo.SHA256, b"\x00" * 20)
    with pytest.raises(FormatError, match="legacy 0x01 digests are sha1 or md5"):
        ImaDigest(HashAlgo.SHA256, b"\x00" * 32, legacy=True)


_algos = st.sampled_from(list(HashAlgo))


@st.composite
def _valid_values(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["ng", "legacy", "sig"]))
    algo = draw(_algos)
    if kind == "ng":
        return ImaDigest(algo, draw(st.binary(min_size=algo.digest_size, max_size=algo.digest_size))).to_xattr()
    if kind == "legacy":
        return b"\x01" + draw(st.binary(min_size=20, max_size=20))
    sig = draw(st.binary(min_size=1, max_size=600))
    return ImaSignature(algo, draw(st.binary(min_size=4, max_size=4)), sig).to_xattr()


@settings(max_examples=500)
@given(_valid_values())
def test_round_trip_is_byte_identical(raw):
    assert parse_xattr(raw).to_xattr() == raw


@settings(max_examples=2000)
@given(st.binary(max_size=700))
def test_fuzz_random_input_raises_only_format_error(raw):
    try:
        parsed = parse_xattr(raw)
    except FormatError:
        return
    assert parsed.to_xattr() == raw


@settings(max_examples=500)
@given(_valid_values(), st.data())
def test_fuzz_truncated_valid_values(raw, data):
    cut = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    try:
        parsed = parse_xattr(raw[:cut])
    except FormatError:
        return
    # A truncation can only parse if it is itself a complete value of another length (legacy md5).
    assert parsed.to_xattr() == raw[:cut]


def _module_trailer(pkcs7: bytes) -> bytes:
    return pkcs7 + struct.pack(">BBBBB3xI", 0, 0, 2, 0, 0, len(pkcs7)) + MODSIG_MAGIC


def test_modsig_trailer_is_found():
    pkcs7 = b"\x30\x82" + b"\x11" * 40
    data = b"ELF-body" + _module_trailer(pkcs7)
    found = find_modsig(data)
    assert found is not None
    assert data[found.pkcs7_offset : found.pkcs7_offset + found.pkcs7_len] == pkcs7
    assert find_modsig(b"no trailer here") is None


def test_modsig_trailer_longer_than_data_is_malformed():
    bad = struct.pack(">BBBBB3xI", 0, 0, 2, 0, 0, 1000) + MODSIG_MAGIC
    with pytest.raises(FormatError, match="appended signature length 1000 exceeds the data"):
        find_modsig(bad)


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_fuzz_modsig_raises_only_format_error(tail):
    with contextlib.suppress(FormatError):
        find_modsig(tail + MODSIG_MAGIC)
