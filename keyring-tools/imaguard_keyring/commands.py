"""``imaguard-keyring`` key-ceremony commands: ca, cert, mok, rotate, revoke, revocations.

Thin: parse options, call ``ceremony``/``revocations``, print. Every user mistake is an
ImaguardError that ``run_guarded`` turns into one line and exit code 2.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import re
import stat
import sys
from pathlib import Path

from cryptography.x509.oid import NameOID

from imaguard.cli.keyfile import ask_password, read_password_file
from imaguard.errors import ExitCode, UsageError
from imaguard.keys import Certificate
from imaguard.keys.revocation import check_reason, parse_key_id
from imaguard_keyring import ceremony, guidance, pkcs8, revocations
from imaguard_keyring.profiles import (
    CA_DEFAULT_DAYS,
    CERT_DEFAULT_DAYS,
    MAX_DAYS,
    KeyType,
    ca_subject_key_identifier,
    check_ca_validity,
    check_common_name,
    key_type_of,
)

__all__ = ["register"]

_FMT = argparse.RawDescriptionHelpFormatter
_KEY_TYPES = ", ".join(k.value for k in KeyType)
_ROTATED_SUFFIX = re.compile(r"-[0-9a-f]{8}$")  # a name rotate made before: ima-2026-1a2b3c4d

_KEY_ENCRYPTION = f"""\
Private key encryption: PKCS#8 PBES2 (RFC 8018), PBKDF2-HMAC-SHA256 with {pkcs8.PBKDF2_ITERATIONS}
iterations and a random 16-byte salt, AES-256-CBC; the same structure as `openssl pkcs8 -topk8
-v2 aes-256-cbc -v2prf hmacWithSHA256 -iter {pkcs8.PBKDF2_ITERATIONS}`, so openssl and `imaguard sign
--password-file` open it (deriving the key takes about 0.2 s). Without --password-file or
--ask-password the key is written in clear and a warning [W-KEY-UNENCRYPTED] names it."""

# A stable message id (STYLE §10), printed like [W-EC-KEY]: on stderr, in text and --json mode.
_UNENCRYPTED_WARNING = (
    "imaguard-keyring: warning [W-KEY-UNENCRYPTED]: {path}: the private key is written unencrypted{why}; "
    "anyone who can read the file can sign with it. To write keys encrypted, give --password-file FILE "
    "or --ask-password."
)

_CA_CREATE = f"""\
Create the IMA certificate authority: a private key and a self-signed certificate with
basicConstraints CA:TRUE, pathlen 0 (critical), keyUsage keyCertSign and cRLSign (critical, and
no digitalSignature, so a kernel with CONFIG_INTEGRITY_CA_MACHINE_KEYRING_MAX accepts it through
MOK), a subject key identifier (RFC 5280 method 1) and a validity of --days days.

Files in DIR (created with mode 0700 if missing; existing files are never overwritten):
  ca.key   the private key, PKCS#8 PEM, mode 0600; encrypted with the first line of
           --password-file, or a password --ask-password asks for
  ca.pem   the certificate            ca.der   the same in DER (for mokutil --import)

Keep DIR on an offline machine or removable medium. Hosts never need ca.key; they need ca.pem
only to check revocation lists, and the kernel needs the CA only where its IMA keyring is
restricted (see `imaguard-keyring mok prepare --help`).

{_KEY_ENCRYPTION}

Key types: {_KEY_TYPES} (default rsa4096). EC keys need
CONFIG_CRYPTO_ECDSA in the host kernel, which Debian 12's kernel lacks: a warning [W-EC-KEY]
says so."""

_CERT_ISSUE = f"""\
Issue an IMA signing certificate for a new key, signed by the CA in --ca. The profile is the
one the kernel checks when a restricted ".ima" keyring takes a key (Linux 6.4+,
restrict_link_by_digsig): keyUsage digitalSignature only (critical), basicConstraints CA:FALSE
(critical), no keyCertSign; a subject key identifier by RFC 5280 method 1, so the key id that
imaguard, evmctl (calc_keyid_v2) and the kernel use (its last 4 bytes) agree; an authority key
identifier naming the CA (how the kernel finds the CA, restrict_link_by_signature); and
extendedKeyUsage codeSigning (not critical; the kernel ignores it, openssl and audits read it).
The validity (--days, default {CERT_DEFAULT_DAYS}) cannot outlast the CA's; the kernel ignores dates.
A CA not valid yet (check the clock) or expired (create a new CA) issues nothing.

