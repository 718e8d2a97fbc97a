"""``imaguard policy show|check|apply|install``: print a policy template; run the enforce gate on this host.

``apply`` and ``install`` live in :mod:`imaguard.cli.policy_apply`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from imaguard.config import Limits
from imaguard.errors import ExitCode, HostStateError, UsageError
from imaguard.ima import coverage
from imaguard.ima.gate import Decision, GateResult, run_gate
from imaguard.ima.policy import Policy, PolicySyntaxError, parse_policy, render, render_rule
from imaguard.keys import Verifier, load_certificate
from imaguard.keys.material import read_small_file
from imaguard.shown import one_line, shown_path
from imaguard.sign.parallel import default_jobs

__all__ = ["STAGE_NOTES", "STAGE_TEMPLATES", "TEMPLATE_DIRS", "gate_keys", "load_policy", "register"]

# Where templates are looked up: the source tree (development), then the packaged copy.
TEMPLATE_DIRS = (Path(__file__).resolve().parents[3] / "policies", Path("/usr/share/imaguard/policies"))
# The same appraise rules serve "log" and "enforce"; the boot parameter ima_appraise=log differs.
STAGE_TEMPLATES = {"measure": "measure", "log": "appraise-exec", "enforce": "appraise-exec"}
# A policy is some hundred rules; a limit keeps a wrong path (a disk image, /dev/zero) from being slurped.
_MAX_POLICY_FILE_SIZE = 1 << 20
_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
STAGE_NOTES = {
    "measure": "measure only: nothing is denied",
    "log": "boot with ima_appraise=log: appraisal failures are logged, not denied",
    "enforce": "boot without ima_appraise=log: appraisal failures are denied with EACCES",
}

_POLICY_HELP = """\
IMA policies: print the templates in policies/ and check, before anything is loaded, that
the appraise rules of a policy would not deny a file this host needs.

Stages: measure (template "measure": nothing denied), log (template "appraise-exec", kernel
booted with ima_appraise=log: failures only logged), enforce (the same template, booted without
ima_appraise=log: failures denied with EACCES). A loaded policy stays until the next reboot, so
run `imaguard policy check` before the log and enforce stages; `policy apply` loads a policy into
the running kernel (behind the same gate), `policy install` makes the next boots load it.

