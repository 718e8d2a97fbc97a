"""``imaguard sign``, ``verify`` and ``hash``: work on files and trees named on the command line."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from imaguard.cli.keyfile import PASSWORD_HELP, key_password
from imaguard.cli.progress import Progress
from imaguard.config import Limits
from imaguard.digests import HashAlgo
from imaguard.errors import ExitCode, HostStateError, UsageError
from imaguard.ima import xattr_store
from imaguard.shown import one_line, shown_path
from imaguard.sign.files import VERIFY_FAILURES, FileResult, Target, iter_targets, opened, sign_path, verify_path
from imaguard.sign.memo import MemoSigner
from imaguard.sign.parallel import default_jobs, run_jobs

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["add_revocation_options", "register"]

_SIGN_HELP = """\
Hash each file through one open descriptor, sign the digest and write the signature into
security.ima (signature v2, the form the kernel and evmctl use). The value is read back;
on any failure the previous value is restored. Symlinks are never followed; FIFOs and
devices are never opened.

This signs what is on disk now: use it for labs and files you built yourself. To label
package files from verified package metadata use `imaguard enroll`.

The key id in the signature is the last 4 bytes of the certificate's subject key
identifier (what the kernel matches), or, without --cert, evmctl's id derived from
the public key. The key password is read from --password-file, the environment
variable IMAGUARD_KEY_PASSWORD, or asked for on a terminal.

Reason codes for files not signed: missing, is-directory, not-regular-file, too-large,
permission-denied, unsupported-fs, immutable, read-only, xattr-space, changed-during-sign,
open-for-write, readback-mismatch.

Exit status: 0 all signed, 1 some file was not signed, 2 usage error (key, certificate, password).
"""

_VERIFY_HELP = """\
Check each file's security.ima signature against its content and the given certificates,
like the kernel's appraisal does: the key is found by key id, the digest recomputed with
the signature's algorithm. Reason codes for failures: no-signature, digest-only,
unsupported-form, malformed, unknown-key, revoked-key, bad-signature (verification failed);
missing, is-directory, not-regular-file, too-large, permission-denied, unsupported-fs (the
file could not be checked). A revocation list older than the one recorded is refused as a
whole: revocation-rollback.

Exit status: 0 all verified, 3 some file failed verification, 1 some file could not be checked,
2 usage error.
"""

_HASH_HELP = """\
Print each file's digest (like sha256sum), hashed through the same descriptor-based reader
that signing uses. Useful to compare files with package metadata.

