"""The state directory and the dpkg database under --root are trusted only once checked (audit findings).

(a) The state directory holds what imaguard trusts (deb-chain cache records read back as
    repo-verified, the digest index behind reports and exports, the enroll journal): one made under
    umask 000 was 0777 with 0777 parents, so any local user could plant a cache record. It is now
    made 0700 (parents 0755) whatever the umask, and every entry point refuses one that another
    user owns or could write, before reading anything in it.
(b) dpkg's database under --root was read with plain opens: an image's ``info/foo.list ->
    /dev/zero`` ran the host out of memory, a FIFO hung the run, a symlink read a host file. Reads
    are now confined to the root, bounded and regular-file-only: one error line naming the file.
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from debworld import make_keys, make_world

from imaguard.cli.main import main
from imaguard.digests import HashAlgo
from imaguard.errors import HostStateError
from imaguard.fsio import ensure_directory
from imaguard.packages import dpkgdb
from imaguard.packages.aptrepo import deb_file_name
from imaguard.packages.deb import VerifiedDeb, encode_members
from imaguard.packages.debfile import DebMember
from imaguard.packages.index import DigestIndex
from imaguard.packages.model import Evidence, FileKind, InstalledPackage, PackageFile
from imaguard.sign.journal import Journal

pytestmark = pytest.mark.root

LOG = Path(__file__).resolve().parents[1] / "data" / "lab" / "binary_runtime_measurements"
NOBODY = 65534
FORGED = b"\xee" * 32
TIMEOUT = 60  # seconds: a read that blocks on a FIFO would hang the run without it


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with make_keys(tmp_path_factory.mktemp("gnupg")) as keys:
        yield make_world(tmp_path_factory.mktemp("w"), keys, repo_debs=["igt-1.0"], installed=["igt-1.0"],
                         cached=["igt-1.0"])


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    assert "Traceback" not in out.err, out.err
    return code, out.out, out.err


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


def _unsafe_line(state: Path, problem: str, what: str = "state directory") -> str:
    return (f"imaguard: error: {state}: the {what} is {problem}; what it holds is trusted, so it must be "
            "writable by root only (chown root, chmod go-w)\n")


def _commands(world, keypair, state: Path) -> dict[str, list[str]]:
    key = keypair("rsa2048")
    common = ["--root", str(world.root), "--state-dir", str(state)]
    return {
        "packages files": ["packages", "files", "igt", *common, "--no-fetch"],
        "packages index": ["packages", "index", *common, "--no-fetch"],
        "packages owner": ["packages", "owner", "/usr/bin/igt", *common],
        "enroll --dry-run": ["enroll", "--source", f"local:{key.key}", "--cert", str(key.cert_pem), *common,
                             "--no-fetch", "--dry-run"],
        "report --index": ["report", "--file", str(LOG), "--index", str(state), "--no-processes"],
    }


# --- (a) the state directory ----------------------------------------------------------------------


@pytest.mark.parametrize("command", ["packages files", "packages index", "enroll --dry-run"])
def test_a_state_dir_made_under_umask_000_is_0700_with_0755_parents(world, keypair, capsys, tmp_path, command):
    state = tmp_path / "a" / "b" / "state"
    old = os.umask(0)
    try:
        _code, _out, err = _run(capsys, *_commands(world, keypair, state)[command])
    finally:
        os.umask(old)
    assert "writable by" not in err, err
    assert (_mode(tmp_path / "a"), _mode(tmp_path / "a" / "b"), _mode(state)) == (0o755, 0o755, 0o700)
    for p in state.rglob("*"):  # the caches made inside: nobody else may write them either
        assert _mode(p) & 0o022 == 0, (p, oct(_mode(p)))
        assert not p.is_dir() or _mode(p) == 0o700, (p, oct(_mode(p)))


def test_the_enroll_journal_makes_its_state_dir_0700_under_umask_000_and_refuses_an_open_one(tmp_path):
    state = tmp_path / "a" / "state"
    old = os.umask(0)
    try:
        Journal(state / "enroll.journal", "config", set()).begin()
    finally:
        os.umask(old)
    assert (_mode(tmp_path / "a"), _mode(state), _mode(state / "enroll.journal")) == (0o755, 0o700, 0o600)
    state.chmod(0o777)
    with pytest.raises(HostStateError) as err:
        Journal.load(state / "enroll.journal", "config")
    assert err.value.reason == "unsafe-state-dir"
    with pytest.raises(HostStateError, match="is writable by other users"):
        Journal(state / "enroll.journal", "config", set()).begin()


def test_an_enroll_journal_that_is_a_fifo_is_started_over_not_waited_on(tmp_path):
    state = tmp_path / "state"
    ensure_directory(state)
    os.mkfifo(state / "enroll.journal")
    journal = Journal.load(state / "enroll.journal", "config")  # O_NONBLOCK: returns at once
    assert (journal.done, journal.discarded) == (set(), "not a regular file")


@pytest.mark.parametrize("unsafe", ["mode-0777", "owned-by-nobody"])
@pytest.mark.parametrize("command", ["packages files", "packages index", "packages owner", "enroll --dry-run",
                                     "report --index"])
def test_an_unsafe_state_dir_is_refused_before_anything_in_it_is_read(world, keypair, capsys, tmp_path, *,
                                                                       command, unsafe):
    state = tmp_path / "state"
    with DigestIndex.open(state) as index:  # an index in it: readers get as far as the check
        digest = hashlib.sha256((world.root / "usr/bin/igt").read_bytes()).digest()
        index.replace_package(InstalledPackage("igt", "1.0", "all", "igt", "1.0"), [
            PackageFile(b"/usr/bin/igt", FileKind.REGULAR, Evidence.REPO_VERIFIED, digest, HashAlgo.SHA256)])
    before = sorted(state.iterdir())
    if unsafe == "mode-0777":
        state.chmod(0o777)
        problem = "writable by other users (mode 0777)"
    else:
        os.chown(state, NOBODY, NOBODY)
        problem = f"owned by uid {NOBODY}"
    code, out, err = _run(capsys, *_commands(world, keypair, state)[command])
    assert (code, err) == (1, _unsafe_line(state, problem))
    assert "igt" not in out  # no package, no file, no evidence level: nothing was read
    assert sorted(state.iterdir()) == before  # nothing made or written in it


def _plant_as_nobody(directory: Path, name: str, data: bytes) -> None:
    """What uid 65534 can do in a directory it may write: make its own deb-chain/ and a record in it.
    The descriptor is handed over, so the private directories above it need not be traversable."""
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    script = ("import os, sys\nd = int(sys.argv[1])\nos.mkdir('deb-chain', 0o755, dir_fd=d)\n"
              "c = os.open('deb-chain', os.O_RDONLY | os.O_DIRECTORY, dir_fd=d)\n"
              "f = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=c)\n"
              "os.write(f, sys.stdin.buffer.read())\n")
    try:
        subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable,
                        "-c", script, str(dfd), name], input=data, pass_fds=[dfd], check=True, timeout=TIMEOUT)
    finally:
        os.close(dfd)


def test_a_forged_chain_cache_record_never_becomes_repo_verified(world, capsys, tmp_path):
    """The audit's attack: a 0777 state dir (as made under umask 000 before), a record by uid 65534."""
    state = tmp_path / "s0"
    state.mkdir()
    state.chmod(0o777)
    deb_sha = hashlib.sha256(world.debs["igt-1.0"].read_bytes()).hexdigest()
    record = f"{deb_file_name('igt', '1.0', 'all')[: -len('.deb')]}_{deb_sha}.json"
    forged = encode_members(VerifiedDeb((DebMember(b"/usr/bin/igt", FileKind.REGULAR, 0o755, FORGED, None),)))
    _plant_as_nobody(state, record, forged)
    assert (state / "deb-chain" / record).stat().st_uid == NOBODY
    argv = ["packages", "files", "igt", "--root", str(world.root), "--state-dir", str(state), "--no-fetch"]

    code, out, err = _run(capsys, *argv)
    assert (code, err) == (1, _unsafe_line(state, "writable by other users (mode 0777)"))
    assert FORGED.hex() not in out

    state.chmod(0o700)  # the directory put right, but the cache directory inside it is still theirs
    code, out, err = _run(capsys, *argv)
    assert (code, err) == (1, _unsafe_line(state / "deb-chain", f"owned by uid {NOBODY}", "chain cache directory"))
    assert FORGED.hex() not in out


