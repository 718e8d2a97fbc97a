"""Enrollment from signature bundles: produced by imaguard-keyring, served from a directory or HTTP."""

from __future__ import annotations

import functools
import http.server
import json
import os
import threading

import pytest
from debworld import make_keys, make_world, reserialise_bundle

from imaguard.cli.main import main
from imaguard_keyring.cli import main as keyring_main

pytestmark = pytest.mark.root


@pytest.fixture
def world(tmp_path):
    with make_keys(tmp_path / "gnupg") as keys:
        yield make_world(tmp_path / "w", keys, repo_debs=["igt-1.0"], installed=["igt-1.0"], cached=["igt-1.0"])


@pytest.fixture
def bundles(world, keypair, tmp_path):
    ima, authority = keypair("rsa2048", "bundle-ima"), keypair("p256", "authority")
    out = tmp_path / "bundles"
    out.mkdir()
    code = keyring_main(["bundle", "igt", "--ima-key", str(ima.key), "--ima-cert", str(ima.cert_pem),
                         "--authority-key", str(authority.key), "--authority-cert", str(authority.cert_pem),
                         *world.root_args, "--state-dir", str(world.state), "--out", str(out)])
    assert code == 0
    return out, ima, authority


def _enroll(capsys, world, location, ima, authority):
    code = main(["enroll", "--source", f"bundle:{location}", "--cert", str(ima.cert_pem), "--authority-cert",
                 str(authority.cert_pem), *world.root_args, "--state-dir", str(world.state), "--no-fetch",
                 "--json"])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, json.loads(out.out)


def _reasons(doc):
    return {(f["path"], f["outcome"], f.get("reason", "")) for f in doc["files"] if f["outcome"] != "skipped"
            or f.get("reason") not in ("directory", "out-of-scope", "not-regular-file")}


def test_bundle_from_a_directory_labels_and_verifies(world, bundles, capsys):
    out, ima, authority = bundles
    assert sorted(p.name for p in out.iterdir()) == ["igt_1.0_all.bundle"]
    code, doc = _enroll(capsys, world, out, ima, authority)
    assert code == 0, doc
    assert {(s["outcome"], s["reason"]): s["files"] for s in doc["summary"]}[("signed", "")] == 1
    assert main(["verify", "--cert", str(ima.cert_pem), str(world.root / "usr/bin/igt")]) == 0


def test_bundle_over_http(world, bundles, capsys):
    out, ima, authority = bundles
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(out))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            code, doc = _enroll(capsys, world, f"http://127.0.0.1:{server.server_port}/", ima, authority)
        finally:
            server.shutdown()
    assert code == 0, doc
    assert main(["verify", "--cert", str(ima.cert_pem), str(world.root / "usr/bin/igt")]) == 0


def test_tampered_or_foreign_bundles_are_refused(world, bundles, keypair, capsys):
    out, ima, authority = bundles
    path = out / "igt_1.0_all.bundle"
    reserialise_bundle(path)
    code, doc = _enroll(capsys, world, out, ima, authority)
    assert code == 1
    assert ("/usr/bin/igt", "refused", "bundle-untrusted") in _reasons(doc)
    with pytest.raises(OSError, match="No data available"):
        os.getxattr(world.root / "usr/bin/igt", "security.ima")
    # A genuine bundle, but the host trusts another authority.
    path.unlink()
    code = keyring_main(["bundle", "igt", "--ima-key", str(ima.key), "--ima-cert", str(ima.cert_pem),
                         "--authority-key", str(keypair("p256", "rogue").key),
                         "--authority-cert", str(keypair("p256", "rogue").cert_pem),
                         *world.root_args, "--state-dir", str(world.state), "--out", str(out)])
    assert code == 0
    capsys.readouterr()
    code, doc = _enroll(capsys, world, out, ima, authority)
    assert code == 1
    assert ("/usr/bin/igt", "refused", "bundle-untrusted") in _reasons(doc)


