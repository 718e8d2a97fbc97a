"""``imaguard report verify`` on changed reports: what it must refuse (regressions named after the bug)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imaguard.cli.main import main
from imaguard.ima.measurements import iter_binary
from imaguard.ima.replay import replay
from imaguard.packages.index import DigestIndex
from imaguard.report.build import build_report
from imaguard.report.model import HostFacts

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "tests" / "data" / "lab"
HOST = HostFacts("m" * 32, "b", "h", "6.1.0-50-amd64", "#1", "gone", None, ())


def _report_doc(tmp_path: Path, log: Path) -> dict:
    with DigestIndex.open(tmp_path / "idx") as idx:
        report = build_report(replay(iter_binary(log.read_bytes())), source=str(log), lookup=idx, processes=(),
                              host=HOST, generator="imaguard test", created="2026-12-06T00:00:00Z")  # fmt: skip
    return report.to_json()


def _verify_cli(tmp_path: Path, doc: dict | str, capsys) -> tuple[int, str]:
    path = tmp_path / "r.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    code = main(["report", "verify", str(path)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("bad", ["1e999", "true", "10.0", '"10"', "null"])
def test_pcr_that_is_not_an_integer_is_a_schema_error_not_a_crash(tmp_path, capsys, bad):
    doc = _report_doc(tmp_path, LAB / "ima-ng" / "binary_runtime_measurements")
    text = json.dumps(doc).replace('"pcr":10', f'"pcr":{bad}', 1).replace('"pcr": 10', f'"pcr": {bad}', 1)
    code, err = _verify_cli(tmp_path, text, capsys)
    assert code == 3
    assert err.count("\n") == 1
    assert err.startswith(f"imaguard: error: verification failed: {tmp_path}/r.json: entry 0 has no integer pcr")
