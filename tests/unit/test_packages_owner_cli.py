"""``imaguard packages owner`` and the readers of the digest index: they never create or alter an index,
refuse a file that is not one, and hash the file under ``--root``, not the host's."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from imaguard.cli.main import main
from imaguard.digests import HashAlgo
from imaguard.packages.index import DigestIndex
from imaguard.packages.model import Evidence, FileKind, InstalledPackage, PackageFile

ROOT = Path(__file__).resolve().parents[2]
LOG = ROOT / "tests" / "data" / "lab" / "binary_runtime_measurements"


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _index(state: Path, content: bytes) -> Path:
    """An index in which package ``fake`` owns /bin/ls with ``content``."""
    with DigestIndex.open(state) as index:
        index.replace_package(InstalledPackage("fake", "1", "amd64"), [
            PackageFile(b"/bin/ls", FileKind.REGULAR, Evidence.REPO_VERIFIED, hashlib.sha256(content).digest(),
                        HashAlgo.SHA256)])  # fmt: skip
    return state


def test_owner_without_an_index_says_so_and_creates_nothing(tmp_path, capsys):
    # Regression: a fresh --state-dir was created with an empty index, and every file became not-in-package.
    state = tmp_path / "fresh"
    assert main(["packages", "owner", "/bin/ls", "--state-dir", str(state)]) == 2
    assert capsys.readouterr().err == (f"imaguard: error: {state}/index.sqlite: no digest index; "
                                       "build it with `imaguard packages index`\n")  # fmt: skip
    assert not state.exists()


def _foreign_db(state: Path) -> None:
    state.mkdir()
    db = sqlite3.connect(state / "index.sqlite")
    db.execute("create table x(a)")
    db.commit()
    db.close()


@pytest.mark.parametrize("command", [
    ["report", "--file", str(LOG), "--no-processes", "--index"],
    ["packages", "owner", "/bin/ls", "--state-dir"],
])  # fmt: skip
def test_readers_refuse_another_programs_database_and_leave_it_alone(tmp_path, capsys, command):
    # Regression: imaguard's tables were added to it, and the report said `unknown` for every entry, exit 0.
    state = tmp_path / "idx"
    _foreign_db(state)
    before = _snapshot(state)
    assert main([*command, str(state)]) == 2
    assert capsys.readouterr().err == (f"imaguard: error: {state}/index.sqlite: not an imaguard digest index "
                                       "(no schema marker); move it away and build one with "
                                       "`imaguard packages index`\n")  # fmt: skip
    assert _snapshot(state) == before


@pytest.mark.parametrize("command", [
    ["report", "--file", str(LOG), "--no-processes", "--index"],
    ["packages", "owner", "/bin/ls", "--state-dir"],
])  # fmt: skip
def test_readers_refuse_an_empty_index_file_and_leave_it_empty(tmp_path, capsys, command):
    state = tmp_path / "idx"
    state.mkdir()
    (state / "index.sqlite").touch()
    assert main([*command, str(state)]) == 2
    assert capsys.readouterr().err == (f"imaguard: error: {state}/index.sqlite: not an imaguard digest index "
                                       "(an empty database); move it away and build one with "
                                       "`imaguard packages index`\n")  # fmt: skip
    assert _snapshot(state) == {"index.sqlite": b""}


def test_owner_hashes_the_file_under_root(tmp_path, capsys):
    # Regression: --root was ignored and the host's /bin/ls was hashed.
    state = _index(tmp_path / "state", b"fake\n")
    image = tmp_path / "image"
    (image / "bin").mkdir(parents=True)
    (image / "bin" / "ls").write_bytes(b"fake\n")
    (image / "usr").symlink_to("/")  # absolute, as in images: resolved inside the root, never the host's /
    argv = ["packages", "owner", "--root", str(image), "--state-dir", str(state)]
    assert main([*argv, "/bin/ls", "/usr/bin/ls"]) == 0
    assert capsys.readouterr().out == ("/bin/ls: fake=1/amd64 /bin/ls [repo-verified]\n"
                                       "/usr/bin/ls: fake=1/amd64 /bin/ls [repo-verified]\n")  # fmt: skip
    assert main([*argv, "/missing"]) == 1
    assert capsys.readouterr().err == f"{image}/missing: cannot open: no such file\n"


def test_owner_under_root_wants_absolute_paths(tmp_path, capsys):
    state = _index(tmp_path / "state", b"fake\n")
    assert main(["packages", "owner", "--root", str(tmp_path), "--state-dir", str(state), "bin/ls"]) == 2
    assert capsys.readouterr().err == (f"imaguard: error: bin/ls: with --root, give each PATH as an absolute "
                                       f"path inside {tmp_path}\n")  # fmt: skip


def test_owner_names_an_unreadable_file_once(tmp_path, capsys, monkeypatch):
    # Regression: "nonexist: nonexist: cannot open: no such file".
    state = _index(tmp_path / "state", b"fake\n")
    monkeypatch.chdir(tmp_path)
    assert main(["packages", "owner", "--state-dir", str(state), "nonexist"]) == 1
    assert capsys.readouterr().err == "nonexist: cannot open: no such file\n"


def test_owner_does_not_write_to_the_index(tmp_path, capsys):
    state = _index(tmp_path / "state", b"fake\n")
    index = state / "index.sqlite"
    before, mtime = index.read_bytes(), index.stat().st_mtime_ns
    (tmp_path / "f").write_bytes(b"fake\n")
    assert main(["packages", "owner", "--state-dir", str(state), str(tmp_path / "f")]) == 0
    assert capsys.readouterr().out == f"{tmp_path}/f: fake=1/amd64 /bin/ls [repo-verified]\n"
    assert index.read_bytes() == before
    assert index.stat().st_mtime_ns == mtime


def test_a_file_known_only_by_its_path_is_not_called_not_in_package(tmp_path, capsys):
    """Audit: a pristine /usr/bin/ls of a package with only dpkg's md5sums (local-db) in the index
    was reported `not-in-package`, exit 3, as if no package had shipped it."""
    content = b"the package's own bytes\n"
    tool, other = tmp_path / "tool", tmp_path / "other"
    tool.write_bytes(content)
    other.write_bytes(b"another\n")
    state = tmp_path / "state"
    with DigestIndex.open(state) as index:
        index.replace_package(InstalledPackage("pkg", "2", "amd64"), [
            PackageFile(bytes(tool), FileKind.REGULAR, Evidence.LOCAL_DB, hashlib.md5(content).digest(), HashAlgo.MD5),
            PackageFile(bytes(other), FileKind.REGULAR, Evidence.REPO_VERIFIED, hashlib.sha256(b"x").digest(),
                        HashAlgo.SHA256)])  # fmt: skip
    sha = hashlib.sha256(content).hexdigest()
    assert main(["packages", "owner", "--state-dir", str(state), str(tool)]) == 0
    assert capsys.readouterr().out == (f"{tool}: pkg=2/amd64 {tool} [local-db] (matches its md5 digest; no sha256 "
                                       "of it in the index)\n")  # fmt: skip
    assert main(["packages", "owner", "--state-dir", str(state), "--json", str(tool)]) == 0
    [result] = json.loads(capsys.readouterr().out)["results"]
    assert result == {"path": str(tool), "sha256": sha, "owners": [], "path_owners": [
        {"package": "pkg=2/amd64", "path": str(tool), "evidence": "local-db", "algo": "md5", "status": "matches"}]}
    # Changed on disk: the package's path, another content.
    tool.write_bytes(b"tampered\n")
    assert main(["packages", "owner", "--state-dir", str(state), str(tool)]) == 3
    assert capsys.readouterr().out == (f"{tool}: modified: pkg=2/amd64 {tool} [local-db] lists another md5 digest "
                                       f"(sha256 {hashlib.sha256(b'tampered' + bytes([10])).hexdigest()})\n")
    assert main(["packages", "owner", "--state-dir", str(state), str(other)]) == 3
    assert capsys.readouterr().out == (f"{other}: modified: pkg=2/amd64 {other} [repo-verified] lists another sha256 "
                                       f"digest (sha256 {hashlib.sha256(b'another' + bytes([10])).hexdigest()})\n")
