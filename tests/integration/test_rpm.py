"""RpmSource against real RPMs: built with rpmbuild, signed with rpmsign, installed with ``rpm --root``.

How the per-file IMA signatures are made: Debian's rpm 4.18 is built without ima-evm-utils, so
``rpmsign --signfiles`` is an unknown option. The test does what it would do, by honest other
means: every regular file of the payload (read back with ``rpm2archive``) is signed by Debian's
``evmctl ima_sign --sigfile`` (the same libimaevm signing rpmsign links to), and the values go,
lowercase hex, one per file in header order, into the *signature* header as
``RPMSIGTAG_FILESIGNATURES`` (274) and ``RPMSIGTAG_FILESIGNATURELENGTH`` (275) — exactly where
rpmsign 4.18 ``rpmSignFiles`` puts them. The main header is untouched, so its signature and
digests stay valid (checked with ``rpm -K``); ``rpm -i`` merges the tags into the installed header.

rpmbuild refuses newlines in file names ("Illegal character (0xa) in filename"), so the bytes
round trip is shown with a space and a non-UTF-8 byte (``_invalid_encoding_terminates_build 0``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sqlite3
import stat
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest
from rootlib import run

from imaguard.cli.main import main
from imaguard.digests import HashAlgo
from imaguard.errors import UsageError
from imaguard.ima.xattr import ImaSignature, parse_xattr
from imaguard.keys import Verifier, load_certificate
from imaguard.packages import Evidence, FileKind, open_source
from imaguard.packages.rpm import HeaderTrust, RpmSource

pytestmark = pytest.mark.root

import rpm  # noqa: E402 - python3-rpm, installed by scripts/setup.sh; missing is a failure, not a skip

DBPATH = "/var/lib/rpm"
# name -> (rpmbuild digest algorithm (OpenPGP id), signing key or None, vendor IMA signatures)
PACKAGES = {
    "ig-signed": (8, "trusted", True),
    "ig-sha512": (10, "trusted", False),
    "ig-md5": (1, "trusted", False),
    "ig-unsigned": (8, None, False),
    "ig-stranger": (8, "stranger", False),
    "ig-tampered": (8, "trusted", False),
    "ig-dribble": (8, "trusted", False),
    "ig-badsig": (8, "trusted", True),
}
CONTENT = {
    b"/usr/bin/NAME": b"\x7fELF binary-ish \x00\x01\x02\xff" * 64,
    b"/etc/NAME.conf": b"key=value\n",
    b"/usr/share/doc/NAME/README": b"read me\n",
    b"/usr/share/NAME/with space": b"space\n",
    b"/usr/share/NAME/caf\xe9": b"latin-1 name\n",
}
SPEC = """\
Name: {name}
Version: 1.0
Release: 3
Epoch: 2
Summary: imaguard rpm test package
License: MIT
Vendor: imaguard test vendor
BuildArch: noarch
%description
imaguard test package.
%install
mkdir -p %{{buildroot}}/usr/bin %{{buildroot}}/etc %{{buildroot}}/usr/share/doc/{name} %{{buildroot}}/usr/share/{name}
printf '{binary}' > %{{buildroot}}/usr/bin/{name}
chmod 0755 %{{buildroot}}/usr/bin/{name}
printf 'key=value\\n' > %{{buildroot}}/etc/{name}.conf
printf 'read me\\n' > %{{buildroot}}/usr/share/doc/{name}/README
printf 'space\\n' > "%{{buildroot}}/usr/share/{name}/with space"
printf 'latin-1 name\\n' > "%{{buildroot}}/usr/share/{name}/caf$(printf '\\351')"
ln -s ../../bin/{name} %{{buildroot}}/usr/share/{name}/link
%files
%attr(0755,root,root) /usr/bin/{name}
%config(noreplace) /etc/{name}.conf
%doc /usr/share/doc/{name}/README
%dir /usr/share/{name}
/usr/share/{name}/*
%ghost /var/log/{name}.log
"""


def _printf_escape(data: bytes) -> str:
    return "".join(f"\\{b:03o}" for b in data)


def _content(name: str) -> dict[bytes, bytes]:
    return {path.replace(b"NAME", name.encode()): data for path, data in CONTENT.items()}


# --- signature header editing (what rpmsign --signfiles would have done) ----------------------

_ENTRY = struct.Struct(">IIiI")
_HEADER_MAGIC = b"\x8e\xad\xe8\x01\x00\x00\x00\x00"
_ALIGN = {3: 2, 4: 4, 5: 8}


def _read_entries(buf: bytes, start: int) -> tuple[list[tuple[int, int, int, bytes]], int]:
    """(tag, type, count, data) of a header at ``start`` (with magic), and the offset after it."""
    assert buf[start : start + 8] == _HEADER_MAGIC
    il, dl = struct.unpack_from(">II", buf, start + 8)
    index = start + 16
    data = buf[index + 16 * il : index + 16 * il + dl]
    raw = [_ENTRY.unpack_from(buf, index + 16 * i) for i in range(il)]
    offsets = sorted({off for _t, _y, off, _c in raw if off >= 0} | {dl})
    entries = []
    for tag, typ, off, count in raw[1:]:  # raw[0] is the region tag
        end = offsets[offsets.index(off) + 1]
        entries.append((tag, typ, count, data[off:end]))
    return entries, index + 16 * il + dl


def _write_signature_header(entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """A signature header whose region (HEADERSIGNATURES, 62) covers every entry, padded to 8."""
    entries = sorted(entries)
    il = len(entries) + 1
    data = b""
    index = []
    for tag, typ, count, value in entries:
        # Values keep any padding that followed them: harmless bytes past their count.
        data += b"\0" * (-len(data) % _ALIGN.get(typ, 1))
        index.append(_ENTRY.pack(tag, typ, len(data), count))
        data += value
    region = _ENTRY.pack(62, 7, len(data), 16)
    data += _ENTRY.pack(62, 7, -16 * il, 16)
    header = _HEADER_MAGIC + struct.pack(">II", il, len(data)) + region + b"".join(index) + data
    return header + b"\0" * (-len(header) % 8)


def add_file_signatures(package: Path, signatures: list[bytes]) -> None:
    """Put FILESIGNATURES (hex, one per file, "" for none) into the signature header of ``package``."""
    buf = package.read_bytes()
    entries, end = _read_entries(buf, 96)
    end += -end % 8
    entries = [e for e in entries if e[0] not in (274, 275)]
    hexes = [s.hex().encode() for s in signatures]
    entries.append((274, 8, len(hexes), b"".join(h + b"\0" for h in hexes)))
    entries.append((275, 4, 1, struct.pack(">I", max(len(s) for s in signatures))))
    package.write_bytes(buf[:96] + _write_signature_header(entries) + buf[end:])


# --- fixtures -----------------------------------------------------------------------------------


def _gpg_key(home: Path, name: str) -> Path:
    params = f"%no-protection\nKey-Type: RSA\nKey-Length: 2048\nName-Real: {name}\nExpire-Date: 0\n%commit\n"
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--gen-key"], input=params, text=True,
                   capture_output=True, check=True)
    pub = home / f"{name.replace(' ', '-')}.asc"
    pub.write_bytes(run(["gpg", "--homedir", str(home), "--armor", "--export", name]).stdout.encode())
    return pub


def _run(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """Like rootlib.run, but bytes: rpm prints file names that are not UTF-8."""
    proc = subprocess.run(argv, capture_output=True, check=False, timeout=300)
    if check and proc.returncode != 0:
        pytest.fail(f"{argv} exited {proc.returncode}: {proc.stderr.decode(errors='replace')}")
    return proc


def _rpm(*args: str, root: Path, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """rpm on a test root; every rpm-family call names its database, so the host's (~/.rpmdb) is never made."""
    argv = ["rpm", "--root", str(root), "--dbpath", DBPATH, *args]
    proc = subprocess.run(argv, capture_output=True, check=False, timeout=120)
    if check and proc.returncode != 0:
        pytest.fail(f"{argv} exited {proc.returncode}: {proc.stderr.decode(errors='replace')}")
    return proc


def _sign_payload(package: Path, work: Path, evmctl: str, key, files: list[bytes]) -> list[bytes]:
    """evmctl signatures of the payload's regular files, in header file order ("" for the others)."""
    run(["rpm2archive", str(package)])
    members = {}
    with tarfile.open(f"{package}.tgz") as tar:
        for m in tar:
            if m.isfile():
                members[os.fsencode(m.name[1:])] = tar.extractfile(m).read()  # type: ignore[union-attr]
    sigs = []
    for i, path in enumerate(files):
        if path not in members:
            sigs.append(b"")
            continue
        scratch = work / f"file{i}"
        scratch.write_bytes(members[path])
        run([evmctl, "ima_sign", "--sigfile", "--hashalgo", "sha256", "--key", str(key.key),
             "--keyid-from-cert", str(key.cert_der), str(scratch)])
        sigs.append(Path(f"{scratch}.sig").read_bytes())
    return sigs


@pytest.fixture(scope="module")
def lab(tmp_path_factory, keypair, evmctl):
    """One rpm root holding every test package, and what each package looked like before install."""
    top = tmp_path_factory.mktemp("rpm")
    scratch = top / "scratch"  # an empty root for rpm's queries of package files
    scratch.mkdir()
    gnupg = top / "gnupg"
    gnupg.mkdir(mode=0o700)
    keys = {"trusted": _gpg_key(gnupg, "imaguard trusted"), "stranger": _gpg_key(gnupg, "imaguard stranger")}
    ima_key = keypair("rsa2048", "rpm-vendor")
    root = top / "root"
    root.mkdir()
    _rpm("--initdb", root=root)
    _rpm("--import", str(keys["trusted"]), root=root)
    built = {}
    try:
        for name, (algo, signer, vendor) in PACKAGES.items():
            spec = top / f"{name}.spec"
            spec.write_text(SPEC.format(name=name, binary=_printf_escape(_content(name)[f"/usr/bin/{name}".encode()])))
            _run(["rpmbuild", "-bb", "--define", f"_topdir {top / 'build'}", "--define", f"_dbpath {scratch}/db",
                 "--define", "_invalid_encoding_terminates_build 0",
                 "--define", f"_binary_filedigest_algorithm {algo}", str(spec)])
            package = top / "build" / "RPMS" / "noarch" / f"{name}-1.0-3.noarch.rpm"
            if signer:
                _run(["rpmsign", "--addsign", "--define", f"_dbpath {scratch}/db", "--define", f"_gpg_name imaguard {signer}",
                     "--define", "__gpg /usr/bin/gpg", "--define", f"_gpg_path {gnupg}",
                     str(package)])
            files = _rpm("-qp", "--qf", "[%{FILENAMES}\n]", str(package), root=scratch).stdout.splitlines()
            sigs = _sign_payload(package, top, evmctl, ima_key, files) if vendor else []
            if name == "ig-badsig":
                sigs[files.index(f"/usr/bin/{name}".encode())] = b"\x03\x02\x04\x00\x00"  # truncated header
            if sigs:
                add_file_signatures(package, sigs)
                # rpm itself still accepts the package: header signature and every digest verify.
                checked = _rpm("-Kv", str(package), root=root).stdout.decode()
                assert "Signature, key ID" in checked, checked
                assert "NOKEY" not in checked, checked
                assert "BAD" not in checked, checked
            # --excludedocs on one package: its doc file is recorded as not installed (FILESTATES).
            extra = ["--excludedocs"] if name == "ig-sha512" else []
            _rpm("-i", "--nodeps", "--noplugins", *extra, str(package), root=root)
            built[name] = {"files": files, "sigs": sigs}
    finally:
        subprocess.run(["gpgconf", "--homedir", str(gnupg), "--kill", "all"], check=False, capture_output=True)
    return {"root": root, "top": top, "built": built, "ima_key": ima_key, "keys": keys}


def _db_rows(root: Path, name: str) -> tuple[sqlite3.Connection, int, bytes]:
    hnum = int(_rpm("-q", "--qf", "%{DBINSTANCE}", name, root=root).stdout)
    db = sqlite3.connect(root / DBPATH.lstrip("/") / "rpmdb.sqlite")
    (blob,) = db.execute("SELECT blob FROM Packages WHERE hnum = ?", (hnum,)).fetchone()
    return db, hnum, blob


@pytest.fixture(scope="module")
def source(lab):
    root = lab["root"]
    # Tamper after install, as an attacker with write access to the rpmdb would.
    db, hnum, blob = _db_rows(root, "ig-tampered")
    digest = hashlib.sha256(_content("ig-tampered")[b"/usr/bin/ig-tampered"]).hexdigest().encode()
    assert blob.count(digest) == 1
    flipped = (b"0" if digest[:1] != b"0" else b"1") + digest[1:]
    _update(db, hnum, blob.replace(digest, flipped))
    db, hnum, blob = _db_rows(root, "ig-dribble")
    _update(db, hnum, _append_dribble_digests(blob, b"f" * 64, 8))
    # The image's rpmdb imported the trusted key, but an image never vouches for itself: the
    # verifier names its anchor (--trusted-keyring), as a fleet would with its vendor's key.
    return RpmSource(root, lab["top"] / "state", [lab["keys"]["trusted"]])


def _update(db: sqlite3.Connection, hnum: int, blob: bytes) -> None:
    with db:
        db.execute("UPDATE Packages SET blob = ? WHERE hnum = ?", (blob, hnum))
    db.close()


def _append_dribble_digests(blob: bytes, forged: bytes, n: int) -> bytes:
    """Add an unsigned FILEDIGESTS (1035) entry after the region: rpm's API then reports it."""
    il, dl = struct.unpack_from(">II", blob)
    index, data = blob[8 : 8 + 16 * il], blob[8 + 16 * il :]
    value = b"".join(forged + b"\0" for _ in range(n))
    return struct.pack(">II", il + 1, dl + len(value)) + index + _ENTRY.pack(1035, 8, dl, n) + data + value


def _query(root: Path, name: str) -> list[list[bytes]]:
    fmt = "[%{FILENAMES}\t%{FILEDIGESTS}\t%{FILEFLAGS}\t%{FILEMODES}\t%{FILELINKTOS}\t%{FILESIGNATURES}\n]"
    return [line.split(b"\t") for line in _rpm("-q", "--qf", fmt, name, root=root).stdout.splitlines()]


def _files(source, name):
    return {f.path: f for f in source.files(source.package(name))}


# --- tests --------------------------------------------------------------------------------------


def test_open_source_detects_rpm_root(lab, source):
    assert isinstance(open_source(lab["root"], lab["top"] / "state"), RpmSource)
    assert source.kind == "rpm"


def test_an_image_never_vouches_for_its_own_headers(lab):
    """The image's rpmdb holds the signing key (rpm --import), yet without --trusted-keyring its
    headers are checked against this host's rpm keyring (empty on this Debian host): not verified.
    Audit: the image's own gpg-pubkey entries made its packages repo-verified."""
    own = RpmSource(lab["root"], lab["top"] / "state")
    assert own.header_trust(own.package("ig-signed")) == HeaderTrust(verified=False, reason="header-key-unknown")
    assert {f.evidence for f in _files(own, "ig-signed").values() if f.digest} == {Evidence.LOCAL_DB}
    stranger = RpmSource(lab["root"], lab["top"] / "state", [lab["keys"]["stranger"]])
    assert stranger.header_trust(stranger.package("ig-signed")).reason == "header-key-unknown"
    assert stranger.header_trust(stranger.package("ig-stranger")).verified


def test_the_host_rpm_keyring_is_not_chosen_by_home(lab, tmp_path, monkeypatch):
    """Review: rpm's own %_dbpath is ~/.rpmdb on Debian, so an inherited HOME (sudo -E) holding the
    image's key made the image's headers verify. The host rpmdb is found where distributions keep it."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    _run(["rpm", "--dbpath", str(home / ".rpmdb"), "--initdb"])
    _run(["rpm", "--dbpath", str(home / ".rpmdb"), "--import", str(lab["keys"]["trusted"])])
    own = RpmSource(lab["root"], lab["top"] / "state")
    assert own.header_trust(own.package("ig-signed")) == HeaderTrust(verified=False, reason="header-key-unknown")
    # The premise: rpm's default view of "the host" is that HOME rpmdb, whose key verifies the header.
    premise = RpmSource(lab["root"], lab["top"] / "state")
    premise._check_ts.setKeyring(rpm.TransactionSet("/").getKeyring())  # the anchor before the review
    assert premise.header_trust(premise.package("ig-signed")).verified


def test_trusted_keyring_for_rpm_must_be_armored_public_keys(lab, tmp_path):
    binary = tmp_path / "k.gpg"
    binary.write_bytes(b"\x99\x01\x0d" + bytes(40))
    with pytest.raises(UsageError) as err:
        RpmSource(lab["root"], lab["top"] / "state", [binary])
    assert str(err.value) == f"{binary}: no ASCII-armored public key block (rpm needs `gpg --armor --export` output)"
    bad = tmp_path / "bad.asc"
    bad.write_bytes(b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nAAAA\n-----END PGP PUBLIC KEY BLOCK-----\n")
    with pytest.raises(UsageError, match=rf"^{bad}: not an OpenPGP public key rpm can read"):
        RpmSource(lab["root"], lab["top"] / "state", [bad])


def test_packages_listed_sorted_with_identity(source):
    pkgs = list(source.packages())
    assert [p.name for p in pkgs] == sorted(PACKAGES)  # gpg-pubkey pseudo-packages are not packages
    p = source.package("ig-signed")
    assert (p.version, p.architecture, p.source_name, p.source_version) == ("2:1.0-3", "noarch", "ig-signed", "1.0-3")
    assert source.package("ig-signed.noarch") == source.package("ig-signed-2:1.0-3") == p
    # The vendor is named only when the header that says so verified.
    assert p.origin == "imaguard test vendor"
    assert source.package("ig-unsigned").origin == ""


def test_verified_bytes_are_the_stored_bytes(lab):
    """hdr.unload() returns the rpmdb's blob byte for byte, so rpm checks what is really stored."""
    db, _hnum, stored = _db_rows(lab["root"], "ig-signed")
    db.close()
    rpm.addMacro("_dbpath", DBPATH)
    try:
        ts = rpm.TransactionSet(str(lab["root"]), rpm.RPMVSF_NOHDRCHK)
        ts.openDB()
    finally:
        rpm.delMacro("_dbpath")
    (hdr,) = list(ts.dbMatch("name", "ig-signed"))
    assert bytes(hdr.unload()) == stored
    ts.closeDB()


def test_unknown_package_is_not_installed(source):
    with pytest.raises(Exception, match="not installed") as info:
        source.package("ig-absent")
    assert info.value.reason == "not-installed"


def test_signed_header_files_read_back_exactly(lab, source):
    """Digests, algorithm, flags, modes, link targets and signatures equal rpm's own query and the content."""
    root, name = lab["root"], "ig-signed"
    files = _files(source, name)
    rows = _query(root, name)
    assert set(files) == {r[0] for r in rows}
    content = _content(name)
    for path, digest_hex, flags, mode, link, sig_hex in rows:
        f = files[path]
        assert f.mode == int(mode) & 0xFFFF
        assert (f.config, f.doc, f.ghost) == (bool(int(flags) & 1), bool(int(flags) & 2), bool(int(flags) & 64))
        assert f.link_target == (link or None)
        if path in content:
            assert f.digest is not None
            assert f.digest.hex().encode() == digest_hex
            assert f.digest == hashlib.sha256(content[path]).digest()
            assert f.digest == hashlib.sha256((root / path.decode("utf-8", "surrogateescape").lstrip("/")).read_bytes()).digest()
            assert f.digest_algo is HashAlgo.SHA256
            assert f.kind is FileKind.REGULAR
            assert f.evidence is Evidence.VENDOR_SIGNED, f
            assert f.vendor_signature is not None
            assert f.vendor_signature.hex().encode() == sig_hex
        else:
            assert f.digest is None
            assert f.evidence is Evidence.NONE
    b = files[b"/usr/bin/ig-signed"]
    assert (b.mode, b.config, b.doc) == (0o100755, False, False)
    assert files[b"/etc/ig-signed.conf"].config
    assert files[b"/usr/share/doc/ig-signed/README"].doc
    link = files[b"/usr/share/ig-signed/link"]
    assert (link.kind, link.link_target, link.evidence_reason) == (FileKind.SYMLINK, b"../../bin/ig-signed", "not-regular-file")
    ghost = files[b"/var/log/ig-signed.log"]
    assert (ghost.ghost, ghost.evidence, ghost.evidence_reason) == (True, Evidence.NONE, "ghost")
    assert files[b"/usr/share/ig-signed"].kind is FileKind.DIRECTORY
    assert b"/usr/share/ig-signed/caf\xe9" in files
    assert b"/usr/share/ig-signed/with space" in files


def test_vendor_signatures_verify_over_trusted_digest(lab, source):
    verifier = Verifier.of([load_certificate(lab["ima_key"].cert_pem)])
    signed = [f for f in source.files(source.package("ig-signed")) if f.evidence is Evidence.VENDOR_SIGNED]
    assert len(signed) == len(CONTENT)
    for f in signed:
        assert f.vendor_signature is not None
        assert f.digest is not None
        assert f.digest_algo is not None
        sig = parse_xattr(f.vendor_signature)
        assert isinstance(sig, ImaSignature)
        assert sig.keyid.hex() == lab["ima_key"].skid_tail
        verifier.verify_digest(sig.keyid, f.digest_algo, f.digest, sig.signature)


def test_sha512_digests(source):
    files = _files(source, "ig-sha512")
    f = files[b"/usr/bin/ig-sha512"]
    assert (f.evidence, f.digest_algo) == (Evidence.REPO_VERIFIED, HashAlgo.SHA512)
    assert f.digest == hashlib.sha512(_content("ig-sha512")[b"/usr/bin/ig-sha512"]).digest()
    assert f.vendor_signature is None


def test_files_rpm_did_not_install_are_left_out(lab, source):
    files = _files(source, "ig-sha512")
    assert b"/usr/share/doc/ig-sha512/README" not in files
    assert not (lab["root"] / "usr/share/doc/ig-sha512/README").exists()
    assert b"/usr/share/doc/ig-signed/README" in _files(source, "ig-signed")


def test_md5_digests_are_not_enough(source):
    f = _files(source, "ig-md5")[b"/usr/bin/ig-md5"]
    assert (f.evidence, f.evidence_reason, f.digest_algo) == (Evidence.LOCAL_DB, "weak-digest-algo", HashAlgo.MD5)


@pytest.mark.parametrize(
    ("name", "reason"),
    [("ig-unsigned", "header-unsigned"), ("ig-stranger", "header-key-unknown"), ("ig-tampered", "header-verify-failed")],
)
def test_unverified_headers_are_local_db(source, name, reason):
    assert source.header_trust(source.package(name)).reason == reason
    files = _files(source, name)
    regular = [f for f in files.values() if f.digest is not None]
    assert len(regular) == len(CONTENT)
    for f in regular:
        assert (f.evidence, f.evidence_reason, f.vendor_signature) == (Evidence.LOCAL_DB, reason, None)
        assert not f.evidence.trusted


def test_tampered_header_is_listed_not_hidden(lab, source):
    """rpm's own iterator skips the damaged header; imaguard reports it instead."""
    assert "ig-tampered" in [p.name for p in source.packages()]
    proc = _rpm("-q", "ig-tampered", root=lab["root"], check=False)
    assert proc.returncode != 0


def test_dribble_entry_cannot_replace_signed_digests(lab, source):
    """An unsigned FILEDIGESTS appended after the region fools rpm's API, not RpmSource."""
    forged = {r[0]: r[1] for r in _query(lab["root"], "ig-dribble")}
    assert forged[b"/usr/bin/ig-dribble"] == b"f" * 64  # what rpm -q now believes
    assert source.header_trust(source.package("ig-dribble")).verified
    f = _files(source, "ig-dribble")[b"/usr/bin/ig-dribble"]
    assert f.evidence is Evidence.REPO_VERIFIED
    assert f.digest == hashlib.sha256(_content("ig-dribble")[b"/usr/bin/ig-dribble"]).digest()


def test_malformed_vendor_signature_is_not_trusted(source):
    files = _files(source, "ig-badsig")
    bad = files[b"/usr/bin/ig-badsig"]
    assert (bad.evidence, bad.evidence_reason, bad.vendor_signature) == (
        Evidence.REPO_VERIFIED, "vendor-signature-malformed", None
    )
    assert files[b"/etc/ig-badsig.conf"].evidence is Evidence.VENDOR_SIGNED


# --- enrollment with the vendor's signatures ----------------------------------------------------


def _enroll_vendor(lab, cert: Path, *names: str) -> tuple[int, dict]:
    argv = ["enroll", "--source", "vendor", "--cert", str(cert), "--root", str(lab["root"]), "--package-db", "rpm",
            "--trusted-keyring", str(lab["keys"]["trusted"]),
            "--state-dir", str(lab["top"] / "enroll-state"), "--scope", "all", "--json", *names]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, json.loads(out.getvalue())


def test_enroll_vendor_writes_the_shipped_signatures_exactly(lab):
    code, doc = _enroll_vendor(lab, lab["ima_key"].cert_pem, "ig-signed")
    assert code == 0, doc
    outcomes = {(f["path"], f["outcome"], f.get("reason", "")) for f in doc["files"]}
    assert ("/var/log/ig-signed.log", "skipped", "ghost") in outcomes
    built = lab["built"]["ig-signed"]
    written = 0
    for path, sig in zip(built["files"], built["sigs"], strict=True):
        full = os.fsencode(lab["root"]) + path
        if not sig or not os.path.lexists(full) or not stat.S_ISREG(os.lstat(full).st_mode):
            continue
        assert os.getxattr(full, "security.ima") == sig  # exactly as shipped
        written += 1
    assert written == len(CONTENT)
    assert {s["outcome"]: s["files"] for s in doc["summary"] if s["reason"] == ""} == {"signed": written}


def test_enroll_vendor_refuses_signatures_of_another_key(lab, keypair):
    code, doc = _enroll_vendor(lab, keypair("rsa2048", "not-the-vendor").cert_pem, "ig-signed")
    assert code == 1
    reasons = {f["reason"] for f in doc["files"] if f["outcome"] == "refused"}
    assert reasons == {"vendor-signature-invalid"}


def test_enroll_vendor_skips_a_malformed_vendor_signature(lab):
    code, doc = _enroll_vendor(lab, lab["ima_key"].cert_pem, "ig-badsig")
    assert code == 0
    by_path = {f["path"]: f for f in doc["files"]}
    assert by_path["/usr/bin/ig-badsig"]["reason"] == "no-vendor-signature"
