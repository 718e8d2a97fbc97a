"""imaguard-keyring audit 2: bundle checks every package first, revocation lists that do not verify exit 3,
over-long paths, CA validity dates, empty subjects, revoke --cert of another CA, rotate's derived name,
bundle --help, unprotected CA keys. No root; P-256 keeps key generation fast."""

from __future__ import annotations

import datetime
import json
import sys
import types
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from imaguard.errors import UsageError
from imaguard.packages.model import InstalledPackage
from imaguard_keyring import ceremony
from imaguard_keyring import cli as keyring_cli
from imaguard_keyring.cli import main
from imaguard_keyring.profiles import KeyType, build_ca_certificate

sys.path.insert(0, str(Path(__file__).parent))
from test_keyring_ceremony import run_cli  # the ceremony tests' CLI runner


def errors_only(err: str) -> str:
    """stderr without the [W-EC-KEY] warnings P-256 keys draw."""
    return "".join(line for line in err.splitlines(keepends=True) if "[W-EC-KEY]" not in line)


@pytest.fixture(scope="module")
def top(tmp_path_factory) -> Path:
    top = tmp_path_factory.mktemp("audit2")
    assert main(["ca", "create", "--out", str(top / "ca"), "--key-type", "p256"]) == 0
    for name in ("ima", "auth"):
        assert main(["cert", "issue", "--ca", str(top / "ca"), "--out", str(top / "k"), "--name", name,
                     "--key-type", "p256", "--days", "5"]) == 0
    return top


# --- finding 3: bundle resolves every package before it signs or writes anything -----------------------------

def _fake_source() -> types.SimpleNamespace:
    def package(name: str) -> InstalledPackage:
        if name == "typo":
            raise UsageError("package typo is not installed", reason="not-installed")
        return InstalledPackage(name, "1.0", "amd64")
    return types.SimpleNamespace(package=package, files=lambda pkg: iter(()))


def _bundle_argv(top: Path, out: Path, *packages: str) -> list[str]:
    k = top / "k"
    return ["bundle", *packages, "--ima-key", str(k / "ima.key"), "--ima-cert", str(k / "ima.pem"),
            "--authority-key", str(k / "auth.key"), "--authority-cert", str(k / "auth.pem"), "--out", str(out)]


