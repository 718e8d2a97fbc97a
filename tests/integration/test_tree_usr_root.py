"""``imaguard sign -r`` / ``verify -r`` over a copy of /usr/bin and /usr/lib/x86_64-linux-gnu (acceptance 5).

Real package files (ELF binaries, libraries, scripts, symlink farms) copied with ``cp -a`` into a
private tmpfs. Every regular file must be signed and then verified; every symlink skipped with
``not-regular-file``; the console script exits 0.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from rootlib import get_ima, run

pytestmark = [pytest.mark.root, pytest.mark.slow]

KEYS = Path(__file__).resolve().parents[1] / "data" / "keys"
KEY = KEYS / "ima-test-rsa2048.key"
CERT_PEM = KEYS / "ima-test-rsa2048.pem"
CERT_DER = KEYS / "ima-test-rsa2048.der"
IMAGUARD = Path(sys.executable).with_name("imaguard")
SOURCES = [Path("/usr/bin"), Path("/usr/lib/x86_64-linux-gnu")]


def classify(top: Path) -> tuple[set[str], set[str], set[str]]:
    """(regular files, symlinks, anything else) below ``top``, by lstat, never following links."""
    regular, links, other = set(), set(), set()
    stack = [top]
    while stack:
        for entry in os.scandir(stack.pop()):
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISDIR(mode):
                stack.append(Path(entry.path))
            elif stat.S_ISREG(mode):
                regular.add(entry.path)
            elif stat.S_ISLNK(mode):
                links.add(entry.path)
            else:
                other.add(entry.path)
    return regular, links, other


def imaguard(*argv: str) -> tuple[int, dict]:
    proc = subprocess.run([str(IMAGUARD), *argv, "--json"], capture_output=True, text=True, timeout=300, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout)


@pytest.fixture
def usr_copy(tmpfs_dir):
    for src in SOURCES:
        dest = tmpfs_dir / src.relative_to("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        run(["cp", "-a", str(src), str(dest)], timeout=300)
    return tmpfs_dir / "usr"


def test_sign_and_verify_recursive_over_usr(usr_copy, evmctl):
    regular, links, other = classify(usr_copy)
    assert len(regular) > 1000
    assert len(links) > 100
    assert not other
    assert not {p for p in regular if get_ima(p) is not None}, "copy already carries security.ima"

    code, doc = imaguard("sign", "-r", "--key", str(KEY), "--cert", str(CERT_PEM), str(usr_copy))
    assert code == 0, {k: doc[k] for k in ("summary", "reasons")}
    results = {f["path"]: f for f in doc["files"]}
    assert len(results) == len(doc["files"]), "a path was reported twice"
    assert set(results) == regular | links
    assert {p for p in regular if results[p]["status"] != "signed"} == set()
    assert {(results[p]["key_id"], results[p]["algo"]) for p in regular} == {("17b7ae8b", "sha256")}
    assert {(results[p]["status"], results[p]["reason"]) for p in links} == {("skipped", "not-regular-file")}
    assert doc["summary"] == {"signed": len(regular), "skipped": len(links)}
    assert doc["reasons"] == {}
    # The labels are really there, and symlinks carry none.
    assert all(get_ima(p)[:3] == b"\x03\x02\x04" for p in regular)
    assert all(get_ima(p) is None for p in links)

    code, doc = imaguard("verify", "-r", "--cert", str(CERT_DER), str(usr_copy))
    assert code == 0, {k: doc[k] for k in ("summary", "reasons")}
    results = {f["path"]: f for f in doc["files"]}
    assert set(results) == regular | links
    assert {results[p]["status"] for p in regular} == {"verified"}
    assert {(results[p]["status"], results[p]["reason"]) for p in links} == {("skipped", "not-regular-file")}
    assert doc["summary"] == {"verified": len(regular), "skipped": len(links)}

    # evmctl agrees on a sample of real binaries and libraries.
    for path in sorted(regular)[:: max(1, len(regular) // 25)]:
        proc = run([evmctl, "ima_verify", "--key", str(CERT_DER), path], check=False)
        assert proc.returncode == 0, (path, proc.stdout, proc.stderr)
