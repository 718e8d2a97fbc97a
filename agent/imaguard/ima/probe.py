"""Read this host's IMA facts into a :class:`~imaguard.ima.hostfacts.KernelFacts` (I/O, read-only).

Reads ``/proc`` (cmdline, config.gz, crypto, filesystems, keys, mountinfo), ``/sys/kernel/security``,
``/sys/firmware/efi`` (the SecureBoot and SetupMode variables), ``/boot/config-*``, ``/dev/tpm*``
and ``/sys/class/tpm``, and asks the keyrings through ``keyctl`` read/describe/search. It never
mounts, writes, links or loads anything, so ``imaguard doctor`` is safe on any host. Each source
that cannot be read leaves its fact unknown.
"""

from __future__ import annotations

import errno
import gzip
import os
import zlib
from pathlib import Path

from imaguard.errors import FormatError, HostStateError, UnsupportedError
from imaguard.ima import keyring, securityfs
from imaguard.ima.bootfiles import POLICY_PATH, stage_of_policy_file
from imaguard.ima.coverage import parse_mountinfo
from imaguard.ima.hostfacts import (
    IMA_KEYRING,
    SYSTEM_KEYRINGS,
    TRUSTED_IMA_KEYRING,
    KernelConfig,
    KernelFacts,
    KeyEntry,
    KeyringRef,
    PolicyFile,
    SecureBootState,
    XattrProbe,
    XattrSupport,
    parse_cmdline,
    parse_kernel_config,
    secure_boot_state,
)

__all__ = [
    "EFI_DIR",
    "NOT_PROBED_FSTYPES",
    "probe_xattrs",
    "read_kernel_config",
    "read_kernel_facts",
    "read_secure_boot",
]

_LIMIT = 4 << 20
EFI_DIR = "/sys/firmware/efi"
# EFI_GLOBAL_VARIABLE_GUID (include/linux/efi.h): SecureBoot and SetupMode live there.
_EFI_GLOBAL = "8be4df61-93ca-11d0-aae0-e0cb4ee0e8c1"

# Filesystems whose root is not probed for security.ima: pseudo filesystems (the templates exempt
# them, nothing there is a package file), network and FUSE filesystems (a getxattr may block on
# an absent server), autofs (a probe would trigger the mount).
NOT_PROBED_FSTYPES = frozenset(
    {"proc", "sysfs", "cgroup", "cgroup2", "devpts", "mqueue", "debugfs", "tracefs", "securityfs", "bpf",
     "pstore", "configfs", "hugetlbfs", "fusectl", "binfmt_misc", "efivarfs", "autofs", "rpc_pipefs", "nsfs",
     "selinuxfs", "smackfs", "nfs", "nfs4", "cifs", "smb3", "9p", "ceph", "glusterfs"}
)  # fmt: skip


def _read_text(path: str) -> str | None:
    try:
        with Path(path).open(encoding="utf-8", errors="replace") as f:
            return f.read(_LIMIT)
    except OSError:
        return None


def read_kernel_config(release: str) -> KernelConfig | None:
    """The running kernel's build config: ``/boot/config-RELEASE``, else ``/proc/config.gz``."""
    boot = f"/boot/config-{release}"
    text = _read_text(boot)
    if text is not None:
        return parse_kernel_config(text, boot)
    try:
        with gzip.open("/proc/config.gz", "rt", encoding="utf-8", errors="replace") as f:
            return parse_kernel_config(f.read(_LIMIT), "/proc/config.gz")
    except (OSError, EOFError, zlib.error):
        return None


def read_secure_boot(efi_dir: str = EFI_DIR) -> SecureBootState:
    """Secure boot as the kernel sees it, from ``EFI_DIR/efivars`` (read-only; a variable that cannot
    be read other than by its absence makes the state unknown)."""
    efi = Path(efi_dir)
    if not efi.is_dir():
        return secure_boot_state(efi=False, efivars=False, secure_boot=None, setup_mode=None)
    efivars = efi / "efivars"
    try:
        listed = any(efivars.iterdir())  # an empty directory: efivarfs is not mounted
    except OSError:
        listed = False
    values: list[bytes | None] = []
    for name in ("SecureBoot", "SetupMode"):
        try:
            with (efivars / f"{name}-{_EFI_GLOBAL}").open("rb") as f:
                values.append(f.read(64))
        except FileNotFoundError:
            values.append(None)
        except OSError:
            listed = False  # there but unreadable: cannot tell
            values.append(None)
    return secure_boot_state(efi=True, efivars=listed, secure_boot=values[0], setup_mode=values[1])


def _policy_state(ima_dir: bool) -> tuple[PolicyFile, str | None]:
    if not ima_dir:
        return PolicyFile.UNKNOWN, None
    path = Path(securityfs.IMA_DIR) / "policy"
    try:
        st = path.stat()
    except FileNotFoundError:
        return PolicyFile.GONE, None
    except OSError:
        return PolicyFile.UNKNOWN, None
    if st.st_mode & 0o200:
        return PolicyFile.WRITABLE, None
    # Still present but read-only: loaded, and CONFIG_IMA_READ_POLICY lets root read it back.
    return PolicyFile.GONE, _read_text(str(path))


