"""imaguard-keyring review fixes: revoke's lock and symlinked list, interrupted writes, refused
inputs (CA without SKID, unprintable subjects, Ctrl-D, huge password files), directory modes,
`bundle --json`. No root; RSA-2048 keeps key generation fast."""

from __future__ import annotations

import contextlib
import getpass
import io
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import types
from pathlib import Path

import pytest

from imaguard.keys import load_certificate
from imaguard.keys.revocation import verify_revocation_list
from imaguard_keyring import ceremony, revocations
from imaguard_keyring import cli as keyring_cli
from imaguard_keyring.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from test_keyring_ceremony import NOW, run_cli  # the ceremony tests' clock and CLI runner


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory) -> Path:
    top = tmp_path_factory.mktemp("review")
    assert main(["ca", "create", "--out", str(top / "ca"), "--key-type", "rsa2048"]) == 0
    return top / "ca"


@pytest.fixture(scope="module")
def authority(ca_dir):
    return ceremony.load_authority(ca_dir, None)


# --- 1. revoke holds a lock around read, sign, replace -----------------------------------------------------

def test_concurrent_revocations_both_end_in_the_list(authority, tmp_path, monkeypatch):
    rl = tmp_path / "rl.json"
    revocations.add_revocation(rl, authority, b"\x00\x00\x00\x01", reason="", subject="", now=NOW, new=True)
    barrier = threading.Barrier(2)
    real_sign = revocations.sign_revocation_list

    def slow_sign(*a, **kw):  # both writers meet here when nothing serialises them (the old race)
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=1.5)
        return real_sign(*a, **kw)

    monkeypatch.setattr(revocations, "sign_revocation_list", slow_sign)
    errors: list[BaseException] = []

    def revoke(key_id: bytes) -> None:
        try:
            revocations.add_revocation(rl, authority, key_id, reason="", subject="", now=NOW)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=revoke, args=(k,)) for k in (b"\xaa\xaa\xaa\xaa", b"\xbb\xbb\xbb\xbb")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    final = verify_revocation_list(rl.read_bytes(), (authority.cert,), "rl")
    assert final.key_ids == {b"\x00\x00\x00\x01", b"\xaa\xaa\xaa\xaa", b"\xbb\xbb\xbb\xbb"}
    assert final.serial == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rl.json"]  # no lock file left in the published dir


# --- 2. a symlinked --list is refused ----------------------------------------------------------------------

def test_revoke_refuses_a_symlinked_list(ca_dir, tmp_path, capsys):
    target = tmp_path / "published.json"
    assert run_cli(capsys, ["revoke", "--ca", str(ca_dir), "--list", str(target), "--key-id", "00000001",
                            "--new"])[0] == 0
    before = target.read_bytes()
    link = tmp_path / "link.json"
    link.symlink_to(target)
    code, out, err = run_cli(capsys, ["revoke", "--ca", str(ca_dir), "--list", str(link), "--key-id", "00000002"])
    assert (code, out) == (2, "")
    assert err == f"imaguard-keyring: error: {link}: is a symbolic link; give the list's own path ({target})\n"
    assert link.is_symlink()
    assert target.read_bytes() == before


# --- 3. Ctrl-C or SIGTERM while the files are written leaves none of them ----------------------------------

