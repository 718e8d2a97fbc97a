"""Produce signature bundles from package truth (minimal producer; the full authority comes later).

The authority signs only digests that its own package source marks ``repo-verified`` or
``vendor-signed``: a file known only from a local database never gets a bundle entry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imaguard.digests import HashAlgo
from imaguard.errors import HostStateError
from imaguard.fsio import ensure_directory, write_atomically
from imaguard.ima.xattr import ImaSignature
from imaguard.sign.bundle import bundle_name, make_bundle

if TYPE_CHECKING:
    from pathlib import Path

    from imaguard.keys.material import PrivateKey
    from imaguard.keys.signer import LocalSigner
    from imaguard.packages.model import InstalledPackage, PackageSource

__all__ = ["write_bundle"]

# Bundles are public (hosts fetch them over HTTP; the DSSE signature is their protection): readable
# by all, like the directories made for them, whatever the umask.
_BUNDLE_MODE = 0o644
_DIR_MODE = 0o755


def write_bundle(
    *,
    source: PackageSource,
    pkg: InstalledPackage,
    ima_signer: LocalSigner,
    authority_key: PrivateKey,
    authority_key_id: bytes,
    out_dir: Path,
) -> tuple[Path, int]:
    """Sign every trusted SHA-256 of ``pkg`` with the IMA key; wrap them in a DSSE-signed bundle."""
    entries: list[tuple[bytes, bytes, bytes]] = []
    for pf in source.files(pkg):
        if pf.digest is None or pf.digest_algo is not HashAlgo.SHA256 or not pf.evidence.trusted:
            continue
        sig = ImaSignature(HashAlgo.SHA256, ima_signer.key_id, ima_signer.sign_digest(HashAlgo.SHA256, pf.digest))
        entries.append((pf.path, pf.digest, sig.to_xattr()))
    env = make_bundle(pkg, entries, authority_key, authority_key_id)
    path = out_dir / bundle_name(pkg)
    try:
        ensure_directory(out_dir, _DIR_MODE, _DIR_MODE)
        write_atomically(path, env.to_json(), _BUNDLE_MODE)
    except OSError as exc:
        raise HostStateError(f"{exc.filename or path}: cannot write: {exc.strerror}", reason="state-write",
                             errno=exc.errno, path=str(path)) from exc  # fmt: skip
    return path, len(entries)