# --- (b) dpkg's database under --root ----------------------------------------------------------------


@pytest.fixture
def image(tmp_path) -> Path:
    """A minimal dpkg root: one installed package ``foo``; its info files are what each test makes them."""
    root = tmp_path / "R"
    (root / "var/lib/dpkg/info").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_bytes(
        b"Package: foo\nStatus: install ok installed\nVersion: 1.0\nArchitecture: all\n\n")
    return root


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # a regression is a MemoryError, not an OOM


def _files(root: Path, state: Path) -> subprocess.CompletedProcess[str]:
    """``imaguard packages files foo`` in a child: a read that blocks is killed at TIMEOUT, and fails.
    ``--source deb``: detection would call a status file that is not a file no database at all."""
    return subprocess.run(
        [sys.executable, "-m", "imaguard.cli", "packages", "files", "foo", "--root", str(root), "--source", "deb",
         "--no-fetch", "--state-dir", str(state)],
        capture_output=True, text=True, timeout=TIMEOUT, preexec_fn=_limit_memory, check=False,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )


@pytest.mark.parametrize(("make", "why"), [
    (lambda p: p.symlink_to("/dev/zero"), "not a regular file but a symbolic link (not followed)"),
    (lambda p: p.symlink_to("/etc/passwd"), "not a regular file but a symbolic link (not followed)"),
    (lambda p: p.symlink_to("../../../../../../../../etc/passwd"),
     "not a regular file but a symbolic link (not followed)"),
    (os.mkfifo, "not a regular file but a FIFO"),
    (lambda p: os.mknod(p, stat.S_IFCHR | 0o644, os.makedev(1, 5)), "not a regular file but a character device"),
    (lambda p: os.truncate(os.open(p, os.O_WRONLY | os.O_CREAT, 0o644), 100 << 30),  # sparse: takes no space
     f"larger than {64 << 20} bytes"),
], ids=["link-to-dev-zero", "link-to-host-file", "relative-link-out", "fifo", "char-device", "sparse-100G"])
def test_a_dpkg_info_file_that_is_not_a_plain_file_is_one_error_line(image, tmp_path, make, why):
    make(image / "var/lib/dpkg/info/foo.list")
    proc = _files(image, tmp_path / "state")
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == f"imaguard: error: {image}/var/lib/dpkg/info/foo.list: cannot read: {why}\n"


