"""Key, password and policy files are read with a limit, and their errors say what is wrong (review findings).

Regressions: ``--password-file`` on a disk image ended in an OverflowError traceback; ``sign --key
/dev/zero`` and ``policy show --file /dev/zero`` never finished (the whole "file" was read to look
for ENCRYPTED, or to parse); an empty password for an encrypted key was called "a password for a
key that is not encrypted"; a missing policy file printed Python's ``[Errno 2] …`` text.
No root needed: every case fails before any ``security.ima`` is touched.
"""

from __future__ import annotations

import pathlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from imaguard.cli.keyfile import MAX_PASSWORD_FILE_SIZE
from imaguard.cli.main import main
from imaguard.keys.material import MAX_KEY_FILE_SIZE

KEYS = Path(__file__).resolve().parents[1] / "data" / "keys"
PLAIN_KEY = KEYS / "ima-test-rsa2048.key"


@pytest.fixture
def no_whole_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A path the user names is never read whole: /dev/zero or a disk image would never end."""

    def refuse(self: Path, *_args: object, **_kwargs: object) -> bytes:
        raise AssertionError(f"{self} read whole")

    monkeypatch.setattr(pathlib.Path, "read_bytes", refuse)
    monkeypatch.setattr(pathlib.Path, "read_text", refuse)


def _encrypted(tmp_path: Path, encoding: serialization.Encoding = serialization.Encoding.PEM) -> Path:
    key = serialization.load_pem_private_key(PLAIN_KEY.read_bytes(), password=None)
    path = tmp_path / f"enc.{encoding.name.lower()}"
    path.write_bytes(key.private_bytes(encoding, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"secret")))  # fmt: skip
    return path


def _sign(tmp_path: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    target = tmp_path / "target"
    target.write_bytes(b"never signed: the key fails first\n")
    code = main(["sign", *argv, str(target)])
    return code, capsys.readouterr().err


def test_password_file_larger_than_a_password_is_a_usage_error(tmp_path, capsys):
    key = _encrypted(tmp_path)
    big = tmp_path / "big.img"
    with big.open("wb") as f:
        f.truncate(2 << 30)  # sparse: the size of the disk image that crashed it
    assert _sign(tmp_path, capsys, "--key", str(key), "--password-file", str(big)) == (
        2, f"imaguard: error: {big}: larger than {MAX_PASSWORD_FILE_SIZE} bytes, not a password\n")
    just_over = tmp_path / "long.txt"
    just_over.write_bytes(b"x" * (MAX_PASSWORD_FILE_SIZE + 1))
    assert _sign(tmp_path, capsys, "--key", str(key), "--password-file", str(just_over)) == (
        2, f"imaguard: error: {just_over}: larger than {MAX_PASSWORD_FILE_SIZE} bytes, not a password\n")


def test_key_on_dev_zero_is_refused_without_reading_it_whole(tmp_path, capsys, no_whole_reads, monkeypatch):
    monkeypatch.delenv("IMAGUARD_KEY_PASSWORD", raising=False)
    assert _sign(tmp_path, capsys, "--key", "/dev/zero") == (
        2, f"imaguard: error: /dev/zero: larger than {MAX_KEY_FILE_SIZE} bytes, not a private key\n")


@pytest.mark.parametrize("encoding", [serialization.Encoding.PEM, serialization.Encoding.DER])
def test_empty_password_for_an_encrypted_key_says_so(tmp_path, capsys, monkeypatch, encoding):
    key = _encrypted(tmp_path, encoding)
    message = f"imaguard: error: {key}: the key is encrypted and the password given is empty\n"
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    monkeypatch.delenv("IMAGUARD_KEY_PASSWORD", raising=False)
    assert _sign(tmp_path, capsys, "--key", str(key), "--password-file", str(empty)) == (2, message)
    newline_only = tmp_path / "newline"
    newline_only.write_bytes(b"\n")
    assert _sign(tmp_path, capsys, "--key", str(key), "--password-file", str(newline_only)) == (2, message)
    monkeypatch.setenv("IMAGUARD_KEY_PASSWORD", "")
    assert _sign(tmp_path, capsys, "--key", str(key)) == (2, message)


def test_password_for_a_plain_key_is_still_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("IMAGUARD_KEY_PASSWORD", "")
    assert _sign(tmp_path, capsys, "--key", str(PLAIN_KEY)) == (
        2, f"imaguard: error: {PLAIN_KEY}: the key is not encrypted but a password was given\n")


def test_policy_file_errors_name_the_file_like_the_rest_of_the_cli(tmp_path, capsys):
    missing = tmp_path / "nonexist"
    assert main(["policy", "show", "--file", str(missing)]) == 2
    assert capsys.readouterr().err == f"imaguard: error: {missing}: cannot read policy: No such file or directory\n"
    binary = tmp_path / "binary.policy"
    binary.write_bytes(b"measure func=\xff\n")
    assert main(["policy", "show", "--file", str(binary)]) == 2
    assert capsys.readouterr().err == f"imaguard: error: {binary}: not a policy: not UTF-8 (at byte offset 13)\n"


def test_policy_on_dev_zero_is_refused_without_reading_it_whole(capsys, no_whole_reads):
    assert main(["policy", "show", "--file", "/dev/zero"]) == 2
    assert capsys.readouterr().err == "imaguard: error: /dev/zero: larger than 1048576 bytes, not a policy\n"


def test_a_password_file_is_read_as_its_first_line_by_every_tool(tmp_path, capsys):
    """Regression (review): imaguard-keyring took a password file's first line and imaguard the
    whole file, so a key made with a two-line file did not open with that same file."""
    from imaguard.cli.keyfile import read_password_file  # noqa: PLC0415

    pw = tmp_path / "two.pw"
    pw.write_bytes(b"secret\r\n# a comment line\n")
    assert read_password_file(pw) == b"secret"
    key = _encrypted(tmp_path)
    target = tmp_path / "f"
    target.write_bytes(b"x")
    assert main(["sign", "--key", str(key), "--password-file", str(pw), str(target)]) == 0


def test_end_of_input_at_the_password_prompt_is_a_usage_error(monkeypatch):
    import getpass  # noqa: PLC0415

    from imaguard.cli.keyfile import ask_password  # noqa: PLC0415
    from imaguard.errors import UsageError  # noqa: PLC0415

    def eof(_prompt: str) -> str:
        raise EOFError

    monkeypatch.setattr(getpass, "getpass", eof)
    with pytest.raises(UsageError, match=r"^no password entered \(end of input\)$"):
        ask_password("password: ")
