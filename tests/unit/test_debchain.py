"""The deb chain's pure checks on real captures (Debian's InRelease, gpgv status, a real .deb), plus
the adapters' pure parsers (sources, md5sums, diversions, chain cache) and fuzzing of all of them."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import random
import shutil
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imaguard.errors import FormatError
from imaguard.packages import aptsources, debchain, dpkgdb
from imaguard.packages.deb import VerifiedDeb, decode_members, encode_members
from imaguard.packages.debchain import ChainError, ChainReason, IndexedVersion
from imaguard.packages.debfile import DebMember, read_deb
from imaguard.packages.model import FileKind

DATA = Path(__file__).resolve().parents[1] / "data" / "deb"
INRELEASE = (DATA / "bookworm_InRelease").read_bytes()
DEB = (DATA / "arch-test_0.20-1_all.deb").read_bytes()
# bookworm main/binary-amd64/Packages as listed in the captured InRelease.
PACKAGES_SHA256 = bytes.fromhex("515e692f2c4121c6fcec444ef100cc18f79a991910615f3a88c8b7becfc94d2f")
RELEASE_KEY = "4D64FEC119C2029067D6E791F8D2585B8783D481"  # Debian Stable Release Key (12/bookworm)


def payload(clearsigned: bytes) -> bytes:
    """What gpgv --output writes: the text between the armor headers and the signature, dash-unescaped."""
    text = clearsigned.split(b"\n\n", 1)[1].split(b"\n-----BEGIN PGP SIGNATURE-----", 1)[0]
    return b"\n".join(ln[2:] if ln.startswith(b"- ") else ln for ln in text.split(b"\n")) + b"\n"


def entries(wanted=None):
    scanner = debchain.PackagesScanner(wanted)
    scanner.feed((DATA / "Packages-excerpt").read_bytes())
    return scanner.finish()


# --- InRelease and Packages -------------------------------------------------------------------


def test_real_inrelease_is_one_clearsigned_message_with_a_sha256_section():
    debchain.check_clearsigned(INRELEASE, name="bookworm")
    release = debchain.parse_release(payload(INRELEASE))
    assert (release.origin, release.suite, release.codename) == ("Debian", "oldstable", "bookworm")
    assert release.sha256["main/binary-amd64/Packages"] == (PACKAGES_SHA256, 50060337)
    assert len(release.sha256["main/binary-amd64/Packages.xz"][0]) == 32


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b"Origin: Evil\n\n" + b,  # unsigned text before the message
        lambda b: b + b"Origin: Evil\n",  # and after it
        lambda b: b + b,  # two messages: which one did gpgv check?
    ],
)
def test_text_around_the_signed_message_is_refused(mangle):
    with pytest.raises(FormatError, match=r"clearsigned message|after the signature"):
        debchain.check_clearsigned(mangle(INRELEASE), name="InRelease")


def test_release_without_sha256_is_not_trusted():
    with pytest.raises(FormatError, match="no SHA256 field"):
        debchain.parse_release(b"Origin: x\nMD5Sum:\n 0123 1 main/binary-amd64/Packages\n")


def test_index_hash_is_checked_against_release():
    release = debchain.parse_release(payload(INRELEASE))
    path = "main/binary-amd64/Packages"
    debchain.check_index(release, [(path, PACKAGES_SHA256, 50060337)], name="lists/Packages")
    xz_digest, xz_size = release.sha256[path + ".xz"]
    # apt may keep the compressed file: its own hash under the compressed name also vouches for it.
    debchain.check_index(release, [(path, b"\0" * 32, 1), (path + ".xz", xz_digest, xz_size)], name="x")
    with pytest.raises(ChainError, match="differs from the InRelease entry") as err:
        debchain.check_index(release, [(path, b"\1" * 32, 50060337)], name="lists/Packages")
    assert err.value.reason == "index-not-in-release"
    with pytest.raises(ChainError, match="contrib/binary-sparc/Packages is not listed"):
        debchain.check_index(release, [("contrib/binary-sparc/Packages", PACKAGES_SHA256, 1)], name="x")


def test_packages_scanner_keeps_wanted_stanzas():
    hello = entries(frozenset({"hello"}))
    assert [(e.name, e.version, e.architecture) for e in hello] == [("hello", "2.10-3", "amd64")]
    assert hello[0].filename == "pool/main/h/hello/hello_2.10-3_amd64.deb"
    assert sorted(e.name for e in entries()) == ["arch-test", "bash", "coreutils", "hello"]


@given(st.lists(st.integers(1, 700), max_size=30))
def test_packages_scanner_does_not_depend_on_chunking(cuts):
    data = (DATA / "Packages-excerpt").read_bytes()
    scanner = debchain.PackagesScanner(None)
    pos = 0
    for n in cuts:
        scanner.feed(data[pos : pos + n])
        pos += n
    scanner.feed(data[pos:])
    assert scanner.finish() == entries()


def iv(version, broken=None, name="foo", arch="amd64"):
    entry = debchain.IndexEntry(name, version, arch, f"pool/{name}.deb", 1, b"\1" * 32)
    return IndexedVersion(entry, "idx", broken)


def test_choose_entry_names_each_break():
    untrusted = ChainError(ChainReason.UNTRUSTED_RELEASE, "lists/x_InRelease: signed only by ABC")
    assert debchain.choose_entry([iv("1.0", untrusted), iv("1.0")], "foo", "1.0", "amd64").broken is None
    with pytest.raises(ChainError) as err:
        debchain.choose_entry([iv("1.0", untrusted), iv("2.0")], "foo", "1.0", "amd64")
    assert err.value is untrusted
    with pytest.raises(ChainError, match=r"foo:amd64 1.0 is installed; signed indexes list only 2.0, 3.0") as err:
        debchain.choose_entry([iv("3.0"), iv("2.0"), iv("1.0", arch="i386")], "foo", "1.0", "amd64")
    assert err.value.reason == "version-not-in-index"
    with pytest.raises(ChainError, match="in no signed repository index") as err:
        debchain.choose_entry([iv("1.0", name="bar")], "foo", "1.0", "amd64")
    assert err.value.evidence_reason.startswith("no-signed-source: foo:amd64 1.0")


# --- gpgv status and keyrings -----------------------------------------------------------------


def test_real_gpgv_status_gives_the_signing_keys():
    status = (DATA / "gpgv-status-good.txt").read_bytes()
    signers = debchain.trusted_signers(status, None, name="InRelease")
    assert len(signers) == 3
    assert RELEASE_KEY in signers
    assert debchain.trusted_signers(status, frozenset({RELEASE_KEY}), name="x") == (RELEASE_KEY,)
    with pytest.raises(ChainError, match="signed only by 4CB5") as err:
        debchain.trusted_signers(status, frozenset({"0" * 40}), name="x")
    assert err.value.reason == "untrusted-release"


def test_signed_by_fingerprint_with_bang_means_that_key_not_its_primary():
    """apt: ``Signed-By: FPR`` accepts that key or any of its subkeys, ``FPR!`` only that key itself."""
    primary, sub = "A" * 40, "B" * 40
    status = ("[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG BBBBBBBBBBBBBBBB Test <t@example>\n"
              f"[GNUPG:] VALIDSIG {sub} 2026-01-01 1767225600 0 4 0 1 10 01 {primary}\n").encode()
    assert debchain.trusted_signers(status, frozenset({primary}), name="x") == (sub,)
    assert debchain.trusted_signers(status, frozenset({f"{sub}!"}), name="x") == (sub,)
    with pytest.raises(ChainError, match="not a Signed-By key"):
        debchain.trusted_signers(status, frozenset({f"{primary}!"}), name="x")


def test_no_public_key_is_untrusted():
    status = (DATA / "gpgv-status-no-pubkey.txt").read_bytes()
    with pytest.raises(ChainError, match="InRelease: no signature by a trusted key"):
        debchain.trusted_signers(status, None, name="InRelease")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.replace(b"[GNUPG:] GOODSIG", b"[GNUPG:] BADSIG"), "bad signature"),
        (
            lambda s: s.replace(b" 8 01 ", b" 2 01 "),
            r"4D64FEC119C2029067D6E791F8D2585B8783D481 \(weak digest algorithm 2\)",
        ),
        (lambda s: s.replace(b"[GNUPG:] GOODSIG", b"[GNUPG:] EXPKEYSIG"), "no signature by a trusted key"),
    ],
)
def test_bad_weak_or_expired_signatures_do_not_count(edit, message):
    status = edit((DATA / "gpgv-status-good.txt").read_bytes())
    with pytest.raises(ChainError, match=message):
        debchain.trusted_signers(status, None, name="x")


def test_armored_keyring_is_dearmored_like_gpg():
    asc = (DATA / "debian-archive-bookworm-stable.asc").read_bytes()
    binary = (DATA / "debian-archive-bookworm-stable.gpg").read_bytes()
    assert debchain.keyring_bytes(asc) == binary
    assert debchain.keyring_bytes(binary) == binary
    assert debchain.keyring_bytes(asc + b"\n" + asc) == binary + binary
    broken = asc.replace(b"\n=", b"\n=AAAA\n=", 1)
    with pytest.raises(FormatError):
        debchain.keyring_bytes(broken)
    with pytest.raises(FormatError, match="neither a binary keyring"):
        debchain.keyring_bytes(b"hello")


def test_armor_checksum_equals_the_bitwise_rfc4880_definition():
    def crc24_rfc4880(data: bytes) -> int:  # RFC 4880 §6.1, literally
        crc = 0xB704CE
        for byte in data:
            crc ^= byte << 16
            for _ in range(8):
                crc <<= 1
                if crc & 0x1000000:
                    crc ^= 0x1864CFB
        return crc & 0xFFFFFF

    rng = random.Random(24)  # noqa: S311 - reproducible test data, not a secret
    for data in (b"", b"\x00", b"\xff" * 3, *(rng.randbytes(rng.randrange(1, 300)) for _ in range(200))):
        assert debchain._crc24(data) == crc24_rfc4880(data)


# --- the .deb -------------------------------------------------------------------------------


def test_real_deb_layout_and_hash_against_its_real_stanza():
    members = debchain.parse_ar(DEB)
    assert [m.name for m in members] == ["debian-binary", "control.tar.xz", "data.tar.xz"]
    roles = [debchain.deb_member_role(m, i) for i, m in enumerate(members)]
    assert roles == [("debian-binary", ""), ("control", ".xz"), ("data", ".xz")]
    assert DEB[members[0].data_offset : members[0].data_offset + 4] == b"2.0\n"
    (entry,) = entries(frozenset({"arch-test"}))
    debchain.check_deb(entry, hashlib.sha256(DEB).digest(), len(DEB), name="arch-test.deb")
    with pytest.raises(ChainError, match=r"arch-test.deb: SHA256 .* Packages says") as err:
        debchain.check_deb(entry, hashlib.sha256(DEB + b"\0").digest(), len(DEB) + 1, name="arch-test.deb")
    assert err.value.reason == "deb-hash-mismatch"


def memfd(data: bytes) -> int:
    fd = os.memfd_create("deb")
    os.write(fd, data)
    return fd


def test_read_deb_hashes_the_real_deb_and_its_members():
    fd = memfd(DEB)
    try:
        contents = read_deb(fd, "arch-test.deb", max_size=1 << 20)
    finally:
        os.close(fd)
    assert contents.sha256 == hashlib.sha256(DEB).digest()
    assert contents.size == len(DEB)
    assert contents.control["Version"] == b"0.20-1"
    debchain.check_deb_identity(contents.control, "arch-test", "0.20-1", "all", deb="d")
    with pytest.raises(ChainError, match=r"d is arch-test 0.20-1/all; installed is arch-test 0.19/all"):
        debchain.check_deb_identity(contents.control, "arch-test", "0.19", "all", deb="d")
    # Independent extraction: the data.tar.xz member read by tarfile straight from the ar offsets.
    data_member = debchain.parse_ar(DEB)[2]
    blob = DEB[data_member.data_offset : data_member.data_offset + data_member.size]
    expected = {}
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:xz") as tar:
        for info in tar:
            if info.isreg():
                expected[b"/" + info.name.lstrip("./").encode()] = hashlib.sha256(tar.extractfile(info).read()).digest()
    got = {m.path: m.sha256 for m in contents.members if m.kind is FileKind.REGULAR}
    assert got == expected
    assert b"/usr/bin/arch-test" in got


def _ar(members: list[tuple[bytes, bytes]]) -> bytes:
    out = bytearray(debchain.AR_MAGIC)
    for name, data in members:
        out += name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6) + b"100644".ljust(8)
        out += str(len(data)).encode().ljust(10) + b"`\n" + data + (b"\n" if len(data) & 1 else b"")
    return bytes(out)


def _tar(files: dict[bytes, bytes], links: dict[bytes, bytes] = {}, hard: dict[bytes, bytes] = {}) -> bytes:  # noqa: B006
    buf = io.BytesIO()
    with tarfile.open(
        fileobj=buf, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape"
    ) as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(os.fsdecode(path))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for path, target in links.items():
            info = tarfile.TarInfo(os.fsdecode(path))
            info.type, info.linkname = tarfile.SYMTYPE, os.fsdecode(target)
            tar.addfile(info)
        for path, target in hard.items():
            info = tarfile.TarInfo(os.fsdecode(path))
            info.type, info.linkname = tarfile.LNKTYPE, os.fsdecode(target)
            tar.addfile(info)
    return buf.getvalue()


WEIRD = {
    b"./usr/share/t/with space": b"space\n",
    b"./usr/share/t/new\nline": b"newline\n",  # dpkg-deb refuses to build this; the reader still keeps it
    b"./usr/share/t/caf\xe9": b"latin-1\n",
}


def _deb(data_member: tuple[bytes, bytes], control: bytes = b"Package: t\nVersion: 1\nArchitecture: all\n") -> bytes:
    ctl = gzip.compress(_tar({b"./control": control}))
    return _ar([(b"debian-binary", b"2.0\n"), (b"control.tar.gz", ctl), data_member])


def _compressors():
    yield "", lambda b: b
    yield ".gz", gzip.compress
    if shutil.which("zstd"):
        yield ".zst", lambda b: subprocess.run(["zstd", "-q", "-c"], input=b, capture_output=True, check=True).stdout


@pytest.mark.parametrize(("ext", "compress"), list(_compressors()))
def test_member_names_stay_bytes_through_every_compression(ext, compress):
    tar = _tar(
        WEIRD, links={b"./usr/share/t/link": b"with space"}, hard={b"./usr/share/t/hard": b"./usr/share/t/caf\xe9"}
    )
    deb = _deb((b"data.tar" + ext.encode(), compress(tar)))
    fd = memfd(deb)
    try:
        contents = read_deb(fd, "t.deb", max_size=1 << 20)
    finally:
        os.close(fd)
    got = {m.path: m for m in contents.members}
    for path, data in WEIRD.items():
        assert got[path[1:]].sha256 == hashlib.sha256(data).digest()
    assert got[b"/usr/share/t/link"].link_target == b"with space"
    assert got[b"/usr/share/t/hard"].sha256 == hashlib.sha256(b"latin-1\n").digest()
    assert contents.sha256 == hashlib.sha256(deb).digest()


def test_maintainer_scripts_are_hashed_and_other_control_members_ignored():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, mode in (("./control", b"Package: t\nVersion: 1\nArchitecture: all\n", 0o644),
                                 ("./postinst", b"#!/bin/sh\nexit 0\n", 0o755), ("./config", b"#!/bin/sh\n", 0o755),
                                 ("./md5sums", b"", 0o644), ("./triggers", b"interest x\n", 0o644),
                                 ("./preinst.orig", b"#!/bin/sh\n", 0o755)):  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    deb = _ar([(b"debian-binary", b"2.0\n"), (b"control.tar", buf.getvalue()), (b"data.tar", _tar({b"./a": b"a"}))])
    contents = read_deb_bytes(deb)
    assert contents.scripts == (
        DebMember(b"config", FileKind.REGULAR, 0o755, hashlib.sha256(b"#!/bin/sh\n").digest()),
        DebMember(b"postinst", FileKind.REGULAR, 0o755, hashlib.sha256(b"#!/bin/sh\nexit 0\n").digest()),
    )
    assert [m.path for m in contents.members] == [b"/a"]


def test_a_maintainer_script_twice_in_control_tar_is_malformed():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("./control", b"Package: t\nVersion: 1\nArchitecture: all\n"), ("./postinst", b"a"),
                           ("postinst", b"b")):  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    deb = _ar([(b"debian-binary", b"2.0\n"), (b"control.tar", buf.getvalue()), (b"data.tar", _tar({b"./a": b"a"}))])
    with pytest.raises(FormatError, match=r"control\.tar holds postinst twice"):
        read_deb_bytes(deb)


def test_deb_member_order_is_enforced():
    tar = _tar({b"./a": b"a"})
    with pytest.raises(FormatError, match=r"first member of a .deb must be debian-binary"):
        read_deb_bytes(_ar([(b"data.tar", tar)]))
    with pytest.raises(FormatError, match="out of order"):
        read_deb_bytes(_ar([(b"debian-binary", b"2.0\n"), (b"data.tar", tar), (b"control.tar", tar)]))
    with pytest.raises(FormatError, match=r"unexpected .deb member 'data.tar.rar'"):
        read_deb_bytes(_ar([(b"debian-binary", b"2.0\n"), (b"data.tar.rar", tar)]))


@pytest.mark.parametrize("decoder", ["zstandard", "zstd-program"])
def test_regression_corrupt_zstd_data_tar_is_a_format_error_naming_the_member(decoder, monkeypatch):
    if decoder == "zstandard":
        pytest.importorskip("zstandard")
    else:
        if shutil.which("zstd") is None:
            pytest.skip("needs the zstd program")
        monkeypatch.setitem(sys.modules, "zstandard", None)  # import fails: the program is used
    deb = _deb((b"data.tar.zst", b"\x28\xb5\x2f\xfd" + b"garbage!" * 8))
    with pytest.raises(FormatError, match=r"fuzz\.deb: data\.tar\.zst: "):
        read_deb_bytes(deb)


def _claiming_metadata(kind: bytes, claimed: int) -> bytes:
    """A data.tar.gz whose first header announces ``claimed`` bytes of metadata, followed by that many zeros."""
    info = tarfile.TarInfo("././@LongLink")
    info.type, info.size = kind, claimed
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip: zeros shrink ~1000x
    out = [comp.compress(info.tobuf(format=tarfile.GNU_FORMAT))]
    zeros = bytes(1 << 20)
    out += [comp.compress(zeros) for _ in range(claimed >> 20)]
    return _deb((b"data.tar.gz", b"".join([*out, comp.flush()])))


# Peak RSS from VmHWM, not getrusage: ru_maxrss survives fork and exec, so the child would report
# pytest's own peak; VmHWM belongs to the address space exec gave the child.
_RSS_PROBE = """
import os, re, sys
from imaguard.errors import FormatError
from imaguard.packages.debfile import read_deb
fd = os.open(sys.argv[1], os.O_RDONLY)
try:
    read_deb(fd, "bomb.deb", max_size=1 << 30)
