"""``imaguard keys show|load|install``: the host's IMA keys, in the kernel and for the next boot."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from imaguard.cli.files import add_revocation_options
from imaguard.cli.keyfile import PASSWORD_HELP
from imaguard.cli.keys_install import INSTALL_HELP, cmd_install
from imaguard.errors import ExitCode, ImaguardError, TrustError, UnsupportedError
from imaguard.ima import keyring, probe
from imaguard.ima.doctor import diagnose
from imaguard.ima.hostfacts import IMA_KEYRING, SYSTEM_KEYRINGS, TRUSTED_IMA_KEYRING, KernelFacts
from imaguard.ima.keyload import KeyTarget, LoadPlan, plan_load
from imaguard.keys import Certificate, load_certificate
from imaguard.keys.revocation_store import load_revoked
from imaguard.packages import DEFAULT_STATE_DIR

__all__ = ["REFUSAL_EXIT", "SHOWN_KEYRINGS", "register"]

SHOWN_KEYRINGS = (IMA_KEYRING, TRUSTED_IMA_KEYRING, *SYSTEM_KEYRINGS)
# Exit status of a refused load, by reason; the first reason in this order decides.
REFUSAL_EXIT = {
    "revoked-key": ExitCode.VERIFICATION_FAILED,
    "not-signed-by-trusted-key": ExitCode.VERIFICATION_FAILED,
    "no-ecdsa": ExitCode.UNSUPPORTED,
    "ca-certificate": ExitCode.USAGE,
}

_KEYS_HELP = """\
The host side of IMA keys: what the kernel has loaded (show), loading certificates into the
kernel keyring now (load), and installing them so they are loaded at every boot (install).
The authority side (CA, issuing, MOK, rotation, revocation) is imaguard-keyring.
"""

_SHOW_HELP = f"""\
List the keyrings that matter to IMA and the keys linked into each, read from the kernel
(/proc/keys, keyctl read and describe), never from files:

  _ima                     made by root; the kernel verifies against it when it has no '.ima'
  .ima                     made by the kernel (CONFIG_INTEGRITY_TRUSTED_KEYRING); restricted to
                           certificates signed by a key in the builtin or secondary keyrings
  {', '.join(SYSTEM_KEYRINGS)}
                           the system keyrings that may vouch for '.ima' keys

Each key is shown with its serial, its IMA key id (the last 4 bytes of its subject key identifier,
what a security.ima signature names) and the kernel's description ("CN: SKID").

Exit status: 0; 77 if the kernel keyrings cannot be read at all (no /proc/keys). A kernel without
IMA still lists its keyrings and says "IMA: not available".
"""

_LOAD_HELP = """\
Load IMA signing certificates (PEM or DER) into the kernel keyring the kernel verifies with.

Before anything is touched, every certificate is checked and the whole load is refused if one
fails: a CA certificate (keyCertSign, or CA:TRUE without digitalSignature: load the certificates
it issued; a CA belongs in MOK), a key on the revocation list (--revocation-list/--revocation-ca,
as for verify; a list older than the newest accepted from its CA -- lower serial, or a revoked key
dropped -- is refused, exit 3; the newest is recorded in --state-dir), an EC key on a kernel
without ECDSA (CONFIG_CRYPTO_ECDSA; Debian 12), and, where the kernel restricts
'.ima', a certificate whose issuer is none of the keys in the system keyrings (the error lists
the keys the kernel would accept a signature from). A kernel without IMA exits 77.

Where the kernel has the restricted '.ima' keyring, the certificates go there. Otherwise into
'_ima', created if missing and linked into root's user keyring @u: the kernel looks '_ima' up
with request_key() in the keyrings of the process being appraised, which for root's login
sessions and for PID 1 reach @u. Keys already loaded are left as they are; if one certificate
fails to load, the ones this run added are unlinked again.

Priming (lab note P3): the kernel caches the '_ima' keyring after its first successful lookup,
and until then a process whose keyrings do not reach @u (a systemd service with the default
KeyringMode=private) is denied even correctly signed files. load finishes with
request_key("keyring", "_ima") from its own process: that proves the kernel's lookup succeeds
from a process like this one (root with @u in reach); it does NOT fill the kernel's cache, which
only the kernel's first signature verification does, once an appraise policy is loaded.
`imaguard policy apply` therefore executes a signed program right after loading the policy; at
boot, the first appraisals come from PID 1 and its generators, which reach @u.

