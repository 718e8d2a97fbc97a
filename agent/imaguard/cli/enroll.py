"""``imaguard enroll``: label every package file that trusted metadata vouches for."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from imaguard.cli.files import add_revocation_options
from imaguard.cli.keyfile import PASSWORD_HELP, key_password
from imaguard.cli.packages import TRUSTED_KEYRING_HELP
from imaguard.cli.progress import Progress
from imaguard.config import Limits
from imaguard.errors import ExitCode, HostStateError, TrustError, UsageError
from imaguard.keys import CheckedSigner, LocalSigner, Verifier, load_certificate, load_private_key
from imaguard.keys.revocation_store import load_revoked
from imaguard.packages import DEFAULT_STATE_DIR, open_source
from imaguard.rootfs import Root
from imaguard.shown import one_line, shown_path
from imaguard.sign.apply import Context, Outcome, enroll_file
from imaguard.sign.journal import Journal
from imaguard.sign.memo import MemoSigner
from imaguard.sign.parallel import default_jobs, run_jobs
from imaguard.sign.plan import Action, Options, Scope, settled
from imaguard.sign.sources import BundleSource, LocalSource, SignatureSource, VendorSource

if TYPE_CHECKING:
    from imaguard.packages.model import InstalledPackage, PackageFile, PackageSource

__all__ = ["register"]

_Item = tuple["InstalledPackage", "PackageFile"]

_HELP = """\
Give every file that a trusted package installed a security.ima signature, so that an IMA
appraisal policy can refuse everything else. For each file: the content is hashed through the
descriptor that gets labelled and must equal the package's trusted digest; a file that differs
is refused (digest-mismatch, both digests shown), never signed. Existing valid signatures are
kept (already-signed); hard links are labelled once.

