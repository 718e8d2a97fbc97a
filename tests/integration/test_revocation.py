"""A CA-signed revocation list makes verify refuse a key (revoked-key) and enroll re-sign with the new one."""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import pytest

from imaguard.cli.keys_install import _revocation_state  # the one place that tells host from image
from imaguard.cli.main import main
from imaguard.keys.revocation_store import load_revoked
from imaguard_keyring.cli import main as keyring_main

pytestmark = pytest.mark.root


@pytest.fixture
def ceremony(tmp_path):
    ca, keys = tmp_path / "CA", tmp_path / "K"
    assert keyring_main(["ca", "create", "--out", str(ca), "--key-type", "rsa2048"]) == 0
    assert keyring_main(["cert", "issue", "--ca", str(ca), "--out", str(keys), "--name", "old"]) == 0
    assert keyring_main(["cert", "issue", "--ca", str(ca), "--out", str(keys), "--name", "new"]) == 0
    return ca, keys


def _verify(capsys, *argv):
    code = main(["verify", "--json", *argv])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, json.loads(out.out), out.err


def test_verify_refuses_a_revoked_key_and_a_tampered_list(ceremony, tmp_path, capsys):
    ca, keys = ceremony
    target = tmp_path / "tool"
    shutil.copy("/usr/bin/true", target)
    assert main(["sign", "--key", str(keys / "old.key"), "--cert", str(keys / "old.pem"), str(target)]) == 0
    capsys.readouterr()
    rl = tmp_path / "revocations.json"
    assert keyring_main(["revoke", "--ca", str(ca), "--list", str(rl), "--cert", str(keys / "old.pem"),
                         "--reason", "key-compromise", "--new"]) == 0
    capsys.readouterr()
    code, doc, _ = _verify(capsys, "--cert", str(keys / "old.pem"), str(target))
    assert code == 0  # without the list the signature is fine
    assert doc["files"][0]["status"] == "verified"
    code, doc, _ = _verify(capsys, "--cert", str(keys / "old.pem"), "--revocation-list", str(rl),
                           "--revocation-ca", str(ca / "ca.pem"), str(target))
    assert code == 3
    assert doc["files"][0]["reason"] == "revoked-key"
    # A list that does not verify is an error, never "nothing revoked".
    env = json.loads(rl.read_bytes())
    env["signatures"][0]["sig"] = env["signatures"][0]["sig"][::-1]
    rl.write_text(json.dumps(env))
    code, doc, err = _verify(capsys, "--cert", str(keys / "old.pem"), "--revocation-list", str(rl),
                             "--revocation-ca", str(ca / "ca.pem"), str(target))
    assert code == 3
    assert doc["error"]["reason"] in ("bad-revocation-list", "bad-envelope-signature")
    assert err.count("\n") == 1


def test_revocation_list_needs_its_ca(ceremony, tmp_path, capsys):
    _ca, keys = ceremony
    code = main(["verify", "--cert", str(keys / "old.pem"), "--revocation-list", str(tmp_path / "x"), "/usr/bin/true"])
    assert code == 2
    assert capsys.readouterr().err == (
        "imaguard: error: --revocation-list needs --revocation-ca: the CA certificate that signs it\n")