Exit status: 0 loaded (or already loaded); 3 revoked or not signed by a key the kernel trusts;
2 CA certificate or unreadable certificate; 77 EC without ECDSA, or a kernel without IMA or
keyrings; 1 the kernel refused (the message says why).
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    group = sub.add_parser("keys", help="IMA keys in the kernel keyring and for boot",
                           description=_KEYS_HELP, formatter_class=fmt)  # fmt: skip
    verbs = group.add_subparsers(dest="keys_command", metavar="VERB", parser_class=type(group))
    verbs.required = True

    p = verbs.add_parser("show", help="keyrings relevant to IMA and the keys in them", description=_SHOW_HELP,
                         formatter_class=fmt)  # fmt: skip
    _common(p)
    p.set_defaults(handler=_cmd_show)

    p = verbs.add_parser("load", help="load certificates into the kernel's IMA keyring", description=_LOAD_HELP,
                         formatter_class=fmt)  # fmt: skip
    p.add_argument("certs", nargs="+", type=Path, metavar="CERT", help="IMA signing certificate, PEM or DER")
    add_revocation_options(p)
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, metavar="DIR",
                   help=f"the newest revocation list accepted is recorded here (default {DEFAULT_STATE_DIR})")
    _common(p)
    p.set_defaults(handler=_cmd_load)

    p = verbs.add_parser("install", help="install certificates and their boot-time loading under a root",
                         description=INSTALL_HELP, formatter_class=fmt)  # fmt: skip
    p.add_argument("certs", nargs="+", type=Path, metavar="CERT", help="IMA signing certificate, PEM or DER")
    p.add_argument("--root", default="/", metavar="DIR", help="the root filesystem to install into (default: /)")
    p.add_argument("--sign-key", type=Path, metavar="KEY",
                   help="sign the executables written (initramfs hook and script) with KEY, whose certificate is "
                        "one of CERT (else they are unsigned and an enforcing policy refuses them)")  # fmt: skip
    p.add_argument("--password-file", type=Path, metavar="FILE", help=PASSWORD_HELP)
    add_revocation_options(p)
    _common(p)
    p.set_defaults(handler=cmd_install)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks of errors")


def _emit(doc: dict[str, object]) -> None:
    json.dump(doc, sys.stdout, indent=1)
    sys.stdout.write("\n")


# --- show ----------------------------------------------------------------------------------------


def _show_doc(facts: KernelFacts) -> dict[str, object]:
    ima = diagnose(facts)[0]
    rings = []
    for name in SHOWN_KEYRINGS:
        ref = facts.keyring(name)
        keys = [{"serial": f"{k.serial:08x}", "key_id": k.key_id.hex() if k.key_id else None,
                 "description": k.description} for k in facts.keys_in(name)]  # fmt: skip
        rings.append({"name": name, "present": ref is not None, "serial": f"{ref.serial:08x}" if ref else None,
                      "keys": keys})  # fmt: skip
    verifies = TRUSTED_IMA_KEYRING if facts.trusted_ima_keyring is not None else IMA_KEYRING
    return {
        "command": "keys show",
        "ima": {"status": ima.status.value, "summary": ima.summary, "reason": ima.reason},
        "verifies_with": verifies if facts.ima is not False else None,
        "ima_keyring_reachable_from_user_keyring": facts.ima_keyring_reachable,
        "keyrings": rings,
        "exit_code": int(ExitCode.OK),
    }


def _cmd_show(args: argparse.Namespace) -> int:
    facts = probe.read_kernel_facts(with_xattrs=False)
    if facts.keyrings is None:
        raise UnsupportedError(
            "the kernel keyrings cannot be read: /proc/keys is missing or unreadable (a kernel without "
            "CONFIG_KEYS has no IMA keyring either)", reason="no-keyrings")  # fmt: skip
    doc = _show_doc(facts)
    if args.json:
        _emit(doc)
        return ExitCode.OK
    ima = diagnose(facts)[0]
    print(f"{ima.summary} ({ima.reason})")
    if doc["verifies_with"] is not None:
        print(f"the kernel verifies IMA signatures with keyring {doc['verifies_with']}")
    for ring in SHOWN_KEYRINGS:
        ref = facts.keyring(ring)
        if ref is None:
            print(f"keyring {ring}: not present")
            continue
        keys = facts.keys_in(ring)
        print(f"keyring {ring} (serial {ref.serial:08x}): {len(keys)} key(s)")
        for key in keys:
            key_id = key.key_id.hex() if key.key_id else "-"
            print(f"  {key_id:8}  {key.serial:08x}  {key.description}")
    return ExitCode.OK


# --- load ----------------------------------------------------------------------------------------


def _refusal_exit(plan: LoadPlan) -> ExitCode:
    reasons = {r.reason for r in plan.refusals}
    return next((code for reason, code in REFUSAL_EXIT.items() if reason in reasons), ExitCode.FAILURE)


