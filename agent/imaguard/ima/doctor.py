"""``imaguard doctor``'s verdicts: what this kernel supports for IMA, each with a reason (pure).

Takes a :class:`~imaguard.ima.hostfacts.KernelFacts` and returns :class:`Check` values with stable
ids (``ima``, ``appraisal``, ``securityfs``, ``policy``, ``keyring``, ``ecdsa``, ``tpm``,
``xattr:<mountpoint>``, ``stage``) and statuses:

- ``ok``: present and usable;
- ``missing``: absent; the reason says what the kernel or host lacks;
- ``warning``: present, but something will not work as a user would expect;
- ``info``: a state worth knowing (a policy already loaded this boot);
- ``unknown``: could not be told (no kernel config, securityfs not mounted...).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from imaguard.ima.hostfacts import (
    IMA_KEYRING,
    AppraiseMode,
    KernelFacts,
    PolicyFile,
    SecureBoot,
    XattrSupport,
    cmdline_value,
)

__all__ = ["Check", "Status", "diagnose"]


class Status(enum.Enum):
    OK = "ok"
    MISSING = "missing"
    WARNING = "warning"
    INFO = "info"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Check:
    id: str
    status: Status
    summary: str  # "IMA: not available"
    reason: str


def _config_says(facts: KernelFacts, name: str) -> str:
    if facts.config is None:
        return "no kernel config found (/boot/config-RELEASE, /proc/config.gz)"
    value = facts.config.value(name)
    source = facts.config.source
    return f"CONFIG_{name}={value} in {source}" if value else f"CONFIG_{name} is not set in {source}"


def _ima(facts: KernelFacts) -> Check:
    where = "/sys/kernel/security/ima exists" if facts.ima_dir else (
        "/sys/kernel/security/ima is absent" if facts.securityfs_mounted else "securityfs is not mounted")
    if facts.ima is True:
        return Check("ima", Status.OK, "IMA: available", f"{where}; {_config_says(facts, 'IMA')}")
    if facts.ima is False:
        why = _config_says(facts, "IMA")
        if facts.config is not None and not facts.config.enabled("INTEGRITY"):
            why = f"{_config_says(facts, 'INTEGRITY')} (IMA depends on it)"
        return Check("ima", Status.MISSING, "IMA: not available", f"{why}; {where}")
    return Check("ima", Status.UNKNOWN, "IMA: cannot tell", f"{_config_says(facts, 'IMA')}; {where}")


def _appraisal(facts: KernelFacts) -> Check:
    if facts.ima is False:
        return Check("appraisal", Status.MISSING, "appraisal: not available", "no IMA in this kernel")
    appraise = facts.config_flag("IMA_APPRAISE")
    if appraise is None:
        return Check("appraisal", Status.UNKNOWN, "appraisal: cannot tell", _config_says(facts, "IMA_APPRAISE"))
    if not appraise:
        return Check("appraisal", Status.MISSING, "appraisal: not available",
                     f"{_config_says(facts, 'IMA_APPRAISE')}: the kernel measures, it never denies")  # fmt: skip
    if facts.config_flag("IMA_APPRAISE_BOOTPARAM") is False:
        return Check("appraisal", Status.WARNING, "appraisal: available, no log mode",
                     f"{_config_says(facts, 'IMA_APPRAISE_BOOTPARAM')}: ima_appraise=log is ignored, so appraise "
                     "rules enforce as soon as they are loaded (no log stage)")  # fmt: skip
    if facts.secure_boot.state is SecureBoot.ON:
        return Check("appraisal", Status.WARNING, "appraisal: available, no log mode (secure boot)",
                     f"secure boot is on ({facts.secure_boot.reason}): the kernel ignores ima_appraise=log, so "
                     "appraise rules enforce as soon as they are loaded (no log stage)")  # fmt: skip
    return Check("appraisal", Status.OK, "appraisal: available",
                 f"{_config_says(facts, 'IMA_APPRAISE')}; ima_appraise=log|enforce honoured "
                 f"({_config_says(facts, 'IMA_APPRAISE_BOOTPARAM')}; secure boot {facts.secure_boot.state.value}: "
                 f"{facts.secure_boot.reason})")  # fmt: skip


def _securityfs(facts: KernelFacts) -> Check:
    if facts.securityfs_mounted:
        return Check("securityfs", Status.OK, "securityfs: mounted", "at /sys/kernel/security")
    if facts.securityfs_known is False:
        return Check("securityfs", Status.MISSING, "securityfs: not available",
                     "not in /proc/filesystems (CONFIG_SECURITYFS)")  # fmt: skip
    if facts.securityfs_known:
        return Check("securityfs", Status.WARNING, "securityfs: not mounted",
                     "the kernel has it (/proc/filesystems) but nothing is mounted at /sys/kernel/security; systemd "
                     "mounts it at boot (by hand: mount -t securityfs securityfs /sys/kernel/security)")  # fmt: skip
    return Check("securityfs", Status.UNKNOWN, "securityfs: cannot tell", "/proc/filesystems unreadable")


def _policy(facts: KernelFacts) -> Check:
    if facts.policy_file is PolicyFile.WRITABLE:
        again = facts.config_flag("IMA_WRITE_POLICY")
        extra = ("; CONFIG_IMA_WRITE_POLICY=y: rules can be added after a load" if again else
                 "; it can be written once this boot (CONFIG_IMA_WRITE_POLICY not set)" if again is False else "")
        return Check("policy", Status.OK, "policy: writable", "/sys/kernel/security/ima/policy is present: "
                     f"no custom policy loaded this boot{extra}")  # fmt: skip
    if facts.policy_file is PolicyFile.GONE:
        readable = "; CONFIG_IMA_READ_POLICY: it can be read back" if facts.policy_text is not None else ""
        return Check("policy", Status.INFO, "policy: already loaded this boot",
                     f"/sys/kernel/security/ima/policy is gone or read-only: a custom policy was loaded; the next "
                     f"one takes a reboot{readable}")  # fmt: skip
    if facts.ima is False:
        return Check("policy", Status.MISSING, "policy: not available", "no IMA in this kernel")
    return Check("policy", Status.UNKNOWN, "policy: cannot tell", "securityfs is not mounted")


def _keyring(facts: KernelFacts) -> Check:
    if facts.keyrings is None:
        return Check("keyring", Status.MISSING, "keyring: not available",
                     "/proc/keys cannot be read (CONFIG_KEYS?)")  # fmt: skip
    trusted = facts.trusted_ima_keyring
    if trusted is not None:
        count = len(facts.keys_in(trusted.name))
        return Check("keyring", Status.OK, "keyring: restricted '.ima'",
                     f"'.ima' (serial {trusted.serial:08x}, CONFIG_INTEGRITY_TRUSTED_KEYRING) holds {count} key(s); "
                     "it takes only certificates signed by a key in the builtin or secondary keyrings "
                     "(a MOK-enrolled CA on kernels that allow it)")  # fmt: skip
    if facts.ima is False:
        return Check("keyring", Status.MISSING, "keyring: none for IMA", "no IMA in this kernel")
    ima = facts.keyring(IMA_KEYRING)
    if ima is not None:
        count = len(facts.keys_in(IMA_KEYRING))
        reach = {True: "reachable from root's user keyring @u", False: "NOT reachable from @u: services cannot "
                 "find it", None: "reachability unknown"}[facts.ima_keyring_reachable]  # fmt: skip
        status = Status.OK if facts.ima_keyring_reachable is not False else Status.WARNING
        return Check("keyring", status, "keyring: '_ima'",
                     f"'_ima' (serial {ima.serial:08x}) holds {count} key(s), {reach}")  # fmt: skip
    if facts.config_flag("INTEGRITY_TRUSTED_KEYRING"):
        return Check("keyring", Status.WARNING, "keyring: '.ima' expected, not visible",
                     f"{_config_says(facts, 'INTEGRITY_TRUSTED_KEYRING')} but /proc/keys shows no '.ima'")  # fmt: skip
    return Check("keyring", Status.INFO, "keyring: '_ima' (not created yet)",
                 "the kernel looks IMA keys up in '_ima' (no restricted '.ima'); `imaguard keys load CERT` creates "
                 "it")  # fmt: skip


def _ecdsa(facts: KernelFacts) -> Check:
    if facts.ecdsa is True:
        return Check("ecdsa", Status.OK, "ECDSA: available", "EC P-256/P-384 IMA certificates can be loaded")
    if facts.ecdsa is False:
        return Check("ecdsa", Status.MISSING, "ECDSA: not available",
                     f"{_config_says(facts, 'CRYPTO_ECDSA')}: EC certificates cannot be loaded and EC-signed files "
                     "are denied; use RSA")  # fmt: skip
    return Check("ecdsa", Status.UNKNOWN, "ECDSA: cannot tell", "not in /proc/crypto and no kernel config")


def _tpm(facts: KernelFacts) -> Check:
    if facts.tpm_devices:
        version = f" (TPM {facts.tpm_version}.0)" if facts.tpm_version else ""
        return Check("tpm", Status.OK, f"TPM: present{version}", ", ".join(facts.tpm_devices))
    return Check("tpm", Status.MISSING, "TPM: not present",
                 f"no /dev/tpm*; {_config_says(facts, 'TCG_TPM')}: measurements are not anchored in PCR 10 and "
                 "reports cannot be quoted")  # fmt: skip


_XATTR_STATUS = {XattrSupport.SUPPORTED: Status.OK, XattrSupport.UNSUPPORTED: Status.WARNING,
                 XattrSupport.NOT_PROBED: Status.INFO, XattrSupport.UNKNOWN: Status.UNKNOWN}  # fmt: skip


def _xattrs(facts: KernelFacts) -> list[Check]:
    checks: list[Check] = []
    for probe in facts.xattrs:
        status = _XATTR_STATUS[probe.support]
        reason = probe.detail
        if probe.support is XattrSupport.UNSUPPORTED:
            reason += "; under enforce, executing from here is denied: mount it noexec"
        checks.append(Check(f"xattr:{probe.mountpoint}", status,
                            f"xattr {probe.mountpoint} ({probe.fstype}): {probe.support.value}", reason))  # fmt: skip
    return checks


def _stage(facts: KernelFacts) -> Check:
    if facts.ima is False:
        return Check("stage", Status.MISSING, "stage: none", "no IMA in this kernel")
    mode, why = facts.appraisal_mode
    builtin = cmdline_value(facts.cmdline, "ima_policy")
    parts = [why, f"ima_policy={builtin}" if builtin is not None else "no ima_policy= (no built-in rules)"]
    installed = facts.installed_policy_stage
    if facts.installed_policy:
        parts.append(f"/etc/ima/ima-policy is installed{f' for stage {installed}' if installed else ''} "
                     "(systemd loads it at boot)")  # fmt: skip
    if facts.policy_file is PolicyFile.WRITABLE:
        stage = "none"
        parts.insert(0, "no custom policy loaded this boot")
    elif facts.policy_file is PolicyFile.GONE:
        if facts.policy_text is not None:
            appraises = any(line.split()[:1] == ["appraise"] for line in facts.policy_text.splitlines())
            stage = "measure" if not appraises else "log" if mode is AppraiseMode.LOG else (
                "unknown" if mode is None else "enforce")
        else:
            stage = installed or "unknown"
        parts.insert(0, "a custom policy is loaded" + ("" if facts.policy_text is not None else
                                                        " (not readable back: stage from /etc/ima/ima-policy)"))
    else:
        stage = "unknown"
    status = Status.INFO
    if installed == "log" and mode is not AppraiseMode.LOG:
        status = Status.WARNING
        parts.append("the installed policy is for the log stage but this boot's appraisal mode is not log (or "
                     "cannot be told): after a reboot like this one appraisal failures are DENIED")  # fmt: skip
    if installed == "enforce" and mode is AppraiseMode.LOG:
        parts.append("the installed policy is for enforce but ima_appraise=log only logs failures")
    shown = mode.value if mode is not None else "unknown"
    return Check("stage", status, f"stage: {stage} (appraisal mode {shown})", "; ".join(parts))


def diagnose(facts: KernelFacts) -> tuple[Check, ...]:
    """Every check, in the order shown."""
    return (
        _ima(facts), _appraisal(facts), _securityfs(facts), _policy(facts), _keyring(facts), _ecdsa(facts),
        _tpm(facts), _stage(facts), *_xattrs(facts),
    )  # fmt: skip
