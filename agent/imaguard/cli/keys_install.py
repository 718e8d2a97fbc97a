"""``imaguard keys install``: certificates in ROOT/etc/keys/ima and their loading at every boot."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from imaguard.cli.keyfile import key_password
from imaguard.config import Limits
from imaguard.digests import HashAlgo
from imaguard.errors import ExitCode, UsageError
from imaguard.ima import bootfiles
from imaguard.ima.hostfacts import KernelFacts, parse_kernel_config
from imaguard.ima.keyload import Refusal, certificate_refusals
from imaguard.ima.rootfiles import (
    Change,
    FileChange,
    check_install_targets,
    install_file,
    list_root_dir,
    read_root_file,
    root_dir,
)
from imaguard.keys import Certificate, LocalSigner, Verifier, load_certificate, load_private_key, parse_certificate
from imaguard.keys.revocation_store import load_revoked
from imaguard.sign.files import sign_path, verify_path

if TYPE_CHECKING:
    import argparse

__all__ = ["INSTALL_HELP", "STATE_DIR", "cmd_install"]

STATE_DIR = "var/lib/imaguard"  # under --root: where the newest revocation list accepted is recorded

INSTALL_HELP = f"""\
Install IMA certificates under a root filesystem (--root DIR, default /) so that they are in the
kernel keyring at every boot, before the policy is loaded and before the first appraised exec.
Nothing is loaded into the running kernel (that is `imaguard keys load`).

Written, each atomically (temp file, fsync, rename), and listed as created, updated or unchanged:

  ROOT/{bootfiles.KEY_DIR}/imaguard-KEYID.der
      each certificate, DER, mode 0644 (one file per key id: reinstalling changes nothing)
  ROOT/{bootfiles.INITRAMFS_HOOK}
      initramfs-tools hook: copies keyctl and the certificates into the initramfs; it fails,
      and with it update-initramfs, if keyctl (keyutils) is missing
  ROOT/{bootfiles.INITRAMFS_SCRIPT}
      loads them with keyctl at init-top, before the root filesystem is mounted, into '.ima'
      if the kernel has it, else into '_ima' linked into root's user keyring
  ROOT/{bootfiles.DRACUT_CONF}
      turns on dracut's own integrity module (98integrity), which loads ROOT/{bootfiles.KEY_DIR}
      (its IMAKEYSDIR) with evmctl at pre-pivot; imaguard ships no second loader for dracut

The initramfs-tools files are written when ROOT has initramfs-tools (etc/initramfs-tools or
usr/share/initramfs-tools), the dracut file when ROOT has {bootfiles.DRACUT_MODULE_DIR}.
Warnings with stable ids: W-DRACUT-NO-KEYS (this dracut's integrity module cannot load keys),
W-DRACUT-KEYSDIR (/etc/sysconfig/ima points IMAKEYSDIR elsewhere), W-DRACUT-POLICY
(/etc/sysconfig/ima-policy exists: dracut would load it before systemd loads /etc/ima/ima-policy),
W-NO-BOOT-LOADING (no initramfs generator found), W-EC-KEY (EC key, ECDSA support of the target
kernel unknown). Other imaguard-*.der files already there are kept (rotation: the old key stays
until retired by removing its file) and listed.

The hook and the script are executables: under an enforcing appraisal policy update-initramfs
would be refused running them unless they carry a signature the kernel trusts. --sign-key KEY
signs them (sha256, the key of one of the CERTs given; a valid signature by one of them is
kept); without it each is reported "unsigned" with warning W-UNSIGNED-BOOT-FILES, and
`imaguard policy check --stage enforce` lists them.

Refused before anything is written: CA certificates, revoked keys (--revocation-list,
--revocation-ca; the certificates already in ROOT/{bootfiles.KEY_DIR}, which the install keeps,
are checked too), a revocation list older than the newest one accepted from its CA (lower
serial, or a revoked key dropped; recorded in ROOT/var/lib/imaguard), EC keys when every kernel
config in ROOT/boot says CONFIG_CRYPTO_ECDSA is off; a symlink below ROOT on the way to any file
read or written (symlink-in-path); a key directory, a directory above it or a certificate in it
that is not root's or is writable by group or others (unsafe-key-dir: the boot would load a key
anyone could plant), likewise the hook, script and dracut targets (unsafe-install-dir,
unsafe-install-file) and ROOT/var/lib/imaguard (unsafe-state-dir).
Afterwards rebuild the initramfs (update-initramfs -u, or dracut -f); install prints the command.