Files in --out: NAME.key (private key, 0600, PKCS#8 PEM, encrypted with the first line of
--password-file or with --ask-password), NAME.pem, and NAME.der, the form /etc/keys/ima/ and
`evmctl import` take. Nothing is overwritten.

{_KEY_ENCRYPTION}

Key types: {_KEY_TYPES} (default rsa3072). EC keys draw the warning
[W-EC-KEY]: Debian 12's kernel verifies RSA only. The CA key is read from --ca DIR/ca.key; its password from
the first line of --ca-password-file, or asked for on a terminal."""

_MOK_PREPARE = """\
Write the CA certificate in DER as OUT/ima-ca-KEYID.der for `mokutil --import`, and print when
MOK enrollment is needed, the exact commands, and how to check the result. Never runs mokutil.

Enrollment is needed only where the kernel's IMA keyring is ".ima"
(CONFIG_INTEGRITY_TRUSTED_KEYRING=y), which accepts only keys signed by a builtin key or, with
CONFIG_IMA_KEYRINGS_PERMIT_SIGNED_BY_BUILTIN_OR_SECONDARY, a secondary-keyring key. MOK keys
reach the secondary keyring through the ".machine" keyring (CONFIG_INTEGRITY_MACHINE_KEYRING,
Linux 5.18+; combinable with the IMA option only since 6.4) when shim sets MokListTrustedRT
(`mokutil --trust-mok`). Debian 12's kernel has an unrestricted "_ima" keyring: no MOK needed.

--ca takes a CA directory or a CA certificate file; no private key is read."""

_ROTATE = f"""\
Issue the successor of an IMA certificate: a new key (a new key id, never the old one or the
CA's), the same subject and key type unless given, signed by the same CA (--old must have been
issued by it). Files as for `cert issue`, named --name or OLDNAME-NEWKEYID.

Then print the procedure, in order: (1) install the new certificate beside the old one and load
it, (2) re-sign (bundles or `imaguard sign`, then `imaguard enroll`), (3) verify nothing depends
on the old key id, (4) retire the old certificate, and revoke it if it was compromised.
Default validity {CERT_DEFAULT_DAYS} days.

The old key is never read, only its certificate: the new key is encrypted only when
--password-file or --ask-password is given, whatever the old key was. Written in clear, it draws
the warning [W-KEY-UNENCRYPTED], which also says so when OLDNAME.key beside --old is encrypted.

{_KEY_ENCRYPTION}"""

_REVOKE = """\
Add an IMA key id to the revocation list FILE and sign the list with the CA key. A missing FILE
is started (serial 1) only with --new, in an existing directory: a mistyped path must not start
a list that forgets every key revoked so far. The list is a DSSE envelope (payload type
application/vnd.imaguard.revocation-list+json) signed by the CA: hosts check it against the CA
certificate, so it can be published anywhere.
Each change increments the list's serial; hosts refuse a list older than one they accepted, and
a list never drops a revoked key. An existing list that does not verify with this CA is refused,
never re-signed. The file is replaced atomically, under a lock on its directory (concurrent
revokes wait for each other); a FILE that is a symbolic link is refused (give the real path).

