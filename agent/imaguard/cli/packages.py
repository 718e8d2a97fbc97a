"""``imaguard packages list|files|verify|index|owner``: package truth on this host or an image."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from imaguard.cli.progress import Progress
from imaguard.config import Limits
from imaguard.digests import HashAlgo
from imaguard.errors import ExitCode, HostStateError, UsageError
from imaguard.ima import xattr_store
from imaguard.packages import DEFAULT_STATE_DIR, open_source
from imaguard.packages.index import DigestIndex
from imaguard.packages.verify import FAILED_STATUSES, FileCheck, check_file
from imaguard.report.paths import usr_aliases
from imaguard.rootfs import Root
from imaguard.shown import one_line, shown_path
from imaguard.sign.parallel import default_jobs, run_jobs

if TYPE_CHECKING:
    from imaguard.packages.model import InstalledPackage, PackageFile, PackageSource

__all__ = ["TRUSTED_KEYRING_HELP", "register"]

# From this many packages on, `packages verify` hands out whole packages rather than files (run_jobs
# runs fewer than 64 items in one process anyway).
_PER_PACKAGE_MIN = 64

_HELP = """\
Read what the package database says about installed files, and how far it can be trusted.
Every file carries an evidence level: repo-verified (digest from a signed repository chain:
apt's InRelease -> Packages -> .deb, or a verified RPM header), vendor-signed (the vendor's
per-file IMA signature in a verified RPM header), local-db (only the local database says so:
dpkg's unsigned MD5 lists) or none.

Trust anchors (the OpenPGP keys apt's InRelease must be signed with) are this host's apt
keyrings, also with --root: a Signed-By path is the host's file at that path, a repository
without Signed-By gets the host's trusted.gpg and trusted.gpg.d, and a key the image carries
(its trusted.gpg.d, its keyring files, an inline Signed-By block) never counts: an image cannot
vouch for its own packages. --trusted-keyring FILE (repeatable) replaces all of them, the host's
included (an image of another distribution). RPM headers are checked the same way: against the
--trusted-keyring files (ASCII-armored) when given, else this host's rpm keyring (for / its own
rpmdb's keys), never the gpg-pubkey entries of an image's rpmdb.
"""

TRUSTED_KEYRING_HELP = (
    "OpenPGP keyring whose keys alone may sign apt repositories (binary or armored) or rpm headers "
    "(armored); replaces every anchor, this host's keyrings included (repeat for several). Default: "
    "this host's apt or rpm keyrings, also with --root, never the image's own"
)

_VERIFY_HELP = """\
Hash every file of the named packages (default: all) and compare it with its trusted digest.
Statuses: ok, digest-mismatch (both digests shown), missing, not-regular-file, link-mismatch,
no-digest, unreadable. Exit status 3 when any file differs from its package, 1 when some file
could not be read, 0 otherwise.
"""


_INDEX_HELP = """\
Build (or bring up to date) the digest index, STATE/index.sqlite (--state-dir, default
/var/lib/imaguard): every installed package version, its files, their digests and evidence
levels, read through the verified chain as `packages files` does. `packages owner` and
`report` (processes and log entries traced to packages, the Keylime policy export) read it;
only this command writes it. Versions no longer installed are dropped. The summary counts
the files by evidence: only repo-verified and vendor-signed digests vouch for a file.

Exit status: 0 built, 1 failure, 2 usage error.
"""

_OWNER_HELP = """\
Hash each file with SHA-256 and look the digest up in the digest index (build it first with
`imaguard packages index`): every package file with that content, and its evidence. When no
package file has that SHA-256, the path itself is looked up (and its other name on a merged-/usr
system): a package that lists the path with a digest of another algorithm (dpkg's md5sums,
evidence local-db) is checked against it ("matches its md5 digest") or the file is reported
"modified"; a path no package lists is "not-in-package". With --root DIR, each PATH is
absolute inside DIR and opened without leaving it.

Exit status: 0 every file matched a package's digest; 3 some file matched none (not-in-package,
modified, or no digest to compare); 1 some file could not be read; 2 usage error.
"""


def _add_common(p: argparse.ArgumentParser, *, reads_packages: bool = True) -> None:
    p.add_argument("--root", type=Path, default=Path("/"), metavar="DIR",
                   help="inspect the tree mounted at DIR instead of this host (paths never leave it)")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, metavar="DIR",
                   help=f"where caches and the digest index live (default {DEFAULT_STATE_DIR})")
    if reads_packages:  # `owner` reads the index only: the package database options mean nothing to it
        _add_package_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("-v", "--verbose", action="store_true", help="more detail, tracebacks of errors")


def _add_package_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", choices=("deb", "rpm"), help="package database (default: detected)")
    p.add_argument("--no-fetch", action="store_true",
                   help="never download a .deb through apt to verify the chain (evidence may stay local-db)")
    p.add_argument("--trusted-keyring", type=Path, action="append", default=[], metavar="FILE",
                   help=TRUSTED_KEYRING_HELP)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    top = sub.add_parser("packages", help="installed packages, their files and evidence", description=_HELP,
                         formatter_class=fmt)
    psub = top.add_subparsers(dest="packages_command", metavar="SUBCOMMAND", parser_class=type(top))
    psub.required = True

    p = psub.add_parser("list", help="installed packages", description=_HELP, formatter_class=fmt)
    _add_common(p)
    p.set_defaults(handler=_cmd_list)

    p = psub.add_parser("files", help="files of one package with digests and evidence", description=_HELP,
                        formatter_class=fmt)
    p.add_argument("name", metavar="NAME")
    _add_common(p)
    p.set_defaults(handler=_cmd_files)

    p = psub.add_parser("verify", help="compare files on disk with trusted digests", description=_VERIFY_HELP,
                        formatter_class=fmt)
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("-j", "--jobs", type=int, default=default_jobs(), metavar="N",
                   help="worker processes (default: all cores)")
    _add_common(p)
    p.set_defaults(handler=_cmd_verify)

    p = psub.add_parser("index", help="(re)build the digest index in the state directory", description=_INDEX_HELP,
                        formatter_class=fmt)
    _add_common(p)
    p.set_defaults(handler=_cmd_index)

    p = psub.add_parser("owner", help="which package file has this content (digest index lookup)",
                        description=_OWNER_HELP, formatter_class=fmt)
    p.add_argument("paths", nargs="+", metavar="PATH")
    _add_common(p, reads_packages=False)
    p.set_defaults(handler=_cmd_owner)


def _root(args: argparse.Namespace) -> Root:
    try:
        return Root.at(args.root)
    except OSError as exc:
        raise UsageError(f"{args.root}: cannot use as root: {exc.strerror}") from exc


def _open(args: argparse.Namespace) -> tuple[PackageSource, Root]:
    root = _root(args)
    source = open_source(args.root, args.state_dir, args.source, fetch=not args.no_fetch,
                         trusted_keyrings=args.trusted_keyring)
    return source, root


def _pkg_json(pkg: InstalledPackage) -> dict[str, str]:
    return {
        "name": pkg.name, "version": pkg.version, "architecture": pkg.architecture,
        "source_name": pkg.source_name, "source_version": pkg.source_version, "origin": pkg.origin,
    }


def _dump(doc: object) -> None:
    json.dump(doc, sys.stdout, indent=1)
    sys.stdout.write("\n")


def _cmd_list(args: argparse.Namespace) -> int:
    source, _root = _open(args)
    pkgs = list(source.packages())
    if args.json:
        _dump({"source": source.kind, "packages": [_pkg_json(p) for p in pkgs]})
    else:
        for p in pkgs:
            print(f"{p.name:40} {p.version:30} {p.architecture:8} {p.origin}")
    return ExitCode.OK


def _text(path: bytes) -> str:
    return path.decode("utf-8", "surrogateescape")


def _cmd_files(args: argparse.Namespace) -> int:
    source, _root = _open(args)
    pkg = source.package(args.name)
    files = list(source.files(pkg))
    if args.json:
        out = []
        for f in files:
            item: dict[str, object] = {"path": _text(f.path), "kind": str(f.kind), "evidence": str(f.evidence)}
            if f.digest is not None and f.digest_algo is not None:
                item |= {"algo": f.digest_algo.kernel_name, "digest": f.digest.hex()}
            for flag in ("config", "ghost", "doc"):
                if getattr(f, flag):
                    item[flag] = True
            if f.evidence_reason:
                item["evidence_reason"] = f.evidence_reason
            if f.mode is not None:
                item["mode"] = f"{f.mode:o}"
            if f.link_target is not None:
                item["link_target"] = _text(f.link_target)
            if f.diverted_to is not None:
                item["diverted_to"] = _text(f.diverted_to)
            if f.vendor_signature is not None:
                item["vendor_signature"] = f.vendor_signature.hex()
            out.append(item)
        _dump({"package": _pkg_json(pkg), "files": out})
        return ExitCode.OK
    print(f"{pkg.ident}  origin: {pkg.origin or '-'}")
    for f in files:
        digest = f"{f.digest_algo.kernel_name}:{f.digest.hex()}" if f.digest and f.digest_algo else "-"
        flags = ",".join(n for n in ("config", "ghost", "doc") if getattr(f, n))
        why = f" ({f.evidence_reason})" if f.evidence_reason else ""
        print(f"{f.evidence:14} {shown_path(f.path)} {digest} {flags}{one_line(why)}".rstrip())
    return ExitCode.OK


@dataclass(slots=True)
class _Tally:
    """What the parent needs of a batch of checks: counts, and the checks it prints or reports."""

    statuses: Counter[str] = field(default_factory=Counter)
    evidence: Counter[str] = field(default_factory=Counter)
    shown: list[FileCheck] = field(default_factory=list)

    def add(self, check: FileCheck | None, verbose: bool) -> bool:
        """Count ``check``; True when it is one to print and report."""
        if check is None:
            return False
        self.statuses[check.status] += 1
        self.evidence[str(check.file.evidence)] += 1
        if check.status != "ok" or verbose:
            self.shown.append(check)
            return True
        return False

    def merge(self, other: _Tally, bar: Progress, quiet: bool) -> None:
        self.statuses.update(other.statuses)
        self.evidence.update(other.evidence)
        self.shown.extend(other.shown)
        if not quiet:
            for check in other.shown:
                bar.write(_check_line(check))


def _verify_files(
    source: PackageSource, pkgs: list[InstalledPackage], root: Root, args: argparse.Namespace
) -> _Tally:
    """Check every file of ``pkgs``, spread over ``args.jobs`` processes.

    A whole host (many packages): the unit of work is a package, so that reading the package
    database runs on every core too, and only counts and the reported checks cross the pipe back,
    not a FileCheck (with its package and file) for each of ~100,000 files. A few packages: metadata
    first, then the files spread over the cores, each result reduced to a tally the same way.
    """
    limits = Limits()
    total = _Tally()
    if len(pkgs) >= _PER_PACKAGE_MIN and args.jobs > 1:
        def package_job(pkg: InstalledPackage) -> _Tally:
            tally = _Tally()
            for pf in source.files(pkg):
                tally.add(check_file(pkg, pf, root, limits), args.verbose)
            return tally

        with Progress(total=len(pkgs), unit="pkg", desc="verifying", enabled=not args.json) as bar:
            # One package per hand-out: package sizes differ by orders of magnitude.
            for tally in run_jobs(package_job, pkgs, args.jobs, chunk=1):
                total.merge(tally, bar, args.json)
                bar.update(1)
        return total
    items: list[tuple[InstalledPackage, PackageFile]] = []
    with Progress(total=len(pkgs), unit="pkg", desc="reading package metadata", enabled=not args.json) as bar:
        for pkg in pkgs:
            items.extend((pkg, pf) for pf in source.files(pkg))
            bar.update(1)

    def file_job(item: tuple[InstalledPackage, PackageFile]) -> tuple[str, bytes | None, str] | None:
        # Only the outcome crosses the pipe; the parent has the package and the file already.
        check = check_file(item[0], item[1], root, limits)
        return None if check is None else (check.status, check.actual, check.detail)

    with Progress(total=len(items), unit="file", desc="verifying", enabled=not args.json) as bar:
        for (pkg, pf), result in zip(items, run_jobs(file_job, items, args.jobs), strict=True):
            if result is not None:
                check = FileCheck(pkg, pf, result[0], actual=result[1], detail=result[2])
                if total.add(check, args.verbose) and not args.json:
                    bar.write(_check_line(check))
            bar.update(1)
    return total


def _cmd_verify(args: argparse.Namespace) -> int:
    source, root = _open(args)
    pkgs = [source.package(n) for n in args.names] if args.names else list(source.packages())
    tally = _verify_files(source, pkgs, root, args)
    counts, evidence = tally.statuses, tally.evidence
    if any(counts[s] for s in FAILED_STATUSES):
        code = ExitCode.VERIFICATION_FAILED
    elif counts["unreadable"]:
        code = ExitCode.FAILURE
    else:
        code = ExitCode.OK
    if args.json:
        _dump({
            "source": source.kind, "packages": len(pkgs), "summary": dict(sorted(counts.items())),
            "evidence": dict(sorted(evidence.items())), "exit_code": int(code),
            "files": [c.to_json() for c in tally.shown],
        })
    else:
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no files"
        ev = ", ".join(f"{n} {e}" for e, n in sorted(evidence.items()))
        print(f"verify: {len(pkgs)} packages: {summary}; evidence: {ev}")
    return code


def _check_line(c: FileCheck) -> str:
    f = c.file
    line = f"{c.status:16} {c.package.name}: {shown_path(f.path)} [{f.evidence}]"
    if c.status == "digest-mismatch" and f.digest is not None and f.digest_algo and c.actual is not None:
        algo = f.digest_algo.kernel_name
        line += f" expected {algo}:{f.digest.hex()} actual {algo}:{c.actual.hex()}"
    if c.detail:
        line += f" {one_line(c.detail)}"
    return line


def _cmd_index(args: argparse.Namespace) -> int:
    source, _root = _open(args)
    with DigestIndex.open(args.state_dir) as index, Progress(
        total=sum(1 for _ in source.packages()), unit="pkg", desc="indexing", enabled=not args.json
    ) as bar:
        npkg, nfiles = index.build(source, lambda _pkg: bar.update(1))
        path = index.path
        by_evidence = index.evidence_counts()
    if args.json:
        _dump({"index": str(path), "packages": npkg, "files": nfiles, "by_evidence": by_evidence})
    else:
        # The total alone hid how few digests can vouch for a file (an audit: 96,459 "digests", of
        # which 5,819 repo-verified; the rest dpkg's MD5 lists).
        levels = ", ".join(f"{level} {n}" for level, n in by_evidence.items())
        print(f"index: {npkg} packages, {nfiles} file digests in {path} ({levels or 'none'})")
    return ExitCode.OK


def _cmd_owner(args: argparse.Namespace) -> int:
    limits = Limits()
    results: list[dict[str, object]] = []
    code = ExitCode.OK
    root = _root(args)
    if not root.is_host and (rel := next((p for p in args.paths if not p.startswith("/")), None)) is not None:
        root.close()
        raise UsageError(f"{rel}: with --root, give each PATH as an absolute path inside {args.root}")
    with contextlib.closing(root), DigestIndex.open(args.state_dir, read_only=True) as index:
        for p in args.paths:
            try:
                # Inside --root, the file is resolved there (openat2): symlinks never reach the host.
                with xattr_store.open_regular(p, None if root.is_host else root) as (fd, _st):
                    name = os.fsdecode(root.display(os.fsencode(p)))
                    digest = xattr_store.hash_file(fd, HashAlgo.SHA256, limits, name)
                    hits = index.lookup(digest)
                    by_path = [] if hits else _path_owners(index, p, fd, limits, name)
            except HostStateError as exc:
                results.append({"path": p, "error": exc.reason, "detail": str(exc)})
                code = ExitCode.FAILURE
                continue
            found = bool(hits) or any(o["status"] == "matches" for o in by_path)
            if not found and code == ExitCode.OK:
                code = ExitCode.VERIFICATION_FAILED
            result: dict[str, object] = {"path": p, "sha256": digest.hex(), "owners": [
                {"package": f"{h.name}={h.version}/{h.arch}", "path": _text(h.path), "evidence": str(h.evidence)}
                for h in hits
            ]}
            if not hits:
                result["path_owners"] = by_path
            results.append(result)
    if args.json:
        _dump({"results": results, "exit_code": int(code)})
    else:
        for r in results:
            _print_owner(r)
    return code


def _path_owners(index: DigestIndex, path: str, fd: int, limits: Limits, name: str) -> list[dict[str, object]]:
    """No package file has this SHA-256: who owns the path itself, and does the file match the
    digest that package recorded in another algorithm (dpkg's md5sums, local-db evidence)? Without
    this a pristine file of a package with no trusted SHA-256 read as "not-in-package" (audit)."""
    if not path.startswith("/"):
        path = os.path.abspath(path)  # noqa: PTH100 - a package path, never resolved through symlinks
    hashed: dict[HashAlgo, bytes] = {}
    out: list[dict[str, object]] = []
    for alias in usr_aliases(os.fsencode(path)):
        for e in index.lookup_path(alias):
            if not e.digest:
                status = "no-digest"
            else:
                if e.algo not in hashed:
                    hashed[e.algo] = xattr_store.hash_file(fd, e.algo, limits, name)
                status = "matches" if hashed[e.algo] == e.digest else "differs"
            out.append({"package": f"{e.name}={e.version}/{e.arch}", "path": _text(e.path),
                        "evidence": str(e.evidence), "algo": e.algo.name.lower(), "status": status})
    return out


def _print_owner(r: dict[str, object]) -> None:
    if "error" in r:
        print(one_line(str(r["detail"])), file=sys.stderr)  # the message names the file already
        return
    shown = shown_path(str(r["path"]))
    owners, by_path = r["owners"], r.get("path_owners") or []
    assert isinstance(owners, list)  # noqa: S101 - built above
    assert isinstance(by_path, list)  # noqa: S101
    for o in owners:
        print(f"{shown}: {o['package']} {shown_path(str(o['path']))} [{o['evidence']}]")
    for o in by_path:
        where = f"{o['package']} {shown_path(str(o['path']))} [{o['evidence']}]"
        if o["status"] == "matches":
            print(f"{shown}: {where} (matches its {o['algo']} digest; no sha256 of it in the index)")
        elif o["status"] == "differs":
            print(f"{shown}: modified: {where} lists another {o['algo']} digest (sha256 {r['sha256']})")
        else:
            print(f"{shown}: {where} owns this path but has no digest to compare (sha256 {r['sha256']})")
    if not owners and not by_path:
        print(f"{shown}: not-in-package (sha256 {r['sha256']})")