@pytest.mark.parametrize("interrupt", ["keyboard", "sigterm"])
def test_interrupted_ca_create_leaves_no_file_and_reruns(tmp_path, monkeypatch, capsys, interrupt):
    real_fsync = os.fsync
    calls = []

    def fsync_then_interrupt(fd):  # the key is written, the certificates are not
        calls.append(fd)
        real_fsync(fd)
        if len(calls) == 1:
            if interrupt == "keyboard":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(ceremony.os, "fsync", fsync_then_interrupt)
    out = tmp_path / "ca"
    assert run_cli(capsys, ["ca", "create", "--out", str(out), "--key-type", "rsa2048"]) == (
        130, "", "imaguard-keyring: interrupted\n")
    assert not out.exists()  # nor the directory made for it
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back
    monkeypatch.setattr(ceremony.os, "fsync", real_fsync)
    assert main(["ca", "create", "--out", str(out), "--key-type", "rsa2048"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["ca.der", "ca.key", "ca.pem"]


# --- 4. one-line refusals instead of tracebacks ------------------------------------------------------------

def test_cert_issue_refuses_a_ca_without_skid(tmp_path, capsys):
    ca = tmp_path / "FCA3"
    ca.mkdir()
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca / "ca.key"), "-out",
         str(ca / "ca.pem"), "-days", "30", "-subj", "/CN=noSKID", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-addext", "subjectKeyIdentifier=none",
         "-addext", "authorityKeyIdentifier=none"], capture_output=True, check=False)
    assert made.returncode == 0, made.stderr
    message = ("imaguard-keyring: error: the CA certificate CN=noSKID has no subjectKeyIdentifier: the kernel finds an IMA "
               "certificate's CA by it; use a CA made by `imaguard-keyring ca create`\n")
    code, out, err = run_cli(capsys, ["cert", "issue", "--ca", str(ca), "--out", str(tmp_path / "k"), "--name", "a",
                                      "--key-type", "rsa2048", "--days", "5"])
    assert (code, out, err) == (2, "", message)
    assert not (tmp_path / "k").exists()


@pytest.mark.parametrize("subject", ["\udcff\udcfe", "evil\nCN=root", "tab\there", "bell\x07"])
@pytest.mark.parametrize("command", ["ca", "cert"])
def test_unprintable_subjects_are_refused(ca_dir, tmp_path, capsys, subject, command):
    argv = (["ca", "create", "--out", str(tmp_path / "x")] if command == "ca" else
            ["cert", "issue", "--ca", str(ca_dir), "--out", str(tmp_path / "x"), "--name", "a"])
    code, out, err = run_cli(capsys, [*argv, "--key-type", "rsa2048", "--subject", subject])
    assert (code, out) == (2, "")
    assert err == "imaguard-keyring: error: the subject common name must be printable UTF-8 text (no control characters)\n"
    assert not (tmp_path / "x").exists()


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("which", ["new", "ca"])
def test_end_of_input_at_a_keyring_password_prompt_is_one_line(tmp_path, capsys, monkeypatch, which):
    def eof(_prompt: str) -> str:
        raise EOFError

    monkeypatch.setattr(getpass, "getpass", eof)
    monkeypatch.setattr(sys, "stdin", _Tty())
    if which == "new":
        argv = ["ca", "create", "--out", str(tmp_path / "x"), "--key-type", "rsa2048", "--ask-password"]
    else:
        pw = tmp_path / "pw"
        pw.write_text("secret\n")
        assert main(["ca", "create", "--out", str(tmp_path / "eca"), "--key-type", "rsa2048", "--password-file",
                     str(pw)]) == 0
        argv = ["cert", "issue", "--ca", str(tmp_path / "eca"), "--out", str(tmp_path / "x"), "--name", "a",
                "--key-type", "rsa2048"]
    assert run_cli(capsys, argv) == (2, "", "imaguard-keyring: error: no password entered (end of input)\n")
    assert not (tmp_path / "x").exists()


# --- 5. password files: the first line, at most 64 KiB, via keyfile ---------------------------------------

def test_a_huge_password_file_is_refused_unread(tmp_path, capsys):
    big = tmp_path / "big"
    big.write_bytes(b"x" * (64 << 10) + b"\n")
    code, out, err = run_cli(capsys, ["ca", "create", "--out", str(tmp_path / "x"), "--key-type", "rsa2048",
                                      "--password-file", str(big)])
    assert (code, out, err) == (2, "", f"imaguard-keyring: error: {big}: larger than 65536 bytes, not a password\n")
    assert not (tmp_path / "x").exists()


