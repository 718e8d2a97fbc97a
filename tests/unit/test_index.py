"""The SQLite digest index: lookups, per-package replacement, and crash safety (real SIGKILL)."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imaguard.digests import HashAlgo
from imaguard.errors import HostStateError, UsageError
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


class _Source:
    """The installed packages as a PackageSource sees them."""

    def __init__(self, installed: dict[InstalledPackage, list[PackageFile]]) -> None:
        self.installed = installed

    def packages(self):
        return iter(self.installed)

    def files(self, pkg):
        return iter(self.installed[pkg])


def test_replacing_a_package_drops_its_old_files(tmp_path):
    with DigestIndex.open(tmp_path) as index:
        index.replace_package(_pkg("a", "1"), [_file(b"/a", b"v1"), _file(b"/a-gone", b"gone")])
        index.replace_package(_pkg("a", "1"), [_file(b"/a", b"v1")])
        assert index.lookup(hashlib.sha256(b"gone").digest()) == []
        # An upgrade: the build pass indexes what is installed and drops the version that is not.
        assert index.build(_Source({_pkg("a", "2"): [_file(b"/a", b"v2")]})) == (1, 1)
        assert index.lookup(hashlib.sha256(b"v1").digest()) == []
        assert [h.version for h in index.lookup(hashlib.sha256(b"v2").digest())] == ["2"]


def test_versions_installed_side_by_side_are_all_indexed(tmp_path):
    # RPM install-only packages (kernels, their modules): every installed version's files are genuine.
    old, new = _pkg("kernel-modules", "6.1"), _pkg("kernel-modules", "6.2")
    installed = {old: [_file(b"/lib/modules/6.1/x.ko", b"6.1")], new: [_file(b"/lib/modules/6.2/x.ko", b"6.2")]}
    with DigestIndex.open(tmp_path) as index:
        assert index.build(_Source(installed)) == (2, 2)
        assert [h.version for h in index.lookup(hashlib.sha256(b"6.1").digest())] == ["6.1"]
        assert [h.version for h in index.lookup(hashlib.sha256(b"6.2").digest())] == ["6.2"]
        assert index.build(_Source({new: installed[new]})) == (1, 1)  # 6.1 removed
        assert index.lookup(hashlib.sha256(b"6.1").digest()) == []
        assert index.counts() == (1, 1)


def test_an_index_of_another_schema_is_refused_not_misread(tmp_path):
    db = sqlite3.connect(tmp_path / "index.sqlite")
    db.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                     "INSERT INTO meta VALUES ('schema', '1');")  # fmt: skip
    db.commit()
    db.close()
    with pytest.raises(HostStateError, match=r"index schema 1, expected 2; remove it to rebuild") as err:
        DigestIndex.open(tmp_path)
    assert err.value.reason == "index-schema"


def test_files_without_digest_are_not_indexed(tmp_path):
    with DigestIndex.open(tmp_path) as index:
        assert index.replace_package(_pkg("a"), [PackageFile(b"/usr", FileKind.DIRECTORY, Evidence.NONE)]) == 0


def test_unusable_state_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(HostStateError, match="cannot open the digest index") as err:
        DigestIndex.open(blocker / "state")
    assert err.value.reason == "index-error"


def test_a_reader_never_creates_an_index(tmp_path):
    state = tmp_path / "state"
    with pytest.raises(UsageError, match=r"state/index.sqlite: no digest index; build it with") as err:
        DigestIndex.open(state, read_only=True)
    assert err.value.reason == "no-index"
    assert not state.exists()


def test_a_reader_cannot_write(tmp_path):
    with DigestIndex.open(tmp_path) as index:
        index.replace_package(_pkg("a"), [_file(b"/a", b"a")])
    with DigestIndex.open(tmp_path, read_only=True) as index, pytest.raises(sqlite3.OperationalError, match="readonly"):
        index.replace_package(_pkg("b"), [_file(b"/b", b"b")])


@pytest.mark.parametrize(("content", "why"), [
    (None, "no schema marker"),  # another program's SQLite database
    (b"", "an empty database"),
    (b"just text\n" * 100, "not an SQLite database"),
])  # fmt: skip
@pytest.mark.parametrize("read_only", [True, False])
def test_a_file_that_is_not_an_imaguard_index_is_refused_untouched(tmp_path, content, why, read_only):
    # Not even the builder adds its tables to someone else's database.
    path = tmp_path / "index.sqlite"
    if content is None:
        db = sqlite3.connect(path)
        db.execute("create table x(a)")
        db.commit()
        db.close()
    else:
        path.write_bytes(content)
    before = path.read_bytes()
    with pytest.raises(UsageError) as err:
        DigestIndex.open(tmp_path, read_only=read_only)
    assert str(err.value) == (f"{path}: not an imaguard digest index ({why}); move it away and build one with "
                              "`imaguard packages index`")  # fmt: skip
    assert err.value.reason == "not-an-index"
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["index.sqlite"]


def test_a_new_index_appears_whole(tmp_path):
    # Built under a temporary name and linked into place: no leftovers, and readers accept it at once.
    DigestIndex.open(tmp_path / "state").close()
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["index.sqlite"]
    with DigestIndex.open(tmp_path / "state", read_only=True) as index:
        assert index.counts() == (0, 0)
        assert index._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)  # the test inspects the db


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
                # Each version written (one per killed writer: versions coexist until a build
                # pass) is there with all of its files, never some of them.
                assert all(count == 2000 + p for _version, count in rows), rows
