"""A CA-signed revocation list makes verify refuse a key (revoked-key) and enroll re-sign with the new one."""

from __future__ import annotations

import json
import shutil

import pytest

from imaguard.cli.main import main
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
                         "--reason", "key-compromise"]) == 0
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
    common = ["--root", str(world.root), "--state-dir", str(world.state), "--no-fetch", "--json"]
    old = ["--source", f"local:{keys / 'old.key'}", "--cert", str(keys / "old.pem")]
    assert main(["enroll", *old, *common]) == 0
    capsys.readouterr()
    rl = tmp_path / "revocations.json"
    assert keyring_main(["revoke", "--ca", str(ca), "--list", str(rl), "--cert", str(keys / "old.pem")]) == 0
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