def _loaded_ids(ring: int) -> dict[bytes, int]:
    """Key id → serial of the keys already linked into ``ring``."""
    found: dict[bytes, int] = {}
    for serial in keyring.keyring_links(ring):
        entry = keyring.describe_key(serial)
        _, sep, tail = entry.description.rpartition(": ")
        try:
            skid = bytes.fromhex(tail) if sep else b""
        except ValueError:
            continue
        if len(skid) >= 4:
            found[skid[-4:]] = serial
    return found


def _load(plan: LoadPlan, facts: KernelFacts) -> tuple[int, list[dict[str, object]]]:
    """Add the planned certificates; on a failure unlink what this run added, then raise."""
    trusted = facts.trusted_ima_keyring
    ring = trusted.serial if plan.target is KeyTarget.TRUSTED_IMA and trusted else keyring.find_or_create_ima_keyring()
    present = _loaded_ids(ring)
    results: list[dict[str, object]] = []
    added: list[int] = []
    for cert in plan.certificates:
        entry: dict[str, object] = {"cert": cert.source, "key_id": cert.key_id.hex(), "subject": cert.subject}
        if cert.key_id in present:
            results.append({**entry, "status": "already-loaded", "serial": f"{present[cert.key_id]:08x}"})
            continue
        try:
            serial = keyring.add_certificate(cert.der, ring, check_kernel=False)
        except ImaguardError as exc:
            for done in added:
                keyring.unlink_key(done, ring)
            if isinstance(exc, TrustError) and trusted is not None:
                raise TrustError(f"{cert.source}: {exc}; this kernel verifies IMA signatures with its restricted "
                                 f"keyring '.ima' (serial {trusted.serial:08x}), which takes only certificates "
                                 "signed by a key in .builtin_trusted_keys or .secondary_trusted_keys (see "
                                 "`imaguard keys show`); nothing of this run stays loaded",
                                 reason=exc.reason) from exc  # fmt: skip
            raise type(exc)(f"{cert.source}: {exc} (nothing of this run stays loaded)", reason=exc.reason) from exc
        added.append(serial)
        results.append({**entry, "status": "loaded", "serial": f"{serial:08x}"})
    return ring, results


def _certs(paths: list[Path]) -> list[Certificate]:
    return [load_certificate(p) for p in paths]


def _cmd_load(args: argparse.Namespace) -> int:
    certs = _certs(args.certs)
    revoked = load_revoked(args.revocation_list, args.revocation_ca, args.state_dir)
    facts = probe.read_kernel_facts(with_xattrs=False)
    plan = plan_load(certs, facts, revoked)
    if not plan.accepted:
        code = _refusal_exit(plan)
        if args.json:
            _emit({"command": "keys load", "loaded": False, "target": plan.target.value,
                   "refused": [{"cert": r.source, "reason": r.reason, "detail": r.detail} for r in plan.refusals],
                   "exit_code": int(code)})  # fmt: skip
        for refusal in plan.refusals:
            print(f"imaguard: refused: {refusal.source}: {refusal.reason}: {refusal.detail}", file=sys.stderr)
        print("imaguard: error: nothing was loaded", file=sys.stderr)
        return code
    ring, results = _load(plan, facts)
    lookup: str
    if plan.target is KeyTarget.TRUSTED_IMA:
        lookup = "not-needed"  # the kernel holds '.ima' itself; there is no lookup to prime
    else:
        lookup = "ok" if keyring.request_keyring(IMA_KEYRING) == ring else "not-reachable"
    if args.json:
        _emit({"command": "keys load", "loaded": True, "target": plan.target.value, "keyring": f"{ring:08x}",
               "keys": results, "lookup_from_this_process": lookup, "exit_code": int(ExitCode.OK)})  # fmt: skip
    else:
        for item in results:
            print(f"{item['status']}: {item['key_id']} {item['subject']} ({item['cert']}) "
                  f"in {plan.target.value} (serial {ring:08x})")  # fmt: skip
    if lookup == "ok" and not args.json:
        print(f"lookup: request_key finds {IMA_KEYRING} from this process (the kernel caches it at the first "
              "signature it verifies; `imaguard policy apply` triggers that)")  # fmt: skip
    if lookup == "not-reachable":
        print(f"imaguard: warning [W-IMA-UNREACHABLE]: request_key does not find {IMA_KEYRING} from this process: "
              "its session keyring does not link root's user keyring @u (a service with KeyringMode=private, or "
              "`keyctl new_session`); the kernel would not find the keys from a process like this one. Load keys "
              "from a root login shell or a unit with KeyringMode=shared", file=sys.stderr)  # fmt: skip
    return ExitCode.OK
