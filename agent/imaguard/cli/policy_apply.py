"""``imaguard policy apply|install``: load a policy into the running kernel behind the gate; persist it for boot."""

from __future__ import annotations

import argparse
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

from imaguard.cli import policy as policy_cli
from imaguard.config import Limits
from imaguard.errors import ExitCode, HostStateError, ImaguardError, PolicyGateError, UnsupportedError, UsageError
from imaguard.ima import bootfiles, coverage, keyring, nextboot, probe, securityfs
from imaguard.ima.doctor import diagnose
from imaguard.ima.gate import Decision, GateResult, run_gate
from imaguard.ima.hostfacts import (
    IMA_KEYRING,
    AppraiseMode,
    SecureBoot,
    SecureBootState,
    cmdline_value,
    effective_appraise_mode,
    parse_cmdline,
)
from imaguard.ima.policy import Policy, render, render_rule
from imaguard.ima.rootfiles import (
    Change,
    FileChange,
    check_install_targets,
    install_file,
    read_root_file,
    root_dir,
    root_file_stat,
)
from imaguard.shown import one_line, shown_path
from imaguard.sign.parallel import default_jobs

__all__ = [
    "IMA_DIR",
    "PRIME_PROGRAM",
    "W_INITRAMFS_STALE",
    "W_LOG_MAY_ENFORCE",
    "W_NO_BOOT_KEYS",
    "W_NO_BOOT_LOADING",
    "W_PACKAGE_CHANGES",
    "W_UNSAFE_ENFORCE",
    "read_appraisal_mode",
    "read_cmdline",
    "register_verbs",
]

IMA_DIR = securityfs.IMA_DIR  # read at call time, so tests can point it at a stand-in directory
EFI_DIR = probe.EFI_DIR  # likewise
PRIME_PROGRAM = "/bin/true"
W_UNSAFE_ENFORCE = "W-UNSAFE-ENFORCE"
W_PACKAGE_CHANGES = "W-PACKAGE-CHANGES"
W_NO_BOOT_KEYS = "W-NO-BOOT-KEYS"
W_LOG_MAY_ENFORCE = "W-LOG-MAY-ENFORCE"
W_NO_BOOT_LOADING = "W-NO-BOOT-LOADING"  # the id `keys install` warns with for the same gap
W_INITRAMFS_STALE = "W-INITRAMFS-STALE"
W_INITRAMFS_UNCHECKED = "W-INITRAMFS-UNCHECKED"
# No package hook yet labels what dpkg writes: under enforce an install or upgrade is refused half-way
# (a new .deb's preinst runs from /var/lib/dpkg/tmp.ci unlabelled) or leaves unlabelled programs and
# libraries the kernel denies. The way through today is the log stage (docs/adr/0003).
_PACKAGE_CHANGES = ("while this policy enforces, do not install or upgrade packages: dpkg writes their files "
                    "without security.ima and runs each new .deb's preinst unlabelled, so the kernel denies them "
                    "(after a libc upgrade, every program). First `imaguard policy install --stage log` and "
                    "reboot, then upgrade, `imaguard enroll`, and enforce again behind the gate")

