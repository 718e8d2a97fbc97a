"""Who this host is, for the report: machine id, boot id, kernel, IMA policy and IMA keys.

The IMA keys and the readable policy come from :func:`imaguard.ima.probe.read_kernel_facts` (the
same facts ``imaguard doctor`` shows); this module only adds the identifiers and hashes the policy.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from imaguard.ima.hostfacts import IMA_KEYRING, TRUSTED_IMA_KEYRING
from imaguard.ima.probe import read_kernel_facts

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


def read_identity() -> HostIdentity:
    facts = read_kernel_facts(with_xattrs=False)
    uname = os.uname()
    policy = facts.policy_text
    keys = tuple(
        ImaKey(k.keyring, k.description, k.key_id.hex() if k.key_id is not None else None)
        for k in facts.keyring_keys
        if k.keyring in (IMA_KEYRING, TRUSTED_IMA_KEYRING)
    )
    return HostIdentity(
        machine_id=_read("/etc/machine-id"),
        boot_id=_read("/proc/sys/kernel/random/boot_id"),
        hostname=uname.nodename,
        kernel_release=uname.release,
        kernel_version=uname.version,
        ima_policy_sha256=hashlib.sha256(policy.encode()).hexdigest() if policy is not None else None,
        ima_policy_state=facts.policy_file.value,
        ima_keys=keys,
    )
