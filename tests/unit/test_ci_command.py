"""The README's test command must not pass when pytest collects nothing (exit code 5)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.root
def test_no_tests_collected_is_a_failure():
    if os.geteuid() != 0:
        pytest.skip("scripts/test.sh runs setup.sh, which needs root")
    proc = subprocess.run(
        ["sh", "scripts/test.sh", "-q", "-k", "no_such_test_name_anywhere", "tests/unit/test_digests.py"],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=600,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "test.sh: pytest collected no tests; that is a failure, not a pass" in proc.stderr


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "./scripts/test.sh     # set up, then run the whole test suite" in readme
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("exec sh scripts/test.sh")
