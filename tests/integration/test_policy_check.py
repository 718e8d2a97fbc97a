"""``imaguard policy check`` on real files (root tier): the gate names the one unsigned binary, then allows.

The tree lives on a fresh ext4 loop image (a filesystem the template appraises; ``/tmp`` may be
tmpfs, which it exempts). The host kernel has no IMA keyring, so ``--cert`` stands in for the
loaded keys (``keys-from: files``); files are signed with ``imaguard sign``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from rootlib import flip_one_byte, mounted

from imaguard.cli import policy as policy_cli
from imaguard.cli.main import Parser, main, run_guarded
from imaguard.ima.policy import Func, parse_policy

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.root

KEYS = Path(__file__).resolve().parents[1] / "data" / "keys"
KEY = KEYS / "ima-test-rsa2048.key"
CERT = KEYS / "ima-test-rsa2048.pem"
TEMPLATE = Path(__file__).resolve().parents[2] / "policies" / "appraise-exec.policy"
BPRM_RULE_LINE = next(r.line for r in parse_policy(TEMPLATE.read_text()).appraise_rules if r.func is Func.BPRM_CHECK)


def imaguard(argv: list[str]) -> int:
    # The lead registers cli.policy in cli/main.py; this builds the same parser around it.
    parser = Parser(prog="imaguard")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    policy_cli.register(sub)
    return run_guarded(parser, argv)


@pytest.fixture
def check(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., tuple[int, dict]]:
    # Pretend the kernel has no IMA keyring even where it has one, so the test is the same everywhere.
    monkeypatch.setattr(policy_cli.coverage, "kernel_key_ids", lambda: None)

    def run(root: Path, *extra: str) -> tuple[int, dict]:
        capsys.readouterr()
        code = imaguard(["policy", "check", "--template", "appraise-exec", "--cert", str(CERT),
                         "--root", str(root), "--json", *extra])  # fmt: skip
        out, err = capsys.readouterr()
        assert "Traceback" not in err, err
        return code, json.loads(out)

    return run


@pytest.fixture
def tree(ext4_dir: Path) -> dict[str, Path]:
    """Two programs, a shared library, a module, and a data file nobody executes."""
    (ext4_dir / "bin").mkdir()
    (ext4_dir / "lib").mkdir()
    files = {
        "prog": ext4_dir / "bin" / "prog",
        "tool": ext4_dir / "bin" / "tool",
        "lib": ext4_dir / "lib" / "libdemo.so.1",
        "module": ext4_dir / "lib" / "demo.ko",
    }
    shutil.copyfile("/bin/true", files["prog"])
    shutil.copyfile("/bin/false", files["tool"])
    files["prog"].chmod(0o755)
    files["tool"].chmod(0o755)
    files["lib"].write_bytes(b"\x7fELF not really a library\n")
    files["module"].write_bytes(b"not really a module\n")
    (ext4_dir / "README").write_text("data, not executable: out of scope\n")
    return files


def sign(*paths: Path) -> None:
    assert main(["sign", "--key", str(KEY), "--cert", str(CERT), *map(str, paths)]) == 0


def test_one_unsigned_binary_is_refused_by_name_then_all_signed_allows(
    ext4_dir: Path, tree: dict[str, Path], check: Callable[..., tuple[int, dict]], capsys: pytest.CaptureFixture[str]
) -> None:
    sign(tree["tool"], tree["lib"], tree["module"])

    code, doc = check(ext4_dir)
    assert code == 3
    assert (doc["decision"], doc["keys_from"], doc["in_scope"]) == ("refuse", "files", 4)
    assert doc["uncovered"] == [
        {"path": str(tree["prog"]), "reason": "no-signature", "detail": "no security.ima", "rule_line": BPRM_RULE_LINE}
    ]

    sign(tree["prog"])
    code, doc = check(ext4_dir)
    assert (code, doc["decision"], doc["in_scope"], doc["uncovered"]) == (0, "allow", 4, [])

    capsys.readouterr()
    assert imaguard(["policy", "check", "--stage", "enforce", "--cert", str(CERT), "--root", str(ext4_dir)]) == 0
    out = capsys.readouterr().out
    assert "keys-from: files (the kernel has no _ima or .ima keyring here; --cert stands in): " in out
    assert "allow: every file in scope would pass appraisal (4 files)\n" in out


def test_tampered_and_foreign_signatures(
    ext4_dir: Path, tree: dict[str, Path], check: Callable[..., tuple[int, dict]], keypair: Callable[..., object]
) -> None:
    sign(*tree.values())
    flip_one_byte(tree["prog"], 100)
    other = keypair("rsa2048", "foreign")
    assert main(["sign", "--key", str(other.key), "--cert", str(other.cert_pem), str(tree["tool"])]) == 0  # type: ignore[attr-defined]

    code, doc = check(ext4_dir)
    assert code == 3
    assert {u["path"]: u["reason"] for u in doc["uncovered"]} == {
        str(tree["prog"]): "bad-signature",
        str(tree["tool"]): "unknown-key",
    }


def test_overlay_lower_layer_files_are_in_scope(
    tmp_path: Path, ext4_dir: Path, check: Callable[..., tuple[int, dict]]
) -> None:
    # Regression: files from an overlay's lower layer report that layer's st_dev, and the walk took
    # them for another filesystem (walked "from its own mountpoint", which does not exist): 0 files.
    (ext4_dir / "bin").mkdir()
    shutil.copyfile("/bin/true", ext4_dir / "bin" / "prog")
    (ext4_dir / "bin" / "prog").chmod(0o755)
    with mounted(["-t", "tmpfs", "tmpfs"], tmp_path / "upper") as upper:
        (upper / "data").mkdir()
        (upper / "work").mkdir()
        opts = f"lowerdir={ext4_dir},upperdir={upper / 'data'},workdir={upper / 'work'}"
        with mounted(["-t", "overlay", "overlay", "-o", opts], tmp_path / "merged") as merged:
            assert (merged / "bin" / "prog").stat().st_dev != merged.stat().st_dev
            code, doc = check(merged)
            assert (code, doc["decision"], doc["in_scope"]) == (3, "refuse", 1)
            assert [(u["path"], u["reason"]) for u in doc["uncovered"]] == [(str(merged / "bin" / "prog"), "no-signature")]
            # A mount below the root is still walked once, from its own mountpoint, with its own filesystem.
            with mounted(["-t", "tmpfs", "tmpfs"], merged / "tmp"):
                assert check(merged)[1]["in_scope"] == 1


def test_elf_shared_object_by_header_is_in_scope(ext4_dir: Path, check: Callable[..., tuple[int, dict]]) -> None:
    # Regression: a 0644 shared object not named *.so (a Node.js addon) was out of scope, yet
    # dlopen maps it executable and the MMAP_CHECK rule would refuse it unsigned.
    libc = next(p for p in (Path("/lib/x86_64-linux-gnu/libc.so.6"), Path("/lib64/libc.so.6"),
                            *Path("/usr/lib").glob("*/libc.so.6")) if p.exists())  # fmt: skip
    (ext4_dir / "lib").mkdir()
    addon = ext4_dir / "lib" / "addon.node"
    shutil.copyfile(libc, addon)
    addon.chmod(0o644)
    (ext4_dir / "lib" / "notes.txt").write_text("plain data, long enough to hold an ELF header if it were one\n")
    debug = ext4_dir / "usr" / "lib" / "debug" / ".build-id" / "00"
    debug.mkdir(parents=True)
    shutil.copyfile(libc, debug / "0123.debug")  # separate debug info: read by gdb, never mapped
    code, doc = check(ext4_dir)
    mmap_line = next(r.line for r in parse_policy(TEMPLATE.read_text()).appraise_rules if r.func is Func.MMAP_CHECK)
    assert (code, doc["in_scope"]) == (3, 1)
    assert doc["uncovered"] == [
        {"path": str(addon), "reason": "no-signature", "detail": "no security.ima", "rule_line": mmap_line}
    ]
    sign(addon)
    assert check(ext4_dir)[1]["decision"] == "allow"
