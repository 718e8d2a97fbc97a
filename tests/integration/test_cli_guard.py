"""What the shared runner (``cli.main.run_guarded``) does for every command: no option abbreviations,
and a reader that leaves (``imaguard … | head``) stops the work with one line on stderr."""

from __future__ import annotations

import json
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
    assert err == "imaguard: stopped: the output was closed (broken pipe) before the command finished\n"
    # Cut short, never half-written: every file is either signed and valid or has no label at all.
    verified = subprocess.run([str(IMAGUARD), "verify", "--cert", str(CERT), "-r", "--json", str(tree)],
                              capture_output=True, check=False)
    statuses = {(f["status"], f.get("reason")) for f in json.loads(verified.stdout)["files"]}
    assert statuses <= {("verified", None), ("failed", "no-signature")}, statuses
