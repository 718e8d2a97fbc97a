"""``imaguard report`` and ``imaguard report verify``: the attestation report, its exports, its check."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imaguard.cli.keyfile import PASSWORD_HELP
from imaguard.errors import ExitCode, FormatError, TrustError, UsageError

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["register"]

_HELP = """\
Turn the kernel's IMA measurement log into a report: the log is parsed and replayed (PCR 10,
sha1 and sha256 banks), every measured file is looked up in the digest index of installed
packages, and every running process (its executable and each executable mapping) is traced to
its log entry. Classes: package (the content is a package file: name, version, arch, source
package, evidence), modified (a package owns the path, not this content), unknown (from no
package), not-measured (running but absent from the log, with the likely reason), untraced (the
running file is not the file its path names: replaced since, another mount namespace). ima-sig
signatures are "verified" only with the certificates given with --cert/--ima-cert; one that
verifies only with a certificate the log shows (a key measured into a keyring named _ima, which
any user can create) is "logged-key".

With --nonce and a TPM (TPM2TOOLS_TCTI, or /dev/tpmrm0), a quote over PCR 10 signed by the
host's attestation key (AK) is attached; the log is read before and after the quote and must not
change in between. The AK is the same for every quote of a TPM (a primary key of its endorsement
hierarchy, see `imaguard report ak --help`), so a verifier can pin it. With --sign the report
becomes a DSSE envelope signed by the host key.

Formats: json (the report, schema in docs/report.md), text (the same report for a person: the
summary, then every process and measured file not traced to a package and every signature that
did not verify, then each process with its package), keylime-policy (a Keylime runtime policy
from the digest index: every trusted SHA-256 digest by path, --cert/--ima-cert as verification
keys, excludes for directories no package owns), cel (the log as TCG Canonical Event Log JSON,
each record with its package provenance).

