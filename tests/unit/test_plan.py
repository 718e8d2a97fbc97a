"""Enrollment decisions (pure): every skip/refuse/keep reason from typed facts."""

from __future__ import annotations

import hashlib
import stat

import pytest

from imaguard.digests import HashAlgo
from imaguard.packages.model import Evidence, FileKind, PackageFile
from imaguard.sign.plan import Action, Decision, Observed, Options, Scope, decide, in_scope, prefilter, settled

REG_EXEC = stat.S_IFREG | 0o755
REG_DATA = stat.S_IFREG | 0o644
DIGEST = hashlib.sha256(b"content").digest()


def _pf(path=b"/usr/bin/tool", evidence=Evidence.REPO_VERIFIED, **kw):
    digest = kw.pop("digest", DIGEST)
    algo = kw.pop("algo", HashAlgo.SHA256 if digest is not None else None)
    return PackageFile(path, kw.pop("kind", FileKind.REGULAR), evidence, digest, algo, **kw)


@pytest.mark.parametrize(
    ("pf", "mode", "opts", "expected"),
    [
        (_pf(ghost=True), REG_EXEC, Options(), Decision(Action.SKIP, "ghost")),
        (_pf(kind=FileKind.SYMLINK, digest=None, evidence=Evidence.NONE), REG_EXEC, Options(),
         Decision(Action.SKIP, "not-regular-file")),
        (_pf(), None, Options(), Decision(Action.REFUSE, "missing")),
        (_pf(b"/usr/share/man/man1/x.1.gz", mode=stat.S_IFREG | 0o644), None, Options(),
         Decision(Action.SKIP, "out-of-scope")),
        (_pf(b"/usr/share/man/man1/x.1.gz", mode=stat.S_IFREG | 0o644), None, Options(Scope.ALL),
         Decision(Action.REFUSE, "missing")),
        (_pf(b"/usr/bin/x", mode=stat.S_IFREG | 0o755), None, Options(), Decision(Action.REFUSE, "missing")),
        (_pf(b"/usr", kind=FileKind.DIRECTORY, digest=None, evidence=Evidence.NONE), stat.S_IFDIR | 0o755, Options(),
         Decision(Action.SKIP, "directory")),
        (_pf(b"/usr", kind=FileKind.UNKNOWN, digest=None, evidence=Evidence.NONE), stat.S_IFDIR | 0o755, Options(),
         Decision(Action.SKIP, "directory")),
        # The package installed a regular file and something else is there: refused, never a quiet skip.
        (_pf(), stat.S_IFLNK | 0o777, Options(),
         Decision(Action.REFUSE, "type-changed", "the package installed a regular file; on disk: symbolic link")),
        (_pf(), stat.S_IFIFO | 0o644, Options(),
         Decision(Action.REFUSE, "type-changed", "the package installed a regular file; on disk: FIFO")),
        (_pf(), stat.S_IFDIR | 0o755, Options(),
         Decision(Action.REFUSE, "type-changed", "the package installed a regular file; on disk: directory")),
        (_pf(kind=FileKind.SYMLINK, digest=None, evidence=Evidence.NONE), stat.S_IFLNK | 0o777, Options(),
         Decision(Action.SKIP, "not-regular-file")),
        # dpkg lists paths without their type: a symlink there is what the package installed.
        (_pf(kind=FileKind.UNKNOWN, digest=None, evidence=Evidence.NONE), stat.S_IFLNK | 0o777, Options(),
         Decision(Action.SKIP, "not-regular-file")),
        (_pf(b"/usr/share/doc/x"), REG_DATA, Options(), Decision(Action.SKIP, "out-of-scope")),
        (_pf(b"/usr/share/doc/x"), REG_DATA, Options(Scope.ALL), None),
        (_pf(evidence=Evidence.LOCAL_DB, digest=hashlib.md5(b"c").digest(), algo=HashAlgo.MD5), REG_EXEC,
         Options(), Decision(Action.SKIP, "local-db-evidence")),
        (_pf(evidence=Evidence.LOCAL_DB, digest=hashlib.md5(b"c").digest(), algo=HashAlgo.MD5), REG_EXEC,
         Options(unsafe_trust_local_db=True), None),
        (_pf(digest=None, evidence=Evidence.NONE, kind=FileKind.UNKNOWN), REG_EXEC, Options(),
         Decision(Action.SKIP, "no-digest")),
        (_pf(), REG_EXEC, Options(), None),
    ],
)
def test_prefilter(pf, mode, opts, expected):
    assert prefilter(pf, mode, opts) == expected


@pytest.mark.parametrize(
    ("pf", "seen", "expected"),
    [
        (_pf(), Observed(DIGEST, existing_valid=False, first_of_inode=True), Decision(Action.WRITE)),
        (_pf(), Observed(DIGEST, existing_valid=True, first_of_inode=True), Decision(Action.KEEP, "already-signed")),
        (_pf(), Observed(DIGEST, existing_valid=False, first_of_inode=False), Decision(Action.KEEP, "same-inode")),
        (_pf(), Observed(b"\0" * 32, existing_valid=True, first_of_inode=True),
         Decision(Action.REFUSE, "digest-mismatch")),
        (_pf(config=True), Observed(b"\0" * 32, existing_valid=False, first_of_inode=True),
         Decision(Action.SKIP, "config-modified")),
    ],
)
def test_decide(pf, seen, expected):
    assert decide(pf, seen) == expected


@pytest.mark.parametrize(
    ("path", "mode", "expected"),
    [
        (b"/usr/bin/ls", REG_EXEC, True),
        (b"/usr/lib/x86_64-linux-gnu/libc.so.6", REG_DATA, True),
        (b"/usr/lib/x86_64-linux-gnu/libz.so.1.2.13", REG_DATA, True),
        (b"/usr/lib/x86_64-linux-gnu/libfoo.so", REG_DATA, True),
        (b"/lib/modules/6.1.0-27-amd64/kernel/fs/ext4/ext4.ko", REG_DATA, True),
        (b"/lib/modules/6.1.0-27-amd64/kernel/fs/ext4/ext4.ko.xz", REG_DATA, True),
        (b"/usr/share/doc/so.txt", REG_DATA, False),
        (b"/usr/lib/python3/dist-packages/x.py", REG_DATA, False),
        (b"/usr/lib/x.sonnet", REG_DATA, False),
    ],
)
def test_executable_scope(path, mode, expected):
    assert in_scope(path, mode, Scope.EXECUTABLES) is expected


@pytest.mark.parametrize(
    ("action", "reason", "expected"),
    [
        (Action.WRITE, "", True),
        (Action.KEEP, "already-signed", True),
        (Action.KEEP, "same-inode", True),
        *((Action.SKIP, r, True) for r in ("ghost", "directory", "not-regular-file", "out-of-scope", "no-digest",
                                           "config-modified", "unsupported-fs", "no-vendor-signature")),
        # A rerun may decide otherwise: the enroll journal must not record the package as done.
        *((Action.SKIP, r, False) for r in ("local-db-evidence", "no-evidence", "no-bundle", "bundle-unavailable",
                                            "unreadable", "read-only", "immutable", "xattr-space", "a-new-code")),
        *((Action.REFUSE, r, False) for r in ("digest-mismatch", "missing", "type-changed", "changed-during-sign")),
    ],
)
def test_settled(action, reason, expected):
    assert settled(action, reason) is expected