Signature sources:
  vendor               the per-file IMA signatures shipped in verified RPM headers (--cert: the vendor's IMA cert)
  bundle:PATH_OR_URL   signature bundles of the fleet's signing authority (--authority-cert, --cert)
  local:KEY            sign with a key on this host (--cert: its certificate); labs and single machines

Skip reasons: ghost, not-regular-file, out-of-scope, no-digest, config-modified, local-db-evidence
(dpkg's unsigned MD5 lists are not trusted unless --unsafe-trust-dpkg-md5sums), unsupported-fs,
read-only, immutable, xattr-space; not-regular-file: the package itself ships a symlink or special
file there. Refusals (exit 1): digest-mismatch, missing, type-changed (the package installed a
regular file, something else is there), changed-during-sign, and a bundle or vendor signature that
does not verify.

Package digests are trusted as `imaguard packages --help` says: the trust anchors are this
host's apt (or rpm) keyrings, also with --root (never keys the image carries), or only the
--trusted-keyring files when given.

Killing enroll is safe: every file keeps its old value or gets a valid new one, and a rerun
resumes from its journal (in the state directory) and converges to the same result.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("enroll", help="label package files with IMA signatures", description=_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("packages", nargs="*", metavar="PACKAGE", help="only these installed packages (default: all)")
    p.add_argument("--source", dest="sig_source", required=True, metavar="SOURCE",
                   help="vendor, bundle:PATH_OR_URL or local:KEY")
    p.add_argument("--cert", type=Path, action="append", default=[], metavar="CERT",
                   help="IMA certificate the kernel trusts (repeat for several)")
    p.add_argument("--authority-cert", type=Path, action="append", default=[], metavar="CERT",
                   help="signing authority certificate for bundles (bundle: sources only)")
    p.add_argument("--password-file", type=Path, metavar="FILE",
                   help="password of the key of a local: source: " + PASSWORD_HELP)
    add_revocation_options(p)
    # Strings, not type=Scope: argparse then names the choices when a value is wrong.
    p.add_argument("--scope", choices=[str(s) for s in Scope], default=str(Scope.EXECUTABLES),
                   help="executables (exec bit, shared objects, kernel modules; default) or all")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan: every check of a real run, the source's signatures too; writes no "
                        "security.ima and no journal (verification caches: yes)")
    p.add_argument("--unsafe-trust-dpkg-md5sums", action="store_true",
                   help="DANGEROUS: sign files whose only evidence is dpkg's unsigned MD5 list")
    p.add_argument("--restart", action="store_true", help="ignore the journal of an interrupted run")
    p.add_argument("--root", type=Path, default=Path("/"), metavar="DIR", help="label the tree mounted at DIR")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, metavar="DIR",
                   help=f"journal, caches and index (default {DEFAULT_STATE_DIR})")
    p.add_argument("--package-db", choices=("deb", "rpm"), help="package database (default: detected)")
    p.add_argument("--no-fetch", action="store_true", help="never download .debs to verify the chain")
    p.add_argument("--trusted-keyring", type=Path, action="append", default=[], metavar="FILE",
                   help=TRUSTED_KEYRING_HELP)
    p.add_argument("-j", "--jobs", type=int, default=default_jobs(), metavar="N", help="worker processes")
    p.add_argument("--json", action="store_true", help="one JSON document: summary and every non-signed file")
    p.add_argument("-v", "--verbose", action="store_true", help="show every file")
    p.set_defaults(handler=_cmd_enroll)


def _check_options(args: argparse.Namespace) -> None:
    """A source without its argument, and options that only another source uses, are usage errors
    (never silently ignored)."""
    spec: str = args.sig_source
    kind = spec.split(":", 1)[0]
    if spec != "vendor" and kind not in ("local", "bundle"):
        raise UsageError(f"--source {spec!r}: use vendor, bundle:PATH_OR_URL or local:KEY")
    if spec == "local:":
        raise UsageError("--source local: needs the path of the key: local:KEY")
    if spec == "bundle:":
        raise UsageError("--source bundle: needs the directory or URL of the bundles: bundle:PATH_OR_URL")
    if args.authority_cert and kind != "bundle":
        raise UsageError(f"--authority-cert applies to bundle sources only, not to --source {kind}")
    if args.password_file is not None and kind != "local":
        raise UsageError(f"--password-file is the password of a local key, not of --source {kind}")
    if args.revocation_ca is not None and args.revocation_list is None:
        raise UsageError("--revocation-ca is the CA that signs --revocation-list: give --revocation-list too")


def _signature_source(args: argparse.Namespace) -> SignatureSource:
    _check_options(args)
    certs = [load_certificate(c) for c in args.cert]
    if not certs:
        raise UsageError("enroll needs --cert: the IMA certificate the kernel will verify signatures with")
    # The state directory keeps the newest list accepted per CA: an older signed list is refused.
    revoked = load_revoked(args.revocation_list, args.revocation_ca, args.state_dir)
    # Signatures by a revoked key are never kept (re-signed instead) nor handed out by any source.
    verifier = Verifier.of(certs, revoked)
    spec: str = args.sig_source
    if spec == "vendor":
        return VendorSource(verifier)
    if spec.startswith("local:"):
        key_path = Path(spec.removeprefix("local:"))
        key = load_private_key(key_path, key_password(args.password_file, key_path), certs[0])
        if certs[0].key_id in revoked:
            raise TrustError(f"{args.cert[0]}: key id {certs[0].key_id.hex()} is revoked", reason="revoked-key")
        # Identical files (copies, empty files) get one signature (sign/memo.py), verified once.
        return LocalSource(MemoSigner(CheckedSigner(LocalSigner.from_key(key, certs[0]), verifier)), verifier)
    if spec.startswith("bundle:"):
        if not args.authority_cert:
            raise UsageError("bundle sources need --authority-cert: the certificate that signs bundles")
        authority = tuple(load_certificate(c) for c in args.authority_cert)
        bundles = BundleSource(spec.removeprefix("bundle:"), authority, verifier)
        bundles.check_location()  # a mistyped directory is a usage error, not every package no-bundle
        return bundles
    raise UsageError(f"--source {spec!r}: use vendor, bundle:PATH_OR_URL or local:KEY")


def _config_id(args: argparse.Namespace, source: SignatureSource) -> str:
    """Everything that can change an outcome: a journal is resumed only by a run with the same."""
    ids = sorted(c.key_id.hex() for c in source.verifier.certificates)
    authority = sorted(hashlib.sha256(c.der).hexdigest() for c in source.authority) \
        if isinstance(source, BundleSource) else []
    doc = [2, source.name, args.sig_source, ids, str(args.scope), args.unsafe_trust_dpkg_md5sums,
           str(args.root.resolve()), sorted(k.hex() for k in source.verifier.revoked), authority,
           args.no_fetch, args.package_db]
    if args.trusted_keyring:  # other anchors, other evidence; absent, the id stays what it was
        doc.append(sorted(str(k.resolve()) for k in args.trusted_keyring))
    return hashlib.sha256(json.dumps(doc).encode()).hexdigest()


def _open_journal(args: argparse.Namespace, source: SignatureSource) -> Journal:
    path = args.state_dir / "enroll.journal"
    config = _config_id(args, source)
    journal = Journal(path, config, set()) if args.restart else Journal.load(path, config)
    if journal.discarded:
        print(f"imaguard: warning [W-JOURNAL-DISCARDED]: {path}: not an enroll journal ({journal.discarded}); "
              "starting over", file=sys.stderr)
    journal.begin()
    return journal


def _cmd_enroll(args: argparse.Namespace) -> int:
    if args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    # Before any work (the revocation record is read from it next), not after labelling.
    if args.state_dir.exists() and not args.state_dir.is_dir():  # before any work, not after labelling
        raise HostStateError(f"{args.state_dir}: --state-dir is not a directory", reason="state-dir",
                             path=str(args.state_dir))
    source = _signature_source(args)
    if args.unsafe_trust_dpkg_md5sums:
        print("imaguard: warning [W-UNSAFE-MD5SUMS]: signing files whose only evidence is dpkg's unsigned MD5 "
              "list (--unsafe-trust-dpkg-md5sums); reports will say so", file=sys.stderr)
    try:
        root = Root.at(args.root)
    except OSError as exc:
        raise UsageError(f"{args.root}: cannot use as root: {exc.strerror}") from exc
    psrc = open_source(args.root, args.state_dir, args.package_db, fetch=not args.no_fetch,
                       trusted_keyrings=args.trusted_keyring)
    pkgs = [psrc.package(n) for n in args.packages] if args.packages else list(psrc.packages())
    journal = None if args.dry_run else _open_journal(args, source)
    todo = [p for p in pkgs if journal is None or p.ident not in journal.done]
    ctx = Context(root, source, Options(Scope(args.scope), args.unsafe_trust_dpkg_md5sums), Limits(), args.dry_run)

    items = _read_metadata(psrc, todo, journal, args.json)

    def job(item: tuple[InstalledPackage, PackageFile]) -> Outcome | None:
        # Workers cannot see each other's inodes: names of a multi-link inode come back unlabelled
        # (None); afterwards the first name of each is labelled and the others find it (same-inode).
        return enroll_file(item[0], item[1], ctx, defer_links=True)

    outcomes: list[Outcome] = []
    remaining = Counter(pkg.ident for pkg, _pf in items)
    unsettled: set[str] = set()  # packages a resuming run must examine again (sign.plan.settled)
    start = time.monotonic()
    with Progress(total=len(items), unit="file", desc="enrolling", enabled=not args.json) as bar:
        later: list[tuple[InstalledPackage, PackageFile]] = []
        for item, o in zip(items, run_jobs(job, items, args.jobs), strict=True):
            if o is None:
                later.append(item)
            else:
                _record(o, outcomes, remaining, unsettled, journal=journal, bar=bar, args=args)
        # The first name of each such inode, over all cores again; the other names here, after them.
        first, inodes, others = _split_hard_links(later, root)

        def label(item: tuple[InstalledPackage, PackageFile]) -> Outcome:
            done = enroll_file(item[0], item[1], ctx)
            assert done is not None  # noqa: S101 - not deferred without defer_links
            return done

        for inode, o in zip(inodes, run_jobs(label, first, args.jobs), strict=True):
            if o.action in (Action.WRITE, Action.KEEP):
                ctx.inodes.add(inode)
            _record(o, outcomes, remaining, unsettled, journal=journal, bar=bar, args=args)
        for item in others:
            _record(label(item), outcomes, remaining, unsettled, journal=journal, bar=bar, args=args)
    state_error = _finish(journal)
    nbytes = sum(o.size for o in outcomes)
    code = _summary(args, outcomes, len(pkgs) - len(todo), time.monotonic() - start, nbytes,
                    state_error=state_error)
    if state_error is not None:
        print(f"imaguard: error: {state_error}", file=sys.stderr)
    return code


def _finish(journal: Journal | None) -> HostStateError | None:
    """Remove the journal of the completed run; a failure is reported after the summary, not instead of it."""
    if journal is not None:
        try:
            journal.finish()
        except HostStateError as exc:
            return exc
    return None


def _read_metadata(
    psrc: PackageSource, todo: list[InstalledPackage], journal: Journal | None, quiet: bool
) -> list[tuple[InstalledPackage, PackageFile]]:
    """Every file of every package, read first: the deb chain may fetch and read .debs."""
    items: list[tuple[InstalledPackage, PackageFile]] = []
    with Progress(total=len(todo), unit="pkg", desc="reading package metadata", enabled=not quiet) as bar:
        for pkg in todo:
            files = list(psrc.files(pkg))
            items.extend((pkg, pf) for pf in files)
            if not files and journal is not None:
                journal.mark(pkg.ident)
            bar.update(1)
    return items


def _split_hard_links(items: list[_Item], root: Root) -> tuple[list[_Item], list[tuple[int, int]], list[_Item]]:
    """(first name of each inode, its (dev, ino), every other name): only the first is labelled in parallel."""
    seen: set[tuple[int, int]] = set()
    first: list[_Item] = []
    inodes: list[tuple[int, int]] = []
    others: list[_Item] = []
    for item in items:
        try:
            st = root.lstat(item[1].disk_path)
        except OSError:
            others.append(item)  # gone since: labelled (and reported) on its own
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:
            others.append(item)
        else:
            seen.add(key)
            first.append(item)
            inodes.append(key)
    return first, inodes, others


def _record(
    o: Outcome, outcomes: list[Outcome], remaining: Counter[str], unsettled: set[str], *, journal: Journal | None,
    bar: Progress, args: argparse.Namespace,
) -> None:
    outcomes.append(o)
    bar.update(1)
    remaining[o.package] -= 1
    if not settled(o.action, o.reason):
        unsettled.add(o.package)
    if journal is not None and remaining[o.package] == 0 and o.package not in unsettled:
        journal.mark(o.package)
    if args.json:
        return
    if args.verbose or o.action is Action.REFUSE or (args.dry_run and o.action is Action.WRITE):
        bar.write(_line(o, args.dry_run), err=o.action is Action.REFUSE)


def _line(o: Outcome, dry_run: bool) -> str:
    verb = "would-sign" if dry_run and o.action is Action.WRITE else str(o.action)
    line = f"{verb:14} {o.package} {shown_path(o.path)}"
    if o.reason:
        line += f" [{o.reason}]"
    if o.expected is not None and o.actual is not None:
        line += f" expected {o.algo}:{o.expected.hex()} actual {o.algo}:{o.actual.hex()}"
    elif o.detail and o.action is Action.REFUSE:
        line += f" {one_line(o.detail)}"
    return line


def _summary(
    args: argparse.Namespace, outcomes: list[Outcome], resumed: int, seconds: float, nbytes: int, *,
    state_error: HostStateError | None = None,
) -> int:
    table = Counter((str(o.action), o.reason) for o in outcomes)
    failed = state_error is not None or any(o.action is Action.REFUSE for o in outcomes)
    code = ExitCode.FAILURE if failed else ExitCode.OK
    if args.json:
        doc = {
            "dry_run": args.dry_run,
            "source": args.sig_source.split(":", 1)[0],
            "unsafe_trust_dpkg_md5sums": args.unsafe_trust_dpkg_md5sums,
            "packages_resumed_from_journal": resumed,
            "summary": [{"outcome": a, "reason": r, "files": n} for (a, r), n in sorted(table.items())],
            "exit_code": int(code),
            "files": [o.to_json() for o in outcomes if o.action is not Action.WRITE or args.verbose],
        }
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return code
    title = "enroll (dry run: nothing written)" if args.dry_run else "enroll"
    rate = len(outcomes) / seconds if seconds > 0 else 0.0
    print(f"{title}: {len(outcomes)} files, {nbytes >> 20} MiB in {seconds:.1f} s ({rate:.0f} files/s)"
          + (f"; {resumed} packages already done by an interrupted run" if resumed else ""))
    for (action, reason), n in sorted(table.items()):
        print(f"  {n:8}  {action:15} {reason}")
    return code