_APPLY_HELP = """\
Load a policy into the running kernel (/sys/kernel/security/ima/policy), one write() per rule.

Order of checks; the first that fails stops everything, and nothing is written to securityfs:
  1. the policy is parsed and validated against the kernel's grammar (exit 2 with line and
     column); --stage measure refuses a policy with appraise rules;
  2. the kernel has IMA and the policy file is still there (exit 77 without IMA or securityfs;
     exit 1 if a policy was already loaded this boot: without CONFIG_IMA_WRITE_POLICY the next
     one takes a reboot);
  3. --stage log needs appraisal to run in log mode for certain, or its appraise rules would deny
     at once (exit 1): ima_appraise=log on /proc/cmdline, CONFIG_IMA_APPRAISE_BOOTPARAM in the
     kernel config (/boot/config-RELEASE or /proc/config.gz; none found: refused), and secure boot
     off (the kernel ignores ima_appraise= under secure boot; no /sys/firmware/efi: BIOS, off;
     EFI variables unreadable: refused). There is no override: use --stage enforce behind the gate.
     --stage enforce on a kernel in log mode warns that failures are only logged; --stage enforce
     is refused while an EVM key is loaded (securityfs evm has bit 1 or 2, exit 1): the kernel then
     denies every appraised file without security.evm, which imaguard does not write;
  4. for log and enforce, the gate (as `imaguard policy check`): every file the appraise rules
     cover on the filesystems under --root must carry a signature that verifies with a key
     loaded now in the keyring the kernel verifies against (.ima if it made one, else _ima;
     --cert gives the certificates to check the signatures with). enforce refuses on any gap
     (exit 3, the files listed); log warns and goes on (failures are logged, not denied).
     --unsafe-enforce-with-unsigned-files loads the enforce policy anyway: it prints warning
     W-UNSAFE-ENFORCE and the JSON output records it (unsafe_enforce_with_unsigned_files) with
     the files that will be denied. Those files will not run until the next reboot.

After an enforcing policy is loaded, warning W-PACKAGE-CHANGES: until a package hook labels what
dpkg writes, packages must not be installed or upgraded while enforcing (go back to the log stage).

The rules are written one per write(); the kernel activates them when the file is closed, and
only if it accepted every rule. The first rule it rejects is reported with its errno, its
number and its line in the source; then nothing of the policy is in force (what the kernel does
with the policy file after a rejection is kernel-dependent: check `imaguard doctor`). After a
successful load the policy file disappears on kernels without CONFIG_IMA_WRITE_POLICY (Debian 12):
the output says whether it did.

Priming (lab note P3): right after a policy with appraise rules is loaded, apply executes a
signed program (--prime, default /bin/true) from its own process, whose keyrings reach '_ima':
the kernel caches the keyring at this first signature verification, after which services with
private keyrings find it too. A failure (EACCES) is reported loudly: check `dmesg` for
"no _ima keyring" or "Request for unknown key".

Exit status: 0 loaded; 2 invalid policy or usage; 3 the gate refused; 77 no IMA here; 1 the kernel
rejected a rule, or a policy is already loaded.
"""

_INSTALL_HELP = f"""\
Install the policy for the next boots: write ROOT/{bootfiles.POLICY_PATH} atomically (temp
file, fsync, rename; mode 0644), which systemd loads into the kernel at boot before any unit
starts. The file starts with comment lines naming the source and the stage (the kernel and
systemd skip them), then the rules as `imaguard policy show` prints them. Reruns with the same
policy change nothing ("unchanged").

For --stage log and enforce the gate runs first over the filesystems under ROOT, with the keys
the next boot will load: only the certificates in ROOT/{bootfiles.KEY_DIR} (see `imaguard keys
install`); --cert adds certificates to check signatures with, but a key that is not in
ROOT/{bootfiles.KEY_DIR} is not loaded at boot and its signatures count as unknown-key. enforce
refuses on a gap (exit 3) unless --unsafe-enforce-with-unsigned-files (warning W-UNSAFE-ENFORCE);
log warns. enforce is also refused (exit 3) when the next boot would load no key, since every
appraised file would then be denied: no certificate in ROOT/{bootfiles.KEY_DIR}, or nothing in
ROOT that loads it at boot (the initramfs-tools hook and script, or the dracut drop-in with
dracut's integrity module, that `imaguard keys install` puts in place), or an initramfs image
older than what it must contain (ROOT/boot/initrd.img-*, or for dracut also initramfs-*.img: each
must be newer than the certificates, their directory and the hook and script for initramfs-tools,
than the drop-in for dracut, whose module reads the keys from the real root; none at all counts as
stale; for initramfs-tools each image must also hold exactly those certificates, checked in gzip,
xz or plain images, by name with lsinitramfs otherwise, by age alone without it): the next boot
would load the keys of the old image. log, or enforce with
--unsafe-enforce-with-unsigned-files, warns instead (W-NO-BOOT-KEYS, W-NO-BOOT-LOADING,
W-INITRAMFS-STALE).
After an enforce install, warning W-PACKAGE-CHANGES: while enforcing, packages must not be installed
or upgraded (dpkg writes unlabelled files); go back to the log stage first.

A log-stage policy logs only if the next boot honours ima_appraise=log: the kernel ignores it
without CONFIG_IMA_APPRAISE_BOOTPARAM and under secure boot, and the "log" policy then enforces
from early boot on. Unless that is ruled out -- every ROOT/boot/config-* has the option, and
secure boot is off (read from this host's EFI variables for --root /; for another root only
the operator can say so, with --target-secure-boot off) -- --stage log is judged as enforce
(warning W-LOG-MAY-ENFORCE): keys loaded at boot and no gap, or it is refused.

Kernel command line: install prints what the stage needs (log: ima_appraise=log; enforce: no
ima_appraise=, or ima_appraise=enforce; measure: nothing) and what must go (ima_policy=
appraise_tcb or secure_boot: built-in appraise rules that would apply before the policy is
loaded). The words are taken from ROOT/{bootfiles.GRUB_DEFAULT} when it exists, else (for --root /)
from /proc/cmdline. If ROOT/{bootfiles.GRUB_DEFAULT} exists, install prints the exact lines to
change and does NOT edit the file unless --edit-grub is given: the boot loader configuration is
often owned by configuration management, and a silent edit that is never followed by update-grub
would be a change nobody sees. With --edit-grub the file is rewritten atomically (only plain
double-quoted GRUB_CMDLINE_LINUX/_DEFAULT lines are touched); run update-grub afterwards.

Exit status: 0 installed or unchanged; 2 invalid policy or usage; 3 the gate refused; 1 the root
cannot be written safely (an unsafe or symlinked directory, a grub file it will not edit).
"""


