"""JSON nested past the interpreter's recursion limit is malformed input, not a crash.

``json.loads`` raises RecursionError (not ValueError) for it: a hostile bundle mirror, revocation
list or a damaged cache must end in the parser's own error, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from imaguard.errors import FormatError
from imaguard.keys.dsse import Envelope
from imaguard.keys.revocation import RevocationList
from imaguard.packages import aptrepo
from imaguard.packages.deb import decode_members
from imaguard.sign.bundle import Bundle
from imaguard.sign.journal import Journal

DEEP = b"[" * 200_000


@pytest.mark.parametrize(
    "parse",
    [
        lambda: Envelope.from_json(DEEP, "b.bundle"),
        lambda: RevocationList.from_payload(DEEP, "rl.json"),
        lambda: Bundle.from_payload(DEEP, "b.bundle"),
        lambda: decode_members(DEEP),
    ],
    ids=["dsse-envelope", "revocation-list", "bundle-payload", "chain-cache"],
)
def test_deep_nesting_is_a_format_error(parse):
    with pytest.raises(FormatError):
        parse()


def test_deep_index_cache_is_ignored(tmp_path: Path):
    cache = tmp_path / "spans.json"
    cache.write_bytes(DEEP)
    assert aptrepo._read_cache(cache, frozenset({"igt"})) is None  # re-scanned, as for any bad record


def test_deep_journal_is_started_over(tmp_path: Path):
    path = tmp_path / "enroll.journal"
    path.write_bytes(DEEP)
    journal = Journal.load(path, "config")
    assert journal.discarded.startswith("not JSON: maximum recursion depth exceeded")
    assert journal.done == set()


def test_deep_report_is_refused_in_one_line(tmp_path: Path, capsys):
    from imaguard.cli.main import main  # noqa: PLC0415

    report = tmp_path / "report.json"
    report.write_bytes(DEEP)
    assert main(["report", "verify", str(report)]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"imaguard: error: verification failed: {report}: not JSON (maximum recursion depth exceeded")
    assert err.count("\n") == 1
