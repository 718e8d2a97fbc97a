"""The two-process replay (imaguard.ima.splitreplay) says exactly what the one-process replay says:
the same PCRs, counts, end and truncation, and the same FormatError, on real, built, truncated and
mutated lists; and neither of its halves alone is enough (each finds what the other does not)."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_log_fuzz import _MIXED, _REAL_BINARY, _mutations

from imaguard.errors import FormatError, HostStateError
from imaguard.ima.measurements import iter_binary
from imaguard.ima.replay import replay, replay_binary
from imaguard.ima.splitreplay import SPLIT_MIN_BYTES, _merged, _Pread, replay_file, splittable
from imaguard.ima.splitreplay import _outcome as _child_outcome
from logbuilder import generate, write_logs

_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BANKS = ("sha1", "sha256")


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("list")
    os.write(fd, data)
    return fd


def _outcome(fn) -> tuple:
    try:
        r = fn()
    except FormatError as exc:
        return ("error", str(exc), exc.offset, exc.reason)
    return ("ok", r.pcrs, r.count, r.violations, r.end, r.truncated, r.boot_aggregate, r.templates, r.matched)


def _split(data: bytes, byteorder: str = "little", expect=None) -> tuple:
    fd = _memfd(data)
    try:
        return _outcome(lambda: replay_file(fd, os.fstat(fd), byteorder=byteorder, bank="sha1", banks=BANKS,
                                            expect=expect))
    finally:
        os.close(fd)


def _agree(data: bytes, byteorder: str = "little") -> tuple:
    one = _outcome(lambda: replay_binary(data, byteorder=byteorder))
    assert _split(data, byteorder) == one
    return one


def test_real_and_built_lists_and_every_truncation_replay_the_same_on_two_cores():
    for data in [*_REAL_BINARY, _MIXED]:
        assert _agree(data)[0] == "ok"
        for cut in range(0, len(data), 11):
            _agree(data[:cut])


@_FUZZ
@given(_mutations([*_REAL_BINARY, _MIXED]))
def test_mutated_lists_give_the_same_result_or_the_same_error(data):
    _agree(data)
    _agree(data, "big")


def _list(n: int) -> bytes:
    out = io.BytesIO()
    write_logs(generate(n), out)
    return out.getvalue()


def _records(data: bytes) -> list[tuple[int, int, int]]:
    """(record start, template data start, template data end) of each record of a built list."""
    spans, pos = [], 0
    while pos < len(data):
        (nlen,) = struct.unpack_from("<I", data, pos + 24)
        start = pos + 28 + nlen + 4
        (dlen,) = struct.unpack_from("<I", data, start - 4)
        spans.append((pos, start, start + dlen))
        pos = start + dlen
    return spans


def _bad_layout(data: bytes, index: int) -> bytes:
    """Record ``index`` with its n-ng's NUL replaced and its template digest recomputed: only the
    field-layout check can find it."""
    buf = bytearray(data)
    rec, start, end = _records(data)[index]
    (dng,) = struct.unpack_from("<I", buf, start)
    (nng,) = struct.unpack_from("<I", buf, start + 4 + dng)
    buf[start + 4 + dng + 4 + nng - 1] = ord("x")
    buf[rec + 4 : rec + 24] = hashlib.sha1(bytes(buf[start:end])).digest()
    return bytes(buf)


def _bad_digest(data: bytes, index: int) -> bytes:
    """Record ``index`` with a wrong template digest: only the template-digest check can find it."""
    buf = bytearray(data)
    rec = _records(data)[index][0]
    buf[rec + 4] ^= 1
    return bytes(buf)


@pytest.mark.parametrize("index", [1, 2, 3, 40])
def test_each_half_finds_what_the_other_leaves_and_the_pair_reports_it(index):
    data = _list(60)
    # The digest half checks every template digest and the layout of odd records; the fields half
    # the layout of even ones.
    layout_half = "digest" if index % 2 else "fields"
    for broken, found_by in ((_bad_layout(data, index), layout_half), (_bad_digest(data, index), "digest")):
        one = _outcome(lambda b=broken: replay_binary(b))
        assert one[0] == "error"
        for checks in ("digest", "fields"):
            half = _outcome(lambda b=broken, c=checks: replay_binary(b, banks=("sha1",), checks=c))
            if checks == found_by:
                assert half[:3] == one[:3]
            else:
                assert half[0] == "ok"  # this half alone would have passed the broken list
        assert _split(broken) == one


def test_at_one_record_the_field_error_wins_as_in_the_one_process_replay():
    data = _list(30)
    both = _bad_digest(_bad_layout(data, 4), 4)  # record 4: bad layout and a wrong digest
    one = _outcome(lambda: replay_binary(both))
    assert "n-ng" in one[1]  # the layout error, not the digest one
    assert _split(both) == one
    earlier = _bad_digest(_bad_layout(data, 6), 5)  # digest wrong at 5, layout at 6: 5 first
    one = _outcome(lambda: replay_binary(earlier))
    assert "template digest of entry 5" in one[1]
    assert _split(earlier) == one


def test_expected_pcr_values_are_matched_per_bank_as_in_one_process():
    data = _list(50)
    prefix = replay(iter_binary(data[: _records(data)[20][0]]), keep_entries=False)
    expect = {bank: prefix.pcr(10, bank) for bank in BANKS}
    one = _outcome(lambda: replay_binary(data, expect=expect))
    assert one[-1] == {"sha1": 20, "sha256": 20}
    assert _split(data, expect=expect) == one


def test_only_regular_files_of_a_megabyte_or_more_are_split(tmp_path):
    big, small = tmp_path / "big.bin", tmp_path / "small.bin"
    big.write_bytes(b"\0" * SPLIT_MIN_BYTES)
    small.write_bytes(b"\0" * (SPLIT_MIN_BYTES - 1))
    with big.open("rb") as b, small.open("rb") as s, Path("/dev/null").open("rb") as null:
        assert splittable(b.fileno(), BANKS).st_size == SPLIT_MIN_BYTES
        assert splittable(b.fileno(), ("sha256",)) is None
        assert splittable(s.fileno(), BANKS) is None
        assert splittable(null.fileno(), BANKS) is None
    r, w = os.pipe()
    try:
        assert splittable(r, BANKS) is None
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("change", ["append", "rewrite"])
def test_a_file_written_to_while_it_is_read_gives_no_verdict(tmp_path, change):
    data = _list(40)
    path = tmp_path / "list.bin"
    path.write_bytes(data)
    with path.open("rb") as f:
        status = os.fstat(f.fileno())
        time.sleep(0.02)  # past the file system's timestamp granularity
        with path.open("r+b") as w:
            if change == "append":
                w.seek(0, os.SEEK_END)
                w.write(_list(41)[len(data) :])
            else:
                w.write(data[:100])  # the same bytes: only the times move
        with pytest.raises(HostStateError, match=r"the list changed while it was read") as e:
            replay_file(f.fileno(), status, byteorder="little", bank="sha1", banks=BANKS)
    assert e.value.reason == "list-changed"


def test_two_reads_that_differ_give_no_verdict():
    data = _list(40)
    grown = data + _list(41)[len(data) :]  # one more record: what a second read of a rewritten file saw
    mine = replay_binary(data, banks=("sha1",), checks="digest")
    theirs = _half(grown, "sha256", "fields")
    with pytest.raises(HostStateError, match=r"the list changed while it was read") as e:
        _merged(mine, theirs, BANKS, len(data))
    assert e.value.reason == "list-changed"


def _half(data: bytes, bank: str, checks: str) -> dict:
    """What a half sends back (its outcome and the CRC of what it read), run in this process."""
    fd = _memfd(data)
    try:
        reader = _Pread(fd, len(data))
        return _child_outcome(lambda: replay_binary(reader, banks=(bank,), checks=checks), reader)
    finally:
        os.close(fd)


def test_the_bytes_each_half_read_are_compared_not_only_the_records():
    # A byte that only the other half checks (a template digest: not checked by the fields half)
    # changes no count, end or template: only the checksum of the bytes read tells the reads apart.
    data = _list(40)
    same, other = _half(data, "sha256", "fields"), _half(_bad_digest(data, 7), "sha256", "fields")
    assert {k: v for k, v in same.items() if k not in ("crc", "pcrs")} == \
        {k: v for k, v in other.items() if k not in ("crc", "pcrs")}
    assert same["crc"] == _half(data, "sha1", "digest")["crc"] == zlib.crc32(data)
    assert other["crc"] != same["crc"]
    # And a half stopped early by an error still reads to the end for its checksum.
    assert _half(_bad_layout(data, 2), "sha256", "fields")["error"][3] == 2
    assert _half(_bad_layout(data, 2), "sha256", "fields")["crc"] == zlib.crc32(_bad_layout(data, 2))


def test_a_process_with_threads_replays_in_one(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(b"\0" * SPLIT_MIN_BYTES)
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()
    try:
        with path.open("rb") as f:
            assert splittable(f.fileno(), BANKS) is None
    finally:
        stop.set()
        worker.join()
    with path.open("rb") as f:
        assert splittable(f.fileno(), BANKS) is not None
