"""Every reason code of ``ima/xattr_store`` produced by a real case on the host (issue 2, acceptance 3).

unsupported-fs (ramfs), immutable (chattr +i / +a on ext4), read-only (read-only bind mount),
xattr-space (ext4 whose one xattr block is full), open-for-write (a writer holding a shared
writable mapping; a writer opening the file while it is hashed), changed-during-sign (a real append
while signing, where the filesystem grants no lease), not-regular-file (FIFO, symlink, device nodes, socket). Each failure must leave the previous
``security.ima`` (or its absence) exactly as it was.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rootlib import IMA_XATTR, digest_ng, get_ima, run, write_file

from imaguard.config import Limits
from imaguard.digests import CHUNK_SIZE, HashAlgo
from imaguard.ima import xattr_store
from imaguard.keys import LocalSigner, Verifier, load_certificate, load_private_key
from imaguard.sign.files import iter_targets, sign_path, verify_path

pytestmark = pytest.mark.root

KEYS = Path(__file__).resolve().parents[1] / "data" / "keys"
KEY = KEYS / "ima-test-rsa2048.key"
CERT = KEYS / "ima-test-rsa2048.pem"
IMAGUARD = Path(sys.executable).with_name("imaguard")
CONTENT = b"#!/bin/sh\necho imaguard\n" * 100
PREVIOUS = [None, digest_ng(b"the label the file had before")]
PREVIOUS_IDS = ["no-previous-value", "previous-value"]


@pytest.fixture(scope="module")
def signer():
    cert = load_certificate(CERT)
    return LocalSigner.from_key(load_private_key(KEY, None, cert), cert)


def sign_args(*paths, recursive=False):
    return ["sign", "--key", str(KEY), "--cert", str(CERT), *(["-r"] if recursive else []), *map(str, paths)]


def verify_args(*paths, recursive=False):
    return ["verify", "--cert", str(CERT), *(["-r"] if recursive else []), *map(str, paths)]


def labelled(path, previous):
    write_file(path, CONTENT)
    if previous is not None:
        os.setxattr(path, IMA_XATTR, previous)
    return path


def assert_one_failure(code, doc, path, reason, exit_code=1):
    assert code == exit_code, doc
    [entry] = doc["files"]
    assert (entry["path"], entry["status"], entry["reason"]) == (str(path), "failed", reason), entry
    assert entry["detail"].startswith(f"{path}: "), entry
    assert doc["reasons"] == {reason: 1}
    assert doc["exit_code"] == exit_code


# --- unsupported-fs -------------------------------------------------------------------------------


def test_ramfs_sign_is_unsupported_fs(ramfs_dir, imaguard_json):
    target = write_file(ramfs_dir / "file", CONTENT)
    with pytest.raises(OSError, match="Operation not supported") as probe:  # the premise: no security.* here
        os.setxattr(target, IMA_XATTR, b"\x04\x04" + bytes(32))
    assert probe.value.errno == errno.EOPNOTSUPP

    code, doc = imaguard_json(sign_args(target))
    assert_one_failure(code, doc, target, "unsupported-fs")
    assert "does not support security.* extended attributes" in doc["files"][0]["detail"]
    assert target.read_bytes() == CONTENT


def test_ramfs_verify_is_unsupported_fs_not_a_verification_failure(ramfs_dir, imaguard_json):
    target = write_file(ramfs_dir / "file", CONTENT)
    code, doc = imaguard_json(verify_args(target))
    # "Could not check" (exit 1), not "checked and untrusted" (exit 3).
    assert_one_failure(code, doc, target, "unsupported-fs", exit_code=1)


# --- immutable ----------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["+i", "+a"], ids=["immutable", "append-only"])
@pytest.mark.parametrize("previous", PREVIOUS, ids=PREVIOUS_IDS)
def test_chattr_file_is_immutable(flag, previous, ext4_dir, imaguard_json):
    target = labelled(ext4_dir / "file", previous)
    run(["chattr", flag, str(target)])

    code, doc = imaguard_json(sign_args(target))
    assert_one_failure(code, doc, target, "immutable")
    # The write changed nothing, so nothing is said to be lost (it said "could NOT be restored").
    assert doc["files"][0]["detail"] == (f"{target}: cannot write security.ima: the file is immutable or "
                                         "append-only (chattr +i/+a)")
    assert get_ima(target) == previous
    assert target.read_bytes() == CONTENT


# --- read-only ----------------------------------------------------------------------------------


@pytest.mark.parametrize("previous", PREVIOUS, ids=PREVIOUS_IDS)
def test_read_only_bind_mount_is_read_only(previous, ro_bind, imaguard_json):
    rw, ro = ro_bind
    labelled(rw / "file", previous)
    target = ro / "file"
    with pytest.raises(OSError, match="Read-only file system") as probe:  # the premise: really read-only
        os.setxattr(target, "user.probe", b"x")
    assert probe.value.errno == errno.EROFS

    code, doc = imaguard_json(sign_args(target))
    assert_one_failure(code, doc, target, "read-only")
    assert "restored" not in doc["files"][0]["detail"]
    assert get_ima(rw / "file") == previous


def test_verify_works_through_a_read_only_mount(ro_bind, imaguard_json):
    rw, ro = ro_bind
    write_file(rw / "file", CONTENT)
    assert imaguard_json(sign_args(rw / "file"))[0] == 0
    code, doc = imaguard_json(verify_args(ro / "file"))
    assert (code, [f["status"] for f in doc["files"]]) == (0, ["verified"])


# --- xattr-space --------------------------------------------------------------------------------


def fill_xattr_space(path):
    """Add user.* xattrs until the filesystem says ENOSPC; return what was added."""
    added = {}
    refused = None
    for i in range(1000):
        name, value = f"user.fill{i:03d}", bytes([i % 256]) * 48
        try:
            os.setxattr(path, name, value)
        except OSError as exc:
            refused = exc.errno
            break
        added[name] = value
    assert refused == errno.ENOSPC, f"filling xattrs ended with errno {refused}, not ENOSPC"
    return added


@pytest.mark.parametrize("previous", PREVIOUS, ids=PREVIOUS_IDS)
def test_full_xattr_block_is_xattr_space(previous, ext4_tight_xattr_dir, imaguard_json):
    target = labelled(ext4_tight_xattr_dir / "file", previous)
    added = fill_xattr_space(target)
    assert len(added) > 5

    code, doc = imaguard_json(sign_args(target))
    assert_one_failure(code, doc, target, "xattr-space")
    assert "restored" not in doc["files"][0]["detail"]
    assert get_ima(target) == previous
    assert {name: os.getxattr(target, name) for name in added} == added


# --- changed-during-sign ------------------------------------------------------------------------

BIG = bytes(range(256)) * (3 * CHUNK_SIZE // 256 + 7)  # > 3 reads of 1 MiB


def no_lease(monkeypatch):
    """As on a filesystem that grants no lease: the size/mtime stamp is the only guard left.

    (With a lease, these same-process appends would block in open() until the lease-break timeout.)
    """
    monkeypatch.setattr(xattr_store, "hold_read_lease", lambda fd, path: False)


@pytest.mark.parametrize("previous", PREVIOUS, ids=PREVIOUS_IDS)
def test_append_while_hashing_is_changed_during_sign(previous, signer, tmp_path, monkeypatch):
    no_lease(monkeypatch)
    target = write_file(tmp_path / "big", BIG)
    if previous is not None:
        os.setxattr(target, IMA_XATTR, previous)
    calls = []

    def append_on_first_chunk(n):
        calls.append(n)
        if len(calls) == 1:
            with target.open("ab") as f:
                f.write(b"appended by someone else\n")

    result = sign_path(str(target), signer, HashAlgo.SHA256, Limits(), progress=append_on_first_chunk)

    assert calls[0] == CHUNK_SIZE
    assert target.read_bytes() == BIG + b"appended by someone else\n"
    assert (result.status, result.reason) == ("failed", "changed-during-sign"), result
    assert get_ima(target) == previous


@pytest.mark.parametrize("previous", PREVIOUS, ids=PREVIOUS_IDS)
def test_append_right_after_the_write_is_rolled_back(previous, signer, tmp_path, monkeypatch):
    """A writer slips in between setxattr and the final check: the label must be rolled back."""
    no_lease(monkeypatch)
    target = write_file(tmp_path / "big", BIG)
    if previous is not None:
        os.setxattr(target, IMA_XATTR, previous)
    real_setxattr = os.setxattr
    written = []

    def setxattr_then_append(fd, name, value, *args, **kwargs):
        real_setxattr(fd, name, value, *args, **kwargs)
        if name == IMA_XATTR and not written:
            written.append(value)
            with target.open("ab") as f:
                f.write(b"appended by someone else\n")

    monkeypatch.setattr(os, "setxattr", setxattr_then_append)
    result = sign_path(str(target), signer, HashAlgo.SHA256, Limits())
    monkeypatch.undo()

    assert len(written) == 1
    assert written[0][:2] == b"\x03\x02"  # the signature did reach the file before the append
    assert (result.status, result.reason) == ("failed", "changed-during-sign"), result
    assert get_ima(target) == previous


def test_a_rollback_that_fails_is_said_not_hidden(signer, ext4_dir, monkeypatch):
    """The file changes right after the write and is then made immutable: the new label cannot
    be taken back. The result must say so instead of "previous label restored"."""
    no_lease(monkeypatch)
    target = write_file(ext4_dir / "big", BIG)
    previous = digest_ng(b"the label the file had before")
    os.setxattr(target, IMA_XATTR, previous)
    real_setxattr = os.setxattr

    def setxattr_then_append_and_lock(fd, name, value, *args, **kwargs):
        real_setxattr(fd, name, value, *args, **kwargs)
        if name == IMA_XATTR and value != previous:
            with target.open("ab") as f:
                f.write(b"appended by someone else\n")
            run(["chattr", "+i", str(target)])

    monkeypatch.setattr(os, "setxattr", setxattr_then_append_and_lock)
    result = sign_path(str(target), signer, HashAlgo.SHA256, Limits())
    monkeypatch.undo()
    run(["chattr", "-i", str(target)])

    assert (result.status, result.reason) == ("failed", "changed-during-sign"), result
    assert result.detail == (f"{target}: changed while it was being labelled; the previous label could NOT be"
                             " restored (Operation not permitted): check it with imaguard verify")
    assert get_ima(target)[:2] == b"\x03\x02"  # our label stayed, as the message says


# --- open-for-write: the read lease ------------------------------------------------------------

_MAPPER = """
import mmap, sys, time
with open(sys.argv[1], "r+b") as f:
    m = mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    m[0] = m[0]  # dirty: later writes through the mapping fault no more and move no mtime
    print("mapped", flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("previous", PREVIOUS, ids=PREVIOUS_IDS)
def test_writer_holding_a_writable_mapping_is_open_for_write(previous, signer, tmp_path):
    target = labelled(tmp_path / "mapped", previous)
    mapper = subprocess.Popen([sys.executable, "-c", _MAPPER, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert mapper.stdout is not None
        assert mapper.stdout.readline() == "mapped\n"
        result = sign_path(str(target), signer, HashAlgo.SHA256, Limits())
    finally:
        mapper.kill()
        mapper.wait()
    assert (result.status, result.reason) == ("failed", "open-for-write"), result
    assert result.detail == f"{target}: open for writing by another process; not labelled"
    assert get_ima(target) == previous


_OPENER = """
import sys
with open(sys.argv[1], "ab") as f:  # blocks until the lease holder closes
    f.write(b"appended by someone else\\n")
"""


@pytest.mark.parametrize("previous", PREVIOUS, ids=PREVIOUS_IDS)
def test_writer_opening_while_hashing_breaks_the_lease(previous, signer, tmp_path, monkeypatch):
    target = write_file(tmp_path / "big", BIG)
    if previous is not None:
        os.setxattr(target, IMA_XATTR, previous)
    fds = []
    real_lease = xattr_store.hold_read_lease

    def lease(fd, path):
        fds.append(fd)
        return real_lease(fd, path)

    monkeypatch.setattr(xattr_store, "hold_read_lease", lease)
    writers = []

    def open_for_write_on_first_chunk(n):
        if writers:
            return
        writers.append(subprocess.Popen([sys.executable, "-c", _OPENER, str(target)]))
        # The writer's open() marks the lease as breaking, then waits. Its python must start first:
        # 5 s was tight on a loaded machine; the kernel's lease-break-time (45 s) is the real bound.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if fcntl.fcntl(fds[0], fcntl.F_GETLEASE) != fcntl.F_RDLCK:
                return
            time.sleep(0.01)
        pytest.fail("the writer's open did not break the lease within 30 s")

    result = sign_path(str(target), signer, HashAlgo.SHA256, Limits(), progress=open_for_write_on_first_chunk)
    assert writers[0].wait(timeout=10) == 0  # released when sign_path closed the file
    assert (result.status, result.reason) == ("failed", "open-for-write"), result
    assert get_ima(target) == previous
    assert target.read_bytes() == BIG + b"appended by someone else\n"


def test_unchanged_big_file_is_signed(signer, tmp_path, imaguard_json):
    """Control for the two tests above: the same file, left alone, signs and verifies."""
    target = write_file(tmp_path / "big", BIG)
    calls = []
    result = sign_path(str(target), signer, HashAlgo.SHA256, Limits(), progress=calls.append)
    assert (result.status, result.reason) == ("signed", "")
    assert calls == [CHUNK_SIZE, CHUNK_SIZE, CHUNK_SIZE, len(BIG) - 3 * CHUNK_SIZE]
    assert imaguard_json(verify_args(target))[0] == 0


# --- not-regular-file ---------------------------------------------------------------------------


def imaguard_subprocess(argv, timeout=30):
    """The console script, with a timeout: a FIFO that blocks the tool must fail the test, not hang it."""
    proc = subprocess.run(
        [str(IMAGUARD), *argv, "--json"], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


@pytest.mark.parametrize("command", ["sign", "verify"])
def test_fifo_on_the_command_line_fails_without_blocking_or_opening(command, tmp_path, open_watch):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    open_watch.watch(tmp_path)
    argv = sign_args(fifo) if command == "sign" else verify_args(fifo)

    code, doc = imaguard_subprocess(argv)

    assert_one_failure(code, doc, fifo, "not-regular-file")
    assert fifo not in open_watch.opened()


def test_sign_path_on_a_fifo_does_not_block(tmp_path):
    """The fd-level guard (a path swapped for a FIFO after the walk): O_NONBLOCK open, fstat, refuse."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from imaguard.config import Limits\n"
        "from imaguard.digests import HashAlgo\n"
        "from imaguard.keys import LocalSigner, load_private_key\n"
        "from imaguard.sign.files import sign_path\n"
        "signer = LocalSigner.from_key(load_private_key(Path(sys.argv[1])))\n"
        "r = sign_path(sys.argv[2], signer, HashAlgo.SHA256, Limits())\n"
        "print(json.dumps([r.status, r.reason]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(KEY), str(fifo)], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == ["failed", "not-regular-file"]


@pytest.mark.parametrize("command", ["sign", "verify"])
def test_symlink_on_the_command_line_is_not_followed(command, tmp_path, imaguard_json):
    real = write_file(tmp_path / "real", CONTENT)
    link = tmp_path / "link"
    link.symlink_to(real)
    argv = sign_args(link) if command == "sign" else verify_args(link)

    code, doc = imaguard_json(argv)

    assert_one_failure(code, doc, link, "not-regular-file")
    assert get_ima(real) is None


def test_sign_path_on_a_symlink_is_not_followed(signer, tmp_path):
    """The fd-level guard: O_NOFOLLOW refuses the final symlink (ELOOP) and nothing is labelled."""
    real = write_file(tmp_path / "real", CONTENT)
    link = tmp_path / "link"
    link.symlink_to(real)
    result = sign_path(str(link), signer, HashAlgo.SHA256, Limits())
    assert (result.status, result.reason) == ("failed", "not-regular-file")
    assert get_ima(real) is None


@pytest.fixture
def special_tree(tmp_path):
    """A tree with two regular files and every kind of entry that must be skipped, never opened."""
    outside = tmp_path / "outside"
    outside.mkdir()
    write_file(outside / "target", CONTENT)
    (outside / "dir").mkdir()
    write_file(outside / "dir" / "inner", CONTENT)

    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    write_file(tree / "a", CONTENT)
    write_file(tree / "sub" / "b", CONTENT)
    special = {
        "fifo": os.mkfifo,
        "chardev": lambda p: os.mknod(p, 0o600 | 0o020000, os.makedev(1, 3)),  # like /dev/null
        "blockdev": lambda p: os.mknod(p, 0o600 | 0o060000, os.makedev(7, 0)),  # like /dev/loop0
        "link-to-file": lambda p: p.symlink_to(outside / "target"),
        "link-to-dir": lambda p: p.symlink_to(outside / "dir"),
        "dangling-link": lambda p: p.symlink_to(tmp_path / "nowhere"),
    }
    for name, make in special.items():
        make(tree / name)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tree / "socket"))
    try:
        yield tree, outside
    finally:
        sock.close()


@pytest.mark.parametrize("command", ["sign", "verify"])
def test_recursive_walk_skips_special_files_without_opening_them(command, special_tree, open_watch, imaguard_json):
    tree, outside = special_tree
    if command == "verify":
        assert imaguard_json(sign_args(tree, recursive=True))[0] == 0
    for d in (tree, tree / "sub", outside, outside / "dir"):
        open_watch.watch(d)

    argv = sign_args(tree, recursive=True) if command == "sign" else verify_args(tree, recursive=True)
    code, doc = imaguard_json(argv)

    done = "signed" if command == "sign" else "verified"
    skipped = ["blockdev", "chardev", "dangling-link", "fifo", "link-to-dir", "link-to-file", "socket"]
    assert code == 0, doc
    assert {(f["path"], f["status"], f.get("reason", "")) for f in doc["files"]} == {
        (str(tree / "a"), done, ""),
        (str(tree / "sub" / "b"), done, ""),
        *((str(tree / name), "skipped", "not-regular-file") for name in skipped),
    }
    assert len(doc["files"]) == 9
    assert doc["summary"] == {done: 2, "skipped": 7}
    opened = open_watch.opened()
    assert opened <= {tree, tree / "sub", tree / "a", tree / "sub" / "b"}, opened
    assert {tree / "a", tree / "sub" / "b"} <= opened  # the watch works: the regular files were opened
    assert get_ima(outside / "target") is None
    assert get_ima(outside / "dir" / "inner") is None


# --- permission-denied (not one of the six, but a code of the same mapping) -----------------------


@pytest.mark.parametrize("previous", PREVIOUS, ids=PREVIOUS_IDS)
def test_without_cap_sys_admin_is_permission_denied(previous, tmp_path):
    """root without CAP_SYS_ADMIN (dropped from the bounding set) may not write security.*: EPERM."""
    target = labelled(tmp_path / "file", previous)
    proc = subprocess.run(
        ["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin", str(IMAGUARD), *sign_args(target), "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    code, doc = proc.returncode, json.loads(proc.stdout)
    assert_one_failure(code, doc, target, "permission-denied")
    assert "CAP_SYS_ADMIN" in doc["files"][0]["detail"]
    assert get_ima(target) == previous


# --- a directory swapped for a symlink after the walk -------------------------------------------


def test_directory_swapped_for_a_symlink_after_the_walk_leads_nowhere(signer, tmp_path):
    """`sign -r TREE` walks first and opens later (in workers): whoever can write TREE may swap a
    directory for a symlink in between. The path then leads out of the tree, to another inode:
    refused, and the file outside stays unlabelled."""
    tree, outside = tmp_path / "tree", tmp_path / "outside"
    (tree / "z").mkdir(parents=True)
    outside.mkdir()
    write_file(tree / "z" / "target", CONTENT)
    write_file(outside / "target", b"not in the tree\n")
    targets = list(iter_targets([str(tree)], recursive=True))
    assert [t.path for t in targets] == [f"{tree}/z/target"]
    (tree / "z").rename(tree / "z.old")
    (tree / "z").symlink_to(outside)

    result = sign_path(targets[0], signer, HashAlgo.SHA256, Limits())
    assert (result.status, result.reason) == ("failed", "changed-during-sign"), result
    assert result.detail == (f"{tree}/z/target: no longer the file found there (the file or a directory on its"
                             " path was replaced); not labelled")
    assert get_ima(outside / "target") is None
    assert get_ima(tree / "z.old" / "target") is None
    verdict = verify_path(targets[0], Verifier.of([load_certificate(CERT)]), Limits())
    assert (verdict.status, verdict.reason) == ("failed", "changed-during-sign")
    # The same target, not swapped: signed.
    (tree / "z").unlink()
    (tree / "z.old").rename(tree / "z")
    assert sign_path(targets[0], signer, HashAlgo.SHA256, Limits()).status == "signed"
