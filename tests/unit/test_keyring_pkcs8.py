"""Encrypted private keys of the ceremony (PBES2, PBKDF2-HMAC-SHA256 at 600,000 iterations,
AES-256-CBC) and the [W-KEY-UNENCRYPTED] warning for keys written in clear.

Interoperability is checked against the readers that matter: ``openssl pkcs8`` decrypts the keys
and ``openssl asn1parse`` reads their fields; OpenSSL's own encoder, given the same salt and IV,
writes the same bytes; cryptography and ``imaguard.keys.load_private_key`` (what
``imaguard sign --key K --password-file F`` uses) open them. RSA-2048 keeps key generation fast;
each encrypted key costs ~0.2 s of PBKDF2 per write and per load.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from imaguard.errors import UsageError
from imaguard.keys import load_certificate, load_private_key
from imaguard_keyring import pkcs8
from imaguard_keyring.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from test_keyring_ceremony import openssl, run_cli  # the ceremony tests' openssl runner and CLI runner
from test_tooling import _violations  # the AST check of the pure modules, reused

PASSWORD = b"correct horse battery staple"
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
WARNING = ("imaguard-keyring: warning [W-KEY-UNENCRYPTED]: {path}: the private key is written unencrypted{why}; "
           "anyone who can read the file can sign with it. To write keys encrypted, give --password-file FILE "
           "or --ask-password.\n")

# `openssl asn1parse` of the key's algorithm identifier, hex dumps cut: the same for every key the
# ceremony writes (a 16-byte salt, 600000 = 0x0927C0 rounds, a 16-byte IV).
ALGORITHM_LINES = [
    "4:d=1  hl=2 l=  96 cons: SEQUENCE",
    "6:d=2  hl=2 l=   9 prim: OBJECT            :PBES2",
    "17:d=2  hl=2 l=  83 cons: SEQUENCE",
    "19:d=3  hl=2 l=  50 cons: SEQUENCE",
    "21:d=4  hl=2 l=   9 prim: OBJECT            :PBKDF2",
    "32:d=4  hl=2 l=  37 cons: SEQUENCE",
    "34:d=5  hl=2 l=  16 prim: OCTET STRING      [HEX DUMP]:",
    "52:d=5  hl=2 l=   3 prim: INTEGER           :0927C0",
    "57:d=5  hl=2 l=  12 cons: SEQUENCE",
    "59:d=6  hl=2 l=   8 prim: OBJECT            :hmacWithSHA256",
    "69:d=6  hl=2 l=   0 prim: NULL",
    "71:d=3  hl=2 l=  29 cons: SEQUENCE",
    "73:d=4  hl=2 l=   9 prim: OBJECT            :aes-256-cbc",
    "84:d=4  hl=2 l=  16 prim: OCTET STRING      [HEX DUMP]:",
]


def asn1(path: Path, *extra: str) -> list[str]:
    proc = openssl("asn1parse", "-in", str(path), *extra)
    assert proc.returncode == 0, proc.stderr
    return [line.strip() for line in proc.stdout.splitlines()]


def octet_strings(lines: list[str]) -> list[bytes]:
    return [bytes.fromhex(line.split("[HEX DUMP]:")[1]) for line in lines if "OCTET STRING" in line]


def public_der(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, SPKI)


def load_certificate_public(pem: Path) -> bytes:
    return x509.load_pem_x509_certificate(pem.read_bytes()).public_key().public_bytes(serialization.Encoding.DER, SPKI)


def write_password(tmp_path: Path, name: str = "pw", password: bytes = PASSWORD) -> Path:
    path = tmp_path / name
    path.write_bytes(password + b"\n")
    return path


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def encrypted_ca(tmp_path_factory):
    """A CA made by `imaguard-keyring ca create --password-file`, and the password file."""
    top = tmp_path_factory.mktemp("pkcs8")
    pw = write_password(top)
    assert main(["ca", "create", "--out", str(top / "ca"), "--key-type", "rsa2048", "--password-file", str(pw)]) == 0
    return top / "ca", pw


# --- the encoder: byte for byte what OpenSSL writes ---------------------------------------------------


def test_same_bytes_as_openssl_pkcs8_topk8_given_its_salt_and_iv(rsa_key, tmp_path):
    plain = rsa_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    (tmp_path / "plain.der").write_bytes(plain)
    pw = write_password(tmp_path)
    made = openssl("pkcs8", "-topk8", "-inform", "DER", "-in", str(tmp_path / "plain.der"), "-outform", "DER",
                   "-out", str(tmp_path / "openssl.der"), "-v2", "aes-256-cbc", "-v2prf", "hmacWithSHA256",
                   "-iter", "600000", "-passout", f"file:{pw}")
    assert made.returncode == 0, made.stderr
    theirs = (tmp_path / "openssl.der").read_bytes()
    salt, iv, _ = octet_strings(asn1(tmp_path / "openssl.der", "-inform", "DER"))
    assert (len(salt), len(iv)) == (8, 16)  # OpenSSL 3.0 draws an 8-byte salt; the ceremony 16
    params = pkcs8.Pbes2Parameters(salt=salt, iv=iv, iterations=600_000)
    assert pkcs8.encrypt_private_key_info(plain, PASSWORD, params) == theirs


def test_pem_is_the_der_under_the_encrypted_private_key_label(rsa_key):
    plain = rsa_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    params = pkcs8.Pbes2Parameters(salt=bytes(range(16)), iv=bytes(range(16, 32)))
    pem = pkcs8.encrypted_pem(plain, PASSWORD, params)
    lines = pem.decode().splitlines()
    assert (lines[0], lines[-1]) == ("-----BEGIN ENCRYPTED PRIVATE KEY-----", "-----END ENCRYPTED PRIVATE KEY-----")
    assert all(len(line) == 64 for line in lines[1:-2])
    assert 0 < len(lines[-2]) <= 64
    der = pkcs8.encrypt_private_key_info(plain, PASSWORD, params)
    assert serialization.load_der_private_key(der, PASSWORD).private_numbers() == rsa_key.private_numbers()
    assert public_der(serialization.load_pem_private_key(pem, PASSWORD)) == public_der(rsa_key)
    assert params.iterations == pkcs8.PBKDF2_ITERATIONS == 600_000


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"salt": b"s" * 7, "iv": b"i" * 16}, "salt must be 8 to 64 bytes, not 7"),
    ({"salt": b"s" * 16, "iv": b"i" * 8}, "IV must be 16 bytes, not 8"),
    ({"salt": b"s" * 16, "iv": b"i" * 16, "iterations": 0}, "iteration count 0 is out of range"),
])
def test_parameters_refuse_what_no_reader_should_get(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pkcs8.Pbes2Parameters(**kwargs)


def test_no_empty_password_and_only_der_input(rsa_key):
    params = pkcs8.Pbes2Parameters(salt=b"s" * 16, iv=b"i" * 16, iterations=1)
    plain = rsa_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    with pytest.raises(ValueError, match="empty password"):
        pkcs8.encrypt_private_key_info(plain, b"", params)
    with pytest.raises(ValueError, match="not a DER PKCS#8"):
        pkcs8.encrypt_private_key_info(b"-----BEGIN PRIVATE KEY-----", PASSWORD, params)


def test_pkcs8_module_is_pure():
    assert _violations(Path(pkcs8.__file__)) == []


# --- keys written by the ceremony ---------------------------------------------------------------------


def test_ca_key_fields_as_openssl_reads_them(encrypted_ca):
    ca, _ = encrypted_ca
    key = ca / "ca.key"
    text = key.read_text()
    assert text.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----\n")
    assert text.endswith("-----END ENCRYPTED PRIVATE KEY-----\n")
    lines = asn1(key)
    assert [re.sub(r"\[HEX DUMP\]:.*", "[HEX DUMP]:", line).rstrip() for line in lines[1:15]] == ALGORITHM_LINES
    assert re.fullmatch(r"102:d=1  hl=4 l=\s*\d+ prim: OCTET STRING      \[HEX DUMP\]:[0-9A-F]+", lines[15])
    assert len(lines) == 16


def test_openssl_decrypts_the_ca_key_to_the_certificates_key(encrypted_ca, tmp_path):
    ca, pw = encrypted_ca
    proc = openssl("pkcs8", "-in", str(ca / "ca.key"), "-passin", f"file:{pw}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("-----BEGIN PRIVATE KEY-----\n")
    plain = serialization.load_pem_private_key(proc.stdout.encode(), None)
    cert_public = load_certificate_public(ca / "ca.pem")
    assert public_der(plain) == cert_public
    wrong = write_password(tmp_path, "wrong", b"correct horse battery stapler")
    refused = openssl("pkcs8", "-in", str(ca / "ca.key"), "-passin", f"file:{wrong}")
    assert (refused.returncode, refused.stdout) == (1, "")


def test_cryptography_opens_it_with_the_password_only(encrypted_ca):
    ca, _ = encrypted_ca
    data = (ca / "ca.key").read_bytes()
    assert public_der(serialization.load_pem_private_key(data, PASSWORD)) == load_certificate_public(ca / "ca.pem")
    with pytest.raises(ValueError, match="Bad decrypt"):
        serialization.load_pem_private_key(data, PASSWORD + b"!")
    with pytest.raises(TypeError, match="Password was not given but private key is encrypted"):
        serialization.load_pem_private_key(data, None)


def test_issued_key_opens_with_imaguards_loader_and_signs(encrypted_ca, tmp_path, capsys):
    ca, pw = encrypted_ca
    code, _, err = run_cli(capsys, ["cert", "issue", "--ca", str(ca), "--ca-password-file", str(pw), "--out",
                                    str(tmp_path), "--name", "ima", "--key-type", "rsa2048", "--password-file", str(pw)])
    assert (code, err) == (0, "")  # encrypted: no warning
    key_path = tmp_path / "ima.key"
    assert "INTEGER           :0927C0" in asn1(key_path)[8]
    cert = load_certificate(tmp_path / "ima.pem")
    key = load_private_key(key_path, PASSWORD, cert)  # what `imaguard sign --key K --password-file F` calls
    signature = key.sign(b"digest", padding.PKCS1v15(), hashes.SHA256())
    cert.public_key.verify(signature, b"digest", padding.PKCS1v15(), hashes.SHA256())
    with pytest.raises(UsageError, match="wrong password for the key"):
        load_private_key(key_path, b"nope", cert)
    with pytest.raises(UsageError, match="the key is encrypted; give its password"):
        load_private_key(key_path, None, cert)


def test_every_key_gets_its_own_salt_and_iv(encrypted_ca, tmp_path):
    ca, pw = encrypted_ca
    assert main(["cert", "issue", "--ca", str(ca), "--ca-password-file", str(pw), "--out", str(tmp_path),
                 "--name", "second", "--key-type", "rsa2048", "--password-file", str(pw)]) == 0
    ca_salt, ca_iv, _ = octet_strings(asn1(ca / "ca.key"))
    salt, iv, _ = octet_strings(asn1(tmp_path / "second.key"))
    assert (len(salt), len(iv)) == (16, 16)
    assert len({ca_salt, salt, ca_iv, iv}) == 4


# --- [W-KEY-UNENCRYPTED] ------------------------------------------------------------------------------


def test_ca_create_in_clear_warns_naming_the_file(tmp_path, capsys):
    code, out, err = run_cli(capsys, ["ca", "create", "--out", str(tmp_path / "ca"), "--key-type", "rsa2048"])
    key = tmp_path / "ca" / "ca.key"
    assert (code, err) == (0, WARNING.format(path=key, why=""))
    assert out.startswith("created CA CN=imaguard IMA CA")
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")


def test_json_mode_keeps_the_warning_on_stderr(tmp_path, capsys):
    code, out, err = run_cli(capsys, ["ca", "create", "--out", str(tmp_path / "ca"), "--key-type", "rsa2048",
                                      "--json"])
    assert (code, err) == (0, WARNING.format(path=tmp_path / "ca" / "ca.key", why=""))
    assert json.loads(out)["encrypted"] is False


def test_password_file_silences_the_warning(tmp_path, capsys):
    pw = write_password(tmp_path)
    code, out, err = run_cli(capsys, ["ca", "create", "--out", str(tmp_path / "ca"), "--key-type", "rsa2048",
                                      "--password-file", str(pw), "--json"])
    assert (code, err, json.loads(out)["encrypted"]) == (0, "", True)


def test_cert_issue_in_clear_warns(encrypted_ca, tmp_path, capsys):
    ca, pw = encrypted_ca
    code, out, err = run_cli(capsys, ["cert", "issue", "--ca", str(ca), "--ca-password-file", str(pw), "--out",
                                      str(tmp_path), "--name", "plain", "--key-type", "rsa2048", "--json"])
    assert (code, err) == (0, WARNING.format(path=tmp_path / "plain.key", why=""))
    assert json.loads(out)["encrypted"] is False


def test_rotate_of_an_encrypted_key_in_clear_says_the_old_one_was_encrypted(encrypted_ca, tmp_path, capsys):
    ca, pw = encrypted_ca
    base = ["--ca", str(ca), "--ca-password-file", str(pw), "--key-type", "rsa2048"]
    assert main(["cert", "issue", *base, "--out", str(tmp_path), "--name", "old", "--password-file", str(pw)]) == 0
    code, out, err = run_cli(capsys, ["rotate", *base, "--old", str(tmp_path / "old.pem"), "--out",
                                      str(tmp_path / "new"), "--json"])
    assert code == 0
    doc = json.loads(out)
    new_key = tmp_path / "new" / f"old-{doc['certificate']['key_id']}.key"
    assert err == WARNING.format(path=new_key, why=f", while the old key {tmp_path / 'old.key'} is encrypted")
    assert doc["encrypted"] is False
    # Asked for, the successor is encrypted like any other key, and nothing is said.
    code, out, err = run_cli(capsys, ["rotate", *base, "--old", str(tmp_path / "old.pem"), "--out",
                                      str(tmp_path / "enc"), "--password-file", str(pw), "--json"])
    assert (code, err, json.loads(out)["encrypted"]) == (0, "", True)
    (successor,) = (tmp_path / "enc").glob("*.key")
    assert "INTEGER           :0927C0" in asn1(successor)[8]


def test_rotate_of_a_clear_key_in_clear_warns_plainly(tmp_path, capsys):
    assert main(["ca", "create", "--out", str(tmp_path / "ca"), "--key-type", "rsa2048"]) == 0
    assert main(["cert", "issue", "--ca", str(tmp_path / "ca"), "--out", str(tmp_path), "--name", "old",
                 "--key-type", "rsa2048"]) == 0
    code, _, err = run_cli(capsys, ["rotate", "--ca", str(tmp_path / "ca"), "--old", str(tmp_path / "old.pem"),
                                    "--out", str(tmp_path / "new"), "--name", "next"])
    assert (code, err) == (0, WARNING.format(path=tmp_path / "new" / "next.key", why=""))


@pytest.mark.parametrize("argv", [["ca", "create"], ["cert", "issue"], ["rotate"]])
def test_help_names_the_encryption_and_the_warning(capsys, argv):
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "PBKDF2-HMAC-SHA256 with 600000 iterations and a random 16-byte salt, AES-256-CBC" in text
    assert "a warning [W-KEY-UNENCRYPTED] names it" in text
