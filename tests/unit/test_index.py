"""The SQLite digest index: lookups, per-package replacement, and crash safety (real SIGKILL)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imaguard.digests import HashAlgo
from imaguard.errors import HostStateError
from imaguard.packages.index import DigestIndex
from imaguard.packages.model import Evidence, FileKind, InstalledPackage, PackageFile

ROOT = Path(__file__).resolve().parents[2]


def _pkg(name: str, version: str = "1.0") -> InstalledPackage:
    return InstalledPackage(name, version, "amd64", name, version, "test")


def _file(path: bytes, content: bytes, evidence: Evidence = Evidence.REPO_VERIFIED) -> PackageFile:
    return PackageFile(path, FileKind.REGULAR, evidence, hashlib.sha256(content).digest(), HashAlgo.SHA256)


def test_lookup_finds_every_owner(tmp_path):
    with DigestIndex.open(tmp_path) as index:
        index.replace_package(_pkg("a"), [_file(b"/usr/bin/a", b"same"), _file(b"/usr/share/a", b"a-only")])
        index.replace_package(_pkg("b"), [_file(b"/usr/bin/b \n\xff", b"same", Evidence.LOCAL_DB)])
        hits = index.lookup(hashlib.sha256(b"same").digest())
        assert [(h.name, h.path, h.evidence) for h in hits] == [
            ("a", b"/usr/bin/a", Evidence.REPO_VERIFIED),
            ("b", b"/usr/bin/b \n\xff", Evidence.LOCAL_DB),  # bytes paths round-trip
        ]
        assert index.lookup(hashlib.sha256(b"nothing").digest()) == []
        assert index.counts() == (2, 3)


def test_replacing_a_package_drops_its_old_files(tmp_path):
    with DigestIndex.open(tmp_path) as index:
        index.replace_package(_pkg("a", "1"), [_file(b"/a", b"v1")])
        index.replace_package(_pkg("a", "2"), [_file(b"/a", b"v2")])
        assert index.lookup(hashlib.sha256(b"v1").digest()) == []
        assert [h.version for h in index.lookup(hashlib.sha256(b"v2").digest())] == ["2"]


def test_files_without_digest_are_not_indexed(tmp_path):
    with DigestIndex.open(tmp_path) as index:
        assert index.replace_package(_pkg("a"), [PackageFile(b"/usr", FileKind.DIRECTORY, Evidence.NONE)]) == 0


def test_unusable_state_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(HostStateError, match="cannot open the digest index") as err:
        DigestIndex.open(blocker / "state")
    assert err.value.reason == "index-error"


_WRITER = """
import hashlib, sys
from pathlib import Path
from imaguard.digests import HashAlgo
from imaguard.packages.index import DigestIndex
from imaguard.packages.model import Evidence, FileKind, InstalledPackage, PackageFile
state, version = Path(sys.argv[1]), sys.argv[2]
with DigestIndex.open(state) as index:
    print("ready", flush=True)
    while True:
        for p in range(5):
            files = [PackageFile(b"/f%d" % i, FileKind.REGULAR, Evidence.REPO_VERIFIED,
                     hashlib.sha256(b"%s-%d-%d" % (version.encode(), p, i)).digest(), HashAlgo.SHA256)
                     for i in range(2000 + p)]
            index.replace_package(InstalledPackage("p%d" % p, version, "amd64"), files)
"""


def test_sigkill_mid_update_leaves_each_package_whole(tmp_path):
    for seed, delay in enumerate((0.05, 0.2, 0.35, 0.5)):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), str(seed)],
                                stdout=subprocess.PIPE, cwd=ROOT)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        with DigestIndex.open(tmp_path) as index:
            for p in range(5):
                rows = index._db.execute(  # the test inspects the raw tables
                    "SELECT p.version, count(*) FROM files f JOIN packages p ON p.id=f.package_id "
                    "WHERE p.name=? GROUP BY p.version", (f"p{p}",)).fetchall()
                # Either absent (never written) or exactly one version with all of its files.
                assert len(rows) <= 1
                if rows:
                    assert rows[0][1] == 2000 + p