Exit status: 0 all hashed, 1 some file could not be read, 2 usage error.
"""


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="files, or directories with -r")
    p.add_argument("-r", "--recursive", action="store_true", help="walk directories (no symlinks followed)")
    p.add_argument("--json", action="store_true", help="print one JSON document with every file's result")
    p.add_argument("-v", "--verbose", action="store_true", help="show every file and tracebacks of errors")
    p.add_argument(
        "-j", "--jobs", type=int, default=default_jobs(), metavar="N", help="worker processes (default: all cores)"
    )


def _algo(name: str) -> HashAlgo:
    try:
        algo = HashAlgo.from_name(name)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if algo not in (HashAlgo.SHA256, HashAlgo.SHA384, HashAlgo.SHA512):
        raise argparse.ArgumentTypeError("choose sha256, sha384 or sha512")
    return algo


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("sign", help="write IMA signatures into security.ima", description=_SIGN_HELP,
                       formatter_class=fmt)
    p.add_argument("--key", required=True, type=Path, metavar="KEY", help="private key (PEM or DER; RSA or EC)")
    p.add_argument("--cert", type=Path, metavar="CERT", help="certificate of the key: key id from its SKID")
    p.add_argument("--password-file", type=Path, metavar="FILE", help=PASSWORD_HELP)
    p.add_argument("--hash-algo", type=_algo, default=HashAlgo.SHA256, metavar="ALGO",
                   help="sha256 (default), sha384 or sha512")
    _add_common(p)
    p.set_defaults(handler=_cmd_sign)

    p = sub.add_parser("verify", help="check IMA signatures in security.ima", description=_VERIFY_HELP,
                       formatter_class=fmt)
    p.add_argument("--cert", required=True, type=Path, action="append", metavar="CERT",
                   help="trusted certificate (PEM or DER); repeat for several")
    add_revocation_options(p)
    p.add_argument("--state-dir", type=Path, metavar="DIR",
                   help="where enroll and keys install record the newest revocation list accepted (default "
                        "/var/lib/imaguard; a directory given here must exist): an older list is refused "
                        "(revocation-rollback); verify never writes it")
    _add_common(p)
    p.set_defaults(handler=_cmd_verify)

    p = sub.add_parser("hash", help="print file digests", description=_HASH_HELP, formatter_class=fmt)
    p.add_argument("--hash-algo", type=_algo, default=HashAlgo.SHA256, metavar="ALGO",
                   help="sha256 (default), sha384 or sha512")
    _add_common(p)
    p.set_defaults(handler=_cmd_hash)


def add_revocation_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--revocation-list", type=Path, metavar="FILE",
                   help="CA-signed revocation list (imaguard-keyring revoke): its key ids are refused (revoked-key)")
    p.add_argument("--revocation-ca", type=Path, metavar="CERT", help="the CA certificate that signs the list")


def _run(
    args: argparse.Namespace, job: Callable[[Target], FileResult], verb: str
) -> list[FileResult]:
    results: list[FileResult] = []
    todo: list[Target] = []
    for target in iter_targets(args.paths, args.recursive):
        if isinstance(target, FileResult):
            results.append(target)
            if not args.json and (args.verbose or not target.ok):
                print(_line(target), file=sys.stderr)
        else:
            todo.append(target)
    if args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    with Progress(total=len(todo), unit="file", desc=verb, enabled=not args.json) as bar:
        for res in run_jobs(job, todo, args.jobs):
            results.append(res)
            bar.update(1)
            if not args.json and (args.verbose or not res.ok):
                bar.write(_line(res), err=res.status == "failed")
    return results


def _line(res: FileResult) -> str:
    extra = f" [{res.reason}]" if res.reason else ""
    detail = ""
    if res.detail and res.status == "failed":
        detail = ": " + res.detail.removeprefix(f"{res.path}: ")
    key = f" key={res.key_id}" if res.key_id and res.status != "failed" else ""
    return f"{res.status:8} {shown_path(res.path)}{extra}{key}{one_line(detail)}"


def _finish(args: argparse.Namespace, command: str, results: list[FileResult]) -> int:
    counts = Counter(r.status for r in results)
    reasons = Counter(r.reason for r in results if r.status == "failed")
    if any(r.reason in VERIFY_FAILURES for r in results if r.status == "failed"):
        code = ExitCode.VERIFICATION_FAILED
    elif counts["failed"]:
        code = ExitCode.FAILURE
    else:
        code = ExitCode.OK
    if args.json:
        doc = {
            "command": command,
            "summary": dict(sorted(counts.items())),
            "reasons": dict(sorted(reasons.items())),
            "exit_code": int(code),
            "files": [r.to_json() for r in results],
        }
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no files"
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()))
        # The digests of `hash` own stdout; for sign/verify the summary is the result.
        out = sys.stderr if command == "hash" else sys.stdout
        print(f"{command}: {summary}" + (f" ({why})" if why else ""), file=out)
    return code


def _cmd_sign(args: argparse.Namespace) -> int:
    from imaguard.keys import LocalSigner, load_certificate, load_private_key  # noqa: PLC0415 - see cli.main

    cert = load_certificate(args.cert) if args.cert is not None else None
    key = load_private_key(args.key, key_password(args.password_file, args.key), cert)
    # Identical files (empty __init__.py, copies) get one signature: see sign/memo.py.
    signer = MemoSigner(LocalSigner.from_key(key, cert))
    job = functools.partial(sign_path, signer=signer, algo=args.hash_algo, limits=Limits())
    return _finish(args, "sign", _run(args, job, "signing"))


def _cmd_verify(args: argparse.Namespace) -> int:
    from imaguard.keys import Verifier, load_certificate  # noqa: PLC0415 - see cli.main
    from imaguard.keys.revocation_store import load_revoked  # noqa: PLC0415
    from imaguard.packages import DEFAULT_STATE_DIR  # noqa: PLC0415

    # An old signed list is still signed: check it against the host's record, as enroll does.
    state_dir = args.state_dir if args.state_dir is not None else DEFAULT_STATE_DIR
    if args.state_dir is not None and not args.state_dir.is_dir():
        # A fresh host has no default state dir (nothing recorded), but a --state-dir that is not
        # there is a typo: read as "nothing recorded", it would let a revoked key verify (audit).
        raise UsageError(f"{args.state_dir}: --state-dir is not a directory", reason="state-dir")
    revoked = load_revoked(args.revocation_list, args.revocation_ca, state_dir, record=False)
    verifier = Verifier.of((load_certificate(p) for p in args.cert), revoked)
    job = functools.partial(verify_path, verifier=verifier, limits=Limits())
    return _finish(args, "verify", _run(args, job, "verifying"))


def _hash_one(target: Target, algo: HashAlgo, limits: Limits) -> FileResult:
    path = target.path
    try:
        with xattr_store.open_regular(path) as (fd, st):
            opened(target, st, "hashed")
            digest = xattr_store.hash_file(fd, algo, limits, path, size_hint=st.st_size)
    except HostStateError as exc:
        return FileResult(path, "failed", exc.reason, str(exc))
    return FileResult(path, "hashed", detail=digest.hex(), algo=algo.kernel_name)


def _cmd_hash(args: argparse.Namespace) -> int:
    job = functools.partial(_hash_one, algo=args.hash_algo, limits=Limits())
    done: list[FileResult] = []
    todo: list[Target] = []
    for target in iter_targets(args.paths, args.recursive):
        if isinstance(target, FileResult):
            done.append(target)
        else:
            todo.append(target)
    for res in run_jobs(job, todo, args.jobs):
        done.append(res)
        if args.json:
            continue
        if res.status == "hashed":
            # As sha256sum: a name that needs escaping is shown escaped, its line marked with "\\".
            name = shown_path(res.path)
            mark = "\\" if name != res.path else ""
            print(f"{mark}{res.detail}  {name}")
        else:
            print(_line(res), file=sys.stderr)
    return _finish(args, "hash", done)
