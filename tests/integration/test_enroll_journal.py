"""The enroll journal on a real dpkg root: what a resuming run re-examines, and bad state directories.

A run "killed right after its last journal write" is a real run whose ``Journal.finish`` only
flushes: the journal it leaves is the one a SIGKILL at that moment leaves (the slow SIGKILL test
in test_enroll.py covers random moments).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import rootlib
from debworld import make_keys, make_world, run

from imaguard.cli.main import main
from imaguard.errors import HostStateError
from imaguard.sign.journal import Journal

pytestmark = pytest.mark.root

IMA = "security.ima"


@pytest.fixture
def world(tmp_path):
    debs = ["igt-1.0", "igt-maint-1.0"]
    with make_keys(tmp_path / "gnupg") as keys:
        yield make_world(tmp_path / "w", keys, repo_debs=debs, installed=debs, cached=debs)


def _enroll(capsys, world, key, *extra, state=None):
    argv = ["enroll", "--source", f"local:{key.key}", "--cert", str(key.cert_pem), *world.root_args,
            "--state-dir", str(state or world.state), "--no-fetch", "--json", *extra]
    code = main(argv)
    out = capsys.readouterr()
    assert "Traceback" not in out.err, out.err
    return code, (json.loads(out.out) if out.out else None), out.err


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
    argv = ["enroll", "--source", f"local:{key.key}", "--cert", str(key.cert_pem), *world.root_args,
            "--state-dir", str(world.state), "--no-fetch"]
    with monkeypatch.context() as m:
        _killed_after_last_journal_write(m)
        assert main(argv) == 1
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("refused        igt=1.0/all /usr/bin/igt [digest-mismatch] expected sha256:"), err
    actual = hashlib.sha256(b"#!/bin/sh\necho tampered\n").hexdigest()
    assert err.splitlines()[0].endswith(f" actual sha256:{actual}"), err  # both digests named with their algorithm


def test_options_that_change_outcomes_are_part_of_the_journal_config(world, keypair, capsys, monkeypatch):
    """A journal of a --no-fetch run is not resumed by a run that may fetch (nor one with another --package-db)."""
    key = keypair("rsa2048")
    with monkeypatch.context() as m:
        _killed_after_last_journal_write(m)
        assert _enroll(capsys, world, key)[0] == 0
    assert len(_journal(world)) == 2
    argv = ["enroll", "--source", f"local:{key.key}", "--cert", str(key.cert_pem), *world.root_args,
            "--state-dir", str(world.state), "--json"]
    with monkeypatch.context() as m:
        _killed_after_last_journal_write(m)
        assert main([*argv, "--package-db", "deb", "--no-fetch"]) == 0
    assert json.loads(capsys.readouterr().out)["packages_resumed_from_journal"] == 0
    assert main(argv) == 0  # may fetch: not the --no-fetch run's journal
    assert json.loads(capsys.readouterr().out)["packages_resumed_from_journal"] == 0


@pytest.mark.parametrize("content", [b"[]", b'"done"', b"42", b'{"config": 1, "done": []}',
                                     b'{"config": "x", "done": "igt"}', b'{"config": "x", "do', b"\xff\xfe"])
def test_a_journal_that_is_not_one_is_started_over_with_one_warning(world, keypair, capsys, content):
    """Regression: a journal holding valid JSON that is not an object ([]) crashed with AttributeError."""
    world.state.mkdir(parents=True, exist_ok=True)
    (world.state / "enroll.journal").write_bytes(content)
    code, doc, err = _enroll(capsys, world, keypair("rsa2048"))
    assert code == 0
    assert doc["packages_resumed_from_journal"] == 0
    journal = world.state / "enroll.journal"
    assert err.count("imaguard: warning [W-JOURNAL-DISCARDED]") == 1, err
    assert err.startswith(f"imaguard: warning [W-JOURNAL-DISCARDED]: {journal}: not an enroll journal ("), err
    assert err.endswith("); starting over\n"), err
    assert not journal.exists()


def test_state_dir_that_is_a_file_fails_before_labelling(world, keypair, capsys, tmp_path):
    """Regression: enroll labelled everything, then crashed in finish() with NotADirectoryError, no summary."""
    not_a_dir = tmp_path / "state-file"
    not_a_dir.write_bytes(b"")
    for extra in ([], ["--dry-run"]):
        code, doc, err = _enroll(capsys, world, keypair("rsa2048"), *extra, state=not_a_dir)
        assert code == 1
        message = f"{not_a_dir}: --state-dir is not a directory"
        assert doc == {"error": {"reason": "state-dir", "message": message}}
        assert err == f"imaguard: error: {message}\n"
    with pytest.raises(OSError, match="No data available"):
        os.getxattr(world.root / "usr/bin/igt", IMA)  # nothing labelled


def test_state_dir_inside_a_file_fails_before_labelling(world, keypair, capsys, tmp_path):
    not_a_dir = tmp_path / "state-file"
    not_a_dir.write_bytes(b"")
    code, doc, err = _enroll(capsys, world, keypair("rsa2048"), state=not_a_dir / "state")
    assert code == 1
    message = f"{not_a_dir}/state/enroll.journal: cannot read the enroll journal: Not a directory"
    assert doc == {"error": {"reason": "state-read", "message": message}}
    assert err == f"imaguard: error: {message}\n"
    with pytest.raises(OSError, match="No data available"):
        os.getxattr(world.root / "usr/bin/igt", IMA)


def test_journal_that_cannot_be_removed_is_an_error_after_the_summary(world, keypair, capsys, monkeypatch):
    """The run labelled every file: its summary and JSON come out, then one error line, exit 1."""
    finish = Journal.finish

    def finish_in_immutable_dir(self: Journal) -> None:
        rootlib.run(["chattr", "+i", str(self.path.parent)])
        finish(self)

    monkeypatch.setattr(Journal, "finish", finish_in_immutable_dir)
    try:
        code, doc, err = _enroll(capsys, world, keypair("rsa2048"))
    finally:
        rootlib.run(["chattr", "-i", str(world.state)])
    journal = world.state / "enroll.journal"
    assert code == 1
    assert doc["exit_code"] == 1
    assert {(s["outcome"], s["reason"]) for s in doc["summary"]} >= {("signed", "")}
    assert err == (f"imaguard: error: {journal}: cannot remove the enroll journal of this completed run: "
                   "Operation not permitted\n")


def test_finish_raises_a_typed_error(tmp_path):
    journal = Journal(tmp_path / "j" / "enroll.journal", "c", set())
    journal.begin()
    rootlib.run(["chattr", "+i", str(tmp_path / "j")])
    try:
        with pytest.raises(HostStateError) as info:
            journal.finish()
    finally:
        rootlib.run(["chattr", "-i", str(tmp_path / "j")])
    assert info.value.reason == "state-write"
    assert info.value.path == str(Path(tmp_path / "j" / "enroll.journal"))
