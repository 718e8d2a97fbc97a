"""Who this host is, for the report: machine id, boot id, kernel, IMA policy and IMA keys.

Keys are read like ``imaguard doctor`` reads them (``ima/keyring.py``: ``/proc/keys`` and the
keyring's links; ``ima/hostfacts.py`` ``KeyEntry`` for the key id in a description), without the
rest of the kernel probe (config, crypto, xattrs), which a report does not need and would pay for
in start-up time.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from imaguard.errors import FormatError, HostStateError
from imaguard.ima import keyring
from imaguard.ima.hostfacts import IMA_KEYRING, TRUSTED_IMA_KEYRING, KeyEntry, PolicyFile
from imaguard.ima.securityfs import IMA_DIR

__all__ = ["HostIdentity", "ImaKey", "read_identity"]

_SMALL = 4096


@dataclass(frozen=True, slots=True)
class ImaKey:
    keyring: str
    description: str
    key_id: str | None  # 8 hex digits: the IMA key id a signature names, when the kernel shows the SKID


@dataclass(frozen=True, slots=True)
class HostIdentity:
    machine_id: str | None
    boot_id: str | None
    hostname: str
    kernel_release: str
    kernel_version: str
    ima_policy_sha256: str | None  # only with CONFIG_IMA_READ_POLICY (root can read the loaded policy)
    ima_policy_state: str  # writable | gone | unknown (hostfacts.PolicyFile)
    ima_keys: tuple[ImaKey, ...]


def _read(path: str) -> str | None:
    try:
        with Path(path).open(encoding="ascii", errors="replace") as f:
            value = f.read(_SMALL).strip()
    except OSError:
        return None
    return value or None


def _ima_keys() -> tuple[ImaKey, ...]:
    try:
        keys = keyring.read_proc_keys()
    except (HostStateError, FormatError):
        return ()
    by_serial = {k.serial: k for k in keys}
    found: list[ImaKey] = []
    for ring in keys:
        if ring.type != "keyring" or ring.description not in (IMA_KEYRING, TRUSTED_IMA_KEYRING):
            continue
        try:
            members = keyring.keyring_links(ring.serial)
        except HostStateError:
            continue  # not readable by us
        for serial in members:
            key = by_serial.get(serial)
            if key is None:
                continue
            entry = KeyEntry(ring.description, key.description, serial)
            found.append(ImaKey(ring.description, key.description,
                                entry.key_id.hex() if entry.key_id is not None else None))  # fmt: skip
    return tuple(found)


def _policy() -> tuple[str, str | None]:
    """The policy file's state and, where the kernel lets root read it back, the SHA-256 of the policy."""
    path = Path(IMA_DIR) / "policy"
    if not Path(IMA_DIR).is_dir():
        return PolicyFile.UNKNOWN.value, None
    try:
        st = path.stat()
    except FileNotFoundError:
        return PolicyFile.GONE.value, None
    except OSError:
        return PolicyFile.UNKNOWN.value, None
    if st.st_mode & 0o200:
        return PolicyFile.WRITABLE.value, None
    try:
        text = path.read_bytes()  # CONFIG_IMA_READ_POLICY: the loaded rules
    except OSError:
        return PolicyFile.GONE.value, None
    return PolicyFile.GONE.value, hashlib.sha256(text).hexdigest()


def read_identity() -> HostIdentity:
    uname = os.uname()
    state, digest = _policy()
    return HostIdentity(
        machine_id=_read("/etc/machine-id"),
        boot_id=_read("/proc/sys/kernel/random/boot_id"),
        hostname=uname.nodename,
        kernel_release=uname.release,
        kernel_version=uname.version,
        ima_policy_sha256=digest,
        ima_policy_state=state,
        ima_keys=_ima_keys(),
    )