except FormatError as exc:
    print("FormatError", exc)
with open("/proc/self/status") as status:
    print(int(re.search(r"VmHWM:\\s+(\\d+) kB", status.read()).group(1)) >> 10)
"""


def test_regression_tar_long_name_bomb_is_refused_before_it_is_read(tmp_path):
    # r6: a header claiming 256 MiB of GNU long name made tarfile read (and hold) all of it.
    bomb = tmp_path / "bomb.deb"
    bomb.write_bytes(_claiming_metadata(tarfile.GNUTYPE_LONGNAME, 256 << 20))
    assert bomb.stat().st_size < 1 << 20
    out = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE, str(bomb)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0] == ("FormatError bomb.deb: data.tar.gz: tar metadata header of 268435456 bytes (limit 1048576)"), out
    assert int(out[1]) < 128, f"peak RSS {out[1]} MiB"


@pytest.mark.parametrize("kind", [tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE])
def test_every_metadata_header_is_bounded(kind):
    with pytest.raises(FormatError, match=r"data\.tar\.gz: tar metadata header of 2097152 bytes"):
        read_deb_bytes(_claiming_metadata(kind, 2 << 20))


def test_a_long_name_within_the_bound_is_read_and_sparse_members_are_refused():
    name = b"./usr/share/t/" + b"n" * 200
    contents = read_deb_bytes(_deb((b"data.tar", _tar({name: b"x"}))))
    assert [m.path for m in contents.members] == [name[1:]]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("./sparse")
        info.type = tarfile.GNUTYPE_SPARSE
        tar.addfile(info)
    with pytest.raises(FormatError, match=r"GNU sparse member './sparse': dpkg does not support sparse files"):
        read_deb_bytes(_deb((b"data.tar", buf.getvalue())))


def test_regression_member_names_lose_only_leading_slash_and_dot_slash_like_dpkg():
    # dpkg's path_skip_slash_dotslash: a leading "." of a name is part of the name.
    files = {"./usr/bin/tool": b"REAL\n", ".usr/bin/tool": b"OTHER\n", ".bashrc": b"rc\n", "/./etc/x": b"x\n",
             "..evil": b"e\n"}  # fmt: skip
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in ("./", "./usr/"):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    got = {m.path: m.sha256 for m in read_deb_bytes(_deb((b"data.tar", buf.getvalue()))).members}
    assert got == {
        b"/": None,
        b"/usr": None,
        b"/usr/bin/tool": hashlib.sha256(b"REAL\n").digest(),
        b"/.usr/bin/tool": hashlib.sha256(b"OTHER\n").digest(),
        b"/.bashrc": hashlib.sha256(b"rc\n").digest(),
        b"/etc/x": hashlib.sha256(b"x\n").digest(),
        b"/..evil": hashlib.sha256(b"e\n").digest(),
    }


def test_regression_a_dot_named_control_member_is_not_a_maintainer_script():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("./control", b"Package: t\nVersion: 1\nArchitecture: all\n"), ("./.postinst", b"x"),
                           ("..config", b"y"), ("./prerm", b"z")):  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    deb = _ar([(b"debian-binary", b"2.0\n"), (b"control.tar", buf.getvalue()), (b"data.tar", _tar({b"./a": b"a"}))])
    assert [m.path for m in read_deb_bytes(deb).scripts] == [b"prerm"]


def read_deb_bytes(data: bytes):
    fd = memfd(data)
    try:
        return read_deb(fd, "fuzz.deb", max_size=1 << 22)
    finally:
        os.close(fd)


# --- adapters' pure parsers -------------------------------------------------------------------

DEBIAN_SOURCES = b"""Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
"""


def test_deb822_sources_like_debian_ships_them():
    repos = aptsources.parse_deb822_sources(DEBIAN_SOURCES, name="debian.sources")
    assert [(r.uri, r.suite, r.components) for r in repos] == [
        ("http://deb.debian.org/debian", "bookworm", ("main",)),
        ("http://deb.debian.org/debian", "bookworm-updates", ("main",)),
    ]
    assert repos[0].signed_by.keyrings == ("/usr/share/keyrings/debian-archive-keyring.gpg",)
    assert repos[0].dist_uri == "http://deb.debian.org/debian/dists/bookworm/"


def test_inline_key_and_one_line_options():
    asc = (DATA / "debian-archive-bookworm-stable.asc").read_bytes()
    folded = b"\n".join(b" " + (ln or b".") for ln in asc.rstrip(b"\n").split(b"\n"))
    text = b"Types: deb\nURIs: file:/srv/r\nSuites: ./\nSigned-By:\n" + folded + b"\n"
    (repo,) = aptsources.parse_deb822_sources(text, name="t.sources")
    assert debchain.keyring_bytes(repo.signed_by.inline) == (DATA / "debian-archive-bookworm-stable.gpg").read_bytes()
    assert (repo.flat, repo.dist_uri) == (True, "file:/srv/r/")
    line = b"deb [arch=amd64 signed-by=4D64FEC119C2029067D6E791F8D2585B8783D481] http://x/debian bookworm main\n"
    (one,) = aptsources.parse_one_line_sources(line + b"deb-src http://x/debian bookworm main\n", name="l")
    assert one.signed_by.fingerprints == frozenset({RELEASE_KEY})
    (bang,) = aptsources.parse_one_line_sources(line.replace(b"D481]", b"d481!]"), name="l")
    assert bang.signed_by.fingerprints == frozenset({f"{RELEASE_KEY}!"})  # "!" kept: exactly that key
    with pytest.raises(FormatError, match="neither an absolute path nor a fingerprint"):
        aptsources.parse_one_line_sources(b"deb [signed-by=relative.gpg] http://x y\n", name="l")


def test_md5sums_diversions_and_lists_keep_bytes():
    md5 = dpkgdb.parse_md5sums(
        b"d41d8cd98f00b204e9800998ecf8427e  usr/share/a b\n"
        b"\\d41d8cd98f00b204e9800998ecf8427e  usr/share/new\\nline\n"
        b"d41d8cd98f00b204e9800998ecf8427e  usr/share/caf\xe9\n",
        name="m",
    )
    assert set(md5) == {b"/usr/share/a b", b"/usr/share/new\nline", b"/usr/share/caf\xe9"}
    div = dpkgdb.parse_diversions(b"/bin/sh\n/bin/sh.distrib\ndash\n/usr/bin/x\n/usr/bin/x.real\n:\n", name="d")
    assert div[b"/bin/sh"].to == b"/bin/sh.distrib"
    assert not div[b"/bin/sh"].applies_to("dash")
    assert div[b"/usr/bin/x"].applies_to("anything")
    assert dpkgdb.parse_list(b"/.\n/usr\n/usr/share/caf\xe9\n") == [b"/usr", b"/usr/share/caf\xe9"]
    with pytest.raises(FormatError, match="not a multiple of 3"):
        dpkgdb.parse_diversions(b"/a\n/b\n", name="d")


paths = st.binary(min_size=1, max_size=40).map(lambda b: b"/" + b.replace(b"\0", b""))


@given(
    st.lists(
        st.tuples(
            paths,
            st.sampled_from(list(FileKind)),
            st.integers(0, 0o7777),
            st.none() | st.binary(min_size=32, max_size=32),
            st.none() | st.binary(max_size=20),
        )
    )
)
def test_chain_cache_record_round_trips(rows):
    members = tuple(DebMember(p, k, m, d, t) for p, k, m, d, t in rows)
    scripts = tuple(DebMember(b"postinst", FileKind.REGULAR, m, d or b"\0" * 32) for _, _, m, d, _ in rows[:2])
    deb = VerifiedDeb(members, scripts)
    assert decode_members(encode_members(deb)) == deb


def test_chain_cache_record_with_an_unknown_script_name_is_re_walked():
    # A script name becomes a path under /var/lib/dpkg/info: a record naming anything else is not used.
    for name in (b"../../../usr/bin/x", b"postinst.orig"):
        bad = VerifiedDeb((), (DebMember(name, FileKind.REGULAR, 0o755, b"\0" * 32),))
        with pytest.raises(FormatError, match="bad maintainer script record"):
            decode_members(encode_members(bad))
    no_digest = VerifiedDeb((), (DebMember(b"postinst", FileKind.REGULAR, 0o755),))
    with pytest.raises(FormatError, match="bad maintainer script record"):
        decode_members(encode_members(no_digest))


def test_chain_cache_record_of_the_format_without_scripts_is_re_walked():
    old = b'{"format":1,"members":[]}'  # written before maintainer scripts were read: not trusted as "none"
    with pytest.raises(FormatError, match="other format"):
        decode_members(old)


# --- fuzz: malformed input gives FormatError (or the chain's own ChainError), nothing else -----

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _mutations(seed: bytes):
    return st.builds(
        lambda cut, junk, pos: seed[:pos] + junk + seed[pos + cut :],
        st.integers(0, 64),
        st.binary(max_size=64),
        st.integers(0, len(seed)),
    )


@FUZZ
@given(st.one_of(st.binary(max_size=400), _mutations(payload(INRELEASE)[:3000])))
def test_fuzz_release_and_stanza(data):
    for parse in (debchain.parse_release, debchain.parse_stanza):
        with contextlib.suppress(FormatError):
            parse(data)


@FUZZ
@given(st.one_of(st.binary(max_size=400), _mutations((DATA / "Packages-excerpt").read_bytes())))
def test_fuzz_packages_scanner(data):
    scanner = debchain.PackagesScanner(frozenset({"hello", "bash"}))
    try:
        scanner.feed(data)
        scanner.finish()
    except FormatError:
        pass


@FUZZ
@given(st.one_of(st.binary(max_size=300), _mutations(DEB[:2000])))
def test_fuzz_ar(data):
    try:
        for i, m in enumerate(debchain.parse_ar(data)):
            debchain.deb_member_role(m, i)
    except FormatError:
        pass


@FUZZ
@given(_mutations(DEB))
def test_fuzz_read_deb(data):
    with contextlib.suppress(FormatError):
        read_deb_bytes(data)


@FUZZ
@given(st.one_of(st.binary(max_size=300), _mutations((DATA / "debian-archive-bookworm-stable.asc").read_bytes())))
def test_fuzz_keyring(data):
    with contextlib.suppress(FormatError):
        debchain.keyring_bytes(data)


@FUZZ
@given(st.one_of(st.binary(max_size=300), _mutations((DATA / "gpgv-status-good.txt").read_bytes())))
def test_fuzz_gpgv_status(data):
    with contextlib.suppress(ChainError):
        debchain.trusted_signers(data, None, name="x")


@FUZZ
@given(st.one_of(st.binary(max_size=300), _mutations(DEBIAN_SOURCES)))
def test_fuzz_sources_and_dpkg_files(data):
    parsers = [
        lambda d: aptsources.parse_deb822_sources(d, name="s"),
        lambda d: aptsources.parse_one_line_sources(d, name="s"),
        lambda d: dpkgdb.parse_md5sums(d, name="m"),
        lambda d: dpkgdb.parse_diversions(d, name="d"),
        decode_members,
    ]
    for parse in parsers:
        with contextlib.suppress(FormatError):
            parse(data)


def test_regression_truncated_validsig_is_untrusted_not_a_crash():
    # Found by test_fuzz_gpgv_status: a VALIDSIG line cut short raised IndexError.
    status = b"[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG 0123456789ABCDEF someone\n[GNUPG:] VALIDSIG\n"
    with pytest.raises(ChainError, match="no signature by a trusted key"):
        debchain.trusted_signers(status, None, name="x")


# --- apt's sources: one suite, many lines ---------------------------------------------------------


def _suite_root(tmp_path: Path, sources: str) -> Path:
    (tmp_path / "etc/apt").mkdir(parents=True)
    (tmp_path / "etc/apt/sources.list").write_text(sources)
    lists = tmp_path / "var/lib/apt/lists"
    lists.mkdir(parents=True)
    for comp, pkg in (("main", "bash"), ("universe", "htop")):
        (lists / f"archive.ubuntu.com_ubuntu_dists_jammy_{comp}_binary-amd64_Packages").write_text(
            f"Package: {pkg}\nVersion: 1\nArchitecture: amd64\nFilename: x\nSize: 1\nSHA256: {'00' * 32}\n\n"
        )
    return tmp_path


def test_regression_components_of_one_suite_on_two_lines_are_all_read(tmp_path, monkeypatch):
    pytest.importorskip("apt_pkg")
    from imaguard.packages import aptrepo  # noqa: PLC0415 - needs python-apt

    root = _suite_root(
        tmp_path,
        "deb http://archive.ubuntu.com/ubuntu jammy main\ndeb http://archive.ubuntu.com/ubuntu jammy universe\n",
    )
    verified = []
    real = aptrepo._verified_release

    def spy(layout, repo, prefix):
        verified.append((prefix, repo.components))
        return real(layout, repo, prefix)

    monkeypatch.setattr(aptrepo, "_verified_release", spy)
    idx = aptrepo.load_indexes(aptrepo.AptLayout.read(root), frozenset({"bash", "htop"}))
    assert verified == [("archive.ubuntu.com_ubuntu_dists_jammy_", ("main", "universe"))]  # one InRelease, once
    assert sorted((iv.entry.name, iv.index.rsplit("_", 3)[1]) for iv in idx.entries) == [
        ("bash", "main"),
        ("htop", "universe"),
    ]
    # No InRelease here: every entry carries that break, so none is trusted.
    assert {iv.broken.code for iv in idx.entries} == {ChainReason.UNTRUSTED_RELEASE}


def test_lines_of_one_suite_with_different_signed_by_are_not_verified(tmp_path, monkeypatch):
    pytest.importorskip("apt_pkg")
    from imaguard.packages import aptrepo  # noqa: PLC0415 - needs python-apt

    root = _suite_root(
        tmp_path,
        "deb [signed-by=/a.gpg] http://archive.ubuntu.com/ubuntu jammy main\n"
        "deb [signed-by=/b.gpg] http://archive.ubuntu.com/ubuntu jammy universe\n",
    )
    monkeypatch.setattr(aptrepo, "_verified_release", lambda *a: pytest.fail("verified despite the conflict"))
    idx = aptrepo.load_indexes(aptrepo.AptLayout.read(root), frozenset({"bash", "htop"}))
    assert sorted(iv.entry.name for iv in idx.entries) == ["bash", "htop"]
    assert {str(iv.broken) for iv in idx.entries} == {
        f"http://archive.ubuntu.com/ubuntu/dists/jammy/: conflicting Signed-By for one suite in {root}/etc/apt/sources.list"
    }
