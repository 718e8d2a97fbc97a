"""What the shared runner (``cli.main.run_guarded``) does for every command: no option abbreviations,
and a reader that leaves (``imaguard … | head``) stops the work with one line on stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imaguard.cli.main import main

KEYS = Path(__file__).resolve().parents[1] / "data" / "keys"
KEY, CERT = KEYS / "ima-test-rsa2048.key", KEYS / "ima-test-rsa2048.pem"
IMAGUARD = Path(sys.executable).with_name("imaguard")


@pytest.mark.parametrize(
    ("argv", "unknown"),
    [
        # `--js` gave JSON on success but a text-only error: the runner looks for the literal --json.
        (["sign", "--key", "K", "--cert", "C", "F", "--js"], "--js"),
        (["verify", "--cert", "C", "F", "--verb"], "--verb"),
        # A dangerous option must be spelled out, never reached through a prefix.
        (["enroll", "--source", "local:K", "--unsafe", "--dry-run"], "--unsafe"),
        (["policy", "apply", "--stage", "enforce", "--unsafe-enforce"], "--unsafe-enforce"),
    ],
)
def test_option_abbreviations_are_refused(argv, unknown, capsys):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"imaguard: error: unrecognized arguments: {unknown}\n")


def test_keyring_tool_refuses_abbreviations_too(capsys):
    from imaguard_keyring.cli import main as keyring_main  # noqa: PLC0415

    assert keyring_main(["ca", "create", "--ou", "/nonexistent"]) == 2
    assert capsys.readouterr().err == (
        "imaguard-keyring: error: imaguard-keyring ca create: the following arguments are required: --out\n"
    )


@pytest.mark.root
def test_a_closed_output_stops_signing_and_says_so(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(3000):
        (tree / f"f{i:04d}").write_bytes(b"file %d\n" % i)
    proc = subprocess.Popen(
        [str(IMAGUARD), "sign", "--key", str(KEY), "--cert", str(CERT), "-r", "-v", str(tree)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # the reader leaves, as `| head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1
    assert first.startswith(b"signed   ")
    assert err == "imaguard: stopped: the output was closed (broken pipe); what was done before that stands\n"
    # Cut short, never half-written: every file is either signed and valid or has no label at all.
    verified = subprocess.run([str(IMAGUARD), "verify", "--cert", str(CERT), "-r", "--json", str(tree)],
                              capture_output=True, check=False)
    statuses = {(f["status"], f.get("reason")) for f in json.loads(verified.stdout)["files"]}
    assert statuses <= {("verified", None), ("failed", "no-signature")}, statuses


def _pipe_holding(data: bytes) -> str:
    """``/dev/fd/N`` of a pipe holding ``data`` (what `--key <(vault read …)` gives a command)."""
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    return f"/dev/fd/{r}"


@pytest.mark.root
def test_a_key_from_a_pipe_is_read_once(tmp_path, capsys):
    # It was read twice (a peek for an encrypted header, then the load): the load found the pipe
    # empty and said "not a PEM or DER private key".
    target = tmp_path / "f"
    target.write_bytes(b"content\n")
    assert main(["sign", "--key", _pipe_holding(KEY.read_bytes()), "--cert", str(CERT), str(target)]) == 0
    assert main(["verify", "--cert", str(CERT), str(target)]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.root
def test_an_encrypted_key_from_a_pipe_needs_a_password_given(tmp_path, capsys, monkeypatch):
    encrypted = subprocess.run(["openssl", "pkey", "-in", str(KEY), "-aes256", "-passout", "pass:secret"],
                               capture_output=True, check=True).stdout
    target = tmp_path / "f"
    target.write_bytes(b"content\n")
    monkeypatch.delenv("IMAGUARD_KEY_PASSWORD", raising=False)
    key = _pipe_holding(encrypted)
    assert main(["sign", "--key", key, "--cert", str(CERT), str(target)]) == 2
    assert capsys.readouterr().err == f"imaguard: error: {key}: the key is encrypted; give its password\n"
    monkeypatch.setenv("IMAGUARD_KEY_PASSWORD", "secret")
    assert main(["sign", "--key", _pipe_holding(encrypted), "--cert", str(CERT), str(target)]) == 0


def test_a_json_error_into_a_closed_pipe_is_still_one_line(tmp_path):
    # Audit: `… --json | true` ended in a BrokenPipeError traceback and exit 1 instead of the error's own.
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the command writes
    try:
        proc = subprocess.run([str(IMAGUARD), "verify", "--cert", str(tmp_path / "none.pem"), "--json", str(tmp_path)],
                              stdout=w, stderr=subprocess.PIPE, check=False)
    finally:
        os.close(w)
    assert (proc.returncode, proc.stderr.decode()) == (
        2, f"imaguard: error: {tmp_path}/none.pem: cannot read certificate: No such file or directory\n")


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (KeyboardInterrupt(), (130, "interrupted", "imaguard: interrupted")),
        (OSError(36, "File name too long", "/x/" + "a" * 300),
         (1, "os-error", "imaguard: error: /x/" + "a" * 300 + ": File name too long")),
    ],
)
def test_interrupts_and_stray_os_errors_keep_the_json_contract(raised, expected, monkeypatch, capsys):
    code, reason, line = expected
    from imaguard.cli import files  # noqa: PLC0415

    def handler(_args):
        raise raised

    monkeypatch.setattr(files, "_cmd_verify", handler)
    assert main(["verify", "--cert", "C", "F", "--json"]) == code
    out, err = capsys.readouterr()
    assert json.loads(out)["error"]["reason"] == reason
    assert err == line + "\n"
