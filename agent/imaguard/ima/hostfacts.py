"""What the running kernel offers IMA, as one typed value (pure: text in, facts out).

:class:`KernelFacts` is what ``imaguard doctor`` reports on and what ``imaguard keys load`` decides
with, so the decisions are pure functions that tests feed with any kernel they like; the adapter
that reads ``/proc``, ``/sys``, ``/boot`` and ``/dev`` is :mod:`imaguard.ima.probe`.

Sources, each parsed here:

- the kernel build configuration (``/boot/config-$(uname -r)`` on Debian, ``/proc/config.gz``
  where ``CONFIG_IKCONFIG_PROC``): ``CONFIG_X=y|m|"str"`` and ``# CONFIG_X is not set`` lines. An
  option missing from a complete config is not set (Kconfig drops options whose dependencies are
  off: no ``CONFIG_IMA`` line at all when ``CONFIG_INTEGRITY`` is off);
- the kernel command line (``/proc/cmdline``): ``ima_appraise=``, ``ima_policy=``, ``ima=``...
  (``security/integrity/ima/ima_appraise.c`` ``default_appraise_setup``, ``ima_policy.c``
  ``default_policy_setup``, Linux 6.1);
- ``/proc/crypto`` and the config for ECDSA (:func:`imaguard.ima.keyring.ecdsa_support`);
- the EFI variables ``SecureBoot`` and ``SetupMode`` (efivarfs: 4 bytes of attributes, then the
  value), which decide whether the kernel honours ``ima_appraise=`` at all
  (:func:`effective_appraise_mode`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "IMA_KEYRING",
    "SYSTEM_KEYRINGS",
    "TRUSTED_IMA_KEYRING",
    "AppraiseMode",
    "KernelConfig",
    "KernelFacts",
    "KeyEntry",
    "KeyringRef",
    "PolicyFile",
    "SecureBoot",
    "SecureBootState",
    "XattrProbe",
    "XattrSupport",
    "appraise_mode",
    "cmdline_value",
    "effective_appraise_mode",
    "parse_cmdline",
    "parse_kernel_config",
    "secure_boot_state",
]

# The keyrings IMA verifies against or that vouch for .ima keys (security/integrity/digsig.c,
# certs/system_keyring.c, security/integrity/platform_certs/), in the order shown to users.
SYSTEM_KEYRINGS = (".builtin_trusted_keys", ".secondary_trusted_keys", ".machine", ".platform")
IMA_KEYRING = "_ima"  # made by root (digsig.c keyring_name[INTEGRITY_KEYRING_IMA])
TRUSTED_IMA_KEYRING = ".ima"  # made by the kernel with CONFIG_INTEGRITY_TRUSTED_KEYRING


@dataclass(frozen=True, slots=True)
class KeyringRef:
    """A keyring listed in ``/proc/keys``: its name and serial."""

    name: str
    serial: int


@dataclass(frozen=True, slots=True)
class KernelConfig:
    """A parsed kernel build configuration; ``source`` names the file it came from."""

    source: str
    options: tuple[tuple[str, str], ...]  # (name, value) for every set option: "y", "m", "4096", '"str"'

    def value(self, name: str) -> str | None:
        """The value of ``CONFIG_NAME`` (``name`` without the prefix), None when not set."""
        key = f"CONFIG_{name}"
        for option, value in self.options:
            if option == key:
                return value
        return None

    def enabled(self, name: str) -> bool:
        """``=y`` or ``=m``: built in or available as a module."""
        return self.value(name) in ("y", "m")


def parse_kernel_config(text: str, source: str) -> KernelConfig:
    """Parse ``.config`` text; comment lines (``# CONFIG_X is not set`` among them) carry no option."""
    options: list[tuple[str, str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line.startswith("CONFIG_"):
            continue
        name, sep, value = line.partition("=")
        if sep and name.isidentifier():
            options.append((name, value))
    return KernelConfig(source, tuple(options))


def parse_cmdline(text: str) -> tuple[str, ...]:
    """The kernel command line's words, with double-quoted values kept whole (``a="b c"``)."""
    words: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text.strip():
        if char == '"':
            quoted = not quoted
            current.append(char)
        elif char.isspace() and not quoted:
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(char)
    if current:
        words.append("".join(current))
    # Everything after a lone "--" goes to init, not to the kernel.
    return tuple(words[: words.index("--")] if "--" in words else words)


def cmdline_value(words: tuple[str, ...], key: str) -> str | None:
    """The value of the last ``key=value`` word (the kernel's __setup handlers keep the last one)."""
    found: str | None = None
    for word in words:
        name, sep, value = word.partition("=")
        if name == key:
            found = value.strip('"') if sep else ""
    return found


class AppraiseMode(enum.Enum):
    """``ima_appraise=`` (ima_appraise.c, 6.1). Without the parameter the kernel enforces."""

    ENFORCE = "enforce"
    LOG = "log"
    FIX = "fix"
    OFF = "off"


def appraise_mode(words: tuple[str, ...]) -> tuple[AppraiseMode, str]:
    """The appraisal mode the command line asks for, and why (the parameter or its absence).

    The kernel honours ``log``/``fix``/``off`` only with ``CONFIG_IMA_APPRAISE_BOOTPARAM`` and not
    under secure boot: decide with :func:`effective_appraise_mode`, never with this alone.
    """
    value = cmdline_value(words, "ima_appraise")
    if value is None:
        return AppraiseMode.ENFORCE, "no ima_appraise= on the command line (the default is enforce)"
    try:
        return AppraiseMode(value), f"ima_appraise={value} on the command line"
    except ValueError:
        return AppraiseMode.ENFORCE, f"ima_appraise={value} is not a mode the kernel knows; it enforces"


class SecureBoot(enum.Enum):
    """What ``arch_ima_get_secureboot()`` returns on this host, as far as the EFI variables tell."""

    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class SecureBootState:
    """The secure boot state and what it was read from (shown in refusals and by doctor)."""

    state: SecureBoot
    reason: str


_EFIVAR_DATA = 4  # efivarfs files start with the variable's 4-byte attributes (fs/efivarfs/file.c)


def secure_boot_state(
    *, efi: bool, efivars: bool, secure_boot: bytes | None, setup_mode: bytes | None
) -> SecureBootState:
    """Secure boot as the kernel sees it (``efi_get_secureboot_mode``, include/linux/efi.h, 6.1).

    ``efi``: the firmware is EFI (``/sys/firmware/efi`` exists; without it the kernel has no EFI
    runtime and ``arch_ima_get_secureboot()`` is false); ``efivars``: efivarfs could be listed;
    ``secure_boot``/``setup_mode``: the variables' efivarfs bytes, None when absent. The kernel
    takes an absent ``SecureBoot`` as disabled, ``SecureBoot`` 0 or ``SetupMode`` 1 as disabled,
    anything else as enabled. (shim's ``MokSBState`` can disable it too: not read, so such a host
    counts as on, the side that refuses.)
    """
    if not efi:
        return SecureBootState(SecureBoot.OFF, "no /sys/firmware/efi: legacy BIOS boot, no secure boot")
    if not efivars:
        return SecureBootState(SecureBoot.UNKNOWN, "EFI firmware, but the EFI variables cannot be read "
                               "(efivarfs not mounted at /sys/firmware/efi/efivars?)")  # fmt: skip
    if secure_boot is None:
        return SecureBootState(SecureBoot.OFF, "EFI firmware without a SecureBoot variable (the kernel takes it as "
                               "disabled)")  # fmt: skip
    if len(secure_boot) <= _EFIVAR_DATA:
        return SecureBootState(SecureBoot.UNKNOWN, f"the SecureBoot variable has {len(secure_boot)} bytes, "
                               "no value after its attributes")  # fmt: skip
    if secure_boot[_EFIVAR_DATA] == 0:
        return SecureBootState(SecureBoot.OFF, "SecureBoot=0 in the EFI variables")
    if setup_mode is not None and len(setup_mode) <= _EFIVAR_DATA:
        return SecureBootState(SecureBoot.UNKNOWN, f"SecureBoot={secure_boot[_EFIVAR_DATA]} but the SetupMode "
                               f"variable has {len(setup_mode)} bytes, no value after its attributes")  # fmt: skip
    if setup_mode is not None and setup_mode[_EFIVAR_DATA] == 1:
        return SecureBootState(SecureBoot.OFF, f"SecureBoot={secure_boot[_EFIVAR_DATA]} but SetupMode=1 (the "
                               "firmware is in setup mode: the kernel takes secure boot as disabled)")  # fmt: skip
    return SecureBootState(SecureBoot.ON, f"SecureBoot={secure_boot[_EFIVAR_DATA]}"
                           f"{', SetupMode=0' if setup_mode is not None else ''} in the EFI variables")  # fmt: skip


def effective_appraise_mode(
    words: tuple[str, ...], config: KernelConfig | None, secure_boot: SecureBootState
) -> tuple[AppraiseMode | None, str]:
    """The appraisal mode the running kernel is in, or None when that cannot be told, and why.

    ``ima_appraise=log|fix|off`` is honoured only with ``CONFIG_IMA_APPRAISE_BOOTPARAM`` (without it
    the parameter does not exist) and only when ``arch_ima_get_secureboot()`` is false:
    ``ima_appraise_parse_cmdline`` (ima_appraise.c, 6.1) prints "Secure boot enabled: ignoring
    ima_appraise=%s option" and keeps enforcing. Enforce (asked for or the default) is certain.
    """
    asked, why = appraise_mode(words)
    if asked is AppraiseMode.ENFORCE:
        return asked, why
    if config is None:
        return None, (f"{why}, but no kernel config was found (/boot/config-RELEASE, /proc/config.gz) to tell "
                      "whether CONFIG_IMA_APPRAISE_BOOTPARAM lets the kernel honour it")  # fmt: skip
    if not config.enabled("IMA_APPRAISE_BOOTPARAM"):
        return AppraiseMode.ENFORCE, (f"{why}, but CONFIG_IMA_APPRAISE_BOOTPARAM is not set in {config.source}: "
                                      "the kernel ignores it and enforces")  # fmt: skip
    if secure_boot.state is SecureBoot.ON:
        return AppraiseMode.ENFORCE, (f"{why}, but secure boot is on ({secure_boot.reason}): the kernel ignores "
                                      "it ('Secure boot enabled: ignoring ima_appraise') and enforces")  # fmt: skip
    if secure_boot.state is SecureBoot.UNKNOWN:
        return None, (f"{why}, but whether secure boot is on cannot be told ({secure_boot.reason}); with secure "
                      "boot on the kernel ignores it and enforces")  # fmt: skip
    return asked, (f"{why}, honoured (CONFIG_IMA_APPRAISE_BOOTPARAM={config.value('IMA_APPRAISE_BOOTPARAM')} in "
                   f"{config.source}; secure boot off: {secure_boot.reason})")  # fmt: skip


class PolicyFile(enum.Enum):
    """``/sys/kernel/security/ima/policy`` as found."""

    WRITABLE = "writable"  # present: no custom policy loaded yet (or CONFIG_IMA_WRITE_POLICY)
    GONE = "gone"  # IMA present, file absent: a custom policy was loaded this boot
    UNKNOWN = "unknown"  # securityfs not mounted or no IMA: cannot tell


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """A key linked into one of the keyrings imaguard shows (``_ima``, ``.ima``, ``SYSTEM_KEYRINGS``)."""

    keyring: str
    description: str  # x509 keys: "<CN>: <SKID hex>"
    serial: int = 0

    @property
    def skid_hex(self) -> str | None:
        """The subject key identifier (hex) the kernel appended to the description, if any."""
        _, sep, tail = self.description.rpartition(": ")
        tail = tail.strip().lower()
        if sep and tail and len(tail) % 2 == 0 and all(c in "0123456789abcdef" for c in tail):
            return tail
        return None

    @property
    def key_id(self) -> bytes | None:
        """The IMA key id (the SKID's last 4 bytes), what a ``security.ima`` signature names."""
        skid = self.skid_hex
        return bytes.fromhex(skid)[-4:] if skid is not None and len(skid) >= 8 else None


class XattrSupport(enum.Enum):
    SUPPORTED = "supported"  # getxattr security.ima: ENODATA or a value
    UNSUPPORTED = "unsupported"  # EOPNOTSUPP: files there cannot carry a signature
    NOT_PROBED = "not-probed"  # pseudo or network filesystem, automount: not touched
    UNKNOWN = "unknown"  # another error (EACCES...)


@dataclass(frozen=True, slots=True)
class XattrProbe:
    mountpoint: str
    fstype: str
    support: XattrSupport
    detail: str = ""


@dataclass(frozen=True, slots=True)
class KernelFacts:
    """Everything imaguard knows about this kernel's IMA support; None means "could not be told".

    Built by :func:`imaguard.ima.probe.read_kernel_facts` on a host, and directly by tests.
    """

    release: str = ""
    config: KernelConfig | None = None
    securityfs_known: bool | None = None  # "securityfs" in /proc/filesystems
    securityfs_mounted: bool = False
    ima_dir: bool = False  # /sys/kernel/security/ima exists
    policy_file: PolicyFile = PolicyFile.UNKNOWN
    policy_text: str | None = None  # the loaded policy, only with CONFIG_IMA_READ_POLICY
    cmdline: tuple[str, ...] = ()
    keyrings: tuple[KeyringRef, ...] | None = None  # None: /proc/keys unreadable (no CONFIG_KEYS?)
    ima_keyring_reachable: bool | None = None  # _ima found by a search from @u
    keyring_keys: tuple[KeyEntry, ...] = ()
    ecdsa: bool | None = None
    tpm_devices: tuple[str, ...] = ()
    tpm_version: str | None = None
    xattrs: tuple[XattrProbe, ...] = ()
    installed_policy: bool = False  # /etc/ima/ima-policy exists (systemd loads it at boot)
    installed_policy_stage: str | None = None  # the stage imaguard wrote it for, if it did
    secure_boot: SecureBootState = SecureBootState(SecureBoot.UNKNOWN, "not read")

    @property
    def appraisal_mode(self) -> tuple[AppraiseMode | None, str]:
        """The mode appraisal runs in (None: cannot be told): :func:`effective_appraise_mode`."""
        return effective_appraise_mode(self.cmdline, self.config, self.secure_boot)

    def keys_in(self, name: str) -> tuple[KeyEntry, ...]:
        return tuple(k for k in self.keyring_keys if k.keyring == name)

    @property
    def ima(self) -> bool | None:
        """IMA compiled in: the securityfs directory proves it; otherwise the config decides."""
        if self.ima_dir:
            return True
        if self.config is not None:
            return self.config.enabled("IMA")
        if self.securityfs_mounted:
            return False  # securityfs is up and has no ima/ directory
        return None

    def config_flag(self, name: str) -> bool | None:
        return None if self.config is None else self.config.enabled(name)

    @property
    def trusted_ima_keyring(self) -> KeyringRef | None:
        """The restricted ``.ima`` keyring (CONFIG_INTEGRITY_TRUSTED_KEYRING), if the kernel made one."""
        return self.keyring(TRUSTED_IMA_KEYRING)

    def keyring(self, name: str) -> KeyringRef | None:
        for ref in self.keyrings or ():
            if ref.name == name:
                return ref
        return None