def _keyrings() -> tuple[tuple[KeyringRef, ...] | None, tuple[KeyEntry, ...], bool | None]:
    try:
        keys = keyring.read_proc_keys()
    except (HostStateError, FormatError):
        return None, (), None
    wanted = {IMA_KEYRING, TRUSTED_IMA_KEYRING, *SYSTEM_KEYRINGS}
    refs = tuple(KeyringRef(k.description, k.serial) for k in keys if k.type == "keyring" and k.description in wanted)
    by_serial = {k.serial: k for k in keys}
    trusted: list[KeyEntry] = []
    for ref in refs:
        try:
            members = keyring.keyring_links(ref.serial)
        except HostStateError:
            continue  # not readable by us: nothing to list, the kernel still decides
        for serial in members:
            key = by_serial.get(serial)
            try:
                description = key.description if key is not None else keyring.describe_key(serial).description
            except HostStateError:
                continue
            trusted.append(KeyEntry(ref.name, description, serial))
    try:
        reachable: bool | None = keyring.search_keyring(IMA_KEYRING) is not None
    except (HostStateError, UnsupportedError):
        reachable = None
    return refs, tuple(trusted), reachable


def probe_xattrs(mountinfo: str) -> tuple[XattrProbe, ...]:
    """Try ``getxattr(security.ima)`` on each mounted filesystem's root: ENODATA or a value means
    supported, EOPNOTSUPP unsupported. The last mount at a mountpoint is the visible one."""
    try:
        mounts = parse_mountinfo(mountinfo)
    except FormatError:
        return ()
    visible = {m.mountpoint: m for m in mounts}
    probes: list[XattrProbe] = []
    for mount in visible.values():
        fstype = mount.fstype
        if fstype in NOT_PROBED_FSTYPES or fstype.startswith("fuse"):
            probes.append(XattrProbe(mount.mountpoint, fstype, XattrSupport.NOT_PROBED,
                                     "pseudo, network or FUSE filesystem: not touched"))  # fmt: skip
            continue
        try:
            os.getxattr(mount.mountpoint, "security.ima", follow_symlinks=False)
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                probes.append(XattrProbe(mount.mountpoint, fstype, XattrSupport.SUPPORTED, "no label on the root"))
            elif exc.errno == errno.EOPNOTSUPP:
                probes.append(XattrProbe(mount.mountpoint, fstype, XattrSupport.UNSUPPORTED,
                                         "EOPNOTSUPP: files here cannot carry security.ima"))  # fmt: skip
            else:
                probes.append(XattrProbe(mount.mountpoint, fstype, XattrSupport.UNKNOWN,
                                         f"getxattr: {exc.strerror}"))  # fmt: skip
            continue
        probes.append(XattrProbe(mount.mountpoint, fstype, XattrSupport.SUPPORTED, "the root is labelled"))
    return tuple(probes)


def read_kernel_facts(*, with_xattrs: bool = True) -> KernelFacts:
    """Everything :mod:`imaguard.ima.doctor` and ``keys load`` decide on, read from this host."""
    release = os.uname().release
    config = read_kernel_config(release)
    mountinfo = _read_text("/proc/self/mountinfo") or ""
    filesystems = _read_text("/proc/filesystems")
    securityfs_known = None if filesystems is None else any(
        line.split()[-1:] == ["securityfs"] for line in filesystems.splitlines()
    )
    mounted = securityfs.is_mounted(mountinfo)
    ima_dir = mounted and Path(securityfs.IMA_DIR).is_dir()
    policy_file, policy_text = _policy_state(ima_dir)
    refs, trusted, reachable = _keyrings()
    crypto = _read_text("/proc/crypto") or ""
    config_text = "\n".join(f"{k}={v}" for k, v in config.options) if config is not None else None
    tpm_devices = tuple(sorted(str(p) for p in Path("/dev").glob("tpm*")))
    tpm_version = _read_text("/sys/class/tpm/tpm0/tpm_version_major")
    installed = _read_text("/" + POLICY_PATH)
    return KernelFacts(
        release=release,
        config=config,
        securityfs_known=securityfs_known,
        securityfs_mounted=mounted,
        ima_dir=ima_dir,
        policy_file=policy_file,
        policy_text=policy_text,
        cmdline=parse_cmdline(_read_text("/proc/cmdline") or ""),
        keyrings=refs,
        ima_keyring_reachable=reachable,
        keyring_keys=trusted,
        ecdsa=keyring.ecdsa_support(crypto, _with_not_set(config, config_text)),
        tpm_devices=tpm_devices,
        tpm_version=tpm_version.strip() if tpm_version else None,
        xattrs=probe_xattrs(mountinfo) if with_xattrs else (),
        installed_policy=installed is not None,
        installed_policy_stage=stage_of_policy_file(installed) if installed is not None else None,
        secure_boot=read_secure_boot(),
    )


def _with_not_set(config: KernelConfig | None, text: str | None) -> str | None:
    # ecdsa_support reads "# CONFIG_CRYPTO_ECDSA is not set"; a complete config without the option
    # has it off as well, so say so explicitly.
    if config is None or text is None:
        return None
    return text if config.value("CRYPTO_ECDSA") is not None else text + "\n# CONFIG_CRYPTO_ECDSA is not set\n"
