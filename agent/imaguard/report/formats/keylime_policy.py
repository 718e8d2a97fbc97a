"""A Keylime runtime policy (format version 1) from the digest index of installed packages (pure).

Schema as Keylime 7.14 reads it (``keylime/ima/ima.py`` ``RUNTIME_POLICY_SCHEMA``,
``keylime/ima/types.py`` ``RuntimePolicyType``):

- ``meta``: ``version`` 1, ``generator`` (``RUNTIME_POLICY_GENERATOR``: 0 Unknown, 1 EmptyAllowList,
  2 CompatibleAllowList, 3 LegacyAllowList; nothing else validates, so 0), ``timestamp``;
- ``release``: 0;
- ``digests``: path -> [lowercase hex digests], compared with the file digest of ``ima-ng``/``ima-sig``
  entries. Every trusted SHA-256 digest of a package file, under both merged-/usr names (dpkg says
  ``/bin/ls``, the kernel logs ``/usr/bin/ls``); spaces become ``_`` as Keylime's own generator does;
  ``boot_aggregate`` when the report's log gives one;
- ``excludes``: regular expressions (``re.match`` at the start of the path): the directories the
  caller found to hold no package file, so what no package owns is neither trusted nor failed;
- ``keyrings``: keyring -> digests of the certificates the kernel may measure into it (KEY_CHECK);
- ``ima``: ``ignored_keyrings``, ``log_hash_alg`` (the template-hash algorithm of the ASCII log: sha1),
  ``dm_policy`` null;
- ``ima-buf``: {} (no critical data is trusted by package truth);
- ``verification-keys``: a JSON *string* of one Keylime ``ImaKeyring`` (``keyids`` as integers,
  ``pubkeys`` as base64 SubjectPublicKeyInfo DER): the IMA certificates; a file whose ``ima-sig``
  signature verifies with one of them is accepted even if its digest is not listed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from imaguard.report.paths import usr_aliases

if TYPE_CHECKING:
    from imaguard.keys.material import Certificate

__all__ = ["POLICY_VERSION", "PolicyStats", "excludes", "keylime_policy"]

POLICY_VERSION = 1


@dataclass(frozen=True, slots=True)
class PolicyStats:
    files: int  # package files with a SHA-256 digest read from the index
    paths: int  # distinct paths in ``digests`` (both merged-/usr names counted)
    skipped_weak: int  # package files whose only digest is not SHA-256 (dpkg md5sums): never put into a policy


def _key(path: bytes) -> str:
    return path.decode("utf-8", "surrogateescape").replace(" ", "_")


def excludes(dirs: Iterable[str]) -> list[str]:
    """Keylime exclude expressions (``re.match``: anchored at the start) for whole directories."""
    return [f"^{re.escape(d.rstrip('/'))}/" for d in sorted(dirs)]


def _keyring_json(certs: Sequence[Certificate]) -> str:
    if not certs:
        return ""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - only with certificates

    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    doc = {
        "keyids": [int.from_bytes(c.key_id, "big") for c in certs],
        "pubkeys": [base64.b64encode(c.public_key.public_bytes(serialization.Encoding.DER, spki)).decode()
                    for c in certs],
    }  # fmt: skip
    return json.dumps(doc)


def keylime_policy(
    rows: Iterable[tuple[bytes, bytes]],
    *,
    skipped_weak: int = 0,
    certificates: Sequence[Certificate] = (),
    exclude_dirs: Iterable[str] = (),
    boot_aggregate: str | None = None,
    timestamp: str = "",
) -> tuple[dict[str, Any], PolicyStats]:
    """The policy from (path, SHA-256 digest) rows of the digest index, and what went into it."""
    digests: dict[str, list[str]] = {}
    n = 0
    for path, digest in rows:
        n += 1
        hexd = digest.hex()
        for alias in usr_aliases(path):
            key = _key(alias)
            have = digests.get(key)
            if have is None:
                digests[key] = [hexd]
            elif hexd not in have:
                have.append(hexd)
    if boot_aggregate:
        digests.setdefault("boot_aggregate", []).append(boot_aggregate)
    for values in digests.values():
        values.sort()
    keyrings = {"_ima": sorted({hashlib.sha256(c.der).hexdigest() for c in certificates})} if certificates else {}
    policy: dict[str, Any] = {
        "meta": {"version": POLICY_VERSION, "generator": 0, **({"timestamp": timestamp} if timestamp else {})},
        "release": 0,
        "digests": dict(sorted(digests.items())),
        "excludes": excludes(exclude_dirs),
        "keyrings": keyrings,
        "ima": {"ignored_keyrings": [], "log_hash_alg": "sha1", "dm_policy": None},
        "ima-buf": {},
        "verification-keys": _keyring_json(certificates),
    }
    return policy, PolicyStats(n, len(digests), skipped_weak)
