"""Fuzzing the measurement-list parsers: truncation at every byte of the real lists, random
mutations (only FormatError may escape, never a partial verdict), and bounded memory."""

from __future__ import annotations

import io
import sys
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imaguard.errors import FormatError
from imaguard.ima.measurements import iter_ascii, iter_binary
from imaguard.ima.replay import replay, replay_binary
from logbuilder import LogBuilder, d_ng, generate, n_ng, sig_v2, write_logs

LAB = Path(__file__).resolve().parents[1] / "data" / "lab"
CAPTURES = sorted(p.parent for p in LAB.rglob("pcr10.json"))
_FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _ends(entries: list) -> list[int]:
    """Offsets just after each whole record."""
    return [e.offset for e in entries[1:]]


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.name)
def test_binary_truncated_at_every_offset_ends_at_the_last_whole_record(capture):
    log = (capture / "binary_runtime_measurements").read_bytes()
    full = list(iter_binary(log))
    bounds = [*_ends(full), len(log)]
    for cut in range(len(log) + 1):
        stream = iter_binary(log[:cut])
        got = list(stream)
        whole = sum(1 for b in bounds if b <= cut)
        assert got == full[:whole], cut
        end = bounds[whole - 1] if whole else 0
        assert stream.end == end
        assert (stream.truncated is None) == (cut == end), cut
        if stream.truncated is not None:
            assert (stream.truncated.offset, stream.truncated.have) == (end, cut - end)


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.name)
def test_ascii_truncated_at_every_offset_ends_at_the_last_whole_line(capture):
    log = (capture / "ascii_runtime_measurements").read_bytes()
    full = list(iter_ascii(log))
    for cut in range(len(log) + 1):
        stream = iter_ascii(log[:cut])
        got = list(stream)
        assert got == full[: log[:cut].count(b"\n")], cut
        assert (stream.truncated is None) == (cut == 0 or log[cut - 1 : cut] == b"\n"), cut


def _only_format_errors(parse, data: bytes) -> None:
    """Anything but FormatError fails the test; a FormatError must point inside the input."""
    offset = None
    try:
        replay(parse(data))
    except FormatError as exc:
        offset = exc.offset
    assert offset is None or 0 <= offset <= len(data)


_REAL_BINARY = [(c / "binary_runtime_measurements").read_bytes() for c in CAPTURES]
_REAL_ASCII = [(c / "ascii_runtime_measurements").read_bytes() for c in CAPTURES]


def _mutations(corpus: list[bytes]) -> st.SearchStrategy[bytes]:
    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(corpus)))
        for _ in range(draw(st.integers(1, 4))):
            pos = draw(st.integers(0, max(len(data) - 1, 0)))
            kind = draw(st.sampled_from(("flip", "set", "insert", "delete", "u32")))
            if kind == "flip" and data:
                data[pos] ^= 1 << draw(st.integers(0, 7))
            elif kind == "set" and data:
                data[pos] = draw(st.integers(0, 255))
            elif kind == "insert":
                data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
            elif kind == "delete":
                del data[pos : pos + draw(st.integers(1, 8))]
            elif kind == "u32" and len(data) >= pos + 4:
                data[pos : pos + 4] = draw(st.sampled_from([0, 1, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF])).to_bytes(4, "little")
        return bytes(data)

    return mutate()


@_FUZZ
@given(_mutations(_REAL_BINARY))
def test_mutated_binary_lists_raise_only_format_error(data):
    _only_format_errors(iter_binary, data)
    _only_format_errors(lambda d: iter_binary(io.BytesIO(d), chunk_size=97), data)
    _only_format_errors(lambda d: iter_binary(d, byteorder="big"), data)


def _outcome(fn, data: bytes) -> tuple:
    try:
        r = fn(data)
    except FormatError as exc:
        return ("error", str(exc))
    return ("ok", r.pcrs, r.count, r.violations, r.end, r.truncated, r.boot_aggregate, r.templates)


def _both_paths_agree(data: bytes, byteorder: str = "little") -> None:
    """replay_binary (no Entry per record) must say exactly what replay(iter_binary(...)) says."""
    slow = _outcome(lambda d: replay(iter_binary(d, byteorder=byteorder), keep_entries=False), data)
    fast = _outcome(lambda d: replay_binary(d, byteorder=byteorder), data)
    assert fast == slow


def _mixed_list() -> bytes:
    b = LogBuilder()
    b.boot_aggregate(template="ima-sig")
    b.ima("/sbin/init", b"init")
    b.file("/usr/bin/cat", b"cat", sig=sig_v2(b"\x01\x02\x03\x04", b"\x55" * 64))
    b.file("/usr/lib/m.ko", b"ko", template="ima-modsig")
    b.buf("_ima", b"\x30\x82cert")
    b.violation("/etc/busy")
    b.add("d-ng|n-ng|sig|iuid", (d_ng(b"\x66" * 32), n_ng("/c"), b"", b"\x00\x00\x00\x00"))
    b.add("ima-ng", (d_ng(b"\x11" * 20, "sha1"), n_ng("/legacy-sha1")), pcr=11)
    return b.binary()


_MIXED = _mixed_list()


def test_the_fast_replay_path_agrees_on_every_real_and_built_list():
    for data in [*_REAL_BINARY, _MIXED]:
        _both_paths_agree(data)
        for cut in range(0, len(data), 7):
            _both_paths_agree(data[:cut])


@_FUZZ
@given(_mutations([*_REAL_BINARY, _MIXED]))
def test_the_fast_replay_path_agrees_on_mutated_lists(data):
    _both_paths_agree(data)
    _both_paths_agree(data, "big")


@_FUZZ
@given(_mutations(_REAL_ASCII))
def test_mutated_ascii_lists_raise_only_format_error(data):
    _only_format_errors(iter_ascii, data)


@_FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_format_error(data):
    _only_format_errors(iter_binary, data)
    _only_format_errors(iter_ascii, data)


def _peak_streaming(path: Path, form: str) -> tuple[int, int]:
    tracemalloc.start()
    try:
        with path.open("rb", buffering=0) as f:
            if form == "scan":
                r = replay_binary(f)
            else:
                r = replay(iter_ascii(f) if form == "ascii" else iter_binary(f), keep_entries=False)
        return r.count, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_memory_stays_bounded_whatever_the_list_size(tmp_path):
    peaks = {}
    for n in (10_000, 40_000):
        binary, ascii_path = tmp_path / f"{n}.bin", tmp_path / f"{n}.txt"
        with binary.open("wb") as b, ascii_path.open("wb") as a:
            write_logs(generate(n), b, a)
        for form, path in (("binary", binary), ("scan", binary), ("ascii", ascii_path)):
            count, peak = _peak_streaming(path, form)
            assert count == n
            peaks[form, n] = peak
    for form in ("binary", "scan", "ascii"):
        # Two 1 MiB read chunks plus one record, whatever the size: 4x the list, same peak.
        assert peaks[form, 40_000] < 3 << 20, peaks
        assert abs(peaks[form, 40_000] - peaks[form, 10_000]) < 256 << 10, peaks