def test_bundle_with_an_unknown_package_writes_nothing(top, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(keyring_cli, "open_source", lambda *_a, **_k: _fake_source())
    code, out, err = run_cli(capsys, [*_bundle_argv(top, tmp_path / "B", "pkga", "typo"), "--json"])
    assert (code, json.loads(out), err) == (
        2, {"error": {"reason": "not-installed", "message": "package typo is not installed"}},
        "imaguard-keyring: error: package typo is not installed\n")
    assert not (tmp_path / "B").exists()


def test_bundle_names_a_repeated_package_once(top, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(keyring_cli, "open_source", lambda *_a, **_k: _fake_source())
    bundle = tmp_path / "B" / "pkga_1.0_amd64.bundle"
    assert run_cli(capsys, _bundle_argv(top, tmp_path / "B", "pkga", "pkga")) == (0, f"{bundle}: 0 files\n", "")
    assert sorted(p.name for p in (tmp_path / "B").iterdir()) == [bundle.name]


# --- finding 4: a list without signatures, truncated, empty or garbage does not verify: exit 3 -----------------

@pytest.fixture(scope="module")
def published(top) -> Path:
    rl = top / "pub" / "rl.json"
    rl.parent.mkdir()
    assert main(["revoke", "--ca", str(top / "ca"), "--list", str(rl), "--key-id", "1a2b3c4d", "--new"]) == 0
    return rl


def _damaged(published: Path, tmp_path: Path, how: str) -> Path:
    data = published.read_bytes()
    if how == "no-signatures":
        doc = json.loads(data)
        doc["signatures"] = []
        data = json.dumps(doc).encode()
    damaged = {"no-signatures": data, "truncated": data[:100], "empty": b"", "garbage": b"not json\n"}[how]
    path = tmp_path / f"{how}.json"
    path.write_bytes(damaged)
    return path


@pytest.mark.parametrize("case", [
    ("no-signatures", "DSSE envelope without signatures"),
    ("truncated", "not a DSSE envelope (not JSON: "),
    ("empty", "not a DSSE envelope (not JSON: "),
    ("garbage", "not a DSSE envelope (not JSON: "),
])
@pytest.mark.parametrize("command", ["show", "revoke"])
def test_a_list_that_does_not_verify_exits_3(published, tmp_path, capsys, case, command):
    how, message = case
    ca = published.parent.parent / "ca"
    path = _damaged(published, tmp_path, how)
    before = path.read_bytes()
    argv = (["revocations", "show", "--ca", str(ca), "--list", str(path), "--json"] if command == "show" else
            ["revoke", "--ca", str(ca), "--list", str(path), "--key-id", "22222222", "--json"])
    code, out, err = run_cli(capsys, argv)
    doc = json.loads(out)
    assert (code, doc["error"]["reason"]) == (3, "bad-revocation-list")
    assert doc["error"]["message"].startswith(f"{path}: {message}")
    assert err == f"imaguard-keyring: error: {doc['error']['message']}\n"
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


# --- finding 6: a path the OS refuses to look at (too long here; EACCES, EIO alike) is one line, exit 2 --------

LONG = "a" * 300  # one component longer than NAME_MAX: ENAMETOOLONG from stat


@pytest.mark.parametrize("which", ["ca-create-out", "cert-issue-out", "cert-issue-ca", "revoke-list",
                                   "revoke-ca", "bundle-out"])
def test_an_over_long_path_is_one_line_exit_2(top, tmp_path, capsys, which, monkeypatch):
    monkeypatch.setattr(keyring_cli, "open_source", lambda *_a, **_k: _fake_source())
    long = tmp_path / LONG
    ca = top / "ca"
    argv = {
        "ca-create-out": ["ca", "create", "--out", str(long), "--key-type", "p256"],
        "cert-issue-out": ["cert", "issue", "--ca", str(ca), "--out", str(long), "--name", "a", "--key-type", "p256"],
        "cert-issue-ca": ["cert", "issue", "--ca", str(long), "--out", str(tmp_path / "k"), "--name", "a"],
        "revoke-list": ["revoke", "--ca", str(ca), "--list", str(long), "--key-id", "12345678"],
        "revoke-ca": ["revoke", "--ca", str(long), "--list", str(tmp_path / "rl.json"), "--key-id", "12345678"],
        "bundle-out": _bundle_argv(top, long, "pkga"),
    }[which]
    code, out, err = run_cli(capsys, [*argv, "--json"])
    message = f"{long}: File name too long"
    assert (code, json.loads(out), err) == (2, {"error": {"reason": "bad-path", "message": message}},
                                            f"imaguard-keyring: error: {message}\n")
    assert list(tmp_path.iterdir()) == []


def test_bundle_out_a_file_is_a_usage_error(top, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(keyring_cli, "open_source", lambda *_a, **_k: _fake_source())
    (tmp_path / "afile").write_text("")
    code, out, err = run_cli(capsys, _bundle_argv(top, tmp_path / "afile", "pkga"))
    assert (code, out, err) == (2, "", f"imaguard-keyring: error: {tmp_path / 'afile'}: not a directory\n")


# --- finding 7: no certificate from a CA not valid yet; an expired CA is called expired --------------------

def _dated_ca(directory: Path, start: datetime.datetime, days: int) -> x509.Certificate:
    key = KeyType.P256.generate()
    cert = build_ca_certificate(key, "dated CA", days, start)
    directory.mkdir(mode=0o700)
    (directory / "ca.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    (directory / "ca.key").chmod(0o600)
    (directory / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert


def test_cert_issue_refuses_a_ca_not_valid_yet(tmp_path, capsys):
    now = datetime.datetime.now(datetime.UTC)
    cert = _dated_ca(tmp_path / "CAfuture", now + datetime.timedelta(days=100), 3650)
    code, out, err = run_cli(capsys, ["cert", "issue", "--ca", str(tmp_path / "CAfuture"), "--out", str(tmp_path / "K"),
                                      "--name", "a", "--key-type", "p256", "--json"])
    doc = json.loads(out)["error"]
    assert (code, doc["reason"]) == (2, "ca-not-yet-valid")
    assert doc["message"].startswith(f"the CA is valid from {cert.not_valid_before:%Y-%m-%d %H:%M:%S}Z, not yet now (")
    assert doc["message"].endswith("): check this machine's clock, or the one that made the CA")
    assert errors_only(err) == f"imaguard-keyring: error: {doc['message']}\n"
    assert not (tmp_path / "K").exists()


def test_an_expired_ca_says_create_a_new_ca(tmp_path, capsys):
    now = datetime.datetime.now(datetime.UTC)
    cert = _dated_ca(tmp_path / "CAold", now - datetime.timedelta(days=400), 30)
    code, out, err = run_cli(capsys, ["cert", "issue", "--ca", str(tmp_path / "CAold"), "--out", str(tmp_path / "K"),
                                      "--name", "a", "--key-type", "p256", "--days", "1"])
    message = f"the CA expired on {cert.not_valid_after:%Y-%m-%d}: create a new CA"
    assert (code, out, errors_only(err)) == (2, "", f"imaguard-keyring: error: {message}\n")
    assert not (tmp_path / "K").exists()


# --- finding 11: an empty --subject is refused by all three commands, before a password is read ------------

@pytest.mark.parametrize("command", ["ca", "cert", "rotate"])
def test_an_empty_subject_is_refused_everywhere(top, tmp_path, capsys, command):
    argv = {
        "ca": ["ca", "create", "--out", str(tmp_path / "X"), "--key-type", "p256"],
        "cert": ["cert", "issue", "--ca", str(top / "ca"), "--out", str(tmp_path / "X"), "--name", "e",
                 "--key-type", "p256"],
        "rotate": ["rotate", "--ca", str(top / "ca"), "--old", str(top / "k" / "ima.pem"), "--out",
                   str(tmp_path / "X")],
    }[command]
    # a CA password file that does not exist: the subject is refused before it is read
    code, out, err = run_cli(capsys, [*argv, "--subject", "", "--json", *(
        ["--ca-password-file", str(tmp_path / "missing.pw")] if command != "ca" else [])])
    message = "the subject common name must be 1 to 64 characters"
    assert (code, json.loads(out), err) == (2, {"error": {"reason": "bad-subject", "message": message}},
                                            f"imaguard-keyring: error: {message}\n")
    assert not (tmp_path / "X").exists()


# --- finding 16: revoke --cert refuses a certificate another CA issued --------------------------------------

def test_revoke_refuses_a_certificate_of_another_ca(top, published, tmp_path, capsys):
    other = tmp_path / "other"
    assert main(["ca", "create", "--out", str(other / "ca"), "--key-type", "p256", "--subject", "Other CA"]) == 0
    assert main(["cert", "issue", "--ca", str(other / "ca"), "--out", str(other / "k"), "--name", "x",
                 "--key-type", "p256", "--days", "5"]) == 0
    before = published.read_bytes()
    ca_key_id = ceremony.load_ca_certificate(top / "ca").key_id.hex()
    code, out, err = run_cli(capsys, ["revoke", "--ca", str(top / "ca"), "--list", str(published),
                                      "--cert", str(other / "k" / "x.pem"), "--json"])
    message = f"{other / 'k' / 'x.pem'}: not issued by the CA CN=imaguard IMA CA (key id {ca_key_id})"
    assert (code, json.loads(out), err) == (2, {"error": {"reason": "wrong-ca", "message": message}},
                                            f"imaguard-keyring: error: {message}\n")
    assert published.read_bytes() == before


# --- finding 12: rotate names --old, not a --name nobody gave, and before the CA password ---------------------

@pytest.mark.parametrize("stem", ["my cert", "n" * 56])
def test_rotate_blames_the_old_file_name_not_a_name_never_given(top, tmp_path, capsys, stem):
    old = tmp_path / f"{stem}.pem"
    old.write_bytes((top / "k" / "ima.pem").read_bytes())
    code, out, err = run_cli(capsys, ["rotate", "--ca", str(top / "ca"), "--old", str(old), "--out", str(tmp_path / "R"),
                                      "--ca-password-file", str(tmp_path / "missing.pw"), "--json"])
    message = (f"--old {old}: the successor's default name {stem}-KEYID, from this file name, is not usable "
               "(1-64 letters, digits, '.', '_' or '-', not starting with a dot or dash, KEYID included): give --name")
    assert (code, json.loads(out), err) == (2, {"error": {"reason": "bad-name", "message": message}},
                                            f"imaguard-keyring: error: {message}\n")
    assert not (tmp_path / "R").exists()


# --- finding 15: bundle --help says what it replaces and writes, with FILE/DIR metavars and exit statuses -------

def test_bundle_help_says_what_it_replaces_and_writes(capsys):
    with pytest.raises(SystemExit) as done:
        main(["bundle", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("A bundle of the same package version already in --out is REPLACED (atomically)",
                   "--state-dir DIR where the package caches (apt-index/, deb-chain/, debs/) are read and written "
                   "(default /var/lib/imaguard)",
                   "--package-db {deb,rpm} package database (default: detected in --root)",
                   "--ima-key FILE", "--authority-cert FILE", "--out DIR", "--root DIR",
                   "Exit status: 0 bundles written, 1 failure", "(refused, shared-key)"):
        assert phrase in text


# --- finding 8: a CA key others can read, or a CA directory others can write, draws [W-CA-KEY-PERMS] -----------

@pytest.mark.parametrize("json_mode", [False, True])
def test_an_unprotected_ca_key_draws_a_warning(top, tmp_path, capsys, json_mode):
    ca = tmp_path / "CAbad"
    ca.mkdir()
    for name in ("ca.key", "ca.pem"):
        (ca / name).write_bytes((top / "ca" / name).read_bytes())
    (ca / "ca.key").chmod(0o644)
    ca.chmod(0o777)
    code, out, err = run_cli(capsys, ["cert", "issue", "--ca", str(ca), "--out", str(tmp_path / "K"), "--name", "a",
                                      "--key-type", "p256", *(["--json"] if json_mode else [])])
    assert code == 0
    assert json.loads(out)["certificate"]["files"] if json_mode else out.startswith("issued CN=a")
    warnings = [line for line in errors_only(err).splitlines() if "W-CA-KEY-PERMS" in line]
    assert warnings == [
        f"imaguard-keyring: warning [W-CA-KEY-PERMS]: {ca / 'ca.key'}: mode 0644: the CA private key is readable "
        f"by group or others; chmod 600 {ca / 'ca.key'}",
        f"imaguard-keyring: warning [W-CA-KEY-PERMS]: {ca}: mode 0777: the CA directory is writable by group or "
        f"others, who could replace its key or certificate; chmod 700 {ca}",
    ]


def test_a_protected_ca_key_draws_no_warning(top, tmp_path, capsys):
    code, _, err = run_cli(capsys, ["cert", "issue", "--ca", str(top / "ca"), "--out", str(tmp_path / "K"), "--name",
                                    "a", "--key-type", "p256"])
    assert code == 0
    assert "W-CA-KEY-PERMS" not in err


# --- revoke --reason is checked before the CA password is asked for -----------------------------------------

def test_revoke_refuses_a_bad_reason_before_asking_for_the_ca_password(top, tmp_path, capsys):
    argv = ["revoke", "--ca", str(top / "ca"), "--list", str(tmp_path / "rl.json"), "--key-id", "12345678", "--new",
            "--reason", "two\nlines", "--ca-password-file", str(tmp_path / "missing.pw"), "--json"]
    code, out, err = run_cli(capsys, argv)  # the password file does not exist: asked first, that would fail
    message = "--reason: reason must be one line of at most 200 printable characters"
    assert (code, json.loads(out), err) == (2, {"error": {"reason": "usage", "message": message}},
                                            f"imaguard-keyring: error: {message}\n")
    assert not (tmp_path / "rl.json").exists()
