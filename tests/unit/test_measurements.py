"""The measurement-list parser on the lab kernel's real lists and on builder-made templates."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imaguard.errors import FormatError
from imaguard.ima.measurements import Entry, Truncated, detect_byteorder, iter_ascii, iter_binary
from imaguard.ima.templates import build_template_data, template_for
from imaguard.ima.xattr import ImaSignature
from logbuilder import LogBuilder, d_ng, n_ng, sig_v2

LAB = Path(__file__).resolve().parents[1] / "data" / "lab"
BINARY = (LAB / "binary_runtime_measurements").read_bytes()
ASCII = (LAB / "ascii_runtime_measurements").read_bytes()


def test_real_ima_sig_list_parses_to_the_entries_the_lab_made():
    entries = list(iter_binary(BINARY))
    assert [(e.pcr, e.template_name, e.path) for e in entries] == [
        (10, "ima-sig", b"boot_aggregate"),
        (10, "ima-buf", b"_ima"),
        (10, "ima-sig", b"/usr/bin/tpm2"),
        (10, "ima-sig", b"/opt/imaguard-lab/signed-echo"),
        (10, "ima-sig", b"/opt/imaguard-lab/unsigned-echo"),
        (10, "ima-sig", b"/opt/imaguard-lab/tampered-echo"),
    ]
    assert [e.offset for e in entries][:2] == [0, 106]
    assert str(entries[0].digest) == "sha256:2a981b1c2e0c5362c5d7b739f2e21ecd2f9cea90a397af34e6d46dd2f650fef4"
    # The ima-buf entry of KEY_CHECK carries the DER of the certificate loaded into _ima.
    assert entries[1].buf == (LAB / "ima-rsa.cert.der").read_bytes()
    assert entries[1].digest is not None
    assert entries[1].digest.digest == hashlib.sha256(entries[1].buf).digest()
    # The signed copy's sig field is exactly the security.ima value imaguard wrote.
    signed = json.loads((LAB / "capture.json").read_text())["signed_file_xattr"]
    assert entries[3].sig is not None
    assert entries[3].sig.hex() == signed
    sig = entries[3].signature()
    assert isinstance(sig, ImaSignature)
    assert sig.keyid_hex == "baafaed8"
    assert entries[2].sig is None
    assert entries[2].signature() is None


def test_ascii_and_binary_lists_give_the_same_entries():
    assert list(iter_ascii(ASCII)) == list(iter_binary(BINARY))


def test_real_list_serializes_back_to_the_same_bytes():
    entries = list(iter_binary(BINARY))
    assert b"".join(e.to_binary() for e in entries) == BINARY
    assert b"".join(e.to_ascii() for e in entries) == ASCII
    for e in entries:
        assert build_template_data(e.template, e.fields) == e.template_data


@pytest.mark.parametrize("chunk", [1, 7, 64, 4096])
def test_streaming_from_a_reader_in_small_chunks_gives_the_same_entries(chunk):
    assert list(iter_binary(io.BytesIO(BINARY), chunk_size=chunk)) == list(iter_binary(BINARY))
    assert list(iter_ascii(io.BytesIO(ASCII), chunk_size=chunk)) == list(iter_ascii(ASCII))


def test_a_list_cut_inside_a_record_ends_at_the_last_whole_record():
    stream = iter_binary(BINARY[:1900])
    assert len(list(stream)) == 5
    assert (stream.end, stream.truncated) == (1704, Truncated(offset=1704, have=196))
    whole = iter_binary(BINARY)
    assert len(list(whole)) == 6
    assert (whole.end, whole.truncated) == (len(BINARY), None)
    cut = ASCII[: ASCII.index(b"\n") + 10]
    ascii_stream = iter_ascii(cut)
    assert len(list(ascii_stream)) == 1
    assert ascii_stream.truncated == Truncated(offset=cut.index(b"\n") + 1, have=9)


def test_a_changed_byte_in_the_middle_is_a_format_error_with_its_offset():
    bad = bytearray(BINARY)
    bad[1704 + 60] ^= 0x01  # inside entry 5's d-ng digest
    with pytest.raises(FormatError) as exc:
        list(iter_binary(bytes(bad)))
    assert str(exc.value) == "template digest of entry 5 does not match its data (at byte offset 1708)"
    assert exc.value.offset == 1708


def test_a_changed_ascii_field_is_a_format_error():
    lines = ASCII.splitlines(keepends=True)
    lines[2] = lines[2].replace(b"/usr/bin/tpm2", b"/usr/bin/tpm3")
    with pytest.raises(FormatError, match=r"^template hash of entry 2 does not match its fields \(at byte offset 2046\)$"):
        list(iter_ascii(b"".join(lines)))


def test_framing_errors_name_the_field_and_offset():
    head = BINARY[:4]
    with pytest.raises(FormatError, match=r"PCR index 4096 is out of range \(byte order\?\) \(at byte offset 0\)"):
        list(iter_binary(struct.pack("<I", 4096) + BINARY[4:]))
    with pytest.raises(FormatError, match=r"template name length 0 is out of range \(at byte offset 24\)"):
        list(iter_binary(head + BINARY[4:24] + struct.pack("<I", 0) + BINARY[28:]))
    with pytest.raises(FormatError, match=r"template data length 67 exceeds the limit 66 \(at byte offset 35\)"):
        list(iter_binary(BINARY, max_template_data=66))
    with pytest.raises(FormatError, match=r"^template name 'i\\x01a-sig' is not printable \(at byte offset 28\)$"):
        list(iter_binary(BINARY[:29] + b"\x01" + BINARY[30:]))


def test_byte_order_is_detected_from_the_first_pcr():
    assert detect_byteorder(BINARY[:4]) == "little"
    big = LogBuilder("big")
    big.file("/usr/bin/true", b"x")
    assert detect_byteorder(big.binary()[:4]) == "big"
    assert list(iter_binary(big.binary(), byteorder="big")) == big.entries
    with pytest.raises(FormatError, match="not a PCR in either byte order"):
        detect_byteorder(b"\x01\x02\x03\x04")


def _every_template() -> LogBuilder:
    b = LogBuilder()
    b.boot_aggregate(template="ima-ng")
    b.ima("/sbin/init", b"init")
    b.file("/usr/bin/ls", b"ls", template="ima-ng")
    b.file("/usr/bin/cat", b"cat", template="ima-sig", sig=sig_v2(b"\x01\x02\x03\x04", b"\x55" * 256))
    b.file("/usr/lib/modules/x.ko", b"ko", template="ima-modsig")
    b.add("ima-modsig", (d_ng(b"\x11" * 32), n_ng("/usr/lib/modules/y.ko"), b"", d_ng(b"\x22" * 32), b"\x30\x82pkcs7"))
    b.buf("_ima", b"\x30\x82\x01\x00cert")
    b.violation("/etc/busy.conf")
    b.add("evm-sig", (d_ng(b"\x33" * 32), n_ng("/usr/bin/su"), b"\x05\x02evm", b"security.ima|security.selinux\x00",
                      struct.pack("<II", 3, 4), b"abcwxyz", struct.pack("<I", 0), struct.pack("<I", 0),
                      struct.pack("<H", 0o104755)))
    b.add("ima-ngv2", (d_ng(b"\x44" * 32, kind="verity"), n_ng("/usr/bin/verity")))
    b.add("ima-sigv2", (d_ng(b"\x45" * 32, kind="ima"), n_ng("/usr/bin/v2"), b""))
    b.add("d-ng|n-ng|sig|iuid|igid|imode", (d_ng(b"\x66" * 32), n_ng("/usr/bin/custom"), b"",
                                           struct.pack("<I", 1000), struct.pack("<I", 100), struct.pack("<H", 0o644)))
    b.add("d-ng|n-ng", (d_ng(b"\x77" * 20, "sha1"), n_ng("/custom/sha1")), pcr=11)
    b.file("/opt/a name with spaces", b"spaces", template="ima-sig")
    return b


def test_every_template_round_trips_through_binary_and_ascii():
    b = _every_template()
    binary, ascii_log = b.binary(), b.ascii()
    parsed = list(iter_binary(binary))
    assert parsed == b.entries
    assert b"".join(e.to_binary() for e in parsed) == binary
    assert list(iter_ascii(ascii_log)) == b.entries
    assert b"".join(e.to_ascii() for e in iter_ascii(ascii_log)) == ascii_log
    assert [e.template_name for e in parsed] == [
        "ima-ng", "ima", "ima-ng", "ima-sig", "ima-modsig", "ima-modsig", "ima-buf", "ima-sig", "evm-sig",
        "ima-ngv2", "ima-sigv2", "d-ng|n-ng|sig|iuid|igid|imode", "d-ng|n-ng", "ima-sig",
    ]
    by_name = {e.path: e for e in parsed}
    assert by_name[b"/sbin/init"].fields[1] == b"/sbin/init"  # `ima`: name without NUL in the binary form
    assert str(by_name[b"/usr/bin/verity"].digest) == "verity:sha256:" + "44" * 32
    assert by_name[b"/usr/lib/modules/y.ko"].field("modsig") == b"\x30\x82pkcs7"
    assert by_name[b"/etc/busy.conf"].is_violation
    assert by_name[b"/opt/a name with spaces"].digest == parsed[-1].digest
    line = by_name[b"/usr/bin/custom"].to_ascii()
    assert line.endswith(b" /usr/bin/custom  1000 100 420\n")


def test_big_endian_lists_of_every_template_round_trip():
    little = _every_template()
    big = LogBuilder("big")
    for e in little.entries:
        big.add(e.template_name, _swap_uints(e), pcr=e.pcr, violation=e.is_violation)
    assert list(iter_binary(big.binary(), byteorder="big")) == big.entries
    assert list(iter_ascii(big.ascii(), byteorder="big")) == big.entries


def _swap_uints(e: Entry) -> tuple[bytes, ...]:
    """Fields whose content is a host-order integer change with the byte order."""
    out = []
    for fid, f in zip(e.template.fields, e.fields, strict=True):
        if fid in ("iuid", "igid", "imode") and f:
            out.append(f[::-1])
        elif fid == "xattrlengths":
            out.append(b"".join(f[i : i + 4][::-1] for i in range(0, len(f), 4)))
        else:
            out.append(f)
    return tuple(out)


def test_unknown_template_keeps_raw_fields_and_is_still_checked():
    t = template_for("future-tmpl")
    assert (t.fields, t.known) == ((), False)
    fields = (b"\x01\x02", b"", b"abc")
    data = b"".join(struct.pack("<I", len(f)) + f for f in fields)
    name = b"future-tmpl"
    rec = struct.pack("<I", 10) + hashlib.sha1(data).digest() + struct.pack("<I", len(name)) + name
    rec += struct.pack("<I", len(data)) + data
    (e,) = iter_binary(rec)
    assert (e.fields, e.path, e.digest) == (fields, b"", None)
    assert e.to_binary() == rec
    with pytest.raises(FormatError, match="does not match its data"):
        list(iter_binary(rec[:-1] + b"x"))
    with pytest.raises(FormatError, match="template 'future-tmpl' is unknown: its ASCII fields cannot be rebuilt"):
        list(iter_ascii(e.to_ascii()))


def test_field_errors_inside_template_data():
    ok = Entry.build("ima-ng", (d_ng(b"\x01" * 32), n_ng("/x")))
    with pytest.raises(FormatError, match=r"^`d-ng` sha256 digest is 31 bytes, not 32$"):
        Entry.build("ima-ng", (d_ng(b"\x01" * 31), n_ng("/x")))
    with pytest.raises(FormatError, match=r"^`n-ng` field is not NUL-terminated$"):
        Entry.build("ima-ng", (d_ng(b"\x01" * 32), b"/x"))
    with pytest.raises(FormatError, match=r"template ima-ng has 2 fields, data holds 3"):
        Entry.build("ima-ng", (d_ng(b"\x01" * 32), n_ng("/x"), b""))
    rec = bytearray(ok.to_binary())
    struct.pack_into("<I", rec, 4 + 20 + 4 + 6 + 4, 1000)  # the d-ng length overruns the data
    with pytest.raises(FormatError, match=r"^ima-ng template data: field length 1000 exceeds the template data "
                                          r"\(at byte offset 38\)$"):
        list(iter_binary(bytes(rec)))


@pytest.mark.parametrize("capture", sorted(p.parent for p in LAB.rglob("pcr10.json")), ids=lambda p: p.name)
def test_every_real_capture_serializes_back_to_its_bytes(capture):
    binary = (capture / "binary_runtime_measurements").read_bytes()
    ascii_log = (capture / "ascii_runtime_measurements").read_bytes()
    entries = list(iter_binary(binary))
    assert b"".join(e.to_binary() for e in entries) == binary
    assert b"".join(e.to_ascii() for e in entries) == ascii_log
    for e in entries:
        assert build_template_data(e.template, e.fields) == e.template_data
        assert e.template.known
