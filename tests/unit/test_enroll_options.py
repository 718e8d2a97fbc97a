"""``imaguard enroll`` option mistakes are usage errors that say what to do (review findings).

Regressions: ``--scope foo`` said "invalid Scope value: 'foo'" without the choices; ``--source
local:`` tried to read "." as the key ("Is a directory"); ``--authority-cert`` with a local or
vendor source and ``--revocation-ca`` without ``--revocation-list`` were silently ignored.
No root needed: every case fails before any package, file or key is read.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from imaguard.cli.main import main

CERT = str(Path(__file__).resolve().parents[1] / "data" / "keys" / "ima-test-rsa2048.pem")


def _enroll(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["enroll", "--cert", CERT, "--dry-run", "--root", "/nonexistent", *argv])
    return code, capsys.readouterr().err


def test_wrong_scope_names_the_choices(capsys):
    code, err = _enroll(capsys, "--source", "vendor", "--scope", "foo")
    # Python 3.12.8 stopped quoting argparse's choices.
    assert code == 2
    assert err in ("imaguard: error: imaguard enroll: argument --scope: invalid choice: 'foo' "
                   f"(choose from {choices})\n" for choices in ("'executables', 'all'", "executables, all"))


@pytest.mark.parametrize(("source", "message"), [
    ("local:", "--source local: needs the path of the key: local:KEY"),
    ("bundle:", "--source bundle: needs the directory or URL of the bundles: bundle:PATH_OR_URL"),
    ("local", "--source 'local': use vendor, bundle:PATH_OR_URL or local:KEY"),
    ("vendor:x", "--source 'vendor:x': use vendor, bundle:PATH_OR_URL or local:KEY"),
])  # fmt: skip
def test_source_without_its_argument(capsys, source, message):
    assert _enroll(capsys, "--source", source) == (2, f"imaguard: error: {message}\n")


@pytest.mark.parametrize(("argv", "message"), [
    (["--source", "local:K", "--authority-cert", "A"],
     "--authority-cert applies to bundle sources only, not to --source local"),
    (["--source", "vendor", "--authority-cert", "A"],
     "--authority-cert applies to bundle sources only, not to --source vendor"),
    (["--source", "bundle:/srv/b", "--authority-cert", "A", "--password-file", "P"],
     "--password-file is the password of a local key, not of --source bundle"),
    (["--source", "vendor", "--revocation-ca", "CA"],
     "--revocation-ca is the CA that signs --revocation-list: give --revocation-list too"),
])  # fmt: skip
def test_options_of_another_source_are_refused_not_ignored(capsys, argv, message):
    assert _enroll(capsys, *argv) == (2, f"imaguard: error: {message}\n")


def test_scope_still_takes_its_values(capsys, tmp_path):
    # A valid scope gets past argparse: the run fails later, on the missing key.
    code, err = _enroll(capsys, "--source", f"local:{tmp_path / 'nokey'}", "--scope", "all")
    assert (code, err) == (2, f"imaguard: error: {tmp_path / 'nokey'}: cannot read private key: No such file or directory\n")
