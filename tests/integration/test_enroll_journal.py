"""The enroll journal on a real dpkg root: what a resuming run re-examines.

A run "killed right after its last journal write" is a real run whose ``Journal.finish`` only
flushes: the journal it leaves is the one a SIGKILL at that moment leaves (the slow SIGKILL test
in test_enroll.py covers random moments).
"""

from __future__ import annotations

import json
import os

import pytest
from debworld import make_keys, make_world, run

from imaguard.cli.main import main
from imaguard.sign.journal import Journal

pytestmark = pytest.mark.root

IMA = "security.ima"


@pytest.fixture
def world(tmp_path):
    debs = ["igt-1.0", "igt-maint-1.0"]
    with make_keys(tmp_path / "gnupg") as keys:
        yield make_world(tmp_path / "w", keys, repo_debs=debs, installed=debs, cached=debs)


def _enroll(capsys, world, key, *extra, state=None):
    argv = ["enroll", "--source", f"local:{key.key}", "--cert", str(key.cert_pem), "--root", str(world.root),
            "--state-dir", str(state or world.state), "--no-fetch", "--json", *extra]
    code = main(argv)
    out = capsys.readouterr()
    assert "Traceback" not in out.err, out.err
    return code, json.loads(out.out), out.err


def _killed_after_last_journal_write(monkeypatch):
    monkeypatch.setattr(Journal, "finish", Journal.flush)


def _journal(world) -> set[str]:
    return set(json.loads((world.state / "enroll.journal").read_bytes())["done"])


def test_resumed_run_reports_a_refusal_and_a_temporary_skip_again(world, keypair, capsys, monkeypatch):
    """Regression: a package with a refused file was journalled as done; the resuming run skipped it, exit 0.

    Same for skips a rerun may resolve (here local-db-evidence: the .deb is not cached under --no-fetch).
    """
    run(["dpkg", f"--root={world.root}", "--force-script-chrootless", "--log=/dev/null", "-i",
         world.debs["igt-local-1.0"]])
    (world.root / "usr/bin/igt").write_bytes(b"#!/bin/sh\necho tampered\n")
    key = keypair("rsa2048")
    with monkeypatch.context() as m:
        _killed_after_last_journal_write(m)
        code, doc, _ = _enroll(capsys, world, key)
    assert code == 1
    maint = {f["package"] for f in doc["files"] if f["package"].startswith("igt-maint")}
    assert len(maint) == 1
    assert _journal(world) == maint  # only the package whose every outcome is final

    code, doc, err = _enroll(capsys, world, key)
    assert code == 1, err
    assert doc["exit_code"] == 1
    assert doc["packages_resumed_from_journal"] == 1
    by_path = {f["path"]: f for f in doc["files"]}
    assert (by_path["/usr/bin/igt"]["outcome"], by_path["/usr/bin/igt"]["reason"]) == ("refused", "digest-mismatch")
    assert by_path["/usr/bin/igt-local"]["reason"] == "local-db-evidence"
    assert not (world.state / "enroll.journal").exists()  # completed: the next run examines everything
    with pytest.raises(OSError, match="No data available"):
        os.getxattr(world.root / "usr/bin/igt", IMA)


def test_text_output_of_the_resumed_run_shows_the_refusal(world, keypair, capsys, monkeypatch):
    (world.root / "usr/bin/igt").write_bytes(b"#!/bin/sh\necho tampered\n")
    key = keypair("rsa2048")
    argv = ["enroll", "--source", f"local:{key.key}", "--cert", str(key.cert_pem), "--root", str(world.root),
            "--state-dir", str(world.state), "--no-fetch"]
    with monkeypatch.context() as m:
        _killed_after_last_journal_write(m)
        assert main(argv) == 1
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("refused        igt=1.0/all /usr/bin/igt [digest-mismatch] expected sha256:"), err


def test_options_that_change_outcomes_are_part_of_the_journal_config(world, keypair, capsys, monkeypatch):
    """A journal of a --no-fetch run is not resumed by a run that may fetch (nor one with another --package-db)."""
    key = keypair("rsa2048")
    with monkeypatch.context() as m:
        _killed_after_last_journal_write(m)
        assert _enroll(capsys, world, key)[0] == 0
    assert len(_journal(world)) == 2
    argv = ["enroll", "--source", f"local:{key.key}", "--cert", str(key.cert_pem), "--root", str(world.root),
            "--state-dir", str(world.state), "--json"]
    with monkeypatch.context() as m:
        _killed_after_last_journal_write(m)
        assert main([*argv, "--package-db", "deb", "--no-fetch"]) == 0
    assert json.loads(capsys.readouterr().out)["packages_resumed_from_journal"] == 0
    assert main(argv) == 0  # may fetch: not the --no-fetch run's journal
    assert json.loads(capsys.readouterr().out)["packages_resumed_from_journal"] == 0
