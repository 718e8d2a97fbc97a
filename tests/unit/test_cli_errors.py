"""User mistakes end in one clear line on stderr, no traceback, and the right exit code (issue 2, item 7).

No root needed: every case fails before any ``security.ima`` is touched. Keys and certificates are
made with ``cryptography`` once per module.
"""

from __future__ import annotations

import datetime
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from imaguard.cli.main import main

PEM = serialization.Encoding.PEM
PKCS8 = serialization.PrivateFormat.PKCS8


def _cert(key, *, digital_signature=True):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imaguard cli-errors test")])
    now = datetime.datetime.now(datetime.UTC)
    usage = x509.KeyUsage(
        digital_signature=digital_signature, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=not digital_signature, crl_sign=False,
        encipher_only=False, decipher_only=False,
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(usage, critical=True)
        .sign(key, hashes.SHA256())
    )


class Files:
    """Every key, certificate and password file the tests feed the CLI, written once."""

    def __init__(self, d):
        self.dir = d
        good = rsa.generate_private_key(65537, 2048)
        other = rsa.generate_private_key(65537, 2048)
        self.key = self._key("good.key", good)
        self.cert = self._cert("good.pem", good)
        self.other_cert = self._cert("other.pem", other)
        self.no_digsig_cert = self._cert("no-digsig.pem", good, digital_signature=False)
        self.encrypted_pem = self._write(
            "encrypted.key", good.private_bytes(PEM, PKCS8, serialization.BestAvailableEncryption(b"right"))
        )
        self.encrypted_der = self._write(
            "encrypted-der.key",
            good.private_bytes(serialization.Encoding.DER, PKCS8, serialization.BestAvailableEncryption(b"right")),
        )
        self.right_password = self._write("right.txt", b"right\n")
        self.wrong_password = self._write("wrong.txt", b"wrong\n")
        self.bad_pem = self._write("bad.key", b"-----BEGIN PRIVATE KEY-----\nnot base64 at all!\n-----END PRIVATE KEY-----\n")
        self.bad_cert = self._write(
            "bad.pem", b"-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n"
        )
        rsa1024 = rsa.generate_private_key(65537, 1024)
        self.rsa1024_key = self._key("rsa1024.key", rsa1024)
        self.rsa1024_cert = self._cert("rsa1024.pem", rsa1024)
        p521 = ec.generate_private_key(ec.SECP521R1())
        self.p521_key = self._key("p521.key", p521)
        self.p521_cert = self._cert("p521.pem", p521)
        self.ed25519_key = self._key("ed25519.key", ed25519.Ed25519PrivateKey.generate())
        self.target = self._write("target", b"a file that is never signed by these tests\n")
        self.missing = d / "no-such-file"

    def _write(self, name, data):
        path = self.dir / name
        path.write_bytes(data)
        return path

    def _key(self, name, key):
        return self._write(name, key.private_bytes(PEM, PKCS8, serialization.NoEncryption()))

    def _cert(self, name, key, **kw):
        return self._write(name, _cert(key, **kw).public_bytes(PEM))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return Files(tmp_path_factory.mktemp("cli-errors"))


@pytest.fixture(autouse=True)
def _no_password_from_environment(monkeypatch):
    monkeypatch.delenv("IMAGUARD_KEY_PASSWORD", raising=False)


def run(capsys, *argv):
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def run_json(capsys, *argv):
    code, out, err = run(capsys, *argv, "--json")
    return code, json.loads(out), err


def assert_usage_error(capsys, argv, message, reason):
    """Exit 2, exactly ``imaguard: error: MESSAGE`` on stderr, nothing on stdout; with --json the reason."""
    code, out, err = run(capsys, *argv)
    assert (code, out, err) == (2, "", f"imaguard: error: {message}\n")
    code, doc, err = run_json(capsys, *argv)
    assert (code, doc, err) == (2, {"error": {"reason": reason, "message": message}}, f"imaguard: error: {message}\n")


# --- missing file -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["sign", "verify"])
def test_missing_file_is_named_on_stderr(command, files, capsys):
    argv = ["sign", "--key", files.key] if command == "sign" else ["verify", "--cert", files.cert]
    code, _out, err = run(capsys, *argv, files.missing)
    assert code == 1
    # One line that names the file and why; the summary alone ("1 failed (1 missing)") does not say which.
    assert err == f"failed   {files.missing} [missing]: No such file or directory\n"


@pytest.mark.parametrize("command", ["sign", "verify"])
def test_missing_file_json(command, files, capsys):
    argv = ["sign", "--key", files.key] if command == "sign" else ["verify", "--cert", files.cert]
    code, doc, err = run_json(capsys, *argv, files.missing)
    assert (code, err) == (1, "")
    assert doc["files"] == [
        {"path": str(files.missing), "status": "failed", "reason": "missing",
         "detail": f"{files.missing}: No such file or directory"}
    ]
    assert (doc["reasons"], doc["exit_code"]) == ({"missing": 1}, 1)


# --- key passwords ------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["pem", "der"])
def test_wrong_password(form, files, capsys):
    key = files.encrypted_pem if form == "pem" else files.encrypted_der
    assert_usage_error(
        capsys,
        ["sign", "--key", key, "--password-file", files.wrong_password, files.target],
        f"{key}: wrong password for the key",
        "key-password",
    )


@pytest.mark.parametrize("form", ["pem", "der"])
def test_encrypted_key_without_password(form, files, capsys):
    key = files.encrypted_pem if form == "pem" else files.encrypted_der
    assert_usage_error(
        capsys, ["sign", "--key", key, files.target], f"{key}: the key is encrypted; give its password", "key-password"
    )


