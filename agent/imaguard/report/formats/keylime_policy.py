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
- ``excludes``: regular expressions (``re.match`` at the start of the path): the given directories
  that hold no package file, so what no package owns is neither trusted nor failed;
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

from cryptography.hazmat.primitives import serialization

from imaguard.digests import HashAlgo
from imaguard.report.build import usr_aliases

if TYPE_CHECKING:
    from imaguard.keys.material import Certificate
    from imaguard.packages.index import IndexEntry

__all__ = ["POLICY_VERSION", "PolicyStats", "keylime_policy", "unowned_dirs"]

POLICY_VERSION = 1


@dataclass(frozen=True, slots=True)
class PolicyStats:
    files: int  # index rows read
    paths: int  # distinct paths in ``digests`` (aliases counted)
    skipped_weak: int  # rows whose digest is not SHA-256 (dpkg md5sums): never put into a policy


def _key(path: bytes) -> str:
    return path.decode("utf-8", "surrogateescape").replace(" ", "_")


def _prefixes(path: bytes, into: set[bytes]) -> None:
    """Add the first two directory levels of ``path`` ("/usr", "/usr/local") to ``into``."""
    parts = path.split(b"/", 3)
    if len(parts) >= 3:
        into.add(b"/" + parts[1])
        if len(parts) == 4:
            into.add(b"/" + parts[1] + b"/" + parts[2])


def unowned_dirs(candidates: Iterable[str], prefixes: set[bytes]) -> list[str]:
    """The candidate directories (one or two levels deep) under which no package file lies."""
    return sorted(c.rstrip("/") for c in candidates if c.rstrip("/").encode() not in prefixes)


def _keyring_json(certs: Sequence[Certificate]) -> str:
    if not certs:
        return ""
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    doc = {
        "keyids": [int.from_bytes(c.key_id, "big") for c in certs],
        "pubkeys": [base64.b64encode(c.public_key.public_bytes(serialization.Encoding.DER, spki)).decode()
                    for c in certs],
    }  # fmt: skip
    return json.dumps(doc)


def keylime_policy(
    files: Iterable[IndexEntry],
    *,
    certificates: Sequence[Certificate] = (),
    exclude_candidates: Sequence[str] = (),
    boot_aggregate: str | None = None,
    timestamp: str = "",
) -> tuple[dict[str, Any], PolicyStats]:
    """The policy and what went into it; ``exclude_candidates`` holding no package file become excludes."""
    digests: dict[str, set[str]] = {}
    prefixes: set[bytes] = set()
    rows = weak = 0
    for f in files:
        rows += 1
        for alias in usr_aliases(f.path):
            _prefixes(alias, prefixes)
            if f.algo is not HashAlgo.SHA256:
                continue
            digests.setdefault(_key(alias), set()).add(f.digest.hex())
        weak += f.algo is not HashAlgo.SHA256
    if boot_aggregate:
        digests.setdefault("boot_aggregate", set()).add(boot_aggregate)
    keyrings = {"_ima": sorted({hashlib.sha256(c.der).hexdigest() for c in certificates})} if certificates else {}
    policy: dict[str, Any] = {
        "meta": {"version": POLICY_VERSION, "generator": 0, **({"timestamp": timestamp} if timestamp else {})},
        "release": 0,
        "digests": {path: sorted(v) for path, v in sorted(digests.items())},
        "excludes": [f"^{re.escape(d)}/" for d in unowned_dirs(exclude_candidates, prefixes)],
        "keyrings": keyrings,
        "ima": {"ignored_keyrings": [], "log_hash_alg": "sha1", "dm_policy": None},
        "ima-buf": {},
        "verification-keys": _keyring_json(certificates),
    }
    return policy, PolicyStats(rows, len(digests), weak)
