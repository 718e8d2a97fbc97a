"""The apt index cache's cheap path: recorded stanza spans re-read from the verified stream.

A record can only select whole stanzas of the bytes being hashed; a span that is shifted, too
long, past the end or inside another stanza (a Description line that reads like a stanza) is
refused, and the caller then scans the whole index.
"""

from __future__ import annotations

import pytest

from imaguard.errors import FormatError
from imaguard.packages.debchain import PackagesScanner, StanzaCapture


def _stanza(name: str, version: str, sha: str, extra: str = "") -> bytes:
    return (f"Package: {name}\nVersion: {version}\nArchitecture: amd64\n{extra}Filename: pool/{name}.deb\n"
            f"Size: 10\nSHA256: {sha * 64}\n").encode()


EVIL = _stanza("evil", "1", "e", "Description: innocent\n Package: bash\n Version: 5.2\n")
STREAM = (b"\n" + _stanza("bash", "5.2", "a") + b"\n" + _stanza("other", "1", "b") + b"\n\n\n" + EVIL + b"\n"
          + _stanza("coreutils", "9.1", "c"))
WANTED = frozenset({"bash", "coreutils"})


def _scan(data: bytes, step: int) -> PackagesScanner:
    scanner = PackagesScanner(WANTED)
    for i in range(0, len(data), step):
        scanner.feed(data[i : i + step])
    scanner.finish()
    return scanner


def _capture(spans: list[tuple[int, int]], data: bytes, step: int) -> StanzaCapture:
    capture = StanzaCapture(spans)
    for i in range(0, len(data), step):
        capture.feed(data[i : i + step])
    return capture


@pytest.mark.parametrize("step", [1, 7, 64, 1 << 20])
def test_recorded_spans_give_back_the_scanned_entries(step):
    scanner = _scan(STREAM, step)
    entries = scanner.finish()
    assert [(e.name, e.version) for e in entries] == [("bash", "5.2"), ("coreutils", "9.1")]
    for start, length in scanner.spans:  # each span is exactly one stanza's text
        assert STREAM[start : start + length].startswith(b"Package: ")
        assert STREAM[start + length : start + length + 2] in (b"\n\n", b"\n", b"")
    assert _capture(scanner.spans, STREAM, step).entries(WANTED) == entries
    # A record made for more names serves a run that wants fewer.
    assert _capture(scanner.spans, STREAM, step).entries(frozenset({"bash"})) == entries[:1]


def test_a_span_inside_another_stanza_cannot_forge_an_entry():
    # " Package: bash" inside evil's Description: from the P on it reads like a bash stanza.
    start = STREAM.index(b" Package: bash") + 1
    end = STREAM.index(b"Size: 10", start)
    end = STREAM.index(b"\n", STREAM.index(b"SHA256:", end))
    with pytest.raises(FormatError, match="not a whole stanza"):
        _capture([(start, end - start)], STREAM, 64).entries(WANTED)


@pytest.mark.parametrize("shift", [(-1, 0), (1, -1), (0, 1), (0, -1), (0, 40)])
def test_shifted_or_resized_spans_are_refused(shift):
    (start, length), _ = _scan(STREAM, 64).spans
    with pytest.raises(FormatError, match="not a whole stanza"):
        _capture([(start + shift[0], length + shift[1])], STREAM, 64).entries(WANTED)


def test_a_span_past_the_end_is_refused():
    with pytest.raises(FormatError, match="past the end"):
        _capture([(len(STREAM) - 5, 50)], STREAM, 64).entries(WANTED)


def test_a_stale_span_on_changed_bytes_is_refused():
    spans = _scan(STREAM, 64).spans
    changed = b"X" + STREAM  # the same index with one byte more in front: every span is off by one
    with pytest.raises(FormatError):
        _capture(spans, changed, 64).entries(WANTED)


def test_no_spans_means_no_entries_never_an_error():
    assert _capture([], STREAM, 64).entries(WANTED) == []
