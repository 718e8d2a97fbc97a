"""The README's test command must not pass when pytest collects nothing (exit code 5)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_no_tests_collected_is_a_failure(tmp_path):
    # The real scripts/test.sh in a copy of the checkout whose setup.sh does nothing: the real one
    # (already run by CI before the suite) reinstalls from PyPI, so this test depended on the network.
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "test.sh", tmp_path / "scripts" / "test.sh")
    (tmp_path / "scripts" / "setup.sh").write_text("exit 0\n")
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    proc = subprocess.run(
        ["sh", "scripts/test.sh", "-q", "-p", "no:cacheprovider", "-k", "no_such_test_name_anywhere",
         str(ROOT / "tests" / "unit" / "test_digests.py")],
        cwd=tmp_path, capture_output=True, text=True, check=False, timeout=600,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "test.sh: pytest collected no tests; that is a failure, not a pass" in proc.stderr


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "./scripts/test.sh     # set up, then run the whole test suite" in readme
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("exec sh scripts/test.sh")