Templates are read from policies/ in the source tree, or from /usr/share/imaguard/policies.
Name a policy with --template NAME, --file FILE, or --stage STAGE (the stage's template).
"""

_SHOW_HELP = """\
Print a policy as the kernel takes it: one rule per line, canonical spelling, no comments
(the kernel skips comment lines too, but a rendered policy is what gets loaded).
The policy is parsed and validated first; a rule the kernel would refuse is reported with
its line and column (exit 2).
"""

_CHECK_HELP = """\
The enforce gate. Parse and validate the policy, then find every file on this host that its
appraise rules would cover and check that each one would pass appraisal: a security.ima
signature (v2) made with a key the kernel has loaded, that verifies against the file's
content. Nothing is written and no key is loaded.

Which files are covered is approximated from each file: an execute bit means it may be
executed (BPRM_CHECK, and FILE_CHECK with MAY_EXEC: execve opens the program so) and mapped
executable (MMAP_CHECK), *.so and *.so.N files, and other files whose ELF header says shared
object (ET_DYN, a machine this host loads; not under /usr/lib/debug), may be mapped
executable, *.ko* files are kernel modules (MODULE_CHECK), files under /lib/firmware firmware;
rules without func= (or with func=FILE_CHECK) cover every file. Conditions on the process
(uid=, euid=, subj_*=) and LSM labels (obj_*=) cannot be known here: appraise rules with them
count as covering, dont_appraise rules with them as not excluding. Filesystems that the
dont_appraise rules exclude entirely are not walked; files on noexec mounts are left out of
the exec hooks.

Keys: the key ids come from the keyring the kernel verifies against ("keys-from: kernel", JSON
"keyring"): .ima where the kernel made it (CONFIG_INTEGRITY_TRUSTED_KEYRING; keys in _ima then
verify nothing), else _ima. The --cert certificates are then needed to check the signatures
themselves. On a kernel without those keyrings (a build host, a container) the --cert
certificates stand in for the loaded keys ("keys-from: files"), and the output says so. A
policy without appraise rules denies nothing and needs no keys (JSON "keys_from": "not-needed").

Reasons a file would be denied: no-signature, unknown-key (its key is not loaded), bad-signature,
unchecked-signature (key loaded, no --cert to check it), digest-only (a hash where a signature
is required), bad-digest, unsupported-form, malformed, unsupported-fs, unreadable, needs-sigv3
(a rule has digest_type=verity appraise_type=sigv3: the kernel refuses a v2 signature or a hash),
denied-hash-algo (the file passes, but a rule's appraise_algos= leaves out the hash algorithm of
its security.ima: the kernel refuses it after appraisal).

Exit status: 0 allow, 3 refuse (the files are listed), 2 invalid policy or usage, 1 failure.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    group = sub.add_parser("policy", help="show IMA policy templates and check them against this host",
                           description=_POLICY_HELP, formatter_class=fmt)
    verbs = group.add_subparsers(dest="policy_command", metavar="VERB", parser_class=type(group))
    verbs.required = True

    p = verbs.add_parser("show", help="print a policy template's rules", description=_SHOW_HELP, formatter_class=fmt)
    _add_source(p)
    p.add_argument("--json", action="store_true", help="print the rules as a JSON document")
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks of errors")
    p.set_defaults(handler=_cmd_show)

    p = verbs.add_parser("check", help="would the policy's appraise rules deny a file here?",
                         description=_CHECK_HELP, formatter_class=fmt)
    _add_source(p)
    p.add_argument("--cert", type=Path, action="append", default=[], metavar="CERT",
                   help="certificate (PEM or DER) to check signatures with; repeat for several")
    p.add_argument("--root", default="/", metavar="DIR",
                   help="check only files under DIR (default: every mounted filesystem)")
    p.add_argument("--json", action="store_true", help="print one JSON document with the decision and the files")
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks of errors")
    p.add_argument("-j", "--jobs", type=int, default=default_jobs(), metavar="N",
                   help="worker processes for hashing (default: all cores)")
    p.set_defaults(handler=_cmd_check)

    from imaguard.cli import policy_apply  # noqa: PLC0415 - it imports this module

    policy_apply.register_verbs(verbs)


def _add_source(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group()
    source.add_argument("--template", metavar="NAME", help="a template from policies/ (measure, appraise-exec)")
    source.add_argument("--file", type=Path, metavar="FILE", help="a policy file in the kernel's syntax")
    p.add_argument("--stage", choices=sorted(STAGE_TEMPLATES),
                   help="the stage the policy is for; without --template/--file, its template")


def _template_path(name: str) -> Path:
    if not _NAME.fullmatch(name):
        raise UsageError(f"not a template name: {name!r}")
    for directory in TEMPLATE_DIRS:
        path = directory / f"{name}.policy"
        if path.is_file():
            return path
    known = sorted({p.stem for d in TEMPLATE_DIRS if d.is_dir() for p in d.glob("*.policy")})
    raise UsageError(f"no policy template {name!r} (known: {', '.join(known) or 'none found'})")


def load_policy(args: argparse.Namespace) -> tuple[str, Policy]:
    """The policy named on the command line, parsed; exit 2 (usage) when the kernel would refuse it."""
    if args.file is None and args.template is None and args.stage is None:
        raise UsageError("name a policy: --template NAME, --stage STAGE or --file FILE")
    path: Path = args.file if args.file is not None else _template_path(args.template or STAGE_TEMPLATES[args.stage])
    # Reason codes as before the limit: "usage" for a file that cannot be read or is not text.
    data = read_small_file(path, "policy", _MAX_POLICY_FILE_SIZE, "usage", unreadable="usage")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not a policy: not UTF-8 (at byte offset {exc.start})") from exc
    try:
        return str(path), parse_policy(text, source=path.name)
    except PolicySyntaxError as exc:
        raise UsageError(str(exc), reason="invalid-policy") from exc


def _cmd_show(args: argparse.Namespace) -> int:
    source, policy = load_policy(args)
    if args.json:
        json.dump({"source": source, "rules": [render_rule(r) for r in policy.rules]}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render(policy))
    return ExitCode.OK


def gate_keys(certs: list[Path]) -> tuple[str, str | None, frozenset[bytes], Verifier]:
    """Where the key ids come from ("kernel" or "files"), the kernel keyring they are in (``.ima``
    if the kernel made one, else ``_ima``; None for files), the ids, and a verifier over ``certs``."""
    verifier = Verifier.of(load_certificate(p) for p in certs)
    try:
        loaded = coverage.kernel_key_ids()
    except HostStateError as exc:
        if exc.reason != "proc-keys-unreadable":
            raise  # an IMA keyring exists but cannot be read: fail, never guess
        loaded = None  # no /proc/keys: a kernel without CONFIG_KEYS has no IMA keyring either
    if loaded is not None:
        return "kernel", loaded.keyring, loaded.ids, verifier
    if not certs:
        raise UsageError(
            "the kernel has no IMA keyring (_ima or .ima) here: pass the certificates of the keys "
            "that will be loaded with --cert"
        )
    return "files", None, frozenset(c.key_id for c in verifier.certificates), verifier


@dataclass(frozen=True, slots=True)
class _Check:
    source: str
    policy: Policy
    keys_from: str
    keyring: str | None
    loaded: frozenset[bytes]
    result: GateResult


def _cmd_check(args: argparse.Namespace) -> int:
    source, policy = load_policy(args)
    if args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    if not Path(args.root).is_dir():  # before the keys: a mistyped root is the mistake to name
        raise UsageError(f"--root {args.root}: not a directory")
    if policy.appraise_rules:
        keys_from, ring, loaded, verifier = gate_keys(args.cert)
        facts = coverage.collect(policy, args.root, verifier, loaded, Limits(), jobs=args.jobs)
        result = run_gate(policy, facts, loaded)
    else:  # nothing is appraised, so no key matters: do not ask for any
        keys_from, ring, loaded = "not-needed", None, frozenset()
        result = GateResult(Decision.ALLOW, 0, (), 0)
    check = _Check(source, policy, keys_from, ring, loaded, result)
    code = ExitCode.OK if result.allowed else ExitCode.VERIFICATION_FAILED
    if args.json:
        _print_json(args, check, code)
    else:
        _print_text(args, check)
    return code


def _print_text(args: argparse.Namespace, check: _Check) -> None:
    policy, result = check.policy, check.result
    print(f"policy: {check.source} ({len(policy.rules)} rules, {len(policy.appraise_rules)} appraise)")
    if args.stage is not None:
        print(f"stage: {args.stage} ({STAGE_NOTES[args.stage]})")
    if not policy.appraise_rules:
        print("allow: the policy has no appraise rules, it denies nothing (no keys needed)")
        return
    why = (f" (keyring '{check.keyring}', the one the kernel verifies against)" if check.keys_from == "kernel" else
           " (the kernel has no _ima or .ima keyring here; --cert stands in)")  # fmt: skip
    print(f"keys-from: {check.keys_from}{why}: {', '.join(sorted(k.hex() for k in check.loaded)) or 'no keys'}")
    print(f"root: {shown_path(args.root)}")
    if result.allowed:
        print(f"allow: every file in scope would pass appraisal ({result.in_scope} files)")
        return
    print(f"refuse: {len(result.uncovered)} of {result.in_scope} files in scope would be denied")
    for item in result.uncovered:
        print(f"  {item.reason:20} {shown_path(item.path)}  (rule line {item.rule_line}: {one_line(item.detail)})")


def _print_json(args: argparse.Namespace, check: _Check, code: int) -> None:
    result = check.result
    doc = {
        "command": "policy check",
        "policy": check.source,
        "rules": len(check.policy.rules),
        "appraise_rules": len(check.policy.appraise_rules),
        "keys_from": check.keys_from,
        "keyring": check.keyring,
        "key_ids": sorted(k.hex() for k in check.loaded),
        "stage": args.stage,
        "root": args.root,
        "decision": result.decision.value,
        "in_scope": result.in_scope,
        "reasons": dict(sorted(Counter(u.reason for u in result.uncovered).items())),
        "uncovered": [
            {"path": u.path, "reason": u.reason, "detail": u.detail, "rule_line": u.rule_line}
            for u in result.uncovered
        ],
        "exit_code": int(code),
    }
    json.dump(doc, sys.stdout, indent=1)
    sys.stdout.write("\n")
