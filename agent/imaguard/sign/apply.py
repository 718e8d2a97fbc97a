"""Enrollment, one package at a time: observe each file through its fd, decide, write, report.

Safety: the content is hashed through the descriptor that gets labelled, compared with the
trusted digest before any signature is made, and ``xattr_store.write_ima`` refuses a file that
changed meanwhile. ``setxattr`` replaces a value atomically, so a SIGKILL at any moment leaves each
file with its old value or its new, valid one; a rerun converges (``already-signed``).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from imaguard.digests import HashAlgo
from imaguard.errors import FormatError, HostStateError, TrustError, UsageError
from imaguard.ima import xattr_store
from imaguard.ima.xattr import ImaSignature, parse_xattr
from imaguard.packages.model import FileKind
from imaguard.sign.plan import Action, Decision, Observed, Options, decide, prefilter
from imaguard.sign.sources import NoSignature

if TYPE_CHECKING:
    from imaguard.config import Limits
    from imaguard.packages.model import InstalledPackage, PackageFile
    from imaguard.rootfs import Root
    from imaguard.sign.sources import SignatureSource

__all__ = ["Context", "Outcome", "enroll_file", "enroll_package"]

# Write failures that mean "this filesystem or inode cannot be labelled": skipped, reported.
_SKIP_ON_WRITE = frozenset({"unsupported-fs", "read-only", "immutable", "xattr-space"})


@dataclass(frozen=True, slots=True)
class Outcome:
    package: str
    path: bytes
    action: Action
    reason: str = ""
    detail: str = ""
    algo: str = ""
    expected: bytes | None = None
    actual: bytes | None = None
    size: int = 0

    def __reduce__(self) -> tuple[type[Outcome], tuple[object, ...]]:
        # One per file from each worker: see FileResult.__reduce__ (sign/files.py).
        return Outcome, (self.package, self.path, self.action, self.reason, self.detail, self.algo,
                         self.expected, self.actual, self.size)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "package": self.package,
            "path": self.path.decode("utf-8", "surrogateescape"),
            "outcome": str(self.action),
        }
        if self.reason:
            out["reason"] = self.reason
        if self.detail:
            out["detail"] = self.detail
        if self.expected is not None:
            out |= {"algo": self.algo, "expected": self.expected.hex()}
        if self.actual is not None:
            out["actual"] = self.actual.hex()
        return out


@dataclass(slots=True)
class Context:
    root: Root
    source: SignatureSource
    opts: Options
    limits: Limits
    dry_run: bool = False
    # (dev, ino) labelled or found valid in this process: hard links are labelled once.
    inodes: set[tuple[int, int]] = field(default_factory=set)


def _existing_valid(raw: bytes | None, digests: dict[HashAlgo, bytes], ctx: Context, fd: int, path: str) -> bool:
    if raw is None:
        return False
    try:
        sig = parse_xattr(raw)
    except FormatError:
        return False
    if not isinstance(sig, ImaSignature) or sig.form != "sigv2":
        return False
    digest = digests.get(sig.algo)
    if digest is None:
        try:
            digest = xattr_store.hash_file(fd, sig.algo, ctx.limits, path)
        except UsageError:
            return False  # an algorithm we cannot compute: re-sign with sha256
    try:
        ctx.source.verifier.verify_digest(sig.keyid, sig.algo, digest, sig.signature)
    except TrustError:
        return False
    return True


def enroll_file(pkg: InstalledPackage, pf: PackageFile, ctx: Context, *, defer_links: bool = False) -> Outcome | None:
    """Label one package file; every failure becomes an Outcome with a reason, nothing is raised.

    ``defer_links``: return None, untouched, for a regular file with several hard links: worker
    processes cannot see each other's inodes, so the caller labels the first name of each such
    inode once and the others then find it labelled (``same-inode``).
    """
    ident = pkg.ident
    disk = pf.disk_path
    handle: int | None = None
    try:
        st0, handle = ctx.root.probe(disk)
        mode: int | None = st0.st_mode
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            name = ctx.root.display(disk).decode("utf-8", "surrogateescape")
            return Outcome(ident, pf.path, Action.SKIP, "unreadable", f"{name}: {exc.strerror}")
        mode = None
    try:
        early = prefilter(pf, mode, ctx.opts)
        if early is not None:
            return Outcome(ident, pf.path, early.action, early.reason, early.detail)
        if defer_links and st0.st_nlink > 1:
            return None
        return _label(pkg, pf, ctx, handle)
    finally:
        if handle is not None:
            os.close(handle)


def _label(pkg: InstalledPackage, pf: PackageFile, ctx: Context, handle: int | None) -> Outcome:
    """Past ``prefilter``: hash through the fd, decide, write."""
    ident = pkg.ident
    disk = pf.disk_path
    name = ctx.root.display(disk).decode("utf-8", "surrogateescape")
    assert pf.digest is not None  # noqa: S101 - prefilter guarantees it
    assert pf.digest_algo is not None  # noqa: S101
    try:
        with xattr_store.open_regular(disk, ctx.root, handle) as (fd, st):
            before = xattr_store.FileStamp.of(st)
            leased = xattr_store.hold_read_lease(fd, name)
            digests = {pf.digest_algo: xattr_store.hash_file(fd, pf.digest_algo, ctx.limits, name,
                                                             size_hint=st.st_size)}
            if HashAlgo.SHA256 not in digests:
                digests[HashAlgo.SHA256] = xattr_store.hash_file(fd, HashAlgo.SHA256, ctx.limits, name,
                                                                 size_hint=st.st_size)
            previous = xattr_store.read_ima(fd, name, ctx.limits)
            inode = (st.st_dev, st.st_ino)
            seen = Observed(
                actual_digest=digests[pf.digest_algo],
                existing_valid=_existing_valid(previous, digests, ctx, fd, name),
                first_of_inode=inode not in ctx.inodes,
            )
            decision = decide(pf, seen)
            if decision.action is Action.WRITE and ctx.dry_run:
                # The plan must be the real run's: the source skips or refuses here as it would then.
                ctx.source.check(pkg, pf, digests[HashAlgo.SHA256])
            elif decision.action is Action.WRITE:
                value = ctx.source.signature_for(pkg, pf, digests[HashAlgo.SHA256])
                xattr_store.write_ima(fd, name, value, previous, before, leased=leased)
            if decision.action in (Action.WRITE, Action.KEEP):
                ctx.inodes.add(inode)
    except NoSignature as exc:
        action = Action.REFUSE if exc.refuse else Action.SKIP
        return Outcome(ident, pf.path, action, exc.reason, str(exc), size=st.st_size)
    except HostStateError as exc:
        if exc.reason in _SKIP_ON_WRITE:
            return Outcome(ident, pf.path, Action.SKIP, exc.reason, str(exc))
        if exc.reason == "missing":  # deleted between lstat and open
            return Outcome(ident, pf.path, Action.REFUSE, exc.reason)
        if exc.reason == "not-regular-file":  # replaced between lstat and open: as prefilter says (type-changed)
            if pf.kind is FileKind.REGULAR:
                return Outcome(ident, pf.path, Action.REFUSE, "type-changed",
                               f"the package installed a regular file; on disk not one ({exc})")
            return Outcome(ident, pf.path, Action.SKIP, exc.reason)
        return Outcome(ident, pf.path, Action.REFUSE, exc.reason, str(exc))
    return _outcome(ident, pf, decision, digests[pf.digest_algo], st)


def _outcome(ident: str, pf: PackageFile, d: Decision, actual: bytes, st: os.stat_result) -> Outcome:
    assert pf.digest_algo is not None  # noqa: S101 - only called past prefilter
    if d.reason in ("digest-mismatch", "config-modified"):
        return Outcome(ident, pf.path, d.action, d.reason, algo=pf.digest_algo.kernel_name, expected=pf.digest,
                       actual=actual, size=st.st_size)
    return Outcome(ident, pf.path, d.action, d.reason, size=st.st_size)


def enroll_package(pkg: InstalledPackage, files: list[PackageFile], ctx: Context) -> list[Outcome]:
    """Label every file of one package; one Outcome per file, nothing raised for a single file."""
    out = []
    for pf in files:
        o = enroll_file(pkg, pf, ctx)
        assert o is not None  # noqa: S101 - only deferred with defer_links
        out.append(o)
    return out
