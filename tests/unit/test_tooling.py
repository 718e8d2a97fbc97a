"""Strict tooling runs inside the suite, and pure modules stay free of I/O."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "agent" / "imaguard"

# Modules that take bytes and typed values and must never touch the OS (STYLE.md §3).
PURE_MODULES = [
    "errors.py",
    "config.py",
    "ima/xattr.py",
    "ima/policy.py",
    "ima/policy_model.py",
    "ima/gate.py",
    "keys/signer.py",
    "packages/model.py",
    "packages/rpmheader.py",
    "packages/debchain.py",
    "packages/aptsources.py",
    "sign/plan.py",
    "sign/bundle.py",
    "sign/memo.py",
    "keys/revocation.py",
    "ima/hostfacts.py",
    "ima/doctor.py",
    "ima/keyload.py",
    "ima/bootfiles.py",
    "ima/logstream.py",
    "ima/asciilog.py",
    "report/model.py",
    "report/facts.py",
    "report/build.py",
    "report/verify.py",
    "report/envelope.py",
    "report/tpmquote.py",
    "report/formats/keylime_policy.py",
    "report/formats/cel.py",
    "report/paths.py",
    "report/formats/text.py",
    "shown.py",
]
# Modules still to come are checked as soon as they exist (DESIGN.md §3 names them pure).
FUTURE_PURE = [
    "ima/templates.py",
    "ima/measurements.py",
    "ima/replay.py",
    "ima/policy.py",
    "ima/gate.py",
]
IO_MODULES = {
    "os", "io", "subprocess", "socket", "shutil", "pathlib", "fcntl", "ctypes", "tempfile", "glob",
    "sqlite3", "urllib.request", "http", "multiprocessing", "concurrent", "mmap", "select", "signal",
    "imaguard.ima.xattr_store", "imaguard.ima.securityfs", "imaguard.ima.keyring", "imaguard.cli",
    "imaguard.host", "imaguard.daemon", "imaguard.sign.apply", "imaguard.sign.files",
}
IO_CALLS = {"open", "print", "input", "exec", "eval", "__import__"}


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if any(name == m or name.startswith(m + ".") for m in IO_MODULES):
                found.append(f"{path.name}:{node.lineno} imports {name}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in IO_CALLS:
            found.append(f"{path.name}:{node.lineno} calls {node.func.id}()")
    return found


@pytest.mark.parametrize("module", PURE_MODULES + [m for m in FUTURE_PURE if (PACKAGE / m).exists()])
def test_pure_module_does_no_io(module):
    assert _violations(PACKAGE / module) == []


def test_layering_check_catches_io(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom imaguard.ima import xattr_store\nopen('x')\n")
    assert _violations(bad) == [
        "bad.py:1 imports os",
        "bad.py:2 imports imaguard.ima.xattr_store",
        "bad.py:3 calls open()",
    ]


def test_package_imports_without_optional_bindings():
    # `import imaguard` and the CLI must work where python-apt, rpm and systemd are absent.
    code = (
        "import sys\n"
        "for m in ('apt_pkg','apt','rpm','systemd'): sys.modules[m] = None\n"
        "import imaguard.cli.main, imaguard.keys, imaguard.ima.xattr_store\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def _tool(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    found = str(exe) if exe.exists() else shutil.which(name)
    assert found, f"{name} is not installed in the test environment (see scripts/setup.sh)"
    return found


def test_mypy_strict():
    proc = subprocess.run(
        [_tool("mypy"), "--strict", "agent/imaguard", "keyring-tools/imaguard_keyring"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff():
    proc = subprocess.run([_tool("ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hash_command_does_not_import_the_world():
    # Start-up counts against every `imaguard hash|sign` run (bench/README.md): commands import
    # only their own module, and hashing needs no X.509 or HTTP code.
    code = (
        "import sys\n"
        "from imaguard.cli.main import build_parser\n"
        "build_parser(['hash', '/dev/null'])\n"
        "heavy = [m for m in ('cryptography.x509', 'urllib.request', 'imaguard.ima.policy', 'imaguard.cli.enroll')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True, text=True).stdout
    assert out.strip() == ""
