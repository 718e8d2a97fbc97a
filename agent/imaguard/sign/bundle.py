"""Signature bundles (pure): one per package version, every file's path, SHA-256 and IMA signature,
signed as a DSSE envelope by the fleet's signing authority (DESIGN.md §1.3).

Payload (JSON, ``payloadType`` = ``BUNDLE_PAYLOAD_TYPE``)::

    {"schema": "imaguard-bundle/1",
     "package": {"name": "coreutils", "version": "9.1-1", "architecture": "amd64"},
     "files": [{"path_b64": "<base64 of the path bytes>", "sha256": "<hex>", "ima": "<hex security.ima>"}]}

Paths are bytes end to end, hence base64. A bundle only helps a host whose package metadata
already vouches for the same SHA-256: enrollment checks both, and the IMA signature itself.
"""

from __future__ import annotations

import base64
import binascii
import json
import urllib.parse
from dataclasses import dataclass

from imaguard import strictjson
from imaguard.errors import FormatError
from imaguard.ima.xattr import ImaSignature, parse_xattr
from imaguard.keys.dsse import Envelope, sign_envelope
from imaguard.keys.material import PrivateKey
from imaguard.packages.model import InstalledPackage

__all__ = ["BUNDLE_PAYLOAD_TYPE", "BUNDLE_SCHEMA", "Bundle", "BundleFile", "bundle_name", "make_bundle"]

BUNDLE_PAYLOAD_TYPE = "application/vnd.imaguard.signature-bundle+json"
BUNDLE_SCHEMA = "imaguard-bundle/1"


def bundle_name(pkg: InstalledPackage) -> str:
    """File name of a package version's bundle; epochs' ``:`` and other specials are %-quoted."""
    parts = (pkg.name, pkg.version, pkg.architecture)
    return "_".join(urllib.parse.quote(p, safe="+.~-") for p in parts) + ".bundle"


@dataclass(frozen=True, slots=True)
class BundleFile:
    path: bytes
    sha256: bytes
    signature: ImaSignature

    def __post_init__(self) -> None:
        if len(self.sha256) != 32:
            raise FormatError(f"{self.path!r}: bundle sha256 must be 32 bytes")


@dataclass(frozen=True, slots=True)
class Bundle:
    """A verified bundle. Entries stay as the payload's text until ``entry`` is asked for one: a
    package's bundle lists every file, enrollment needs only those it writes, and parsing each
    signature up front was most of the cost of loading a bundle. A malformed entry is an error of
    that entry (``entry`` raises FormatError), found when its file is labelled."""

    name: str
    version: str
    architecture: str
    _entries: dict[bytes, tuple[str, str]]  # path -> (sha256 hex, security.ima hex)

    def matches(self, pkg: InstalledPackage) -> bool:
        return (self.name, self.version, self.architecture) == (pkg.name, pkg.version, pkg.architecture)

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, path: bytes) -> BundleFile | None:
        """The entry for ``path``, None when the bundle does not list it; FormatError when malformed."""
        raw = self._entries.get(path)
        if raw is None:
            return None
        sha_hex, ima_hex = raw
        try:
            sig = parse_xattr(bytes.fromhex(ima_hex))
            digest = bytes.fromhex(sha_hex)
        except ValueError as exc:
            raise FormatError(f"{path!r}: malformed bundle entry ({exc})") from exc
        if not isinstance(sig, ImaSignature):
            raise FormatError(f"{path!r}: bundle entry is not an IMA signature")
        return BundleFile(path, digest, sig)

    @classmethod
    def from_payload(cls, payload: bytes, source: str) -> Bundle:
        """Parse a payload whose envelope was already verified (never call it on unverified bytes)."""
        try:
            doc = strictjson.loads(payload)
            if doc["schema"] != BUNDLE_SCHEMA:
                raise FormatError(f"{source}: bundle schema {doc['schema']!r}, expected {BUNDLE_SCHEMA!r}")
            pkg = doc["package"]
            entries: dict[bytes, tuple[str, str]] = {}
            for item in doc["files"]:
                sha_hex, ima_hex = item["sha256"], item["ima"]
                if not isinstance(sha_hex, str) or not isinstance(ima_hex, str):
                    raise FormatError(f"{source}: bundle entry digests must be hex strings")
                entries[binascii.a2b_base64(item["path_b64"], strict_mode=True)] = (sha_hex, ima_hex)
            return cls(str(pkg["name"]), str(pkg["version"]), str(pkg["architecture"]), entries)
        except FormatError:
            raise
        except (ValueError, KeyError, TypeError, binascii.Error, RecursionError) as exc:
            raise FormatError(f"{source}: malformed bundle payload ({exc!r})") from exc


def make_bundle(
    pkg: InstalledPackage, entries: list[tuple[bytes, bytes, bytes]], key: PrivateKey, key_id: bytes
) -> Envelope:
    """Sign a bundle of (path, sha256, security.ima value) for ``pkg`` with the authority key."""
    doc = {
        "schema": BUNDLE_SCHEMA,
        "package": {"name": pkg.name, "version": pkg.version, "architecture": pkg.architecture},
        "files": [
            {"path_b64": base64.b64encode(p).decode(), "sha256": d.hex(), "ima": v.hex()}
            for p, d, v in sorted(entries)
        ],
    }
    payload = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return sign_envelope(BUNDLE_PAYLOAD_TYPE, payload, key, key_id)
