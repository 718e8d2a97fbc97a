"""Template descriptors and field codecs (kernel ima_template.c / ima_template_lib.c, Linux 6.1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imaguard.digests import HashAlgo
from imaguard.errors import FormatError
from imaguard.ima.templates import (
    FileDigest,
    check_digest_field,
    field_from_ascii,
    field_to_ascii,
    parse_digest_field,
    template_for,
)


def test_builtin_custom_and_unknown_templates():
    assert template_for("ima-sig").fields == ("d-ng", "n-ng", "sig")
    assert template_for("ima").is_ima
    assert not template_for("ima-ng").is_ima
    custom = template_for("d-ng|n-ng|sig|iuid|igid|imode")
    assert (custom.fields, custom.known) == (("d-ng", "n-ng", "sig", "iuid", "igid", "imode"), True)
    assert template_for("d-ng|n-ng|future").known is False
    assert (template_for("future-template").fields, template_for("future-template").known) == ((), False)
    with pytest.raises(FormatError, match=r"template format 'd-ng\|\|sig' has an empty or overlong field id"):
        template_for("d-ng||sig")


def test_digest_fields():
    assert parse_digest_field("d-ng", b"sha256:\x00" + b"\x01" * 32) == FileDigest("sha256", b"\x01" * 32)
    assert parse_digest_field("d-ng", b"sha1:\x00" + b"\x02" * 20).algo is HashAlgo.SHA1
    # Kernels before the algo prefix: bare sha1 (20) or md5 (16) bytes.
    legacy = parse_digest_field("d-ng", b"\x03" * 20)
    assert (legacy.algo_name, legacy.legacy, str(legacy)) == ("sha1", True, "03" * 20)
    v2 = parse_digest_field("d-ngv2", b"verity:sha256:\x00" + b"\x04" * 32)
    assert (v2.kind, str(v2)) == ("verity", "verity:sha256:" + "04" * 32)
    # An algorithm imaguard does not know is carried, not refused.
    odd = parse_digest_field("d-ng", b"sha3-256:\x00" + b"\x05" * 32)
    assert (odd.algo_name, odd.algo) == ("sha3-256", None)
    assert parse_digest_field("d-modsig", b"") is None
    assert parse_digest_field("d", b"\x06" * 20) == FileDigest("sha1", b"\x06" * 20, legacy=True)


@pytest.mark.parametrize(
    ("field_id", "data", "message"),
    [
        ("d-ng", b"", "`d-ng` field is empty"),
        ("d-ng", b"sha256:\x00" + b"\x01" * 31, "`d-ng` sha256 digest is 31 bytes, not 32"),
        ("d-ng", b"\x01" * 19, "`d-ng` field has no 'algo:' prefix"),
        ("d-ngv2", b"sha256:\x00" + b"\x01" * 32, "`d-ngv2` digest type 'sha256' is not ima or verity"),
        ("d-ngv2", b"fs:sha256:\x00" + b"\x01" * 32, "`d-ngv2` digest type 'fs' is not ima or verity"),
        ("d-ng", b"sh\xffa:\x00" + b"\x01" * 4, "`d-ng` algorithm name is not ASCII"),
        ("d", b"\x01" * 16, "`d` field is 16 bytes, not 20"),
    ],
)
def test_malformed_digest_fields(field_id, data, message):
    with pytest.raises(FormatError) as exc:
        parse_digest_field(field_id, data)
    assert str(exc.value) == message
    with pytest.raises(FormatError):
        check_digest_field(field_id, data) if field_id != "d" else parse_digest_field(field_id, data)


@given(st.sampled_from(["d-ng", "d-ngv2", "d-modsig"]), st.binary(max_size=80))
def test_the_fast_digest_check_agrees_with_the_full_parse(field_id, data):
    try:
        parse_digest_field(field_id, data)
        full = True
    except FormatError:
        full = False
    try:
        check_digest_field(field_id, data)
        fast = True
    except FormatError:
        fast = False
    assert fast == full


@given(st.sampled_from(["d-ng", "d-ngv2"]), st.sampled_from(list(HashAlgo)), st.sampled_from(["", "ima:", "verity:"]))
def test_well_formed_digests_pass_both_checks(field_id, algo, kind):
    kind = kind or ("ima:" if field_id == "d-ngv2" else "")
    if field_id == "d-ng":
        kind = ""
    data = f"{kind}{algo.kernel_name}:".encode() + b"\x00" + b"\x07" * algo.digest_size
    check_digest_field(field_id, data)
    assert parse_digest_field(field_id, data).digest == b"\x07" * algo.digest_size


@pytest.mark.parametrize(
    ("field_id", "data", "shown"),
    [
        ("d-ng", b"sha256:\x00" + bytes(range(32)), b"sha256:" + bytes(range(32)).hex().encode()),
        ("d-ng", b"sha256:\x00" + b":" * 32, b"sha256:" + b"3a" * 32),  # ':' bytes in the digest
        ("n-ng", b"/usr/bin/x\x00", b"/usr/bin/x"),
        ("sig", b"\x03\x02\x04", b"030204"),
        ("iuid", (1000).to_bytes(4, "little"), b"1000"),
        ("imode", (0o100755).to_bytes(2, "little"), b"33261"),
        ("buf", b"", b""),
    ],
)
def test_ascii_show_and_back(field_id, data, shown):
    assert field_to_ascii(field_id, data) == shown
    assert field_from_ascii(field_id, shown) == data


def test_ascii_values_the_kernel_would_not_print():
    with pytest.raises(FormatError, match=r"^`sig` value b'03zz' is not what the kernel prints$"):
        field_from_ascii("sig", b"03zz")
    with pytest.raises(FormatError, match=r"^`iuid` value b'-1' is not what the kernel prints$"):
        field_from_ascii("iuid", b"-1")
    with pytest.raises(FormatError, match=r"^`imode` value b'70000' is not what the kernel prints$"):
        field_from_ascii("imode", b"70000")
