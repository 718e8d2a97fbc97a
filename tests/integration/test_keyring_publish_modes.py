"""What imaguard-keyring publishes stays publishable: a revocation list keeps its mode and owner when
revoke replaces it (audit: it became 0600 root:root, so the web server serving it could no longer
read it and the revocation silently never reached hosts), and bundles and their directories are
world-readable whatever the umask (audit: parents 0777 under umask 000, bundles 0600). Root: chown."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from imaguard.digests import HashAlgo
from imaguard.keys import load_certificate, load_private_key
from imaguard.keys.revocation import verify_revocation_list
from imaguard.keys.signer import LocalSigner
from imaguard.packages.model import Evidence, FileKind, InstalledPackage, PackageFile
from imaguard_keyring import ceremony, revocations
from imaguard_keyring.bundles import write_bundle
from imaguard_keyring.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_keyring_ceremony import NOW  # the ceremony tests' clock

KEYS = Path(__file__).resolve().parents[1] / "data" / "keys"
pytestmark = pytest.mark.root


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture(scope="module")
def authority(tmp_path_factory):
    top = tmp_path_factory.mktemp("publish")
    assert main(["ca", "create", "--out", str(top / "ca"), "--key-type", "rsa2048"]) == 0
    return ceremony.load_authority(top / "ca", None)


def test_revoke_keeps_the_published_lists_mode_and_owner(authority, tmp_path):
    rl = tmp_path / "rl.json"
    old = os.umask(0o077)
    try:
        revocations.add_revocation(rl, authority, b"\x00\x00\x00\x01", reason="", subject="", now=NOW, new=True)
    finally:
        os.umask(old)
    assert _mode(rl) == 0o644  # a new list is public whatever the umask
    os.chown(rl, 33, 33)  # www-data serves it
    rl.chmod(0o640)
    revocations.add_revocation(rl, authority, b"\x00\x00\x00\x02", reason="", subject="", now=NOW)
    st = rl.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 33, 33)
    listed = verify_revocation_list(rl.read_bytes(), (authority.cert,), "rl")
    assert listed.key_ids == {b"\x00\x00\x00\x01", b"\x00\x00\x00\x02"}


class _OnePackage:
    """A package source of one package with one trusted file (bundles sign what a source says)."""

    def __init__(self, digest: bytes) -> None:
        self.digest = digest

    def files(self, pkg: InstalledPackage) -> list[PackageFile]:
        return [PackageFile(b"/usr/bin/hello", FileKind.REGULAR, Evidence.REPO_VERIFIED, self.digest,
                            HashAlgo.SHA256)]  # fmt: skip


def test_bundles_and_their_directories_are_world_readable_under_umask_000(tmp_path):
    cert = load_certificate(KEYS / "ima-test-rsa2048.pem")
    key = load_private_key(KEYS / "ima-test-rsa2048.key", None, cert)
    pkg = InstalledPackage("hello", "2.10-3", "amd64", "hello", "2.10-3")
    out = tmp_path / "pub" / "bundles"
    old = os.umask(0)
    try:
        path, n = write_bundle(source=_OnePackage(b"\x11" * 32), pkg=pkg, ima_signer=LocalSigner.from_key(key, cert),  # type: ignore[arg-type]
                               authority_key=key, authority_key_id=cert.key_id, out_dir=out)  # fmt: skip
    finally:
        os.umask(old)
    assert (path, n) == (out / "hello_2.10-3_amd64.bundle", 1)
    assert (_mode(tmp_path / "pub"), _mode(out), _mode(path)) == (0o755, 0o755, 0o644)