def test_a_status_file_that_is_a_fifo_is_one_error_line(image, tmp_path):
    status = image / "var/lib/dpkg/status"
    status.unlink()
    os.mkfifo(status)
    proc = _files(image, tmp_path / "state")
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == f"imaguard: error: {status}: cannot read: not a regular file but a FIFO\n"


def test_a_symlinked_info_directory_is_resolved_inside_the_root_never_on_the_host(image, tmp_path):
    """``info -> /abs/host/dir``: the host's foo.list (naming a host file) exists, the image's does not."""
    host_info = tmp_path / "host-info"
    host_info.mkdir()
    (host_info / "foo.list").write_bytes(b"/host-only-marker\n")
    info = image / "var/lib/dpkg/info"
    info.rmdir()
    info.symlink_to(host_info)  # absolute: followed naively it is the host's directory
    proc = _files(image, tmp_path / "state")
    assert "host-only-marker" not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 0, proc.stderr  # inside the root, info/ leads nowhere: foo owns no files


def test_a_root_rebuilt_at_the_same_path_is_read_anew(image):
    """The root descriptor is held per path (one openat2 per read); a tree made again there is reopened."""
    assert [p.name for p in dpkgdb.read_status(image)] == ["foo"]
    shutil.rmtree(image)
    (image / "var/lib/dpkg/info").mkdir(parents=True)
    (image / "var/lib/dpkg/status").write_bytes(
        b"Package: bar\nStatus: install ok installed\nVersion: 2.0\nArchitecture: all\n\n")
    (image / "var/lib/dpkg/info/bar.list").write_bytes(b"/usr/bin/bar\n")
    (bar,) = dpkgdb.read_status(image)
    assert (bar.name, dpkgdb.read_info(image, bar, "list")) == ("bar", b"/usr/bin/bar\n")
