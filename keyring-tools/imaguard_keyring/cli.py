"""``imaguard-keyring``: the authority side (bundles now; CA, certificates, MOK, rotation later)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from imaguard.cli.main import Parser, run_guarded
from imaguard.errors import ExitCode
from imaguard.keys import LocalSigner, load_certificate, load_private_key
from imaguard.packages import DEFAULT_STATE_DIR, open_source
from imaguard_keyring.bundles import write_bundle

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]


_DESCRIPTION = """\
The signing authority's side of imaguard. Today: signature bundles for package versions,
built from verified package metadata. Key ceremony (CA, IMA certificates, MOK, rotation)
follows in the keys issue."""


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog="imaguard-keyring", description=_DESCRIPTION)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    p = sub.add_parser(
        "bundle",
        help="write signature bundles for installed packages of a tree",
        description="Sign the trusted SHA-256 of every file of the named packages with the IMA key and write "
        "one DSSE-signed bundle per package version into --out. Only repo-verified and vendor-signed "
        "digests are included.",
    )
    p.add_argument("packages", nargs="+", metavar="PACKAGE")
    p.add_argument("--ima-key", type=Path, required=True, help="IMA signing key")
    p.add_argument("--ima-cert", type=Path, required=True, help="its certificate (key id from SKID)")
    p.add_argument("--authority-key", type=Path, required=True, help="key that signs the bundles")
    p.add_argument("--authority-cert", type=Path, required=True, help="its certificate")
    p.add_argument("--root", type=Path, default=Path("/"), help="tree whose package database is read")
    p.add_argument("--package-db", choices=("deb", "rpm"))
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    p.add_argument("--out", type=Path, required=True, help="directory to write bundles into")
    p.add_argument("--json", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(handler=_cmd_bundle)
    return parser


def _cmd_bundle(args: argparse.Namespace) -> int:
    ima_cert = load_certificate(args.ima_cert)
    signer = LocalSigner.from_key(load_private_key(args.ima_key, None, ima_cert), ima_cert)
    auth_cert = load_certificate(args.authority_cert)
    auth_key = load_private_key(args.authority_key, None, auth_cert)
    source = open_source(args.root, args.state_dir, args.package_db)
    for name in args.packages:
        path, n = write_bundle(source=source, pkg=source.package(name), ima_signer=signer, authority_key=auth_key,
                               authority_key_id=auth_cert.key_id, out_dir=args.out)
        print(f"{path}: {n} files")
    return ExitCode.OK


def main(argv: Sequence[str] | None = None) -> int:
    return run_guarded(_parser(), list(sys.argv[1:] if argv is None else argv))


def entry() -> None:
    sys.exit(main())