def register_verbs(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = verbs.add_parser("apply", help="load a policy into the running kernel, behind the gate",
                         description=_APPLY_HELP, formatter_class=fmt)  # fmt: skip
    _source(p)
    p.add_argument("--cert", type=Path, action="append", default=[], metavar="CERT",
                   help="certificate (PEM or DER) to check signatures with; repeat for several")  # fmt: skip
    p.add_argument("--root", default="/", metavar="DIR", help="the gate checks files under DIR (default: all)")
    p.add_argument("--prime", default=PRIME_PROGRAM, metavar="PROGRAM",
                   help=f"signed program executed after loading appraise rules (default {PRIME_PROGRAM})")
    p.add_argument("-j", "--jobs", type=int, default=default_jobs(), metavar="N", help="hashing processes")
    _common(p)
    p.set_defaults(handler=_cmd_apply)

    p = verbs.add_parser("install", help="install the policy for the next boots (/etc/ima/ima-policy)",
                         description=_INSTALL_HELP, formatter_class=fmt)  # fmt: skip
    _source(p)
    p.add_argument("--cert", type=Path, action="append", default=[], metavar="CERT",
                   help=f"certificate to check signatures with, besides those in ROOT/{bootfiles.KEY_DIR}; "
                        "it does not count as loaded at boot")  # fmt: skip
    p.add_argument("--root", default="/", metavar="DIR", help="the root filesystem to install into (default: /)")
    p.add_argument("--target-secure-boot", choices=("on", "off"), metavar="on|off",
                   help="secure boot state of the machine that boots a --root other than / (this host's own is "
                        "read from its EFI variables); unknown unless given")  # fmt: skip
    p.add_argument("--edit-grub", action="store_true",
                   help=f"apply the command line change to ROOT/{bootfiles.GRUB_DEFAULT}")
    p.add_argument("-j", "--jobs", type=int, default=default_jobs(), metavar="N", help="hashing processes")
    _common(p)
    p.set_defaults(handler=_cmd_install)


def _source(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group()
    source.add_argument("--template", metavar="NAME", help="a template from policies/ (default: the stage's)")
    source.add_argument("--file", type=Path, metavar="FILE", help="a policy file in the kernel's syntax")
    p.add_argument("--stage", choices=bootfiles.STAGES, required=True, help="measure, log or enforce")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--unsafe-enforce-with-unsigned-files", action="store_true",
                   help="enforce even though the gate found files that would be denied (W-UNSAFE-ENFORCE)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks of errors")


def _emit(doc: dict[str, object]) -> None:
    json.dump(doc, sys.stdout, indent=1)
    sys.stdout.write("\n")


def _warn(ident: str, message: str) -> None:
    print(f"imaguard: warning [{ident}]: {one_line(message)}", file=sys.stderr)


def _warn_package_changes(args: argparse.Namespace, policy: Policy, doc: dict[str, object]) -> None:
    """After an enforcing policy is loaded or installed: say that package changes must wait (W-PACKAGE-CHANGES)."""
    if args.stage == "enforce" and policy.appraise_rules:
        _warn(W_PACKAGE_CHANGES, _PACKAGE_CHANGES)
        _add_warning(doc, f"{W_PACKAGE_CHANGES}: {_PACKAGE_CHANGES}")


def _add_warning(doc: dict[str, object], warning: str) -> None:
    warnings = doc.setdefault("warnings", [])
    assert isinstance(warnings, list)  # noqa: S101 - only this function writes it
    warnings.append(warning)


def _checked_policy(args: argparse.Namespace) -> tuple[str, Policy]:
    source, policy = policy_cli.load_policy(args)
    if args.stage == "measure" and policy.appraise_rules:
        raise UsageError(f"{source}: --stage measure, but the policy has {len(policy.appraise_rules)} appraise "
                         "rules (use --stage log or enforce)", reason="stage-mismatch")  # fmt: skip
    if args.stage in ("log", "enforce") and not policy.appraise_rules:
        # Marked enforce, it would tell the admin the host enforces while it appraises nothing (an
        # empty or truncated --file, a measure template) (audit).
        raise UsageError(f"{source}: --stage {args.stage}, but the policy has no appraise rules: it would "
                         "appraise nothing (use --stage measure, or a policy with appraise rules)",
                         reason="stage-mismatch")  # fmt: skip
    return source, policy


def _gate_doc(result: GateResult | None) -> dict[str, object] | None:
    if result is None:
        return None
    return {"decision": result.decision.value, "in_scope": result.in_scope,
            "uncovered": [{"path": u.path, "reason": u.reason, "detail": u.detail, "rule_line": u.rule_line}
                          for u in result.uncovered]}  # fmt: skip


def _judge(args: argparse.Namespace, result: GateResult, doc: dict[str, object], held: str = "") -> int | None:
    """On gaps: for enforce refuse (exit 3, the document and one error line printed); warn for log
    or with the unsafe flag. None: go on. ``held``: why a log stage is judged as enforce."""
    if result.allowed:
        return None
    paths = tuple(u.path for u in result.uncovered)
    listing = "; ".join(f"{shown_path(u.path)} ({u.reason})" for u in result.uncovered[:20])
    more = f"; and {len(paths) - 20} more" if len(paths) > 20 else ""
    if args.stage == "log" and not held:
        _warn("W-LOG-GAPS", f"{len(paths)} file(s) would fail appraisal; in the log stage they are logged, not "
              f"denied: {listing}{more}")  # fmt: skip
        return None
    if args.unsafe_enforce_with_unsigned_files:
        doc["unsafe_enforce_with_unsigned_files"] = True
        _warn(W_UNSAFE_ENFORCE, f"--unsafe-enforce-with-unsigned-files: enforcing although {len(paths)} file(s) "
              f"will be DENIED until the next reboot: {listing}{more}")  # fmt: skip
        return None
    named = ", ".join(f"{shown_path(u.path)} ({u.reason})" for u in result.uncovered[:3])
    named += f" and {len(paths) - 3} more" if len(paths) > 3 else ""
    why = f" (--stage log is judged as enforce: {held})" if held else ""
    err = PolicyGateError(f"the gate refused{why}: {len(paths)} of {result.in_scope} file(s) in scope would be denied: "
                          f"{named}; nothing was written (sign them, or see --unsafe-enforce-with-unsigned-files)",
                          unsigned=paths)  # fmt: skip
    return _fail(args, doc, err)


def _fail(args: argparse.Namespace, doc: dict[str, object], err: ImaguardError) -> int:
    """Print the command's document (with the error) and the error line; the error's exit code."""
    if args.json:
        _emit({**doc, "loaded": False, "error": {"reason": err.reason, "message": str(err)},
               "exit_code": int(err.exit_code)})  # fmt: skip
    gate = doc.get("gate")
    if isinstance(gate, dict) and not args.json:
        for u in gate["uncovered"]:
            print(f"  {u['reason']:20} {shown_path(u['path'])}  (rule line {u['rule_line']}: {one_line(u['detail'])})",
                  file=sys.stderr)  # fmt: skip
    print(f"imaguard: error: {one_line(str(err))}", file=sys.stderr)
    return err.exit_code


# --- apply ---------------------------------------------------------------------------------------


def read_cmdline() -> tuple[str, ...]:
    """The running kernel's command line words (empty if /proc/cmdline cannot be read)."""
    try:
        return parse_cmdline(Path("/proc/cmdline").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return ()


def read_appraisal_mode() -> tuple[AppraiseMode | None, str]:
    """The running kernel's appraisal mode (None: cannot be told) from its command line, build config
    and secure boot state, and why."""
    config = probe.read_kernel_config(os.uname().release)
    return effective_appraise_mode(read_cmdline(), config, probe.read_secure_boot(EFI_DIR))


# security/integrity/evm/evm.h: EVM_INIT_HMAC | EVM_INIT_X509, the bits of a loaded EVM key.
_EVM_KEY_BITS = 0x1 | 0x2


def _refuse_with_evm(evm_file: Path) -> None:
    """Refuse to enforce while an EVM key is loaded: the kernel then checks security.evm for every
    appraised file (``evm_verifyxattr``), and one without it is denied ("missing-HMAC"); imaguard
    writes security.ima only, so the gate's "allow" would not hold (audit). No file: no EVM."""
    try:
        value = int(evm_file.read_text(encoding="ascii").strip() or "0")
    except (OSError, ValueError):
        return
    if value & _EVM_KEY_BITS:
        raise HostStateError(f"EVM is initialized here ({evm_file} = {value}): with an EVM key loaded the kernel "
                             "denies every appraised file that has no valid security.evm (missing-HMAC), and "
                             "imaguard writes security.ima only; enforcing would lock this host out. Nothing was "
                             "written", reason="evm-initialized", path=str(evm_file))  # fmt: skip


def _preflight(args: argparse.Namespace) -> AppraiseMode:
    """IMA present, policy file still there, the boot mode fits the stage; nothing written."""
    ima_dir = Path(IMA_DIR)
    if not ima_dir.is_dir():
        facts = probe.read_kernel_facts(with_xattrs=False)
        ima = diagnose(facts)[0]
        if facts.ima is True and not facts.securityfs_mounted:
            raise HostStateError(f"cannot load a policy: securityfs is not mounted ({ima.reason}); mount it "
                                 "(mount -t securityfs securityfs /sys/kernel/security) and retry; nothing was "
                                 "written", reason="securityfs-not-mounted")  # fmt: skip
        raise UnsupportedError(f"cannot load a policy here: {ima_dir} does not exist ({ima.summary}: {ima.reason}); "
                               "nothing was written", reason="no-ima")  # fmt: skip
    if not (ima_dir / "policy").exists():
        raise HostStateError(f"{ima_dir / 'policy'} is gone: a policy was already loaded this boot and this kernel "
                             "lacks CONFIG_IMA_WRITE_POLICY; the next policy takes a reboot (`imaguard policy "
                             "install` makes it the boot policy)", reason="policy-already-loaded",
                             path=str(ima_dir / "policy"))  # fmt: skip
    if args.stage == "enforce":
        _refuse_with_evm(ima_dir.parent / "evm")
    mode, why = read_appraisal_mode()
    if args.stage == "log" and mode is not AppraiseMode.LOG:
        asked = cmdline_value(read_cmdline(), "ima_appraise") == AppraiseMode.LOG.value
        if not asked:
            raise HostStateError(f"--stage log needs a kernel booted with ima_appraise=log, and this one was not "
                                 f"({why}): its appraise rules would deny at once. Reboot with ima_appraise=log "
                                 "(`imaguard policy install --stage log` says how) or use --stage enforce behind "
                                 "the gate; nothing was written", reason="not-booted-for-log")  # fmt: skip
        raise HostStateError(f"--stage log needs appraisal in log mode, and it is {'NOT' if mode else 'not certainly'} "
                             f"in log mode here: {why}. Its appraise rules would deny unsigned files at once "
                             "instead of logging them (a lockout until reboot); nothing was written. Use --stage "
                             "enforce behind the gate (`imaguard policy check --stage enforce` first)",
                             reason="log-mode-ignored" if mode else "log-mode-unknown")  # fmt: skip
    if args.stage == "enforce" and mode is AppraiseMode.LOG:
        _warn("W-LOG-MODE", f"appraisal runs in log mode ({why}): appraisal failures are logged, not denied")
    return mode or AppraiseMode.ENFORCE


def _prime(program: str, mode: AppraiseMode) -> dict[str, object]:
    reach = keyring.request_keyring(IMA_KEYRING) is not None
    try:
        proc = subprocess.run([program], check=False, capture_output=True, timeout=30)
    except PermissionError:
        _warn("W-PRIME-DENIED", f"executing {program} after the load was DENIED (EACCES): the kernel could not "
              f"verify it. {'_ima is reachable from this process; ' if reach else '_ima is NOT reachable from '}"
              f"{'' if reach else 'this process (KeyringMode=private?); '}check dmesg for 'no _ima keyring' "
              "or 'Request for unknown key'")  # fmt: skip
        return {"program": program, "result": "denied", "errno": errno.EACCES, "ima_keyring_reachable": reach}
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"program": program, "result": f"not-run: {exc}", "ima_keyring_reachable": reach}
    result = "executed" if mode is AppraiseMode.LOG else ("ok" if proc.returncode == 0 else f"exit {proc.returncode}")
    return {"program": program, "result": result, "ima_keyring_reachable": reach}


def _cmd_apply(args: argparse.Namespace) -> int:
    source, policy = _checked_policy(args)
    mode = _preflight(args)
    doc: dict[str, object] = {"command": "policy apply", "policy": source, "stage": args.stage,
                              "rules": len(policy.rules), "appraise_rules": len(policy.appraise_rules),
                              "unsafe_enforce_with_unsigned_files": False}  # fmt: skip
    result: GateResult | None = None
    if policy.appraise_rules:
        keys_from, ring, loaded, verifier = policy_cli.gate_keys(args.cert)
        doc["keyring"] = ring
        if keys_from != "kernel":
            raise PolicyGateError("the kernel has no IMA keyring (_ima or .ima): every appraised file would be "
                                  "denied; load the keys first (imaguard keys load CERT)", unsigned=())  # fmt: skip
        facts = coverage.collect(policy, args.root, verifier, loaded, Limits(), jobs=args.jobs)
        result = run_gate(policy, facts, loaded)
        doc["gate"] = _gate_doc(result)
        refused = _judge(args, result, doc)
        if refused is not None:
            return refused
    rules = [render_rule(r) for r in policy.rules]
    try:
        count = securityfs.write_policy(rules, ima_dir=IMA_DIR, lines=[r.line for r in policy.rules])
    except securityfs.PolicyRuleRejectedError as exc:
        doc["rejected"] = {"index": exc.index, "line": exc.line, "rule": exc.rule,
                           "errno": errno.errorcode.get(exc.errno or 0)}  # fmt: skip
        return _fail(args, doc, exc)
    gone = not (Path(IMA_DIR) / "policy").exists()
    doc.update({"loaded": True, "rules_written": count,
                "policy_file_after_load": "gone" if gone else "present"})  # fmt: skip
    if policy.appraise_rules:
        doc["prime"] = _prime(args.prime, mode)
    _warn_package_changes(args, policy, doc)
    doc["exit_code"] = int(ExitCode.OK)
    if args.json:
        _emit(doc)
    else:
        print(f"loaded: {count} rules from {source} (stage {args.stage})")
        if result is not None:
            print(f"gate: {result.decision.value} ({result.in_scope} files in scope)")
        print("policy file: " + ("gone (one policy per boot on this kernel)" if gone else
                                 "still present (CONFIG_IMA_WRITE_POLICY: rules can be added)"))  # fmt: skip
        if "prime" in doc:
            print(f"prime: {doc['prime']}")
    return ExitCode.OK


# --- install -------------------------------------------------------------------------------------


def _check_boot_keys(
    args: argparse.Namespace, root: Path, ids: frozenset[bytes], doc: dict[str, object], held: str = ""
) -> None:
    """Enforce refuses when the next boot loads no key, or not the keys of ROOT/KEY_DIR (every appraised
    file, or every file signed with a newer key, would be denied: a host locked out until someone boots
    it otherwise); log, or enforce with the unsafe flag, warns."""
    key_dir = root / bootfiles.KEY_DIR
    install = f"`imaguard keys install --root {root} CERT`"
    if not ids:
        ident = W_NO_BOOT_KEYS
        problem = (f"no certificate in {key_dir}: the next boot loads no IMA key (--cert only checks signatures, "
                   f"it loads nothing at boot), so every appraised file would be denied; install the key for "
                   f"boot with {install}")  # fmt: skip
    else:
        loaders = nextboot.boot_key_loaders(root)
        doc["boot_key_loading"] = loaders
        if loaders:
            ident = W_INITRAMFS_STALE
            checked: dict[str, str] = {}
            problem = nextboot.stale_initramfs(root, loaders, checked)
            doc["initramfs_checked"] = checked
            unread = [image for image, how in checked.items() if how == "mtime"]
            if not problem and unread:
                # Neither read here (zstd, lz4...) nor listed (no lsinitramfs): only its age vouches.
                message = (f"{', '.join(unread)}: neither its content nor its file list could be read here (install "
                           "lsinitramfs, from initramfs-tools-core), so only its age was checked against the keys")
                _warn(W_INITRAMFS_UNCHECKED, message)
                _add_warning(doc, f"{W_INITRAMFS_UNCHECKED}: {message}")
            if not problem:
                return
        else:
            ident = W_NO_BOOT_LOADING
            problem = (f"nothing under {root} loads {key_dir} at boot (neither the initramfs-tools hook "
                       f"{bootfiles.INITRAMFS_HOOK} and script nor {bootfiles.DRACUT_CONF} with dracut's integrity "
                       f"module), so every appraised file would be denied; install initramfs-tools or dracut in the "
                       f"root, rerun {install} and rebuild the initramfs")  # fmt: skip
    if (args.stage == "enforce" or held) and not args.unsafe_enforce_with_unsigned_files:
        why = f" (--stage log is judged as enforce: {held})" if held else ""
        # The warning's own name as the reason (no-boot-keys, no-boot-loading, initramfs-stale).
        raise PolicyGateError(f"{problem}{why}; nothing was written", reason=ident.removeprefix("W-").lower())
    _warn(ident, problem)
    _add_warning(doc, f"{ident}: {problem}")


def _target_secure_boot(root: Path, given: str | None) -> SecureBootState:
    """Secure boot of the machine that boots ROOT: this host's, read from its EFI variables, for /;
    for another root only what the operator says (unknown otherwise)."""
    if root.resolve() == Path("/"):
        if given is not None:
            raise UsageError("--target-secure-boot is for another --root: this host's secure boot state is read "
                             "from its EFI variables")  # fmt: skip
        return probe.read_secure_boot(EFI_DIR)
    if given is None:
        return SecureBootState(SecureBoot.UNKNOWN, f"{root} is booted by another machine; say its state with "
                               "--target-secure-boot on|off")  # fmt: skip
    return SecureBootState(SecureBoot(given), f"--target-secure-boot {given}")


def _cmd_install(args: argparse.Namespace) -> int:
    source, policy = _checked_policy(args)
    root = root_dir(args.root)
    doc: dict[str, object] = {"command": "policy install", "policy": source, "stage": args.stage, "root": str(root),
                              "unsafe_enforce_with_unsigned_files": False}  # fmt: skip
    if policy.appraise_rules:
        held = ""
        if args.stage == "log":
            held = nextboot.next_boot_may_enforce(root, _target_secure_boot(root, args.target_secure_boot))
            doc["next_boot_log_mode"] = "uncertain" if held else "certain"
            if held:
                _warn(W_LOG_MAY_ENFORCE, f"the next boot may enforce this log-stage policy ({held}): it is judged as "
                      "enforce, so every file in scope must be signed with a key the boot loads")  # fmt: skip
                _add_warning(doc, f"{W_LOG_MAY_ENFORCE}: {held}")
        ids, verifier, files = nextboot.boot_keys(root, args.cert)
        doc["boot_keys"] = files
        _check_boot_keys(args, root, ids, doc, held)
        result = run_gate(policy, coverage.collect(policy, str(root), verifier, ids, Limits(), jobs=args.jobs), ids)
        doc["gate"] = _gate_doc(result)
        refused = _judge(args, result, doc, held)
        if refused is not None:
            return refused
    else:
        result = GateResult(Decision.ALLOW, 0, (), 0)
    text = bootfiles.policy_file(render(policy), stage=args.stage, source=Path(source).name)
    # The boot loader file is read and its edit made before anything is written: a grub file that
    # cannot be read or edited must not leave a policy installed behind an error.
    advice, grub_edit = _advice(args, root)
    # Both targets judged before either is written: a directory or file another user can write
    # (unsafe-install-dir, unsafe-install-file) refuses the install, nothing written.
    check_install_targets(root, [bootfiles.POLICY_PATH, *([bootfiles.GRUB_DEFAULT] if grub_edit is not None else [])])
    change = install_file(root, bootfiles.POLICY_PATH, text.encode("ascii"), 0o644)
    doc["files"] = [{"path": change.path, "change": change.change.value, "mode": f"{change.mode:04o}"}]
    doc.update(advice)
    grub = _write_grub(root, grub_edit, change) if grub_edit is not None else None
    if grub is not None:
        doc["files"].append(grub)  # type: ignore[attr-defined]
    _warn_package_changes(args, policy, doc)
    doc["exit_code"] = int(ExitCode.OK)
    if args.json:
        _emit(doc)
        return ExitCode.OK
    print(f"{change.change.value:9} {change.path} ({change.mode:04o}): {len(policy.rules)} rules, stage {args.stage}")
    if policy.appraise_rules:
        print(f"gate: {result.decision.value} ({result.in_scope} files in scope under {root})")
    for line in advice["cmdline_text"]:  # type: ignore[attr-defined]
        print(line)
    if grub is not None:
        print(f"{grub['change']:9} {grub['path']} ({grub['mode']}); now run update-grub")
    return ExitCode.OK


def _write_grub(root: Path, edit: tuple[bytes, int], policy: FileChange) -> dict[str, str] | None:
    data, mode = edit
    try:
        change = install_file(root, bootfiles.GRUB_DEFAULT, data, mode)
    except HostStateError as exc:
        raise HostStateError(f"{exc}; the policy was already written ({policy.change.value} {policy.path}), "
                             "the kernel command line was not changed", reason=exc.reason, path=exc.path) from exc
    if change.change is Change.UNCHANGED:
        return None
    return {"path": change.path, "change": change.change.value, "mode": f"{mode:04o}"}


def _advice(args: argparse.Namespace, root: Path) -> tuple[dict[str, object], tuple[bytes, int] | None]:
    """The command-line advice, and with --edit-grub the new grub file (content, mode) to write."""
    grub_bytes = read_root_file(root, bootfiles.GRUB_DEFAULT)
    # surrogateescape: every byte of lines the edit does not touch is written back as it was.
    grub_text = grub_bytes.decode("utf-8", "surrogateescape") if grub_bytes is not None else None
    if grub_text is not None:
        words = tuple(w for line in grub_text.splitlines() if line.startswith("GRUB_CMDLINE_LINUX")
                      for w in line.partition("=")[2].strip().strip("\"'").split())  # fmt: skip
        words_from = str(root / bootfiles.GRUB_DEFAULT)
    elif root.resolve() == Path("/"):
        words = read_cmdline()
        words_from = "/proc/cmdline"
    else:
        words, words_from = (), "nothing (no /etc/default/grub under the root)"
    advice = bootfiles.cmdline_advice(args.stage, words)
    lines = [f"kernel command line for stage {args.stage} (from {words_from}):"]
    lines += [f"  add:    {w}" for w in advice.add] + [f"  remove: {w}" for w in advice.remove]
    if not advice.needs_change:
        lines.append("  nothing to change")
    lines += [f"  note: {n}" for n in advice.notes]
    grub_change: tuple[bytes, int] | None = None
    if grub_text is not None and advice.needs_change:
        edit = bootfiles.grub_edit(grub_text, advice) if "\0" not in grub_text else None
        if edit is None:
            lines.append(f"  {root / bootfiles.GRUB_DEFAULT}: not plain double-quoted GRUB_CMDLINE_LINUX lines; "
                         "edit it by hand as above, then run update-grub")  # fmt: skip
            if args.edit_grub:
                raise HostStateError(f"{root / bootfiles.GRUB_DEFAULT}: not a file --edit-grub can rewrite safely "
                                     "(binary, or GRUB_CMDLINE_LINUX lines that are not one plain double-quoted "
                                     "value); nothing was written: edit it by hand or leave out --edit-grub",
                                     reason="grub-not-editable", path=str(root / bootfiles.GRUB_DEFAULT))  # fmt: skip
        elif args.edit_grub:
            st = root_file_stat(root, bootfiles.GRUB_DEFAULT)
            mode = 0o644 if st is None else st.st_mode & 0o7777  # None: removed since read; written anew
            grub_change = edit.new_text.encode("utf-8", "surrogateescape"), mode
        else:
            lines.append(f"  in {root / bootfiles.GRUB_DEFAULT} (not edited; --edit-grub does it), then run "
                         "update-grub:")
            for old, new in edit.changes:
                lines += ([f"    - {old}"] if old is not None else []) + [f"    + {new}"]
    doc: dict[str, object] = {"cmdline": {"from": words_from, "add": list(advice.add), "remove": list(advice.remove),
                                          "notes": list(advice.notes)}, "cmdline_text": lines}  # fmt: skip
    return doc, grub_change