def test_password_for_an_unencrypted_key(files, capsys):
    assert_usage_error(
        capsys,
        ["sign", "--key", files.key, "--password-file", files.right_password, files.target],
        f"{files.key}: the key is not encrypted but a password was given",
        "key-password",
    )


def test_missing_password_file(files, capsys):
    assert_usage_error(
        capsys,
        ["sign", "--key", files.encrypted_pem, "--password-file", files.missing, files.target],
        f"{files.missing}: cannot read password: No such file or directory",
        "usage",
    )


# --- bad files ----------------------------------------------------------------------------------


def test_bad_pem_key(files, capsys):
    assert_usage_error(
        capsys, ["sign", "--key", files.bad_pem, files.target], f"{files.bad_pem}: not a PEM or DER private key", "bad-key"
    )


def test_missing_key_file(files, capsys):
    assert_usage_error(
        capsys,
        ["sign", "--key", files.missing, files.target],
        f"{files.missing}: cannot read private key: No such file or directory",
        "unreadable",
    )


@pytest.mark.parametrize("command", ["sign", "verify"])
def test_bad_pem_certificate(command, files, capsys):
    argv = ["sign", "--key", files.key, "--cert", files.bad_cert] if command == "sign" else [
        "verify", "--cert", files.bad_cert]
    code, out, err = run(capsys, *argv, files.target)
    assert (code, out) == (2, "")
    # Not the parser's internal dump (it printed "(error parsing asn1 value: ParseError { kind: … })").
    assert err == f"imaguard: error: {files.bad_cert}: a damaged PEM certificate\n"
    code, doc, _err = run_json(capsys, *argv, files.target)
    assert (code, doc["error"]["reason"]) == (2, "bad-certificate")


def test_a_key_given_as_certificate_and_the_reverse_are_named(files, tmp_path, capsys):
    code, _out, err = run(capsys, "verify", "--cert", files.key, files.target)
    assert (code, err) == (2, f"imaguard: error: {files.key}: a private key, not a certificate (give its X.509 "
                              "certificate)\n")
    code, _out, err = run(capsys, "sign", "--key", files.cert, "--cert", files.cert, files.target)
    assert (code, err) == (2, f"imaguard: error: {files.cert}: a certificate, not a private key\n")
    other = tmp_path / "csr.pem"
    other.write_bytes(b"-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n")
    code, _out, err = run(capsys, "verify", "--cert", str(other), files.target)
    assert (code, err) == (2, f"imaguard: error: {other}: a PEM CERTIFICATE REQUEST, not an X.509 certificate\n")
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x00\x01 not a certificate")
    code, _out, err = run(capsys, "verify", "--cert", str(garbage), files.target)
    assert (code, err) == (2, f"imaguard: error: {garbage}: not a PEM or DER X.509 certificate\n")


# --- keys and certificates unfit for IMA --------------------------------------------------------


def test_certificate_of_another_key(files, capsys):
    assert_usage_error(
        capsys,
        ["sign", "--key", files.key, "--cert", files.other_cert, files.target],
        f"{files.other_cert}: certificate does not belong to the key {files.key}",
        "key-cert-mismatch",
    )


def test_rsa_1024_key(files, capsys):
    assert_usage_error(
        capsys,
        ["sign", "--key", files.rsa1024_key, files.target],
        f"{files.rsa1024_key}: RSA-1024 is unfit for IMA (use RSA-2048, 3072 or 4096)",
        "unfit-key",
    )


def test_rsa_1024_certificate(files, capsys):
    assert_usage_error(
        capsys,
        ["verify", "--cert", files.rsa1024_cert, files.target],
        f"{files.rsa1024_cert}: RSA-1024 is unfit for IMA (use RSA-2048, 3072 or 4096)",
        "unfit-key",
    )


def test_ec_p521_key(files, capsys):
    assert_usage_error(
        capsys,
        ["sign", "--key", files.p521_key, files.target],
        f"{files.p521_key}: EC curve secp521r1 is unfit for IMA (use P-256 or P-384)",
        "unfit-key",
    )


def test_ec_p521_certificate(files, capsys):
    assert_usage_error(
        capsys,
        ["verify", "--cert", files.p521_cert, files.target],
        f"{files.p521_cert}: EC curve secp521r1 is unfit for IMA (use P-256 or P-384)",
        "unfit-key",
    )


def test_ed25519_key(files, capsys):
    assert_usage_error(
        capsys,
        ["sign", "--key", files.ed25519_key, files.target],
        f"{files.ed25519_key}: Ed25519PrivateKey keys are unfit for IMA (use RSA or EC P-256/P-384)",
        "unfit-key",
    )


@pytest.mark.parametrize("command", ["sign", "verify"])
def test_certificate_without_digital_signature_usage(command, files, capsys):
    argv = ["sign", "--key", files.key, "--cert", files.no_digsig_cert] if command == "sign" else [
        "verify", "--cert", files.no_digsig_cert]
    assert_usage_error(
        capsys,
        [*argv, files.target],
        f"{files.no_digsig_cert}: certificate key usage lacks digitalSignature, the kernel will not verify with it",
        "unfit-key",
    )


# --- the traceback is there for those who ask ---------------------------------------------------


def test_verbose_shows_the_traceback(files, capsys):
    """Control for every 'no traceback' assertion above: --verbose does print one."""
    capsys.readouterr()
    code = main(["sign", "--verbose", "--key", str(files.bad_pem), str(files.target)])
    _out, err = capsys.readouterr()
    assert code == 2
    assert err.startswith("Traceback (most recent call last):\n")
    assert err.endswith(f"imaguard: error: {files.bad_pem}: not a PEM or DER private key\n")
