"""What a dry run asks a signature source (``check``), and the bundle location checked up front.

Regressions (audit): the dry run never asked the source, so its plan said ``signed`` where the
real run skipped or refused; ``bundle:/nonexistent`` made every package ``no-bundle``, exit 0.
No root needed: the CLI case fails before the root, any package or file is read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from certlib import pki
from cryptography.hazmat.primitives.asymmetric import rsa

from imaguard.cli.main import main
from imaguard.digests import HashAlgo
from imaguard.errors import UsageError
from imaguard.ima.xattr import ImaSignature
from imaguard.keys import CheckedSigner, LocalSigner, Verifier, load_certificate, load_private_key
from imaguard.packages.model import Evidence, FileKind, InstalledPackage, PackageFile
from imaguard.sign.memo import MemoSigner
from imaguard.sign.sources import BundleSource, LocalSource, NoSignature, VendorSource

KEYS = Path(__file__).resolve().parents[1] / "data" / "keys"
CERT = load_certificate(KEYS / "ima-test-rsa2048.pem")
PKG = InstalledPackage("p", "1", "all")


def _pf(path: bytes, content: bytes, vendor: bytes | None = None) -> PackageFile:
    return PackageFile(path, FileKind.REGULAR, Evidence.REPO_VERIFIED, hashlib.sha256(content).digest(),
                       HashAlgo.SHA256, vendor_signature=vendor)  # fmt: skip


class CountingSigner:
    def __init__(self, inner: LocalSigner) -> None:
        self.inner = inner
        self.calls = 0
        self.key_id = inner.key_id

    def sign_digest(self, algo: HashAlgo, digest: bytes) -> bytes:
        self.calls += 1
        return self.inner.sign_digest(algo, digest)


def _local(signer: LocalSigner) -> tuple[LocalSource, CountingSigner]:
    counting = CountingSigner(signer)
    verifier = Verifier.of([CERT])
    return LocalSource(MemoSigner(CheckedSigner(counting, verifier)), verifier), counting


def test_local_check_signs_once_then_plans_without_signing():
    # The key matches --cert (checked on load): one verified signature shows what every file gets.
    source, counting = _local(LocalSigner.from_key(load_private_key(KEYS / "ima-test-rsa2048.key"), CERT))
    files = [_pf(b"/usr/bin/%d" % i, b"content %d" % i) for i in range(5)]
    for pf in files:
        assert source.check(PKG, pf, pf.digest) is None
    assert counting.calls == 1
    source.signature_for(PKG, files[3], files[3].digest)  # a real run still signs every digest
    assert counting.calls == 2


def test_local_check_refuses_like_the_real_run_while_no_signature_verified():
    wrong = LocalSigner(rsa.generate_private_key(public_exponent=65537, key_size=2048), CERT.key_id)
    source, counting = _local(wrong)
    for i in range(2):
        pf = _pf(b"/usr/bin/p", b"content %d" % i)
        with pytest.raises(NoSignature) as err:
            source.check(PKG, pf, pf.digest)
        assert (err.value.reason, err.value.refuse) == ("local-signature-invalid", True)
    assert counting.calls == 2  # not taken as checked: each file is tried, as the real run would


def test_vendor_check_skips_and_refuses_like_signature_for():
    source = VendorSource(Verifier.of([CERT]))
    unsigned = _pf(b"/usr/bin/p", b"x")
    with pytest.raises(NoSignature) as err:
        source.check(PKG, unsigned, unsigned.digest)
    assert (err.value.reason, err.value.refuse, str(err.value)) == (
        "no-vendor-signature", False, "p=1/all: no vendor signature for b'/usr/bin/p'")
    forged = ImaSignature(HashAlgo.SHA256, CERT.key_id, bytes(256)).to_xattr()
    bad = _pf(b"/usr/bin/p", b"x", forged)
    with pytest.raises(NoSignature) as err:
        source.check(PKG, bad, bad.digest)
    assert (err.value.reason, err.value.refuse) == ("vendor-signature-invalid", True)
    key = LocalSigner.from_key(load_private_key(KEYS / "ima-test-rsa2048.key"), CERT)
    good = ImaSignature(HashAlgo.SHA256, CERT.key_id, key.sign_digest(HashAlgo.SHA256, unsigned.digest)).to_xattr()
    signed = _pf(b"/usr/bin/p", b"x", good)
    assert source.check(PKG, signed, signed.digest) is None


def _bundles(location: str) -> BundleSource:
    return BundleSource(location, (pki().cert("ec_cert"),), Verifier.of([CERT]))


def test_bundle_check_reports_a_missing_bundle_as_the_real_run(tmp_path):
    pf = _pf(b"/usr/bin/p", b"x")
    with pytest.raises(NoSignature) as err:
        _bundles(str(tmp_path)).check(PKG, pf, pf.digest)
    assert (err.value.reason, err.value.refuse, str(err.value)) == ("no-bundle", False, "p=1/all: no bundle p_1_all.bundle")


@pytest.mark.parametrize("location", ["{t}", "file://{t}", "file://localhost{t}", "{t}/", "http://127.0.0.1:1/b",
                                      "https://example.org/b"])
def test_a_directory_or_an_http_url_is_a_bundle_location(tmp_path, location):
    _bundles(location.format(t=tmp_path)).check_location()  # a server is only asked per package


@pytest.mark.parametrize(("location", "reason", "message"), [
    ("{t}/nope", "bundle-location", "bundle location '{t}/nope': {t}/nope: No such file or directory"),
    ("file://{t}/nope", "bundle-location", "bundle location 'file://{t}/nope': {t}/nope: No such file or directory"),
    ("{t}/f", "bundle-location", "bundle location '{t}/f': {t}/f: not a directory"),
    ("{t}/f/sub", "bundle-location", "bundle location '{t}/f/sub': {t}/f/sub: Not a directory"),
    ("ftp://x/b", "usage", "bundle location 'ftp://x/b': use a directory or an http(s) URL"),
    ("file://", "usage", "bundle location 'file://': use a directory or an http(s) URL"),
    ("file://otherhost{t}", "usage",
     "bundle location 'file://otherhost{t}': a file URL of another host (otherhost); use a local directory or an "
     "http(s) URL"),
])  # fmt: skip
def test_anything_else_is_a_usage_error(tmp_path, location, reason, message):
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(UsageError) as err:
        _bundles(location.format(t=tmp_path)).check_location()
    assert (err.value.reason, str(err.value)) == (reason, message.format(t=tmp_path))


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]], ids=["real", "dry-run"])
def test_enroll_from_a_bundle_directory_that_does_not_exist_is_a_usage_error(tmp_path, capsys, dry_run):
    argv = ["enroll", "--source", f"bundle:{tmp_path / 'nope'}", "--cert", str(KEYS / "ima-test-rsa2048.pem"),
            "--authority-cert", str(pki().write(tmp_path, "ec_cert")), "--root", "/nonexistent",
            "--state-dir", str(tmp_path / "state"), *dry_run]  # fmt: skip
    message = f"bundle location '{tmp_path}/nope': {tmp_path}/nope: No such file or directory"
    assert main(argv) == 2
    assert capsys.readouterr() == ("", f"imaguard: error: {message}\n")
    assert main([*argv, "--json"]) == 2
    out, err = capsys.readouterr()
    assert json.loads(out) == {"error": {"reason": "bundle-location", "message": message}}
    assert err == f"imaguard: error: {message}\n"
    assert not (tmp_path / "state").exists()