The key id is 8 hex digits (the last 4 bytes of the certificate's subject key identifier, as in
`imaguard verify` output and security.ima), or give --cert to take it (and the subject) from the
certificate. Revoking a key that is already listed changes nothing and exits 0."""

_SHOW = """\
Verify a revocation list against the CA certificate and print its serial and revoked key ids.
Exit 3 if the list does not verify: a bad signature, another CA's, no signature, or a file that is
not a signed list at all (truncated, empty, garbage). Exit 2 if FILE does not exist."""


def _days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if not 1 <= days <= MAX_DAYS:
        raise argparse.ArgumentTypeError(f"{text!r}: must be between 1 and {MAX_DAYS}")
    return days


def _key_type(text: str) -> KeyType:
    try:
        return KeyType(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: choose one of {_KEY_TYPES}") from None


def _add_new_key_options(p: argparse.ArgumentParser, default_type: KeyType | None, default_days: int) -> None:
    p.add_argument("--key-type", type=_key_type, default=default_type, metavar="TYPE",
                   help=f"{_KEY_TYPES} (default {default_type.value if default_type else 'that of --old'})")
    p.add_argument("--days", type=_days, default=default_days, metavar="N",
                   help=f"validity in days (default {default_days})")
    p.add_argument("--subject", metavar="CN", help="subject common name")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--password-file", type=Path, metavar="FILE",
                       help="encrypt the new private key with the password in FILE (first line)")
    group.add_argument("--ask-password", action="store_true",
                       help="encrypt the new private key with a password asked for twice on the terminal")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks of errors")


def _add_ca_key(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ca", type=Path, required=True, metavar="DIR", help="CA directory (ca.pem, ca.key)")
    p.add_argument("--ca-password-file", type=Path, metavar="FILE",
                   help="file whose first line is the password of DIR/ca.key")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ca = sub.add_parser("ca", help="the IMA certificate authority", description="Manage the IMA CA.")
    ca_sub = ca.add_subparsers(dest="ca_command", metavar="COMMAND", required=True, parser_class=type(ca))
    p = ca_sub.add_parser("create", help="create an offline IMA CA", description=_CA_CREATE, formatter_class=_FMT)
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory for ca.key, ca.pem, ca.der")
    _add_new_key_options(p, KeyType.RSA4096, CA_DEFAULT_DAYS)
    _add_common(p)
    p.set_defaults(handler=_cmd_ca_create)

    cert = sub.add_parser("cert", help="IMA signing certificates", description="Issue IMA signing certificates.")
    cert_sub = cert.add_subparsers(dest="cert_command", metavar="COMMAND", required=True, parser_class=type(cert))
    p = cert_sub.add_parser("issue", help="issue an IMA signing certificate", description=_CERT_ISSUE,
                            formatter_class=_FMT)
    _add_ca_key(p)
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory for NAME.key/.pem/.der")
    p.add_argument("--name", required=True, metavar="NAME", help="file name stem (and default subject)")
    _add_new_key_options(p, KeyType.RSA3072, CERT_DEFAULT_DAYS)
    _add_common(p)
    p.set_defaults(handler=_cmd_cert_issue)

    mok = sub.add_parser("mok", help="MOK enrollment of the CA", description="Machine Owner Key enrollment.")
    mok_sub = mok.add_subparsers(dest="mok_command", metavar="COMMAND", required=True, parser_class=type(mok))
    p = mok_sub.add_parser("prepare", help="export the CA for mokutil --import and explain",
                           description=_MOK_PREPARE, formatter_class=_FMT)
    p.add_argument("--ca", type=Path, required=True, metavar="DIR|CERT", help="CA directory or CA certificate")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory for the DER file")
    _add_common(p)
    p.set_defaults(handler=_cmd_mok_prepare)

    p = sub.add_parser("rotate", help="issue the successor of an IMA certificate", description=_ROTATE,
                       formatter_class=_FMT)
    _add_ca_key(p)
    p.add_argument("--old", type=Path, required=True, metavar="CERT", help="the certificate being replaced")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory for the new files")
    p.add_argument("--name", metavar="NAME", help="file name stem (default: OLDNAME-NEWKEYID)")
    _add_new_key_options(p, None, CERT_DEFAULT_DAYS)
    _add_common(p)
    p.set_defaults(handler=_cmd_rotate)

    p = sub.add_parser("revoke", help="add a key id to the signed revocation list", description=_REVOKE,
                       formatter_class=_FMT)
    _add_ca_key(p)
    p.add_argument("--list", type=Path, required=True, metavar="FILE", help="revocation list (DSSE JSON)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--key-id", metavar="HEX", help="IMA key id, 8 hex digits")
    which.add_argument("--cert", type=Path, metavar="CERT", help="take the key id from this certificate")
    p.add_argument("--reason", default="", metavar="TEXT", help="why (one line, kept in the list)")
    p.add_argument("--new", action="store_true", help="start the list: FILE must not exist yet")
    _add_common(p)
    p.set_defaults(handler=_cmd_revoke)

    rev = sub.add_parser("revocations", help="inspect a revocation list", description="Revocation lists.")
    rev_sub = rev.add_subparsers(dest="rev_command", metavar="COMMAND", required=True, parser_class=type(rev))
    p = rev_sub.add_parser("show", help="verify and print a revocation list", description=_SHOW, formatter_class=_FMT)
    p.add_argument("--list", type=Path, required=True, metavar="FILE", help="revocation list")
    p.add_argument("--ca", type=Path, required=True, metavar="DIR|CERT", help="CA directory or certificate")
    _add_common(p)
    p.set_defaults(handler=_cmd_revocations_show)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _read_password_file(path: Path) -> bytes:
    """The first line of ``path`` (keyfile's rule and size limit); an empty one is refused: a new key
    must not be written unencrypted, nor a CA key opened, because of an empty file."""
    password = read_password_file(path)
    if not password:
        raise UsageError(f"{path}: the password file is empty", reason="key-password")
    return password


def _new_key_password(args: argparse.Namespace) -> bytes | None:
    if args.password_file is not None:
        return _read_password_file(args.password_file)
    if not args.ask_password:
        return None
    if not sys.stdin.isatty():
        raise UsageError("--ask-password needs a terminal; use --password-file", reason="key-password")
    first = ask_password("password for the new private key: ")
    if not first or first != ask_password("again: "):
        raise UsageError("the passwords are empty or differ", reason="key-password")
    return first.encode()


def _ca_password(args: argparse.Namespace) -> bytes | None:
    _warn_ca_key_perms(args.ca)  # before the password is typed for it
    if args.ca_password_file is not None:
        return _read_password_file(args.ca_password_file)
    key = args.ca / "ca.key"
    if _is_encrypted(key) and sys.stdin.isatty():  # an unreadable key: load_authority names it
        return ask_password(f"password for {key}: ").encode()
    return None


def _warn_ca_key_perms(ca: Path) -> None:
    """[W-CA-KEY-PERMS] (stderr, text and --json alike) for a CA key others can read, or a CA directory
    others can write (they could swap the key or the certificate), as ssh warns of an "UNPROTECTED
    PRIVATE KEY FILE". A file that cannot be looked at is left to load_authority to name."""
    key = ca / "ca.key"
    for path, mask, what, fix in ((key, 0o044, "the CA private key is readable by group or others", "600"),
                                  (ca, 0o022, "the CA directory is writable by group or others, who could "
                                   "replace its key or certificate", "700")):
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except (OSError, ValueError):
            return
        if mode & mask:
            print(f"imaguard-keyring: warning [W-CA-KEY-PERMS]: {path}: mode {mode:04o}: {what}; chmod {fix} {path}",
                  file=sys.stderr)


def _warn_ec(key_type: KeyType, what: str) -> None:
    if key_type.is_ec:
        print(guidance.EC_WARNING.format(what=what), file=sys.stderr)


def _warn_unencrypted(issued: ceremony.Issued, password: bytes | None, old_key: Path | None = None) -> None:
    """[W-KEY-UNENCRYPTED] for a private key just written in clear (stderr, as [W-EC-KEY])."""
    if password:
        return
    why = f", while the old key {old_key} is encrypted" if old_key is not None and _is_encrypted(old_key) else ""
    print(_UNENCRYPTED_WARNING.format(path=issued.files[0], why=why), file=sys.stderr)


def _is_encrypted(key: Path) -> bool:
    """Whether ``key`` looks like an encrypted PEM key (its header); False when it cannot be read."""
    try:
        with key.open("rb") as f:
            return b"ENCRYPTED" in f.read(256)
    except OSError:
        return False


def _emit(args: argparse.Namespace, doc: dict[str, object], text: str) -> None:
    print(json.dumps(doc, indent=1) if args.json else text)


def _subject(args: argparse.Namespace) -> str | None:
    """--subject checked before any password is asked for; an empty one is refused, never replaced by
    the default (``--subject "$CN"`` with CN unset must not make a CA of the default name)."""
    return None if args.subject is None else check_common_name(args.subject)


def _cmd_ca_create(args: argparse.Namespace) -> int:
    ceremony.refuse_existing(ceremony.ca_files(args.out))
    common_name = _subject(args) or "imaguard IMA CA"
    password = _new_key_password(args)
    _warn_ec(args.key_type, "the CA")
    made = ceremony.create_ca(args.out, common_name=common_name, key_type=args.key_type,
                              days=args.days, password=password, now=_now())
    _warn_unencrypted(made, password)
    text = (f"created CA {made.cert.subject.rfc4514_string()} (key id {made.key_id.hex()}, {made.key_kind.value}, "
            f"valid until {made.cert.not_valid_after:%Y-%m-%d})\n" + "\n".join(f"  {p}" for p in made.files)
            + f"\nKeep {args.out} offline. Hosts get certificates issued by it (`imaguard-keyring cert issue`).")
    _emit(args, {"ca": made.to_json(), "encrypted": password is not None}, text)
    return ExitCode.OK


def _issue(args: argparse.Namespace, *, name: str | None, key_type: KeyType, common_name: str | None,
           avoid: set[bytes], authority: ceremony.Authority, old_key: Path | None = None
           ) -> tuple[ceremony.Issued, str, bool]:
    ca_subject_key_identifier(authority.cert.cert)  # refused before a password is asked for
    check_ca_validity(authority.cert.cert, _now())
    if common_name is not None:
        check_common_name(common_name)
    password = _new_key_password(args)
    _warn_ec(key_type, "the new IMA certificate")
    _warn_ec(key_type_of(authority.cert.public_key), "the CA that signs the certificate")
    key, key_id = ceremony.new_signing_key(key_type, frozenset({*avoid, authority.cert.key_id}))
    final_name = name or f"{_successor_stem(args.old)}-{key_id.hex()}"
    issued = ceremony.issue_certificate(authority, args.out, name=final_name, key=key,
                                        common_name=common_name or final_name, days=args.days,
                                        password=password, now=_now())
    _warn_unencrypted(issued, password, old_key)
    return issued, final_name, password is not None


def _successor_stem(old: Path) -> str:
    """The stem of rotate's default name OLDNAME-NEWKEYID; UsageError ``bad-name`` naming --old (the
    user gave no --name to blame) when it cannot make a usable name."""
    stem = _ROTATED_SUFFIX.sub("", old.stem)
    if not ceremony.is_valid_name(f"{stem}-{'0' * 8}"):
        raise UsageError(f"--old {old}: the successor's default name {stem}-KEYID, from this file name, is not "
                         f"usable ({ceremony.NAME_RULE}, KEYID included): give --name", reason="bad-name")
    return stem


def _issued_text(issued: ceremony.Issued) -> str:
    return (f"issued {issued.cert.subject.rfc4514_string()}: key id {issued.key_id.hex()} ({issued.key_kind.value}), "
            f"valid until {issued.cert.not_valid_after:%Y-%m-%d}\n" + "\n".join(f"  {p}" for p in issued.files))


def _cmd_cert_issue(args: argparse.Namespace) -> int:
    ceremony.refuse_existing(ceremony.issued_files(args.out, args.name))
    _subject(args)
    authority = ceremony.load_authority(args.ca, _ca_password(args))
    issued, _, encrypted = _issue(args, name=args.name, key_type=args.key_type, common_name=args.subject,
                                  avoid=set(), authority=authority)
    der = next(p for p in issued.files if p.suffix == ".der")
    text = (_issued_text(issued) + f"\nOn hosts: install {der.name} in /etc/keys/ima/ (DER). Sign with "
            f"{issued.files[0].name} and {der.with_suffix('.pem').name}.")
    _emit(args, {"certificate": issued.to_json(), "encrypted": encrypted}, text)
    return ExitCode.OK


def _cmd_mok_prepare(args: argparse.Namespace) -> int:
    cert, path = ceremony.prepare_mok(args.ca, args.out)
    fingerprint = hashlib.sha256(cert.der).hexdigest()
    doc: dict[str, object] = {"file": str(path), "subject": cert.subject, "key_id": cert.key_id.hex(),
                              "sha256_fingerprint": fingerprint,
                              "commands": [f"mokutil --import {path}", "mokutil --trust-mok", "reboot"]}
    _emit(args, doc, guidance.mok_instructions(cert, path, fingerprint))
    return ExitCode.OK


def _cmd_rotate(args: argparse.Namespace) -> int:
    if args.name is not None:
        ceremony.refuse_existing(ceremony.issued_files(args.out, args.name))
    else:
        _successor_stem(args.old)  # before the CA password is asked for and a key drawn
    subject = _subject(args)
    authority = ceremony.load_authority(args.ca, _ca_password(args))
    old = ceremony.load_issued_certificate(args.old, authority.cert)
    key_type = args.key_type or key_type_of(old.public_key)
    common_name = subject or _common_name(old) or None
    issued, name, encrypted = _issue(args, name=args.name, key_type=key_type, common_name=common_name,
                                     avoid={old.key_id}, authority=authority, old_key=args.old.with_suffix(".key"))
    doc: dict[str, object] = {"old_key_id": old.key_id.hex(), "certificate": issued.to_json(),
                              "encrypted": encrypted}
    _emit(args, doc, _issued_text(issued) + "\n\n" + guidance.rotation_procedure(old, issued, name, args.ca))
    return ExitCode.OK


def _common_name(cert: Certificate) -> str:
    attrs = cert.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def _cmd_revoke(args: argparse.Namespace) -> int:
    subject = ""
    if args.cert is not None:
        # Who may issue keys is who may withdraw them: a certificate of another CA is most likely a
        # mix-up of CA directories (as rotate says of it), checked before the password is asked for.
        cert = ceremony.load_issued_certificate(args.cert, ceremony.load_ca_certificate(args.ca))
        key_id, subject = cert.key_id, cert.subject
    else:
        key_id = parse_key_id(args.key_id, "--key-id")
    check_reason(args.reason, "--reason")  # before the password: a typo must not cost the ceremony's secret
    authority = ceremony.load_authority(args.ca, _ca_password(args))
    try:
        rl = revocations.add_revocation(args.list, authority, key_id, reason=args.reason, subject=subject,
                                        now=_now(), new=args.new)
    except UsageError as exc:
        if exc.reason != "already-revoked":
            raise
        _emit(args, {"list": str(args.list), "key_id": key_id.hex(), "changed": False}, f"{exc}; list unchanged")
        return ExitCode.OK
    text = (f"revoked key {key_id.hex()}: {args.list} is now serial {rl.serial} with {len(rl.entries)} key(s), "
            f"signed by CA key {rl.issuer_key_id.hex()}. Publish it to the hosts.")
    _emit(args, {"list": str(args.list), "key_id": key_id.hex(), "changed": True, "serial": rl.serial}, text)
    return ExitCode.OK


def _cmd_revocations_show(args: argparse.Namespace) -> int:
    ca = ceremony.load_ca_certificate(args.ca)
    rl = revocations.read_revocation_list(args.list, ca)
    if rl is None:
        raise UsageError(f"{args.list}: no such revocation list", reason="unreadable")
    doc: dict[str, object] = {"list": str(args.list), "serial": rl.serial, "issuer_key_id": rl.issuer_key_id.hex(),
           "issued": f"{rl.issued:%Y-%m-%dT%H:%M:%SZ}", "revoked": [e.to_doc() for e in rl.entries]}
    lines = [f"{args.list}: serial {rl.serial}, issued {rl.issued:%Y-%m-%d %H:%M:%S}Z by CA key "
             f"{rl.issuer_key_id.hex()}, {len(rl.entries)} revoked key(s)"]
    lines += [f"  {e.key_id.hex()}  {e.revoked_at:%Y-%m-%d}  {e.reason}  {e.subject}".rstrip() for e in rl.entries]
    _emit(args, doc, "\n".join(lines))
    return ExitCode.OK
