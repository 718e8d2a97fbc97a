"""The safety checks of ``xattr_store.write_ima`` / ``restore_ima``, each pinned by what it promises.

A mutation-testing audit (REPORT 1.3-1.6) found that these checks could each be replaced by
``if False:`` with the whole suite still passing: the reason codes alone do not tell "refused before
writing" from "wrote a wrong label, then rolled it back", and the read-back compare, the
"is the old value really back" compare and the post-write lease check had no test at all.

Each test below fails when the check it covers is removed: a refusal before writing must never call
``setxattr``/``removexattr`` (calls are recorded by a wrapper that delegates to the real syscall), the
detail messages are compared exactly, and the label left on the real file is read back. Only the
syscall wrapper needed to provoke the race is patched; the rest runs on real files with real xattrs
and, where the test is about it, a real read lease broken by a real writer process.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from rootlib import IMA_XATTR, digest_ng, get_ima, write_file

from imaguard.config import Limits
from imaguard.digests import CHUNK_SIZE, HashAlgo
from imaguard.ima import xattr_store
from imaguard.keys import LocalSigner, load_certificate, load_private_key
from imaguard.sign.files import sign_path

pytestmark = pytest.mark.root

KEYS = Path(__file__).resolve().parents[1] / "data" / "keys"
KEY = KEYS / "ima-test-rsa2048.key"
CERT = KEYS / "ima-test-rsa2048.pem"
BIG = bytes(range(256)) * (3 * CHUNK_SIZE // 256 + 7)  # > 3 reads of 1 MiB: progress is called mid-hash
APPENDED = b"appended by someone else\n"
PREVIOUS = [None, digest_ng(b"the label the file had before")]
PREVIOUS_IDS = ["no-previous-value", "previous-value"]
NOT_RESTORED = "the previous label could NOT be restored: check it with imaguard verify"

_OPENER = """
import sys
with open(sys.argv[1], "ab") as f:  # blocks until the lease holder closes
    f.write(b"appended by someone else\\n")