def test_enroll_resigns_what_a_revoked_key_signed_and_refuses_to_sign_with_it(ceremony, tmp_path, capsys):
    from debworld import make_keys, make_world  # noqa: PLC0415 - only this test needs a dpkg root

    ca, keys = ceremony
    with make_keys(tmp_path / "gnupg") as gpg:
        world = make_world(tmp_path / "w", gpg, repo_debs=["igt-1.0"], installed=["igt-1.0"], cached=["igt-1.0"])
    common = [*world.root_args, "--state-dir", str(world.state), "--no-fetch", "--json"]
    old = ["--source", f"local:{keys / 'old.key'}", "--cert", str(keys / "old.pem")]
    assert main(["enroll", *old, *common]) == 0
    capsys.readouterr()
    rl = tmp_path / "revocations.json"
    assert keyring_main(["revoke", "--ca", str(ca), "--list", str(rl), "--cert", str(keys / "old.pem"), "--new"]) == 0
    capsys.readouterr()
    revocation = ["--revocation-list", str(rl), "--revocation-ca", str(ca / "ca.pem")]
    assert main(["enroll", *old, *revocation, *common]) == 3
    assert json.loads(capsys.readouterr().out)["error"]["reason"] == "revoked-key"
    new = ["--source", f"local:{keys / 'new.key'}", "--cert", str(keys / "new.pem"), "--cert", str(keys / "old.pem")]
    assert main(["enroll", *new, *revocation, *common]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {(s["outcome"], s["reason"]): s["files"] for s in doc["summary"]}[("signed", "")] == 1
    binary = str(world.root / "usr/bin/igt")
    assert main(["verify", "--cert", str(keys / "new.pem"), binary]) == 0
    # The list enroll accepted is kept in its state directory: an older signed list (serial 1, which
    # does not revoke old.pem) is refused from now on, so the old key cannot be brought back.
    older = tmp_path / "serial1.json"
    assert keyring_main(["revoke", "--ca", str(ca), "--list", str(older), "--key-id", "01020304", "--new"]) == 0
    assert keyring_main(["revoke", "--ca", str(ca), "--list", str(rl), "--key-id", "05060708"]) == 0  # serial 2
    capsys.readouterr()
    assert main(["enroll", *new, *revocation, *common]) == 0  # serial 2 accepted and recorded
    capsys.readouterr()
    assert main(["enroll", *old, "--revocation-list", str(older), "--revocation-ca", str(ca / "ca.pem"), *common]) == 3
    assert json.loads(capsys.readouterr().out)["error"]["reason"] == "revocation-rollback"


def test_keys_install_refuses_to_keep_a_revoked_key_already_installed(ceremony, tmp_path, capsys):
    # Regression (review R2): installing a new key kept the revoked one in etc/keys/ima silently,
    # and with it in the keyring at every boot.
    from imaguard.ima import bootfiles  # noqa: PLC0415
    from imaguard.keys import load_certificate  # noqa: PLC0415

    ca, keys = ceremony
    root = tmp_path / "root"
    root.mkdir()
    assert main(["keys", "install", "--root", str(root), str(keys / "old.pem")]) == 0
    rl = tmp_path / "revocations.json"
    assert keyring_main(["revoke", "--ca", str(ca), "--list", str(rl), "--cert", str(keys / "old.pem"), "--new"]) == 0
    capsys.readouterr()
    key_dir = root / bootfiles.KEY_DIR
    old = key_dir / bootfiles.cert_file_name(load_certificate(keys / "old.pem").key_id)
    new = key_dir / bootfiles.cert_file_name(load_certificate(keys / "new.pem").key_id)
    revocation = ["--revocation-list", str(rl), "--revocation-ca", str(ca / "ca.pem")]
    assert main(["keys", "install", "--root", str(root), str(keys / "new.pem"), *revocation]) == 3
    assert capsys.readouterr().err == (
        f"imaguard: refused: {old}: revoked-key: key {old.name[9:17]} is on the revocation list and already "
        "installed: this install would keep it, loaded at every boot; remove the file (then rebuild the "
        "initramfs) to retire the key\nimaguard: error: nothing was installed\n")
    assert sorted(key_dir.iterdir()) == [old]
    # a file there that cannot be checked is refused too; once the revoked key is removed, the install goes on
    junk = key_dir / "imaguard-junk.der"
    junk.write_bytes(b"not a certificate")
    old.unlink()
    assert main(["keys", "install", "--root", str(root), str(keys / "new.pem"), *revocation, "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["refused"][0]["reason"] == "unchecked-key"
    junk.unlink()
    assert main(["keys", "install", "--root", str(root), str(keys / "new.pem"), *revocation]) == 0
    assert sorted(key_dir.iterdir()) == [new]


def test_keys_install_refuses_an_older_revocation_list(ceremony, tmp_path, capsys):
    # Regression: nothing recorded the serial accepted, so a replayed older signed list un-revoked keys.
    from imaguard.keys.revocation import parse_ca_certificate  # noqa: PLC0415
    from imaguard.keys.revocation_store import accepted_list_path  # noqa: PLC0415

    ca, keys = ceremony
    root = tmp_path / "root"
    root.mkdir()
    rl = tmp_path / "revocations.json"
    assert keyring_main(["revoke", "--ca", str(ca), "--list", str(rl), "--key-id", "01020304", "--new"]) == 0
    old_list = tmp_path / "serial1.json"
    shutil.copy(rl, old_list)
    assert keyring_main(["revoke", "--ca", str(ca), "--list", str(rl), "--cert", str(keys / "old.pem")]) == 0
    capsys.readouterr()
    install = ["keys", "install", "--root", str(root), str(keys / "new.pem"), "--revocation-ca", str(ca / "ca.pem")]
    assert main([*install, "--revocation-list", str(rl)]) == 0
    capsys.readouterr()
    state = root / "var/lib/imaguard"
    (record,) = state.iterdir()
    ca_key_id = parse_ca_certificate((ca / "ca.pem").read_bytes(), "ca").key_id
    assert record == accepted_list_path(state, ca_key_id)
    assert record.read_bytes() == base64.b64decode(json.loads(rl.read_bytes())["payload"])
    assert main([*install, "--revocation-list", str(old_list)]) == 3
    assert capsys.readouterr().err == (
        f"imaguard: error: {old_list}: revocation list serial 1 is older than the accepted serial 2 (recorded in "
        f"{record}); refusing an older revocation list\n")
    assert sorted(state.iterdir()) == [record]


def test_verify_checks_the_recorded_list_and_writes_nothing(ceremony, tmp_path, capsys):
    # Regression: verify took any signed list, so a replayed older one un-revoked a key for it.
    ca, keys = ceremony
    target = tmp_path / "tool"
    shutil.copy("/usr/bin/true", target)
    assert main(["sign", "--key", str(keys / "old.key"), "--cert", str(keys / "old.pem"), str(target)]) == 0
    rl = tmp_path / "revocations.json"
    assert keyring_main(["revoke", "--ca", str(ca), "--list", str(rl), "--key-id", "01020304", "--new"]) == 0
    old_list = tmp_path / "serial1.json"
    shutil.copy(rl, old_list)
    assert keyring_main(["revoke", "--ca", str(ca), "--list", str(rl), "--cert", str(keys / "old.pem")]) == 0
    root = tmp_path / "root"
    root.mkdir()
    ca_opts = ["--revocation-ca", str(ca / "ca.pem")]
    assert main(["keys", "install", "--root", str(root), str(keys / "new.pem"), *ca_opts, "--revocation-list", str(rl)]) == 0
    state = root / "var/lib/imaguard"
    recorded = {p: p.read_bytes() for p in state.iterdir()}
    capsys.readouterr()
    verify = ["--cert", str(keys / "old.pem"), "--state-dir", str(state), *ca_opts, str(target)]
    code, doc, err = _verify(capsys, *verify, "--revocation-list", str(old_list))
    assert code == 3
    assert doc["error"]["reason"] == "revocation-rollback"
    assert "revocation list serial 1 is older than the accepted serial 2" in err
    code, doc, _ = _verify(capsys, *verify, "--revocation-list", str(rl))
    assert (code, doc["files"][0]["reason"]) == (3, "revoked-key")
    assert {p: p.read_bytes() for p in state.iterdir()} == recorded
    # A host with no record yet: the list is taken and nothing is written (verify is read-only).
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o700)
    code, doc, _ = _verify(capsys, "--cert", str(keys / "old.pem"), "--state-dir", str(empty), *ca_opts,
                           "--revocation-list", str(old_list), str(target))  # fmt: skip
    assert (code, doc["files"][0]["status"]) == (0, "verified")
    assert list(empty.iterdir()) == []


def test_a_revocation_ca_without_a_list_is_a_usage_error(ceremony, capsys):
    _ca, keys = ceremony
    code = main(["verify", "--cert", str(keys / "old.pem"), "--revocation-ca", str(keys / "old.pem"), "/usr/bin/true"])
    assert code == 2
    assert capsys.readouterr().err == (
        "imaguard: error: --revocation-ca is the CA of a --revocation-list: give the list, or leave it out\n")


def test_a_refused_keys_install_records_nothing_and_state_dirs_ignore_the_umask(ceremony, tmp_path, capsys):
    """Regressions (review): a keys install refused for a revoked key still wrote the record of the
    accepted list ("nothing was installed"); under umask 000 var/ and var/lib/ came out 0777."""
    import stat  # noqa: PLC0415

    ca, keys = ceremony
    rl = tmp_path / "revocations.json"
    assert keyring_main(["revoke", "--ca", str(ca), "--list", str(rl), "--cert", str(keys / "old.pem"), "--new"]) == 0
    root = tmp_path / "root"
    root.mkdir()
    opts = ["--revocation-list", str(rl), "--revocation-ca", str(ca / "ca.pem")]
    assert main(["keys", "install", "--root", str(root), str(keys / "old.pem"), *opts]) == 3
    assert list(root.iterdir()) == []
    old = os.umask(0)
    try:
        assert main(["keys", "install", "--root", str(root), str(keys / "new.pem"), *opts]) == 0
    finally:
        os.umask(old)
    modes = {d: stat.S_IMODE((root / d).stat().st_mode) for d in ("var", "var/lib", "var/lib/imaguard")}
    assert modes == {"var": 0o755, "var/lib": 0o755, "var/lib/imaguard": 0o700}
    assert len(list((root / "var/lib/imaguard").iterdir())) == 1
    capsys.readouterr()


def test_a_host_state_dir_is_followed_through_symlinks_and_must_be_roots_alone(ceremony, tmp_path, capsys):
    """Review: keys install on the host itself walked /var/lib/imaguard without following symlinks
    (an image's rule), so a host whose /var is a symlink was refused; and the host's record of the
    newest list accepted was not checked for who can write it (whoever can, can remove the record
    and with it the rollback check)."""
    assert _revocation_state(Path("/")) == (Path("/var/lib/imaguard"), None)
    assert _revocation_state(tmp_path) == (Path("var/lib/imaguard"), tmp_path)

    ca, keys = ceremony
    target = tmp_path / "tool"
    shutil.copy("/usr/bin/true", target)
    assert main(["sign", "--key", str(keys / "new.key"), "--cert", str(keys / "new.pem"), str(target)]) == 0
    rl = tmp_path / "revocations.json"
    assert keyring_main(["revoke", "--ca", str(ca), "--list", str(rl), "--key-id", "01020304", "--new"]) == 0
    real = tmp_path / "elsewhere" / "var"
    real.mkdir(parents=True)
    (tmp_path / "var").symlink_to(real)  # like a host whose /var is a symlink to another disk
    state = tmp_path / "var" / "lib" / "imaguard"
    argv = ["--cert", str(keys / "new.pem"), "--state-dir", str(state), "--revocation-ca", str(ca / "ca.pem"),
            "--revocation-list", str(rl), str(target)]  # fmt: skip
    # What keys load and keys install --root / call to record the list (both need a kernel or the host's /etc).
    assert load_revoked(rl, ca / "ca.pem", state) == frozenset({bytes.fromhex("01020304")})
    assert next(p.name for p in (real / "lib" / "imaguard").iterdir()).startswith("revocation-accepted-")
    capsys.readouterr()
    code, doc, _ = _verify(capsys, *argv)
    assert (code, doc["files"][0]["status"]) == (0, "verified")
    (real / "lib" / "imaguard").chmod(0o777)
    code, doc, err = _verify(capsys, *argv)
    assert code == 1
    assert doc["error"]["reason"] == "unsafe-state-dir"
    assert f"{state}: the state directory is writable by other users (mode 0777)" in err


def _revoked_and_recorded(ceremony, tmp_path, capsys):
    """A file signed by key ``old``, then ``old`` revoked and the list recorded in a state dir."""
    ca, keys = ceremony
    target = tmp_path / "tool"
    shutil.copy("/usr/bin/true", target)
    assert main(["sign", "--key", str(keys / "old.key"), "--cert", str(keys / "old.pem"), str(target)]) == 0
    rl = tmp_path / "revocations.json"
    assert keyring_main(["revoke", "--ca", str(ca), "--list", str(rl), "--cert", str(keys / "old.pem"), "--new"]) == 0
    state = tmp_path / "state"
    assert load_revoked(rl, ca / "ca.pem", state)  # what keys load / enroll do: check and record
    capsys.readouterr()
    return keys, target, state


def test_a_recorded_list_stays_in_force_when_no_list_is_given(ceremony, tmp_path, capsys):
    """Audit: leaving --revocation-list out made the record of the accepted list count for nothing,
    so verify and enroll (a cron job written before revocation existed) took a revoked key again."""
    keys, target, state = _revoked_and_recorded(ceremony, tmp_path, capsys)
    code, doc, _ = _verify(capsys, "--cert", str(keys / "old.pem"), "--state-dir", str(state), str(target))
    assert (code, doc["files"][0]["reason"]) == (3, "revoked-key")
    # A damaged record fails closed, named, instead of counting as "nothing revoked".
    record = next(state.iterdir())
    record.write_text("{")
    code, doc, err = _verify(capsys, "--cert", str(keys / "old.pem"), "--state-dir", str(state), str(target))
    assert (code, doc["error"]["reason"]) == (1, "revocation-state")
    assert "the record of a revocation list accepted is damaged" in err


def test_a_state_dir_given_that_is_not_there_is_a_usage_error(ceremony, tmp_path, capsys):
    """Audit: `verify --state-dir TYPO` read as "nothing recorded", so a recorded revoked key verified."""
    keys, target, state = _revoked_and_recorded(ceremony, tmp_path, capsys)
    for wrong in (tmp_path / "stat", target):  # a typo, and a file
        code, doc, err = _verify(capsys, "--cert", str(keys / "old.pem"), "--state-dir", str(wrong), str(target))
        assert (code, doc) == (2, {"error": {"reason": "state-dir", "message": f"{wrong}: --state-dir is not a directory"}})
        assert err == f"imaguard: error: {wrong}: --state-dir is not a directory\n"
    code, doc, _ = _verify(capsys, "--cert", str(keys / "old.pem"), "--state-dir", str(state), str(target))
    assert (code, doc["files"][0]["reason"]) == (3, "revoked-key")