The digest index is built by `imaguard packages index`. Every format reads the list (--file, or
the kernel's) the same way, whole and checked: a --file that does not exist is a usage error, one
that is not a binary measurement list an error naming it. The document goes to stdout or --output
(an existing file there is replaced, but never an input: --file, --index, a certificate, a key); a
one-line summary to stderr (not with --json). --json prints errors as one JSON document on stdout
for the formats whose document is JSON (json, keylime-policy, cel); with --format text it is a
usage error, so a script never gets text where it asked for JSON. The options of `report` apply
to the report only: give `report verify` and `report ak` their own options after the subcommand.
Schema: docs/report.md.

Exit status: 0 written, 1 failure, 2 usage error, 3 the TPM's PCR 10 does not match the log,
77 no IMA or no TPM (with --nonce) here.
"""

_VERIFY_HELP = """\
Check a report: its DSSE signature (with --cert; a signed report needs it), payload type and
schema version; that every entry is of PCR 10, that its extended digests are the hashes of its
template data and that the path, digest, signature key id and structural class it states are what
that data holds; that the entries replay to the PCR 10 values it states; and, when it carries a
TPM quote, that the quote is signed by the attestation key in the report, for the report's nonce,
over PCR 10 only, with the replayed value. --nonce N also requires that the report was made for
N and has a quote. --ak FILE (the host's AK, recorded with `imaguard report ak`) also requires a
quote signed by that AK: without it, the quote convinces only whoever trusts the AK the report
itself names. Give the AK of the one host the report must come from (the report's host identity
is not in the quote, so with several hosts' AKs one host's report could pass for another's), and
a fresh --nonce with it (else a warning, W-NOT-FRESH: an old report would verify too). Not
checked (the reporter's claims, from its own package index and certificates): package classes and
packages, signature verdicts, processes (docs/report.md). Nor the template name of an entry: the
kernel does not hash it, so a report could rename a file entry to a template of the same layout
(ima-sig to ima-buf hides its signature); renames that its data gives away are refused, and
--template NAME (repeatable: every template the host's policy logs, boot_aggregate's included,
e.g. --template ima-sig --template ima-buf) refuses any other (template-not-allowed). The summary
(log counts, templates, boot_aggregate, counts) must be the tally of the entries and processes
(summary-mismatch). With neither --cert nor --ak nothing authenticates the report: a warning,
W-UNAUTHENTICATED, and "authenticated": false in --json.

Exit status: 0 verified, 3 verification failed (the message names the check), 2 usage error.
"""

_AK_HELP = """\
Print the public key (PEM) of this host's TPM attestation key (AK), the key that signs the quotes
of `imaguard report --nonce`. Record it when the host is enrolled, from a trusted path (at
provisioning, or after checking the TPM's endorsement key), and give it to `imaguard report
verify --ak FILE`: a report whose quote another key signed is then refused (untrusted-ak).

The AK is a primary key of the TPM's endorsement hierarchy made from one fixed template
(RSA-2048, restricted signing key, RSASSA/SHA-256, fixedTPM, fixedParent). A TPM derives such a
key from its endorsement seed and the template alone: the same TPM gives the same AK every time,
nothing is stored in it, and the key changes only when the seed does (TPM2_ChangeEPS, which
also changes the endorsement key). The fingerprint is SHA-256 over the key's SubjectPublicKeyInfo.

Needs tpm2-tools and a TPM (TPM2TOOLS_TCTI, or /dev/tpmrm0); the endorsement hierarchy must have
no password (as tpm2_createek needs too).

Exit status: 0 printed, 1 failure, 2 usage error, 77 no TPM or no tpm2-tools here.
"""

# Directories a Keylime policy may exclude when no package file lies under them.
_EXCLUDE_CANDIDATES = ("/boot", "/dev", "/etc", "/home", "/lab", "/media", "/mnt", "/opt", "/proc", "/root", "/run",
                       "/srv", "/sys", "/tmp", "/usr/local", "/var")  # noqa: S108 - names to exclude, not files  # fmt: skip


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("report", help="attestation report of the measurement log, and its exports",
                       description=_HELP, formatter_class=fmt)  # fmt: skip
    p.add_argument("--format", choices=("json", "text", "keylime-policy", "cel"), default="json",
                   help="json (default), text, keylime-policy or cel")  # fmt: skip
    p.add_argument("--nonce", metavar="N", help="attach a TPM quote over PCR 10 made for this nonce")
    p.add_argument("--sign", type=Path, metavar="KEY", help="sign the report (DSSE) with this private key")
    p.add_argument("--cert", type=Path, metavar="CERT",
                   help="certificate of --sign's key (required with --sign); also checks ima-sig signatures, "
                        "and is a verification key of --format keylime-policy")  # fmt: skip
    p.add_argument("--password-file", type=Path, metavar="FILE", help="--sign's key password: " + PASSWORD_HELP)
    p.add_argument("--ima-cert", type=Path, action="append", default=[], metavar="CERT",
                   help="IMA certificate to check ima-sig signatures with (repeatable)")  # fmt: skip
    p.add_argument("--file", type=Path, metavar="LOG",
                   help="binary measurement list to read (default: the kernel's, from securityfs)")  # fmt: skip
    p.add_argument("--index", type=Path, metavar="DB",
                   help="digest index (index.sqlite, or its state directory; default /var/lib/imaguard)")  # fmt: skip
    p.add_argument("--no-processes", action="store_true", help="leave running processes out")
    p.add_argument("-o", "--output", type=Path, metavar="FILE",
                   help="write the document here instead of stdout (an existing file is replaced, an input "
                        "never: --file, --index, --cert, --ima-cert, --sign, --password-file)")  # fmt: skip
    p.add_argument("--json", action="store_true",
                   help="errors as one JSON document on stdout, and no summary line on stderr (json, "
                        "keylime-policy and cel, whose document is JSON; not with --format text)")  # fmt: skip
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks of errors")
    p.set_defaults(handler=_cmd_report)
    rsub = p.add_subparsers(dest="report_command", metavar="{verify,ak}", action=_Subcommand)
    v = rsub.add_parser("verify", help="check a report: signature, schema, replay, nonce, TPM quote",
                        description=_VERIFY_HELP, formatter_class=fmt)  # fmt: skip
    v.add_argument("--cert", type=Path, action="append", default=[], metavar="CERT",
                   help="certificate the report must be signed with (repeatable)")  # fmt: skip
    v.add_argument("--nonce", metavar="N", help="the nonce the report must have been made for")
    v.add_argument("--ak", type=Path, action="append", default=[], metavar="FILE",
                   help="the reporting host's attestation key (PEM, from `imaguard report ak`); the quote must "
                        "be signed by it (repeatable: any of them, e.g. before and after a TPM change)")  # fmt: skip
    v.add_argument("--template", action="append", default=[], metavar="NAME",
                   help="a template the host's IMA policy logs (repeatable); every entry's must be one of "
                        "them")  # fmt: skip
    v.add_argument("--json", action="store_true", help="print the result as one JSON document")
    v.add_argument("-v", "--verbose", action="store_true", help="tracebacks of errors")
    v.add_argument("file", type=Path, metavar="FILE", help="the report (signed envelope or bare document)")
    v.set_defaults(handler=_cmd_verify)
    a = rsub.add_parser("ak", help="print this host's TPM attestation key, to pin in report verify --ak",
                        description=_AK_HELP, formatter_class=fmt)  # fmt: skip
    a.add_argument("-o", "--output", type=Path, metavar="FILE", help="write the PEM here instead of stdout")
    a.add_argument("--json", action="store_true", help="print one JSON document: the PEM and its fingerprint")
    a.add_argument("-v", "--verbose", action="store_true", help="tracebacks of errors")
    a.set_defaults(handler=_cmd_ak)


if TYPE_CHECKING:
    _SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    _SubParsers = argparse._SubParsersAction  # not subscriptable at run time


class _Subcommand(_SubParsers):
    """`report verify|ak`: refuse options of `report` itself given before the subcommand.

    argparse would parse them and then drop them (or let the subcommand's defaults overwrite them):
    `report --file X verify R` looked like it checked R against X and did not.
    """

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:  # fmt: skip
        name = values[0] if isinstance(values, list | tuple) and values else values
        given = [
            "/".join(a.option_strings) for a in parser._actions
            if a.option_strings and a.dest != argparse.SUPPRESS and a is not self
            and getattr(namespace, a.dest, a.default) != a.default
        ]  # fmt: skip
        if given:
            parser.error(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to the report, not to "
                         f"`report {name}`: give {name}'s own options after `{name}`")
        super().__call__(parser, namespace, values, option_string)


def _index_dir(arg: Path | None) -> Path:
    from imaguard.packages import DEFAULT_STATE_DIR  # noqa: PLC0415 - lazy: start-up time
    from imaguard.packages.index import INDEX_NAME  # noqa: PLC0415

    path = arg if arg is not None else DEFAULT_STATE_DIR
    db = path / INDEX_NAME if path.is_dir() or arg is None else path
    if db.name != INDEX_NAME:
        raise UsageError(f"{path}: the digest index is a file named {INDEX_NAME} (or give its directory)")
    if not db.is_file():
        raise UsageError(f"{db}: no digest index; build it with `imaguard packages index`", reason="no-index")
    return db.parent


def _write(doc: bytes, output: Path | None) -> None:
    if output is None:
        sys.stdout.buffer.write(doc)
        sys.stdout.flush()
        return
    from imaguard.fsio import write_atomically  # noqa: PLC0415

    try:
        write_atomically(output, doc, 0o644)
    except OSError as exc:
        raise UsageError(f"{output}: cannot write: {exc.strerror}") from exc


def _dumps(doc: object) -> bytes:
    # Compact: the C encoder (indenting falls back to the pure-Python one, 10x slower on large logs).
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False  # one does not exist (yet): not the same file


def _refuse_output_over_input(args: argparse.Namespace) -> None:
    """-o must not replace what the report is made from (a saved list may be the only copy of evidence)."""
    if args.output is None:
        return
    from imaguard.packages import DEFAULT_STATE_DIR  # noqa: PLC0415 - lazy: start-up time
    from imaguard.packages.index import INDEX_NAME  # noqa: PLC0415

    index = args.index if args.index is not None else DEFAULT_STATE_DIR
    inputs = [("--file", args.file), ("--index", index / INDEX_NAME if index.is_dir() else index),
              ("--cert", args.cert), ("--sign", args.sign), ("--password-file", args.password_file),
              *(("--ima-cert", c) for c in args.ima_cert)]  # fmt: skip
    for option, path in inputs:
        if path is not None and _same_file(args.output, path):
            raise UsageError(f"-o {args.output} is the {option} input {path}: refusing to overwrite it; write the "
                             "document elsewhere")  # fmt: skip


def _check_options(args: argparse.Namespace) -> None:
    if args.format == "text" and args.json:
        # --json means "JSON on stdout, errors included": a text document there would break the
        # script that asked for it, and a JSON error after text would not parse either.
        raise UsageError("--json asks for JSON, --format text is the report for a person: give --format json "
                         "(the same report) or leave out --json")  # fmt: skip
    if args.sign is not None and args.cert is None:
        raise UsageError("--sign needs --cert (the certificate of the signing key)")
    if args.password_file is not None and args.sign is None:
        raise UsageError("--password-file is the password of --sign's key: give --sign, or leave it out")
    if args.format != "json" and args.sign is not None:
        raise UsageError(f"--sign applies to the json report, not to --format {args.format}")
    if args.format not in ("json", "text") and args.nonce is not None:
        raise UsageError(f"--nonce applies to the json and text reports, not to --format {args.format}")
    _check_nonce_text(args.nonce)
    _refuse_output_over_input(args)


def _cmd_report(args: argparse.Namespace) -> int:
    _check_options(args)
    cert = None
    certs = []
    if args.cert is not None or args.ima_cert:
        from imaguard.keys.material import load_certificate  # noqa: PLC0415 - X.509 only when asked for

        cert = load_certificate(args.cert) if args.cert is not None else None
        certs = [*([cert] if cert is not None else []), *(load_certificate(p) for p in args.ima_cert)]
    state_dir = _index_dir(args.index)
    if args.format == "keylime-policy":
        from imaguard.report.policy_export import keylime_policy_here  # noqa: PLC0415

        export = keylime_policy_here(state_dir, certs, args.file, _EXCLUDE_CANDIDATES)
        policy, stats = export.policy, export.stats
        _write(_dumps(policy), args.output)
        if export.log_source is not None and export.boot_aggregate is None:
            # Keylime compares the host's first entry with the policy's boot_aggregate: say it is absent.
            print(f"imaguard: warning [W-NO-BOOT-AGGREGATE]: {export.log_source}: the list does not start with "
                  "a boot_aggregate entry: the policy has no boot_aggregate digest", file=sys.stderr)  # fmt: skip
        if not args.json:
            print(f"keylime policy: {stats.paths} paths from {stats.files} package files with SHA-256 "
                  f"({stats.skipped_weak} without left out), excludes {policy['excludes']}",
                  file=sys.stderr)  # fmt: skip
        return ExitCode.OK
    from imaguard.report import collect  # noqa: PLC0415

    key = None
    if args.sign is not None:
        from imaguard.cli.keyfile import key_password  # noqa: PLC0415
        from imaguard.keys.material import load_private_key  # noqa: PLC0415

        key = load_private_key(args.sign, key_password(args.password_file, args.sign), cert)
    collected = collect.collect(state_dir=state_dir, log_file=args.file, certificates=certs, nonce=args.nonce,
                                processes=args.format in ("json", "text") and not args.no_processes)  # fmt: skip
    if args.format == "cel":
        _write(_dumps(collect.cel_of(collected)), args.output)
        return ExitCode.OK
    if args.format == "text":
        from imaguard.report.formats.text import render_text  # noqa: PLC0415

        _write(render_text(collected.report).encode("utf-8", "surrogateescape"), args.output)
        return ExitCode.OK
    document = collected.report.to_bytes()
    if key is not None and cert is not None:
        from imaguard.report.envelope import sign_report  # noqa: PLC0415

        document = sign_report(document, key, cert)
    _write(document, args.output)
    if not args.json:
        counts = collected.report.counts()
        line = ", ".join(f"{k} {v}" for k, v in counts["processes"].items() if v)
        extra = (", quoted" if collected.report.quote else "") + (", signed" if key else "")
        print(f"report: {len(collected.report.entries)} log entries, processes: {line or 'none'}{extra}",
              file=sys.stderr)
    return ExitCode.OK


def _cmd_ak(args: argparse.Namespace) -> int:
    from imaguard.report.quote import attestation_key  # noqa: PLC0415
    from imaguard.report.tpmquote import ak_fingerprint  # noqa: PLC0415

    pem = attestation_key()
    fingerprint = ak_fingerprint(pem)
    if args.json:
        _write(_dumps({"ak_public_pem": pem.decode("ascii"), "fingerprint": fingerprint}), args.output)
        return ExitCode.OK
    _write(pem, args.output)
    print(f"attestation key {fingerprint}", file=sys.stderr)
    return ExitCode.OK


def _pinned_ak(path: Path) -> bytes:
    from imaguard.fsio import read_regular  # noqa: PLC0415
    from imaguard.report.tpmquote import ak_public_key  # noqa: PLC0415

    try:
        return ak_public_key(read_regular(path, 64 << 10))
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the attestation key: {exc.strerror}", reason="bad-ak") from exc
    except FormatError as exc:
        raise UsageError(f"{path}: not a PEM public key (give the output of `imaguard report ak`)",
                         reason="bad-ak") from exc  # fmt: skip


def _pinned_templates(names: list[str]) -> frozenset[str] | None:
    from imaguard.ima.templates import template_for  # noqa: PLC0415

    for name in names:
        try:
            known = template_for(name).known
        except FormatError:
            known = False
        if not known:
            raise UsageError(f"--template {name!r}: not a built-in IMA template nor a format of known fields "
                             "(ima-ng, ima-sig, ima-buf, d-ng|n-ng|sig, ...)", reason="bad-template")  # fmt: skip
    return frozenset(names) if names else None


def _check_nonce_text(nonce: str | None) -> None:
    from imaguard.report.model import is_utf8_text  # noqa: PLC0415

    if nonce is not None and not is_utf8_text(nonce):
        raise UsageError("--nonce must be UTF-8 text (it is hashed as UTF-8 into the TPM quote)")


def _cmd_verify(args: argparse.Namespace) -> int:
    from imaguard.keys.material import load_certificate, read_small_file  # noqa: PLC0415
    from imaguard.report.verify import verify_report  # noqa: PLC0415

    _check_nonce_text(args.nonce)
    templates = _pinned_templates(args.template)
    certs = tuple(load_certificate(p) for p in args.cert)
    aks = tuple(_pinned_ak(p) for p in args.ak)
    if aks and args.nonce is None:
        # The pinned AK proves which TPM quoted, not when: without a nonce of the verifier's own, an
        # old report of the same host verifies just as well (review).
        print("imaguard: warning [W-NOT-FRESH]: --ak without --nonce: the quote is checked against the nonce "
              "the report states, so an old report of this host would verify too; challenge with a fresh "
              "--nonce", file=sys.stderr)  # fmt: skip
    # A report of 100,000 entries is some tens of MiB; the limit keeps a wrong path from being slurped.
    data = read_small_file(args.file, "report", limit=256 << 20, reason="bad-report")
    try:
        result = verify_report(data, certs=certs, nonce=args.nonce, source=str(args.file), aks=aks,
                               templates=templates)  # fmt: skip
    except FormatError as exc:
        # A report that no longer parses was changed: that is a failed verification, not a crash.
        raise TrustError(f"verification failed: {exc}", reason=exc.reason) from exc
    # Signed with a given certificate, or quoted by a pinned AK: otherwise anyone could have written
    # the report (a quote by an AK of its own, too); the checks show only that it is self-consistent.
    authenticated = result.signed_by is not None or bool(aks)
    if not authenticated:
        print("imaguard: warning [W-UNAUTHENTICATED]: nothing authenticates this report (no signature checked "
              "with --cert, no quote by a pinned --ak): anyone could have written it; what verified is only "
              "that it is consistent in itself", file=sys.stderr)  # fmt: skip
    if args.json:
        print(json.dumps({"verified": True, "authenticated": authenticated, "checks": list(result.checks),
                          "signed_by": result.signed_by,
                          "nonce": result.nonce, "quoted": result.quoted, "pcr10": result.pcr10,
                          "ak": result.ak, "ak_pinned": bool(aks), "templates_pinned": sorted(templates or ()),
                          "entries": result.entries}, indent=1))  # fmt: skip
    else:
        ak = f"; quoted by AK {result.ak}{'' if aks else ' (not pinned: --ak)'}" if result.ak else ""
        print(f"{args.file}: verified ({', '.join(result.checks)})"
              f"{'; signed by ' + result.signed_by if result.signed_by else ''}"
              f"{'; nonce ' + repr(result.nonce) if result.nonce is not None else ''}{ak}")  # fmt: skip
    return ExitCode.OK