def test_missing_bundle_is_skipped_not_refused(world, bundles, capsys, tmp_path):
    _out, ima, authority = bundles
    empty = tmp_path / "empty"
    empty.mkdir()
    code, doc = _enroll(capsys, world, empty, ima, authority)
    assert code == 0
    assert ("/usr/bin/igt", "skipped", "no-bundle") in _reasons(doc)


def test_bundle_source_needs_the_authority_certificate(world, bundles, capsys):
    out, ima, _authority = bundles
    code = main(["enroll", "--source", f"bundle:{out}", "--cert", str(ima.cert_pem), *world.root_args,
                 "--state-dir", str(world.state)])
    assert code == 2
    assert capsys.readouterr().err == (
        "imaguard: error: bundle sources need --authority-cert: the certificate that signs bundles\n")


def test_one_key_for_the_authority_and_the_ima_signatures_is_refused(world, keypair, tmp_path, capsys):
    # A bundle signature by the IMA key would also be an IMA signature (same scheme, same hash).
    ima = keypair("rsa2048", "bundle-ima")
    out = tmp_path / "bundles-shared"
    out.mkdir()
    code = keyring_main(["bundle", "igt", "--ima-key", str(ima.key), "--ima-cert", str(ima.cert_pem),
                         "--authority-key", str(ima.key), "--authority-cert", str(ima.cert_pem),
                         *world.root_args, "--state-dir", str(world.state), "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"imaguard-keyring: error: bundle authority certificate {ima.cert_pem} has the same public key as "
                          f"the IMA certificate {ima.cert_pem}: ")
    assert list(out.iterdir()) == []
    code = main(["enroll", "--source", f"bundle:{out}", "--cert", str(ima.cert_pem), "--authority-cert",
                 str(ima.cert_pem), *world.root_args, "--state-dir", str(world.state), "--no-fetch"])
    assert code == 2
    assert "has the same public key as the IMA certificate" in capsys.readouterr().err


def test_bundle_signs_with_encrypted_keys_and_their_password_files(world, keypair, tmp_path, capsys, monkeypatch):
    # Regression: bundle passed password=None, so an encrypted IMA or authority key could not be used.
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    monkeypatch.delenv("IMAGUARD_KEY_PASSWORD", raising=False)
    ima, authority = keypair("rsa2048", "bundle-ima"), keypair("p256", "authority")
    keys = {}
    for name, pair, password in (("ima", ima, b"ima secret"), ("authority", authority, b"authority secret")):
        plain = serialization.load_pem_private_key(pair.key.read_bytes(), None)
        keys[name] = tmp_path / f"{name}-encrypted.key"
        keys[name].write_bytes(plain.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.BestAvailableEncryption(password)))  # fmt: skip
        (tmp_path / f"{name}.pw").write_bytes(password + b"\n")
    out = tmp_path / "bundles-encrypted"
    out.mkdir()
    argv = ["bundle", "igt", "--ima-key", str(keys["ima"]), "--ima-cert", str(ima.cert_pem),
            "--authority-key", str(keys["authority"]), "--authority-cert", str(authority.cert_pem),
            *world.root_args, "--state-dir", str(world.state), "--out", str(out)]  # fmt: skip
    assert keyring_main(argv) == 2  # no password: a usage error naming the key, not a traceback
    assert str(keys["ima"]) in capsys.readouterr().err
    assert keyring_main([*argv, "--ima-password-file", str(tmp_path / "ima.pw")]) == 2
    assert str(keys["authority"]) in capsys.readouterr().err
    assert keyring_main([*argv, "--ima-password-file", str(tmp_path / "ima.pw"),
                         "--authority-password-file", str(tmp_path / "authority.pw")]) == 0  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["igt_1.0_all.bundle"]
    capsys.readouterr()
    code, doc = _enroll(capsys, world, out, ima, authority)
    assert code == 0, doc