Exit status: 0 installed (or unchanged); 2 CA or unreadable certificate, or --sign-key
matching none of CERT; 3 revoked key (given or already installed) or older revocation list;
77 EC key for a kernel without ECDSA; 1 a file could not be read, written or signed, or an
unsafe directory or file (above).
"""


def _target_ecdsa(root: Path) -> bool | None:
    """Whether the kernels installed in ROOT/boot can load EC keys: False only if every config says no."""
    configs = [n for n in list_root_dir(root, "boot") or [] if n.startswith("config-")]
    verdicts = []
    for name in configs:
        data = read_root_file(root, f"boot/{name}")
        if data is not None:
            verdicts.append(parse_kernel_config(data.decode("utf-8", "replace"), str(root / "boot" / name))
                            .enabled("CRYPTO_ECDSA"))  # fmt: skip
    if not verdicts:
        return None
    return any(verdicts)


def _dracut(root: Path, warnings: list[str]) -> bool:
    """Whether ROOT has dracut's integrity module (then the drop-in is written), with the warnings
    on what it would load; everything read before anything is written."""
    if not (root / bootfiles.DRACUT_MODULE_DIR).is_dir():
        return False
    if not (root / bootfiles.DRACUT_MODULE_DIR / "ima-keys-load.sh").is_file():
        warnings.append("W-DRACUT-NO-KEYS: this dracut's integrity module has no ima-keys-load.sh: it does not "
                        f"load /{bootfiles.KEY_DIR} at boot (newer dracut releases do)")  # fmt: skip
    sysconfig = read_root_file(root, "etc/sysconfig/ima")
    keysdir = bootfiles.parse_imakeysdir(sysconfig.decode("utf-8", "replace")) if sysconfig is not None else None
    if keysdir not in (None, f"/{bootfiles.KEY_DIR}"):
        warnings.append(f"W-DRACUT-KEYSDIR: {root}/etc/sysconfig/ima sets IMAKEYSDIR={keysdir}: dracut loads keys "
                        f"from there, not from /{bootfiles.KEY_DIR}")  # fmt: skip
    if read_root_file(root, "etc/sysconfig/ima-policy") is not None:
        warnings.append("W-DRACUT-POLICY: /etc/sysconfig/ima-policy exists: dracut's integrity module loads it "
                        "before systemd, which then cannot load /etc/ima/ima-policy (one policy per boot)")  # fmt: skip
    if not any((root / d / "evmctl").exists() for d in ("usr/bin", "bin", "usr/sbin", "sbin")):
        warnings.append("W-DRACUT-NO-KEYS: evmctl (ima-evm-utils) is not installed in ROOT: dracut's integrity "
                        "module needs it to load keys")  # fmt: skip
    return True


def _kept_refusals(root: Path, certs: list[Certificate], revoked: frozenset[bytes]) -> list[Refusal]:
    """The certificates already in ROOT/KEY_DIR that the install would keep, checked against the
    revocation list: kept silently, a revoked key would go on being loaded at every boot. One that
    cannot be parsed cannot be checked, so it is refused too (fail closed)."""
    installing = {bootfiles.cert_file_name(c.key_id) for c in certs}
    refusals = []
    for name in _installed_certs(root):
        if name in installing:
            continue
        path = root / bootfiles.KEY_DIR / name
        data = read_root_file(root, f"{bootfiles.KEY_DIR}/{name}")
        if data is None:
            continue
        try:
            kept = parse_certificate(data, str(path))
        except UsageError as exc:
            why = f"already installed, kept by this install, and not checkable against the revocation list ({exc})"
            refusals.append(Refusal(str(path), "unchecked-key", f"{why}; remove or replace it"))
            continue
        if kept.key_id in revoked:
            refusals.append(Refusal(str(path), "revoked-key", f"key {kept.key_id.hex()} is on the revocation list and "
                                    "already installed: this install would keep it, loaded at every boot; remove "
                                    "the file (then rebuild the initramfs) to retire the key"))  # fmt: skip
    return refusals


def _installed_certs(root: Path) -> list[str]:
    """The certificate files in ROOT/KEY_DIR (what the initramfs hook copies: every *.der)."""
    return [n for n in list_root_dir(root, bootfiles.KEY_DIR) or [] if n.endswith(".der")]


def _targets(root: Path, certs: list[Certificate]) -> list[str]:
    """Every file this install writes or leaves to be loaded at boot, relative to ROOT: each is
    checked before anything is written (a directory or file another user can write is refused)."""
    targets = [f"{bootfiles.KEY_DIR}/{name}" for name in _installed_certs(root)]
    targets += [f"{bootfiles.KEY_DIR}/{bootfiles.cert_file_name(c.key_id)}" for c in certs]
    if _has_initramfs_tools(root):
        targets += [bootfiles.INITRAMFS_HOOK, bootfiles.INITRAMFS_SCRIPT]
    if (root / bootfiles.DRACUT_MODULE_DIR).is_dir():
        targets.append(bootfiles.DRACUT_CONF)
    return list(dict.fromkeys(targets))


def _has_initramfs_tools(root: Path) -> bool:
    return (root / "etc/initramfs-tools").is_dir() or (root / "usr/share/initramfs-tools").is_dir()


def _refuse(args: argparse.Namespace, certs: list[Certificate], root: Path, revoked: frozenset[bytes]) -> int | None:
    refusals = certificate_refusals(certs, KernelFacts(ecdsa=_target_ecdsa(root)), revoked)
    # The EC verdict here is the installed kernels' configs, not the running kernel's (audit).
    running = "the running kernel cannot use EC (ECDSA) keys: it was"
    target = f"the kernels installed in {root / 'boot'} cannot use EC (ECDSA) keys: every config-* there was"
    refusals = tuple(Refusal(r.source, r.reason, r.detail.replace(running, target)) if r.reason == "no-ecdsa" else r
                     for r in refusals)  # fmt: skip
    if args.revocation_list is not None:
        refusals += tuple(_kept_refusals(root, certs, revoked))
    if not refusals:
        return None
    reasons = {r.reason for r in refusals}
    code = (ExitCode.VERIFICATION_FAILED if "revoked-key" in reasons else
            ExitCode.UNSUPPORTED if "no-ecdsa" in reasons else ExitCode.USAGE)  # fmt: skip
    if args.json:
        json.dump({"command": "keys install", "installed": False,
                   "refused": [{"cert": r.source, "reason": r.reason, "detail": r.detail} for r in refusals],
                   "exit_code": int(code)}, sys.stdout, indent=1)  # fmt: skip
        sys.stdout.write("\n")
    for refusal in refusals:
        print(f"imaguard: refused: {refusal.source}: {refusal.reason}: {refusal.detail}", file=sys.stderr)
    print("imaguard: error: nothing was installed", file=sys.stderr)
    return code


def _boot_signer(args: argparse.Namespace, certs: list[Certificate]) -> LocalSigner | None:
    """The signer for the boot executables: --sign-key, matched to one of the certificates installed."""
    if args.sign_key is None:
        return None
    password = key_password(args.password_file, args.sign_key)
    for cert in certs:
        try:
            key = load_private_key(args.sign_key, password, cert)
        except UsageError as exc:
            if exc.reason == "key-cert-mismatch":
                continue
            raise
        return LocalSigner.from_key(key, cert)
    raise UsageError(f"--sign-key {args.sign_key}: its certificate is none of the ones installed; a signature "
                     "the boot-time keyring cannot verify would not help", reason="key-cert-mismatch")  # fmt: skip


def _sign_boot_files(paths: list[str], signer: LocalSigner | None, verifier: Verifier) -> dict[str, str]:
    """``{path: signed | kept | unsigned | failed: reason: detail}`` for each boot executable."""
    out = {}
    for path in paths:
        if verify_path(path, verifier, Limits()).status == "verified":
            out[path] = "kept"
        elif signer is None:
            out[path] = "unsigned"
        else:
            res = sign_path(path, signer, HashAlgo.SHA256, Limits())
            out[path] = "signed" if res.status == "signed" else f"failed: {res.reason}: {res.detail}"
    return out


def _revocation_state(root: Path) -> tuple[Path, Path | None]:
    """Where the revocation record lives: inside an image, walked without following symlinks; on this
    host (``--root /``), the host's state directory, followed like any host path (review: a host whose
    /var is a symlink was refused) and checked like every state directory."""
    if root.resolve() == Path("/"):
        return Path("/") / STATE_DIR, None
    return Path(STATE_DIR), root


def cmd_install(args: argparse.Namespace) -> int:
    root = root_dir(args.root)
    certs = list({c.key_id: c for c in (load_certificate(p) for p in args.certs)}.values())
    if args.password_file is not None and args.sign_key is None:
        raise UsageError("--password-file is the password of --sign-key's key: give --sign-key too")
    # Checked against the recorded list now, recorded only once the install is done: a refused
    # install writes nothing, the record of the accepted list included (review finding).
    state_dir, state_root = _revocation_state(root)
    revoked = load_revoked(args.revocation_list, args.revocation_ca, state_dir, record=False, root=state_root)
    # The key directory and every target are checked before anything is written: a directory
    # another user can write may already hold their certificate, which the boot would load.
    check_install_targets(root, _targets(root, certs))
    refused = _refuse(args, certs, root, revoked)
    if refused is not None:
        return refused
    signer = _boot_signer(args, certs)
    warnings: list[str] = []
    dracut = _dracut(root, warnings)  # reads ROOT's dracut configuration: before anything is written
    if any(c.key_kind.startswith("EC") for c in certs) and _target_ecdsa(root) is None:
        warnings.append("W-EC-KEY: EC certificate and no kernel config in ROOT/boot to tell whether the kernel "
                        "has ECDSA (Debian 12's does not: such keys fail to load at boot)")  # fmt: skip
    changes: list[FileChange] = []
    names = set()
    for cert in certs:
        name = bootfiles.cert_file_name(cert.key_id)
        names.add(name)
        changes.append(install_file(root, f"{bootfiles.KEY_DIR}/{name}", cert.der, 0o644))
    kept = [name for name in _installed_certs(root) if name not in names]
    rebuild: list[str] = []
    if _has_initramfs_tools(root):
        changes.append(install_file(root, bootfiles.INITRAMFS_HOOK, bootfiles.initramfs_hook().encode(), 0o755))
        changes.append(install_file(root, bootfiles.INITRAMFS_SCRIPT, bootfiles.initramfs_script().encode(), 0o755))
        rebuild.append("update-initramfs -u -k all")
    if dracut:
        changes.append(install_file(root, bootfiles.DRACUT_CONF, bootfiles.dracut_conf().encode(), 0o644))
        rebuild.append("dracut -f --regenerate-all")
    if not rebuild:
        warnings.append("W-NO-BOOT-LOADING: neither initramfs-tools nor dracut's integrity module found under "
                        f"{root}: the certificates are installed but nothing loads them at boot")  # fmt: skip
    signatures = _sign_boot_files([c.path for c in changes if c.mode & 0o111], signer, Verifier.of(certs, revoked))
    unsigned = [p for p, status in signatures.items() if status == "unsigned"]
    if unsigned:
        warnings.append(f"W-UNSIGNED-BOOT-FILES: {', '.join(unsigned)}: executables without a signature; under an "
                        "enforcing appraisal policy update-initramfs would be refused running them (use --sign-key "
                        "KEY, or review and `imaguard sign` them)")  # fmt: skip
    load_revoked(args.revocation_list, args.revocation_ca, state_dir, root=state_root)
    return _report(args, _Outcome(root, changes, kept, rebuild, warnings, signatures))


@dataclass(frozen=True, slots=True)
class _Outcome:
    root: Path
    changes: list[FileChange]
    kept: list[str]  # other certificate files left in place
    rebuild: list[str]  # the commands that make the next boot load the keys
    warnings: list[str]
    signatures: dict[str, str]  # boot executable -> signed | kept | unsigned | failed: …


def _report(args: argparse.Namespace, out: _Outcome) -> int:
    changed = any(c.change is not Change.UNCHANGED for c in out.changes)
    failed = {p: s for p, s in out.signatures.items() if s.startswith("failed")}
    code = ExitCode.FAILURE if failed else ExitCode.OK
    if args.json:
        json.dump({"command": "keys install", "installed": True, "root": str(out.root),
                   "files": [{"path": c.path, "change": c.change.value, "mode": f"{c.mode:04o}",
                              **({"signature": out.signatures[c.path]} if c.path in out.signatures else {})}
                             for c in out.changes],
                   "kept": out.kept, "warnings": out.warnings, "rebuild": out.rebuild if changed else [],
                   "exit_code": int(code)}, sys.stdout, indent=1)  # fmt: skip
        sys.stdout.write("\n")
    else:
        for c in out.changes:
            sig = f", signature {out.signatures[c.path]}" if c.path in out.signatures else ""
            print(f"{c.change.value:9} {c.path} ({c.mode:04o}{sig})")
        for name in out.kept:
            print(f"kept      {out.root / bootfiles.KEY_DIR / name} (not named here; remove it to retire that key)")
        if changed and out.rebuild:
            print(f"next: rebuild the initramfs so the next boot loads the keys: {' ; '.join(out.rebuild)}")
    for warning in out.warnings:
        print(f"imaguard: warning [{warning.split(':', 1)[0]}]:{warning.split(':', 1)[1]}", file=sys.stderr)
    for path, status in failed.items():
        print(f"imaguard: error: {path}: written but not signed: {status.removeprefix('failed: ')}", file=sys.stderr)
    return code
