"""``imaguard-keyring``: the signing authority's side (key ceremony, revocation, signature bundles)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from imaguard.cli.keyfile import PASSWORD_HELP, key_password
from imaguard.cli.main import Parser, run_guarded
from imaguard.cli.packages import TRUSTED_KEYRING_HELP
from imaguard.errors import ExitCode, UsageError
from imaguard.keys import LocalSigner, load_certificate, load_private_key
from imaguard.packages import DEFAULT_STATE_DIR, open_source
from imaguard.sign.sources import refuse_shared_key
from imaguard_keyring import commands, paths
from imaguard_keyring.bundles import write_bundle

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]


_DESCRIPTION = """\
The signing authority's side of imaguard: the key ceremony and signature bundles.

Key ceremony, in order:
  imaguard-keyring ca create --out CA            an offline IMA CA (keep CA/ off the network)
  imaguard-keyring cert issue --ca CA --out K --name ima-2026
                                                 an IMA signing key and certificate (K/ima-2026.der
                                                 goes to /etc/keys/ima/ on hosts)
  imaguard-keyring mok prepare --ca CA --out M   only for kernels whose ".ima" keyring is restricted
  imaguard-keyring rotate --ca CA --old K/ima-2026.pem --out K
                                                 a successor key and the ordered rotation procedure
  imaguard-keyring revoke --ca CA --list revocations.json --key-id 1a2b3c4d
                                                 the CA-signed list of key ids hosts refuse
Bundles: imaguard-keyring bundle ... signs verified package digests for a whole fleet.

Run `imaguard-keyring COMMAND --help` for each command. Exit codes: 0 ok, 1 failure,
2 usage error (including refusing to overwrite a file; only `bundle` replaces, and only bundles),
3 verification failed, 130 interrupted (Ctrl-C, SIGTERM, SIGHUP, SIGQUIT; nothing half-written is left)."""


_BUNDLE = """\
Sign the trusted SHA-256 of every file of the named packages with the IMA key and write one
DSSE-signed bundle per package version into --out, as NAME_VERSION_ARCH.bundle (mode 0644; missing
directories 0755). A bundle of the same package version already in --out is REPLACED (atomically):
re-signing after a key rotation is the point of running bundle again. Every PACKAGE is looked up
before a key is opened or a bundle written: one that is not installed writes nothing.

Only repo-verified and vendor-signed digests are included. repo-verified means an InRelease (or rpm
header) signed by one of this host's apt (or rpm) keyrings (also with --root: keys the tree carries
never count), or by a --trusted-keyring when given. The package caches used to establish it are
kept in --state-dir.

The authority key must not be the IMA key (refused, shared-key): DSSE and IMA signatures are both
PKCS#1 v1.5 or ECDSA over SHA-256, so one key would make every bundle signature an IMA signature.

Exit status: 0 bundles written, 1 failure (a write error), 2 usage error (a package not installed,
a wrong password, a key that does not match its certificate, --out not a directory), 130 interrupted
(no partial bundle is left)."""


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog="imaguard-keyring", description=_DESCRIPTION,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    sub: argparse._SubParsersAction[argparse.ArgumentParser] = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=Parser
    )
    commands.register(sub)
    p = sub.add_parser(
        "bundle",
        help="write signature bundles for installed packages of a tree",
        description=_BUNDLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("packages", nargs="+", metavar="PACKAGE", help="installed package names (a repeat counts once)")
    p.add_argument("--ima-key", type=Path, required=True, metavar="FILE", help="IMA signing key")
    p.add_argument("--ima-cert", type=Path, required=True, metavar="FILE", help="its certificate (key id from SKID)")
    p.add_argument("--authority-key", type=Path, required=True, metavar="FILE",
                   help="key that signs the bundles (not the IMA key)")
    p.add_argument("--authority-cert", type=Path, required=True, metavar="FILE", help="its certificate")
    p.add_argument("--ima-password-file", type=Path, metavar="FILE", help=f"for --ima-key: {PASSWORD_HELP}")
    p.add_argument("--authority-password-file", type=Path, metavar="FILE",
                   help=f"for --authority-key: {PASSWORD_HELP}")
    p.add_argument("--root", type=Path, default=Path("/"), metavar="DIR",
                   help="tree whose package database is read (default /)")
    p.add_argument("--package-db", choices=("deb", "rpm"), help="package database (default: detected in --root)")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, metavar="DIR",
                   help=f"where the package caches (apt-index/, deb-chain/, debs/) are read and written "
                   f"(default {DEFAULT_STATE_DIR})")
    p.add_argument("--trusted-keyring", type=Path, action="append", default=[], metavar="FILE",
                   help=TRUSTED_KEYRING_HELP)
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="directory to write bundles into (made 0755 if missing)")
    p.add_argument("--json", action="store_true", help="print one JSON document of the bundles written")
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks of errors")
    p.set_defaults(handler=_cmd_bundle)
    return parser


def _cmd_bundle(args: argparse.Namespace) -> int:
    if paths.lexists(args.out) and not paths.is_directory(args.out):  # as `ca create --out FILE` says it
        raise UsageError(f"{args.out}: not a directory", reason="not-a-directory")
    ima_cert = load_certificate(args.ima_cert)
    auth_cert = load_certificate(args.authority_cert)
    refuse_shared_key([auth_cert], [ima_cert])  # before any key is read: --authority-key matches its cert
    source = open_source(args.root, args.state_dir, args.package_db, trusted_keyrings=args.trusted_keyring)
    # Every name is resolved before a password is asked for or a bundle written: a typo in the last
    # name must not leave the first packages' bundles replaced behind an exit 2. A repeated name counts once.
    packages = [(name, source.package(name)) for name in dict.fromkeys(args.packages)]
    ima_key = load_private_key(args.ima_key, key_password(args.ima_password_file, args.ima_key), ima_cert)
    signer = LocalSigner.from_key(ima_key, ima_cert)
    auth_password = key_password(args.authority_password_file, args.authority_key)
    auth_key = load_private_key(args.authority_key, auth_password, auth_cert)
    written: list[dict[str, object]] = []
    for name, pkg in packages:
        path, n = write_bundle(source=source, pkg=pkg, ima_signer=signer, authority_key=auth_key,
                               authority_key_id=auth_cert.key_id, out_dir=args.out)
        written.append({"package": name, "bundle": str(path), "files": n})
        if not args.json:
            print(f"{path}: {n} files")
    if args.json:
        print(json.dumps({"bundles": written, "ima_key_id": ima_cert.key_id.hex(),
                          "authority_key_id": auth_cert.key_id.hex()}, indent=1))
    return ExitCode.OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. SIGTERM, SIGHUP and SIGQUIT act as Ctrl-C for all of it: every writer's
    cleanup (the ceremony's sets, the temp files of revoke and bundle, which would otherwise leave
    a signed list nobody published beside the real one) runs, and the exit is 130, "interrupted"."""
    return run_guarded(_parser(), list(sys.argv[1:] if argv is None else argv))


def entry() -> None:
    sys.exit(main())