"""


@pytest.fixture(scope="module")
def signer():
    cert = load_certificate(CERT)
    return LocalSigner.from_key(load_private_key(KEY, None, cert), cert)


def big_file(path: Path, previous: bytes | None) -> Path:
    write_file(path, BIG)
    if previous is not None:
        os.setxattr(path, IMA_XATTR, previous)
    return path


def no_lease(monkeypatch):
    """As on a filesystem that grants no lease (same-process appends would otherwise block in open())."""
    monkeypatch.setattr(xattr_store, "hold_read_lease", lambda fd, path: False)


@dataclass
class Writes:
    """Every setxattr/removexattr of security.ima, in order, as ("set", value) or ("remove", None)."""

    calls: list[tuple[str, bytes | None]] = field(default_factory=list)

    @property
    def signatures(self) -> list[bytes]:
        """The values written that are IMA signatures (type 0x03, version 2): the new label."""
        return [v for op, v in self.calls if op == "set" and v is not None and v[:2] == b"\x03\x02"]


def record_writes(monkeypatch, on_set=None, on_remove=None) -> Writes:
    """Wrap os.setxattr / os.removexattr: record each security.ima write, then run the real one.

    ``on_set(real, fd, value, writes)`` / ``on_remove(real, fd, writes)``, when given, do the real
    call themselves (so that a test can make it do something else, or something more).
    """
    real_set, real_remove = os.setxattr, os.removexattr
    writes = Writes()

    def setxattr(fd, name, value, *args, **kwargs):
        if name != IMA_XATTR:
            return real_set(fd, name, value, *args, **kwargs)
        writes.calls.append(("set", bytes(value)))
        if on_set is None:
            return real_set(fd, name, value, *args, **kwargs)
        return on_set(real_set, fd, bytes(value), writes)

    def removexattr(fd, name, *args, **kwargs):
        if name != IMA_XATTR:
            return real_remove(fd, name, *args, **kwargs)
        writes.calls.append(("remove", None))
        if on_remove is None:
            return real_remove(fd, name, *args, **kwargs)
        return on_remove(real_remove, fd, writes)

    monkeypatch.setattr(os, "setxattr", setxattr)
    monkeypatch.setattr(os, "removexattr", removexattr)
    return writes


def record_leases(monkeypatch) -> list[tuple[int, bool]]:
    """Wrap hold_read_lease (the real one): (fd, granted) for each call."""
    real = xattr_store.hold_read_lease
    leases: list[tuple[int, bool]] = []

    def lease(fd, path):
        granted = real(fd, path)
        leases.append((fd, granted))
        return granted

    monkeypatch.setattr(xattr_store, "hold_read_lease", lease)
    return leases


def start_writer_and_wait_for_the_break(target: Path, fd: int) -> subprocess.Popen[bytes]:
    """A real writer process opens ``target`` for writing: its open() breaks our lease, then waits."""
    writer = subprocess.Popen([sys.executable, "-c", _OPENER, str(target)])
    deadline = time.monotonic() + 30  # its python must start first; lease-break-time (45 s) is the bound
    while time.monotonic() < deadline:
        if fcntl.fcntl(fd, fcntl.F_GETLEASE) != fcntl.F_RDLCK:
            return writer
        time.sleep(0.01)
    writer.kill()
    writer.wait()
    pytest.fail("the writer's open did not break the lease within 30 s")


# --- 1.5: the stamp check before writing ---------------------------------------------------------


@pytest.mark.parametrize("previous", PREVIOUS, ids=PREVIOUS_IDS)
def test_append_while_hashing_is_refused_before_anything_is_written(previous, signer, tmp_path, monkeypatch):
    """Without the pre-write check the post-write one gives the same reason code, but only after
    writing a signature over content the file no longer has: the detail and the writes tell them apart."""
    no_lease(monkeypatch)
    target = big_file(tmp_path / "big", previous)
    writes = record_writes(monkeypatch)
    calls = []

    def append_on_first_chunk(n):
        calls.append(n)
        if len(calls) == 1:
            with target.open("ab") as f:
                f.write(APPENDED)

    result = sign_path(str(target), signer, HashAlgo.SHA256, Limits(), progress=append_on_first_chunk)
    monkeypatch.undo()

    assert calls[0] == CHUNK_SIZE  # the append happened mid-hash, for real
    assert (result.status, result.reason) == ("failed", "changed-during-sign"), result
    assert result.detail == f"{target}: changed while it was being hashed; not labelled"
    assert writes.calls == []  # not even a rollback: nothing was written
    assert get_ima(target) == previous
    assert target.read_bytes() == BIG + APPENDED


# --- 1.6: the lease checks, before and after writing ---------------------------------------------


@pytest.mark.parametrize("previous", PREVIOUS, ids=PREVIOUS_IDS)
def test_writer_opening_while_hashing_is_refused_before_anything_is_written(previous, signer, tmp_path, monkeypatch):
    """A real writer breaks the real lease mid-hash: refused before setxattr, with the pre-write detail."""
    target = big_file(tmp_path / "big", previous)
    leases = record_leases(monkeypatch)
    writes = record_writes(monkeypatch)
    writers = []

    def open_for_write_on_first_chunk(n):
        if not writers:
            writers.append(start_writer_and_wait_for_the_break(target, leases[0][0]))

    try:
        result = sign_path(str(target), signer, HashAlgo.SHA256, Limits(), progress=open_for_write_on_first_chunk)
    finally:
        monkeypatch.undo()
        for w in writers:
            assert w.wait(timeout=30) == 0  # released when sign_path closed the file

    assert [granted for _, granted in leases] == [True]  # the premise: this filesystem grants leases
    assert (result.status, result.reason) == ("failed", "open-for-write"), result
    assert result.detail == f"{target}: opened for writing while it was being hashed; not labelled"
    assert writes.calls == []
    assert get_ima(target) == previous
    assert target.read_bytes() == BIG + APPENDED


@pytest.mark.parametrize("previous", PREVIOUS, ids=PREVIOUS_IDS)
def test_writer_opening_right_after_the_write_is_rolled_back(previous, signer, tmp_path, monkeypatch):
    """A real writer opens the file between setxattr and the final lease check. Its open() waits for
    us, so size and mtime have not moved yet: only the broken lease tells. The label is rolled back."""
    target = big_file(tmp_path / "big", previous)
    leases = record_leases(monkeypatch)
    writers = []

    def write_then_start_writer(real_set, fd, value, writes):
        real_set(fd, IMA_XATTR, value)
        if not writers and value[:2] == b"\x03\x02":
            writers.append(start_writer_and_wait_for_the_break(target, fd))

    writes = record_writes(monkeypatch, on_set=write_then_start_writer)
    try:
        result = sign_path(str(target), signer, HashAlgo.SHA256, Limits())
    finally:
        monkeypatch.undo()
        for w in writers:
            assert w.wait(timeout=30) == 0

    assert [granted for _, granted in leases] == [True]
    assert len(writes.signatures) == 1  # the label did reach the file before the writer came
    assert (result.status, result.reason) == ("failed", "open-for-write"), result
    assert result.detail == f"{target}: opened for writing while it was being labelled; previous label restored"
    assert writes.calls[1:] == [("set", previous) if previous is not None else ("remove", None)]
    assert get_ima(target) == previous
    assert target.read_bytes() == BIG + APPENDED  # the writer went on once the file was closed


# --- 1.3: the read-back compare ------------------------------------------------------------------


@pytest.mark.parametrize("previous", PREVIOUS, ids=PREVIOUS_IDS)
def test_read_back_that_differs_is_rolled_back(previous, signer, tmp_path, monkeypatch):
    """The value read back right after the write is not what was written: readback-mismatch, and the
    previous value (or its absence) is put back on the file."""
    target = big_file(tmp_path / "big", previous)
    writes = record_writes(monkeypatch)
    real_get = os.getxattr
    mangled = []

    def getxattr(fd, name, *args, **kwargs):
        value = real_get(fd, name, *args, **kwargs)
        if name == IMA_XATTR and len(writes.signatures) == 1 and not mangled:
            # The first read after our write: other bytes (last byte of the signature flipped).
            mangled.append(value[:-1] + bytes([value[-1] ^ 0x01]))
            return mangled[0]
        return value

    monkeypatch.setattr(os, "getxattr", getxattr)
    result = sign_path(str(target), signer, HashAlgo.SHA256, Limits())
    monkeypatch.undo()

    assert len(mangled) == 1  # the read-back was reached and fed other bytes
    assert (result.status, result.reason) == ("failed", "readback-mismatch"), result
    assert result.detail == f"{target}: security.ima read back differs from what was written"
    assert len(writes.signatures) == 1
    assert writes.calls[1:] == [("set", previous) if previous is not None else ("remove", None)]
    assert get_ima(target) == previous
    assert target.read_bytes() == BIG


# --- 1.4: restore_ima's "is the old value really back" compare -----------------------------------


@pytest.mark.parametrize("previous", PREVIOUS, ids=PREVIOUS_IDS)
def test_rollback_that_succeeds_but_leaves_other_bytes_is_said_not_restored(previous, signer, tmp_path, monkeypatch):
    """The file changes right after the write; the rollback syscall then returns success but leaves
    other bytes (a setxattr that stores something else, a removexattr that removes nothing). That is
    no rollback: the detail must say the previous label could NOT be restored."""
    no_lease(monkeypatch)
    target = big_file(tmp_path / "big", previous)
    other = digest_ng(b"neither the signature nor the previous label")

    def set_then_append_or_mangle(real_set, fd, value, writes):
        if len(writes.signatures) == 1 and value == writes.signatures[0]:
            real_set(fd, IMA_XATTR, value)
            with target.open("ab") as f:
                f.write(APPENDED)
        else:  # the rollback: "succeeds", but stores other bytes
            real_set(fd, IMA_XATTR, other)

    def remove_nothing(real_remove, fd, writes):
        return None  # the rollback: "succeeds", but the signature stays

    writes = record_writes(monkeypatch, on_set=set_then_append_or_mangle, on_remove=remove_nothing)
    result = sign_path(str(target), signer, HashAlgo.SHA256, Limits())
    monkeypatch.undo()

    assert (result.status, result.reason) == ("failed", "changed-during-sign"), result
    assert result.detail == f"{target}: changed while it was being labelled; {NOT_RESTORED}"
    assert writes.calls[1:] == [("set", previous) if previous is not None else ("remove", None)]
    # The message tells the truth: the file does not hold the previous label.
    assert get_ima(target) == (other if previous is not None else writes.signatures[0])


@pytest.mark.parametrize("previous", PREVIOUS, ids=PREVIOUS_IDS)
def test_restore_ima_reports_bytes_left_behind(previous, tmp_path, monkeypatch):
    """restore_ima itself, on a real file holding a new label: a restore whose syscall succeeds but
    leaves other bytes returns the not-restored message; the real one returns "" and the file is back."""
    target = write_file(tmp_path / "file", b"content\n")
    new = digest_ng(b"a label written by the failed attempt")
    other = digest_ng(b"what the broken restore left")
    with xattr_store.open_regular(str(target)) as (fd, _):
        os.setxattr(fd, IMA_XATTR, new)
        record_writes(
            monkeypatch,
            on_set=lambda real_set, fd, value, writes: real_set(fd, IMA_XATTR, other),
            on_remove=lambda real_remove, fd, writes: None,
        )
        failed = xattr_store.restore_ima(fd, previous)
        monkeypatch.undo()
        assert failed == f"; {NOT_RESTORED}"
        assert get_ima(target) == (other if previous is not None else new)

        writes = record_writes(monkeypatch)
        assert xattr_store.restore_ima(fd, previous) == ""
        monkeypatch.undo()
        assert writes.calls == [("set", previous) if previous is not None else ("remove", None)]
        assert get_ima(target) == previous

        # Already holding the previous value (a failed write that changed nothing): nothing is written.
        writes = record_writes(monkeypatch)
        assert xattr_store.restore_ima(fd, previous) == ""
        monkeypatch.undo()
        assert writes.calls == []
