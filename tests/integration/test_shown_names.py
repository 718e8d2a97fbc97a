"""A file name with a newline cannot forge result lines in text output (review finding)."""

from __future__ import annotations

import json
from pathlib import Path

from imaguard.cli.main import main

KEYS = Path(__file__).resolve().parents[2] / "tests" / "data" / "keys"
EVIL = "evil\n  unknown-key          sshd  (injected)"


def _tree(tmp_path: Path) -> Path:
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / EVIL).write_bytes(b"x")
    (tree / EVIL).chmod(0o755)
    (tree / "back\\slash").write_bytes(b"y")
    return tree


def test_verify_and_hash_show_each_name_on_one_line(tmp_path, capsys):
    tree = _tree(tmp_path)
    assert main(["verify", "--cert", str(KEYS / "ima-test-rsa2048.pem"), "-r", "-j1", str(tree)]) == 3
    out = capsys.readouterr()
    assert out.err.splitlines() == [
        f"failed   {tree}/back\\\\slash [no-signature]: no security.ima",
        f"failed   {tree}/evil\\n  unknown-key          sshd  (injected) [no-signature]: no security.ima",
    ]
    assert main(["hash", "-r", "-j1", str(tree)]) == 0
    lines = capsys.readouterr().out.splitlines()
    # As sha256sum: an escaped name's line starts with a backslash.
    assert lines == [
        f"\\a1fce4363854ff888cff4b8e7875d600c2682390412a8cf79b37d0b11148b0fa  {tree}/back\\\\slash",
        f"\\2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881  {tree}/evil\\n  unknown-key"
        "          sshd  (injected)",
    ]
    # JSON keeps the exact name.
    assert main(["hash", "--json", "-j1", str(tree / EVIL)]) == 0
    assert json.loads(capsys.readouterr().out)["files"][0]["path"] == str(tree / EVIL)


def test_an_error_naming_such_a_file_is_one_line(tmp_path, capsys):
    missing = tmp_path / "a\nimaguard: error: forged"
    assert main(["policy", "show", "--file", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "a\\nimaguard: error: forged" in err


def test_the_enforce_gate_lists_each_file_on_one_line(tmp_path, capsys):
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin" / EVIL).write_bytes(b"x")
    (root / "usr/bin" / EVIL).chmod(0o755)
    assert main(["policy", "check", "--stage", "enforce", "--root", str(root),
                 "--cert", str(KEYS / "ima-test-rsa2048.pem")]) == 3  # fmt: skip
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert listed == [f"  no-signature         {root}/usr/bin/evil\\n  unknown-key          sshd  (injected)  "
                      "(rule line 79: no security.ima)"]  # fmt: skip