def test_keyring_password_file_is_its_first_line_and_empty_is_refused(tmp_path, capsys):
    pw = tmp_path / "pw"
    pw.write_bytes(b"first\r\nsecond\n")
    assert main(["ca", "create", "--out", str(tmp_path / "ca"), "--key-type", "rsa2048", "--password-file",
                 str(pw)]) == 0
    one = tmp_path / "one"
    one.write_bytes(b"first")
    assert ceremony.load_authority(tmp_path / "ca", b"first").cert.subject == "CN=imaguard IMA CA"
    assert main(["cert", "issue", "--ca", str(tmp_path / "ca"), "--ca-password-file", str(one), "--out",
                 str(tmp_path / "k"), "--name", "a", "--key-type", "rsa2048", "--days", "5"]) == 0
    empty = tmp_path / "empty"
    empty.write_bytes(b"\nsecond\n")
    code, out, err = run_cli(capsys, ["ca", "create", "--out", str(tmp_path / "y"), "--key-type", "rsa2048",
                                      "--password-file", str(empty)])
    assert (code, out, err) == (2, "", f"imaguard-keyring: error: {empty}: the password file is empty\n")


# --- 6. missing parents are made 0700 whatever the umask ---------------------------------------------------

def test_ca_create_makes_missing_parents_0700_under_umask_000(tmp_path):
    old = os.umask(0)
    try:
        assert main(["ca", "create", "--out", str(tmp_path / "U" / "a" / "b" / "CA"), "--key-type", "rsa2048"]) == 0
    finally:
        os.umask(old)
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in sorted(tmp_path.rglob("*"))}
    assert modes == {"U": 0o700, "U/a": 0o700, "U/a/b": 0o700, "U/a/b/CA": 0o700, "U/a/b/CA/ca.der": 0o644,
                     "U/a/b/CA/ca.key": 0o600, "U/a/b/CA/ca.pem": 0o644}


# --- 7. small: --out a file, bundle --json ----------------------------------------------------------------

@pytest.mark.parametrize("out", ["afile", "afile/sub"])
def test_ca_create_out_a_file_says_not_a_directory(tmp_path, capsys, out):
    (tmp_path / "afile").write_text("")
    code, stdout, err = run_cli(capsys, ["ca", "create", "--out", str(tmp_path / out), "--key-type", "rsa2048"])
    assert (code, stdout, err) == (2, "", f"imaguard-keyring: error: {tmp_path / 'afile'}: not a directory\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_bundle_json_prints_one_json_document(ca_dir, tmp_path, capsys, monkeypatch):
    for name in ("ima", "auth"):
        assert main(["cert", "issue", "--ca", str(ca_dir), "--out", str(tmp_path / "k"), "--name", name,
                     "--key-type", "rsa2048", "--days", "5"]) == 0
    monkeypatch.setattr(keyring_cli, "open_source", lambda *_a, **_k: types.SimpleNamespace(package=lambda n: n))
    monkeypatch.setattr(keyring_cli, "write_bundle", lambda **kw: (kw["out_dir"] / f"{kw['pkg']}.bundle", 3))
    k = tmp_path / "k"
    argv = ["bundle", "p1", "p2", "--ima-key", str(k / "ima.key"), "--ima-cert", str(k / "ima.pem"),
            "--authority-key", str(k / "auth.key"), "--authority-cert", str(k / "auth.pem"), "--out", str(tmp_path)]
    ima_id = load_certificate(k / "ima.pem").key_id.hex()
    auth_id = load_certificate(k / "auth.pem").key_id.hex()
    code, out, err = run_cli(capsys, [*argv, "--json"])
    assert (code, err) == (0, "")
    assert json.loads(out) == {"bundles": [{"package": "p1", "bundle": str(tmp_path / "p1.bundle"), "files": 3},
                                           {"package": "p2", "bundle": str(tmp_path / "p2.bundle"), "files": 3}],
                               "ima_key_id": ima_id, "authority_key_id": auth_id}
    assert run_cli(capsys, argv) == (0, f"{tmp_path / 'p1.bundle'}: 3 files\n{tmp_path / 'p2.bundle'}: 3 files\n", "")
