"""imaguard-keyring audit 2, findings 1 and 2: SIGHUP (a dropped SSH session), SIGQUIT and SIGTERM during a
ceremony, `revoke` or `bundle` run the cleanup of Ctrl-C: no lone private key, no temp file (for revoke a
complete CA-signed list with the next serial) beside the published list, exit 130 "interrupted".

The signal must reach the real process with its real dispositions, so each case runs the CLI in a child
interpreter through a small wrapper that sends the signal to itself right after the Nth fsync: the
file is written and synced, the set or the rename is not done yet. P-256 keeps key generation fast."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
from signallib import run_interrupted

from imaguard_keyring.cli import main


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory) -> Path:
    top = tmp_path_factory.mktemp("audit2sig")
    assert main(["ca", "create", "--out", str(top / "ca"), "--key-type", "p256"]) == 0
    assert main(["cert", "issue", "--ca", str(top / "ca"), "--out", str(top / "k"), "--name", "ima",
                 "--key-type", "p256", "--days", "5"]) == 0
    assert main(["cert", "issue", "--ca", str(top / "ca"), "--out", str(top / "k"), "--name", "auth",
                 "--key-type", "p256", "--days", "5"]) == 0
    return top / "ca"


INTERRUPTED = (130, "", "imaguard-keyring: interrupted\n")
INTERRUPTED_JSON = (130, '{"error": {"reason": "interrupted", "message": "interrupted"}}\n',
                    "imaguard-keyring: interrupted\n")


def outcome(done: subprocess.CompletedProcess[str]) -> tuple[int, str, str]:
    """Exit code, stdout and stderr without the [W-EC-KEY] warnings P-256 keys draw."""
    err = "".join(line for line in done.stderr.splitlines(keepends=True) if "[W-EC-KEY]" not in line)
    return done.returncode, done.stdout, err


# --- finding 1: a ceremony leaves all its files or none, whatever the signal -----------------------------------

@pytest.mark.parametrize("signame", ["SIGHUP", "SIGQUIT", "SIGTERM"])
def test_a_signal_during_ca_create_leaves_no_key_and_the_rerun_works(tmp_path, signame):
    out = tmp_path / "CA"
    argv = ["ca", "create", "--out", str(out), "--key-type", "p256"]
    assert outcome(run_interrupted(tmp_path, 1, signame, argv)) == INTERRUPTED  # after ca.key is synced
    assert not out.exists()  # nor the directory made for it
    assert main(argv) == 0


def test_a_directory_that_was_there_before_stays(tmp_path):
    out = tmp_path / "CA"
    out.mkdir()
    argv = ["ca", "create", "--out", str(out), "--key-type", "p256"]
    assert outcome(run_interrupted(tmp_path, 1, "SIGTERM", argv)) == INTERRUPTED
    assert out.is_dir()
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("signame", ["SIGHUP", "SIGQUIT"])
def test_a_signal_during_cert_issue_leaves_no_lone_key(ca_dir, tmp_path, signame):
    argv = ["cert", "issue", "--ca", str(ca_dir), "--out", str(tmp_path / "K"), "--name", "ima-x",
            "--key-type", "p256", "--days", "5"]
    assert outcome(run_interrupted(tmp_path, 2, signame, argv)) == INTERRUPTED  # key and PEM written
    assert not (tmp_path / "K").exists()  # nor the directory made for it
    assert main(argv) == 0


def test_sighup_during_rotate_leaves_no_lone_key(ca_dir, tmp_path):
    argv = ["rotate", "--ca", str(ca_dir), "--old", str(ca_dir.parent / "k" / "ima.pem"), "--out",
            str(tmp_path / "R"), "--name", "ima-next", "--days", "5"]
    assert outcome(run_interrupted(tmp_path, 1, "SIGHUP", argv)) == INTERRUPTED
    assert not (tmp_path / "R").exists()  # nor the directory made for it


# --- finding 2: revoke and bundle leave no temp file ------------------------------------------------------------

@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP", "SIGQUIT"])
def test_a_signal_during_revoke_leaves_no_signed_temp_list(ca_dir, tmp_path, signame):
    pub = tmp_path / "pub"
    pub.mkdir()
    rl = pub / "rl.json"
    assert main(["revoke", "--ca", str(ca_dir), "--list", str(rl), "--key-id", "1a2b3c4d", "--new"]) == 0
    before = rl.read_bytes()
    argv = ["revoke", "--ca", str(ca_dir), "--list", str(rl), "--key-id", "33333333", "--json"]
    assert outcome(run_interrupted(tmp_path, 1, signame, argv)) == INTERRUPTED_JSON  # temp list synced, not renamed
    assert sorted(p.name for p in pub.iterdir()) == ["rl.json"]
    assert rl.read_bytes() == before


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_a_signal_during_bundle_leaves_no_temp_bundle(ca_dir, tmp_path, signame):
    k = ca_dir.parent / "k"
    out = tmp_path / "B"
    argv = ["bundle", "hostname", "--ima-key", str(k / "ima.key"), "--ima-cert", str(k / "ima.pem"),
            "--authority-key", str(k / "auth.key"), "--authority-cert", str(k / "auth.pem"), "--out", str(out),
            "--state-dir", str(tmp_path / "state"), "--json"]
    assert outcome(run_interrupted(tmp_path, 1, signame, argv, fake_source=True)) == INTERRUPTED_JSON
    assert list(out.iterdir()) == []


def test_the_previous_handlers_are_put_back_after_a_command(ca_dir, tmp_path):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)}
    assert main(["revocations", "show", "--ca", str(ca_dir), "--list", str(tmp_path / "none.json")]) == 2
    assert {s: signal.getsignal(s) for s in before} == before
