"""The password prompt for an encrypted key, on a real terminal (a pty), for PEM and DER keys.

Review: the prompt looked for ``ENCRYPTED`` in a PEM header only, so an encrypted DER key
(``openssl pkcs8 -topk8 -outform DER``) was never prompted for and failed with "give its password".
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from imaguard.cli.keyfile import looks_encrypted

IMAGUARD = str(Path(sys.executable).with_name("imaguard"))
PASSWORD = b"correct horse"


def _run_on_pty(argv: list[str], typed: bytes, timeout: float = 30.0) -> tuple[int, bytes]:
    """Run argv with a pty as its controlling terminal; type ``typed`` once it prompts."""
    pid, fd = pty.fork()
    if pid == 0:  # child
        os.execv(argv[0], argv)  # noqa: S606 - argv is the test's own, no shell wanted
    out = b""
    sent = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            if not sent and b"password for" in out:
                os.write(fd, typed + b"\n")
                sent = True
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out


def _cert(tmp_path: Path, key: rsa.RSAPrivateKey) -> Path:
    pem = tmp_path / "k.pem"
    pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert = tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-new", "-x509", "-key", str(pem), "-subj", "/CN=prompt test", "-days", "30",
                    "-addext", "keyUsage=critical,digitalSignature", "-addext", "subjectKeyIdentifier=hash",
                    "-out", str(cert)], check=True, capture_output=True)  # fmt: skip
    return cert


@pytest.mark.parametrize("encoding", [serialization.Encoding.PEM, serialization.Encoding.DER])
def test_sign_prompts_for_an_encrypted_key_on_a_terminal(tmp_path, encoding):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = _cert(tmp_path, key)
    enc = tmp_path / "enc.key"
    enc.write_bytes(
        key.private_bytes(encoding, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(PASSWORD))
    )
    target = tmp_path / "f"
    target.write_bytes(b"prompted\n")
    env_has = os.environ.pop("IMAGUARD_KEY_PASSWORD", None)
    try:
        code, out = _run_on_pty([IMAGUARD, "sign", "--key", str(enc), "--cert", str(cert), str(target)], PASSWORD)
    finally:
        if env_has is not None:
            os.environ["IMAGUARD_KEY_PASSWORD"] = env_has
    assert f"password for {enc}: ".encode() in out
    assert code == 0, out
    assert b"1 signed" in out
    assert os.getxattr(target, "security.ima")[:2] == b"\x03\x02"


def test_a_wrong_typed_password_is_a_usage_error(tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = _cert(tmp_path, key)
    enc = tmp_path / "enc.der"
    enc.write_bytes(
        key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(PASSWORD),
        )
    )
    target = tmp_path / "f"
    target.write_bytes(b"x")
    code, out = _run_on_pty([IMAGUARD, "sign", "--key", str(enc), "--cert", str(cert), str(target)], b"nope")
    assert code == 2, out
    assert f"imaguard: error: {enc}: wrong password for the key".encode() in out
    assert b"Traceback" not in out


def _forms() -> list[tuple[str, bytes, bool]]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    enc = serialization.BestAvailableEncryption(b"pw")
    clear = serialization.NoEncryption()
    pkcs8, trad = serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL
    pem, der = serialization.Encoding.PEM, serialization.Encoding.DER
    forms = []
    for name, key in (("rsa", rsa_key), ("ec", ec_key)):
        forms += [
            (f"{name} pem pkcs8 clear", key.private_bytes(pem, pkcs8, clear), False),
            (f"{name} pem pkcs8 encrypted", key.private_bytes(pem, pkcs8, enc), True),
            (f"{name} pem traditional clear", key.private_bytes(pem, trad, clear), False),
            (f"{name} pem traditional encrypted", key.private_bytes(pem, trad, enc), True),
            (f"{name} der pkcs8 clear", key.private_bytes(der, pkcs8, clear), False),
            (f"{name} der pkcs8 encrypted", key.private_bytes(der, pkcs8, enc), True),
            (f"{name} der traditional clear", key.private_bytes(der, trad, clear), False),
        ]
    return forms


@pytest.mark.parametrize(("name", "data", "encrypted"), _forms(), ids=lambda v: v if isinstance(v, str) else "")
def test_looks_encrypted_knows_every_form_cryptography_writes(name, data, encrypted):
    assert looks_encrypted(data[:4096]) is encrypted, name


@pytest.mark.parametrize("junk", [b"", b"\x30", b"\x30\x82", b"\x02\x01\x00", b"not a key", b"\x30\x03\x02\x01\x00"])
def test_looks_encrypted_is_false_for_short_or_foreign_bytes(junk):
    assert looks_encrypted(junk) is False
