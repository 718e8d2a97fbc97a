"""Keylime's own IMA code (PyPI keylime in .venv-peer, tests/peer/keylime_ima.py) judges the runtime policy
that ``imaguard report --format keylime-policy`` writes, against the lab's real measurement list."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from imaguard.cli.main import main
from imaguard.digests import HashAlgo
from imaguard.ima.measurements import iter_binary
from imaguard.packages.index import DigestIndex
from imaguard.packages.model import Evidence, FileKind, InstalledPackage, PackageFile

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "tests" / "data" / "lab"
PEER = ROOT / ".venv-peer" / "bin" / "python"
ADAPTER = ROOT / "tests" / "peer" / "keylime_ima.py"

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.skipif(not PEER.exists() and os.environ.get("IMAGUARD_LAB_REQUIRED") != "1", reason="no .venv-peer (scripts/setup.sh makes it)")]


def keylime(log: Path, policy: Path) -> tuple[int, dict[str, object]]:
    proc = subprocess.run([str(PEER), str(ADAPTER), str(log), "--policy", str(policy)], capture_output=True,
                          text=True, check=False, cwd="/", timeout=300)  # fmt: skip
    assert proc.returncode in (0, 3), proc.stderr
    doc: dict[str, object] = json.loads(proc.stdout)
    return proc.returncode, doc


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    """tpm2-tools ships /bin/tpm2 (dpkg's name; the kernel logs /usr/bin/tpm2) with the measured content."""
    tpm2 = next(e for e in iter_binary((LAB / "binary_runtime_measurements").read_bytes())
                if e.path == b"/usr/bin/tpm2")  # fmt: skip
    with DigestIndex.open(tmp_path / "state") as idx:
        idx.replace_package(InstalledPackage("tpm2-tools", "5.4-1", "amd64"), [
            PackageFile(b"/bin/tpm2", FileKind.REGULAR, Evidence.REPO_VERIFIED, tpm2.digest.digest, HashAlgo.SHA256),
            PackageFile(b"/usr/share/doc/tpm2-tools/x", FileKind.REGULAR, Evidence.LOCAL_DB, b"\x01" * 16,
                        HashAlgo.MD5)])  # fmt: skip
    return tmp_path / "state"


def test_keylime_accepts_package_files_and_signed_files_and_rejects_the_rest(index_dir, tmp_path):
    policy = tmp_path / "policy.json"
    argv = ["report", "--format", "keylime-policy", "--index", str(index_dir), "--file",
            str(LAB / "binary_runtime_measurements"), "--cert", str(LAB / "ima-rsa.cert.der"), "-o", str(policy)]
    assert main(argv) == 0
    doc = json.loads(policy.read_text())
    assert doc["digests"]["/usr/bin/tpm2"] == doc["digests"]["/bin/tpm2"]
    assert "/usr/share/doc/tpm2-tools/x" not in doc["digests"]  # an MD5 from dpkg is never policy
    assert list(doc["keyrings"]) == ["_ima"]
    # No package file lies under /opt on this host (nor in the index): excluded, Keylime accepts the log.
    assert "^/opt/" in doc["excludes"]
    code, verdict = keylime(LAB / "ascii_runtime_measurements", policy)
    assert (code, verdict["verdict"]) == (0, "accept")

    doc["excludes"] = []
    policy.write_text(json.dumps(doc))
    code, verdict = keylime(LAB / "ascii_runtime_measurements", policy)
    # signed-echo passes by its signature (the certificate is a verification key), tpm2 by digest;
    # the unsigned and the tampered copies in /opt are in no package and fail.
    assert code == 3
    messages = sorted(str(f["context"]["message"]) for f in verdict["failures"]
                      if str(f["id"]).endswith("not_in_allowlist"))  # type: ignore[index,union-attr]  # fmt: skip
    assert messages == ["File not found in allowlist: /opt/imaguard-lab/tampered-echo",
                        "File not found in allowlist: /opt/imaguard-lab/unsigned-echo"]  # fmt: skip


def test_without_the_certificate_the_key_and_the_signed_file_are_rejected(index_dir, tmp_path):
    policy = tmp_path / "policy.json"
    assert main(["report", "--format", "keylime-policy", "--index", str(index_dir), "--file",
                 str(LAB / "binary_runtime_measurements"), "-o", str(policy)]) == 0  # fmt: skip
    doc = json.loads(policy.read_text())
    assert (doc["keyrings"], doc["verification-keys"]) == ({}, "")
    doc["excludes"] = []
    policy.write_text(json.dumps(doc))
    code, verdict = keylime(LAB / "ascii_runtime_measurements", policy)
    assert code == 3
    paths = sorted({str(f["context"]["message"]).rsplit(" ", 1)[-1] for f in verdict["failures"]})  # type: ignore[index,union-attr]
    # The key the kernel measured into _ima is not allowed by the policy, so its signatures count for nothing.
    assert paths == ["/opt/imaguard-lab/signed-echo", "/opt/imaguard-lab/tampered-echo",
                     "/opt/imaguard-lab/unsigned-echo", "_ima"]  # fmt: skip
