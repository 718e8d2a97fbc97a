"""The deb chain with real tools: apt, gpgv, dpkg, dpkg-deb, apt-ftparchive, gpg. No mocks.

Two worlds: this host (real Debian packages fetched with apt, and ``dpkg --verify`` as the
reference), and a throw-away repository built here (``apt-ftparchive``, signed by a key made in a
temporary GNUPGHOME), installed with ``dpkg --root`` into a fake root whose lists were written by
``apt-get -o Dir=ROOT update`` itself. Each chain break is then made for real in that root.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
from debworld import IGT_1, MAINT_SCRIPTS, Keys, make_keys, make_world, need, run

from imaguard.digests import HashAlgo
from imaguard.packages import aptrepo, debchain
from imaguard.packages import deb as deb_module
from imaguard.packages.deb import DebSource
from imaguard.packages.debfile import read_deb
from imaguard.packages.model import Evidence, FileKind

pytestmark = pytest.mark.root

WEIRD = (b"with space", b"caf\xe9")  # dpkg-deb refuses newlines in names (see test below)


def tar_digests(deb: Path) -> dict[bytes, bytes]:
    """SHA-256 of every regular member, extracted by dpkg-deb itself: the independent reference."""
    tar = run(["dpkg-deb", "--fsys-tarfile", deb]).stdout
    out = {}
    with tarfile.open(fileobj=io.BytesIO(tar), encoding="utf-8", errors="surrogateescape") as tf:
        for info in tf:
            if info.isreg():
                path = b"/" + info.name.encode("utf-8", "surrogateescape").lstrip(b"./")
                out[path] = hashlib.sha256(tf.extractfile(info).read()).digest()
    return out


# --- this host: real Debian packages ------------------------------------------------------------


def test_repo_verified_digests_equal_the_files_inside_real_debs(tmp_path):
    need("apt-get", "dpkg-deb", "gpgv")
    dl = tmp_path / "dl"
    dl.mkdir(mode=0o777)
    dl.chmod(0o777)  # apt downloads as _apt
    run(["apt-get", "-q", "download", "hello", "coreutils"], cwd=dl)
    (hello,) = dl.glob("hello_*.deb")
    (coreutils,) = dl.glob("coreutils_*.deb")

    # coreutils is installed: the source finds the .deb in its own cache and walks the whole chain.
    state = tmp_path / "state"
    (state / "debs").mkdir(parents=True)
    source = DebSource(Path("/"), state, fetch=False)
    pkg = source.package("coreutils")
    shutil.copy(coreutils, state / "debs" / aptrepo.deb_file_name(pkg.name, pkg.version, pkg.architecture))
    files = list(source.files(pkg))
    reference = tar_digests(coreutils)
    verified = {f.path: f.digest for f in files if f.evidence is Evidence.REPO_VERIFIED}
    info = b"/var/lib/dpkg/info/"
    scripts = {p: d for p, d in verified.items() if p.startswith(info)}
    verified = {p: d for p, d in verified.items() if not p.startswith(info)}
    assert verified == {p: d for p, d in reference.items() if p in verified}
    assert set(reference) <= {f.path for f in files}  # every shipped file is listed by dpkg
    assert len(verified) == len(reference) > 100
    assert scripts == {info + f"coreutils.{n}".encode(): hashlib.sha256(b).digest()
                       for n, b in control_scripts(coreutils).items()}  # fmt: skip
    assert all(f.digest_algo is HashAlgo.SHA256 and f.kind is FileKind.REGULAR for f in files if f.digest)
    assert pkg.origin == "Debian/bookworm"
    # The chain is cached: a fresh source with no .deb anywhere answers from the state directory.
    (state / "debs" / aptrepo.deb_file_name(pkg.name, pkg.version, pkg.architecture)).unlink()
    again = DebSource(Path("/"), state, fetch=False)
    assert list(again.files(again.package("coreutils"))) == files

    # hello is not installed: the same links, by hand, against the host's verified indexes.
    layout = aptrepo.AptLayout.read(Path("/"))
    indexes = aptrepo.load_indexes(layout, frozenset({"hello"}))
    fd = os.open(hello, os.O_RDONLY)
    try:
        contents = read_deb(fd, str(hello), max_size=1 << 30)
    finally:
        os.close(fd)
    version = contents.control["Version"].decode()
    chosen = debchain.choose_entry(indexes.entries, "hello", version, "amd64")
    debchain.check_deb(chosen.entry, contents.sha256, contents.size, name=str(hello))
    got = {m.path: m.sha256 for m in contents.members if m.kind is FileKind.REGULAR}
    assert got == tar_digests(hello)
    assert b"/usr/bin/hello" in got


def parse_dpkg_verify(out: bytes) -> dict[bytes, str]:
    """``dpkg --verify`` lines: ``??5?????? c /path`` (digest differs) or ``missing   /path``."""
    result = {}
    for line in out.splitlines():
        m = re.match(rb"^(\S+) +(c )? *(/.*)$", line)
        assert m, line
        flags, path = m.group(1), m.group(3)
        result[path] = "missing" if flags == b"missing" else "digest-mismatch" if flags[2:3] == b"5" else "other"
    return result


def disk_status(root: Path, f) -> str:
    try:
        data = (root / f.disk_path.lstrip(b"/").decode("utf-8", "surrogateescape")).read_bytes()
    except FileNotFoundError:
        return "missing"
    return "ok" if hashlib.new(f.digest_algo.kernel_name, data).digest() == f.digest else "digest-mismatch"


def host_sample() -> list[str]:
    """Installed packages whose .deb apt still caches (the 15 smallest), and some with local-db only."""
    # A throw-away state dir: the apt index cache writes into it (a fixed path would litter the host).
    with tempfile.TemporaryDirectory(prefix="imaguard-host-sample-") as state:
        source = DebSource(Path("/"), Path(state), fetch=False)
        installed = list(source.packages())
    archives = aptrepo.AptLayout.read(Path("/")).archives
    cached = []
    for p in installed:
        deb = archives / aptrepo.deb_file_name(p.name, p.version, p.architecture)
        if deb.exists():
            cached.append((deb.stat().st_size, p.name))
    extra = [n for n in ("nodejs", "bash", "libpq-dev", "dash", "coreutils") if any(p.name == n for p in installed)]
    return [n for _, n in sorted(cached)[:15]] + extra


def test_verify_agrees_with_dpkg_verify_on_this_host(tmp_path):
    need("dpkg")
    names = host_sample()
    source = DebSource(Path("/"), tmp_path / "state", fetch=True)
    proc = subprocess.run(["dpkg", "--verify", *names], capture_output=True, check=False)
    dpkg = parse_dpkg_verify(proc.stdout)
    checked = 0
    levels = set()
    for name in names:
        pkg = source.package(name)
        for f in source.files(pkg):
            if f.digest is None:
                continue
            levels.add(f.evidence)
            ours = disk_status(Path("/"), f)
            theirs = dpkg.get(f.path, "ok")
            if theirs == "other":
                continue  # dpkg could not check it (not readable by it, or not a regular file)
            assert ours == theirs, (name, f.path, f.evidence, f.evidence_reason)
            checked += 1
    assert checked > 500
    assert Evidence.REPO_VERIFIED in levels


# --- a throw-away repository (debworld) ----------------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Keys:
    home = tmp_path_factory.mktemp("gnupg")
    with make_keys(home) as k:
        yield k


def evidence_of(files) -> set[tuple[str, str]]:
    return {(str(f.evidence), f.evidence_reason.split(":")[0]) for f in files if f.digest is not None}


def test_dpkg_deb_refuses_newlines_in_names(tmp_path):
    need("dpkg-deb")
    tree = tmp_path / "t"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        "Package: t\nVersion: 1\nArchitecture: all\nMaintainer: t <t@e>\nDescription: t\n"
    )
    (tree / "new\nline").write_text("x")
    proc = subprocess.run(["dpkg-deb", "--build", tree, tmp_path / "t.deb"], capture_output=True, check=False)
    # So a .list (newline-separated) never holds one; the .deb reader keeps them (unit test).
    assert proc.returncode != 0
    assert b"newline not allowed in pathname" in proc.stderr


def test_good_chain_is_repo_verified_with_byte_paths(tmp_path, keys):
    world = make_world(tmp_path, keys, repo_debs=["igt-1.0"], installed=["igt-1.0"], cached=["igt-1.0"])
    source = world.source()
    pkg = source.package("igt")
    assert (pkg.version, pkg.architecture, pkg.origin) == ("1.0", "all", "imaguard-test/test")
    files = {f.path: f for f in source.files(pkg)}
    reference = tar_digests(world.debs["igt-1.0"])
    for raw in WEIRD:
        path = b"/usr/share/igt/" + raw
        assert files[path].evidence is Evidence.REPO_VERIFIED
        assert files[path].digest == reference[path] == hashlib.sha256(IGT_1[path]).digest()
        assert (world.root / os.fsdecode(path.lstrip(b"/"))).read_bytes() == IGT_1[path]
    assert files[b"/usr/share/igt/link"].kind is FileKind.SYMLINK
    assert files[b"/usr/share/igt/link"].link_target == b"with space"
    assert files[b"/etc/igt.conf"].config
    assert files[b"/usr/bin/igt"].mode == 0o755
    assert files[b"/usr/share/igt"].kind is FileKind.DIRECTORY
    assert evidence_of(files.values()) == {("repo-verified", "")}


@pytest.mark.parametrize("form", ["keyring-file", "trusted.gpg.d"])
def test_signed_by_keyring_file_and_default_keyrings_inside_the_root_are_no_anchors(tmp_path, keys, form):
    # The root's own keys never vouch for it (test_root_trust_anchors.py has every form).
    world = make_world(tmp_path, keys, repo_debs=["igt-1.0"], installed=["igt-1.0"], cached=["igt-1.0"])
    sources = world.root / "etc/apt/sources.list.d/test.sources"
    head = sources.read_bytes().split(b"Signed-By:")[0]
    armored = keys.gpg("--armor", "--export", keys.trusted).stdout
    if form == "keyring-file":  # a path named in the root is the host's file at that path, never the root's
        (world.root / "etc/apt/keyrings/igt.asc").write_bytes(armored)
        sources.write_bytes(head + b"Signed-By: /etc/apt/keyrings/igt.asc\n")
    else:
        (world.root / "etc/apt/trusted.gpg.d/igt.gpg").write_bytes(keys.gpg("--export", keys.trusted).stdout)
        sources.write_bytes(head)
    source = DebSource(world.root, world.state, fetch=False)
    assert evidence_of(source.files(source.package("igt"))) == {("local-db", "untrusted-release")}
    assert evidence_of(world.files()) == {("repo-verified", "")}  # with the key as --trusted-keyring


def test_inrelease_signed_by_an_untrusted_key(tmp_path, keys):
    world = make_world(tmp_path, keys, repo_debs=["igt-1.0"], installed=["igt-1.0"], cached=["igt-1.0"])
    inrelease = world.lists("_InRelease")
    inrelease.unlink()
    keys.gpg("--local-user", keys.untrusted, "--clearsign", "-o", inrelease, world.repo / "dists/test/Release")
    files = world.files()
    assert evidence_of(files) == {("local-db", "untrusted-release")}
    assert f"signed only by {keys.untrusted}" in files[0].evidence_reason or "no signature" in files[0].evidence_reason
    assert all(f.digest_algo is HashAlgo.MD5 for f in files if f.digest)


def test_detached_release_signature(tmp_path, keys):
    """Release + Release.gpg (repositories without InRelease): verified the same way, and what is
    parsed is the copy gpgv verified."""
    world = make_world(tmp_path, keys, repo_debs=["igt-1.0"], installed=["igt-1.0"], cached=["igt-1.0"])
    inrelease = world.lists("_InRelease")
    release = inrelease.with_name(inrelease.name.replace("_InRelease", "_Release"))
    release.write_bytes((world.repo / "dists/test/Release").read_bytes())
    keys.gpg("--local-user", keys.trusted, "--detach-sign", "-o", release.with_name(release.name + ".gpg"), release)
    inrelease.unlink()
    assert evidence_of(world.files()) == {("repo-verified", "")}
    # The Release text changed after signing: the signature no longer covers it.
    release.write_bytes(release.read_bytes().replace(b"Suite: test", b"Suite: tesT"))
    shutil.rmtree(world.state, ignore_errors=True)
    assert evidence_of(world.files()) == {("local-db", "untrusted-release")}


def test_packages_whose_hash_is_not_in_inrelease(tmp_path, keys):
    world = make_world(tmp_path, keys, repo_debs=["igt-1.0"], installed=["igt-1.0"], cached=["igt-1.0"])
    lst = world.lists("_Packages.lz4")
    plain = (
        run(["lz4", "-dcq", lst]).stdout
        + b"\nPackage: extra\nVersion: 1\nArchitecture: all\nFilename: x\nSize: 1\nSHA256: "
        + b"0" * 64
        + b"\n"
    )
    lst.write_bytes(run(["lz4", "-q", "-c"], input=plain).stdout)
    files = world.files()
    assert evidence_of(files) == {("local-db", "index-not-in-release")}
    assert "differs from the InRelease entry for main/binary-amd64/Packages" in files[0].evidence_reason


def test_deb_whose_sha256_differs_from_packages(tmp_path, keys):
    world = make_world(tmp_path, keys, repo_debs=["igt-1.0"], installed=["igt-1.0"], cached=["igt-1.0-rebuilt"])
    files = world.files()
    assert evidence_of(files) == {("local-db", "deb-hash-mismatch")}
    assert "Packages says" in files[0].evidence_reason


def test_deb_of_another_version_than_installed(tmp_path, keys):
    world = make_world(tmp_path, keys, repo_debs=["igt-1.0", "igt-2.0"], installed=["igt-1.0"], cached=["igt-2.0"])
    files = world.files()
    assert evidence_of(files) == {("local-db", "version-not-in-index")}
    assert "is igt 2.0/all; installed is igt 1.0/all" in files[0].evidence_reason


def test_index_of_another_version_than_installed(tmp_path, keys):
    world = make_world(tmp_path, keys, repo_debs=["igt-2.0"], installed=["igt-1.0"], cached=[])
    files = world.files()
    assert evidence_of(files) == {("local-db", "version-not-in-index")}
    assert "igt:all 1.0 is installed; signed indexes list only 2.0" in files[0].evidence_reason


def control_scripts(deb: Path) -> dict[str, bytes]:
    """The maintainer scripts as ``dpkg-deb --ctrl-tarfile`` extracts them: the independent reference."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(run(["dpkg-deb", "--ctrl-tarfile", deb]).stdout)) as tf:
        for info in tf:
            name = info.name.lstrip("./")
            if info.isreg() and name in ("preinst", "postinst", "prerm", "postrm", "config"):
                out[name] = tf.extractfile(info).read()
    return out


def test_maintainer_scripts_are_package_files_verified_by_the_chain(tmp_path, keys):
    # dpkg executes /var/lib/dpkg/info/<pkg>.<script>; their bytes come from the signed .deb's control.tar.
    debs = ["igt-1.0", "igt-maint-1.0"]
    world = make_world(tmp_path, keys, repo_debs=debs, installed=debs, cached=debs)
    files = {f.path: f for f in world.files("igt-maint")}
    reference = control_scripts(world.debs["igt-maint-1.0"])
    assert set(reference) == set(MAINT_SCRIPTS)
    for name, body in reference.items():
        path = f"/var/lib/dpkg/info/igt-maint:amd64.{name}".encode()  # Multi-Arch: same names them so
        assert files[path].evidence is Evidence.REPO_VERIFIED
        assert files[path].digest == hashlib.sha256(body).digest()
        assert (files[path].kind, files[path].mode) == (FileKind.REGULAR, 0o755)
        assert (world.root / path.decode().lstrip("/")).read_bytes() == body  # dpkg installed them verbatim
    assert not [p for p in files if p.endswith((b".control", b".md5sums", b".list"))]
    # A package without scripts gets none; one whose chain broke gets no evidence for them either.
    assert not [p for p in map(bytes, (f.path for f in world.files("igt"))) if p.startswith(b"/var/lib/dpkg")]
    broken = make_world(tmp_path / "b", keys, repo_debs=["igt-1.0"], installed=debs, cached=["igt-1.0"])
    assert not [f for f in broken.files("igt-maint") if f.path.startswith(b"/var/lib/dpkg")]


def test_local_dpkg_install_stays_local_db_and_says_so(tmp_path, keys):
    world = make_world(tmp_path, keys, repo_debs=["igt-1.0"], installed=["igt-1.0", "igt-local-1.0"], cached=[])
    (f,) = [f for f in world.files("igt-local") if f.digest is not None]
    assert (f.path, f.evidence, f.digest_algo) == (b"/usr/bin/igt-local", Evidence.LOCAL_DB, HashAlgo.MD5)
    assert f.digest == hashlib.md5(b"#!/bin/sh\n").digest()
    assert f.evidence_reason == "no-signed-source: igt-local:all 1.0 is in no signed repository index"
    assert world.source().package("igt-local").origin == ""


def test_missing_deb_is_fetched_through_apt_or_named(tmp_path, keys):
    world = make_world(tmp_path, keys, repo_debs=["igt-1.0"], installed=["igt-1.0"], cached=[])
    files = world.files()
    assert evidence_of(files) == {("local-db", "deb-unavailable")}
    fetched = world.files(fetch=True)  # apt-get -o Dir=ROOT download, then the whole chain again
    assert evidence_of(fetched) == {("repo-verified", "")}
    assert (world.state / "debs" / "igt_1.0_all.deb").read_bytes() == world.debs["igt-1.0"].read_bytes()


def test_verify_in_the_root_agrees_with_dpkg(tmp_path, keys):
    world = make_world(tmp_path, keys, repo_debs=["igt-1.0"], installed=["igt-1.0"], cached=["igt-1.0"])
    changed = world.root / "usr/share/igt/with space"
    changed.write_bytes(b"changed after installation\n")
    (world.root / "usr/bin/igt").unlink()
    proc = subprocess.run(["dpkg", f"--root={world.root}", "--verify", "igt"], capture_output=True, check=False)
    dpkg = parse_dpkg_verify(proc.stdout)
    ours = {f.path: disk_status(world.root, f) for f in world.files() if f.digest is not None}
    assert {p: s for p, s in ours.items() if s != "ok"} == dpkg
    assert dpkg == {b"/usr/share/igt/with space": "digest-mismatch", b"/usr/bin/igt": "missing"}


def test_configured_repository_without_lists_is_not_called_no_signed_source(tmp_path, keys):
    world = make_world(
        tmp_path, keys, repo_debs=["igt-1.0"], installed=["igt-1.0", "igt-local-1.0"], cached=["igt-1.0"]
    )
    with (world.root / "etc/apt/sources.list").open("w") as fh:
        fh.write(f"deb file:{world.repo} never-fetched main\n")
    (f,) = [f for f in world.files("igt-local") if f.digest is not None]
    assert f.evidence_reason.startswith(
        "index-unavailable: igt-local:all 1.0 is in no signed repository index; not read: "
    )
    assert "never-fetched_InRelease: missing" in f.evidence_reason
    assert evidence_of(world.files()) == {("repo-verified", "")}  # what was read still verifies


# --- the apt index cache (where the wanted stanzas of a verified index are) ------------------------


def _cache_records(world) -> list[Path]:
    return sorted((world.state / "apt-index").glob("*.json"))


def test_index_cache_is_root_only_keyed_by_the_verified_hash_and_reused(tmp_path, keys, monkeypatch):
    world = make_world(tmp_path, keys, repo_debs=["igt-1.0"], installed=["igt-1.0"], cached=["igt-1.0"])
    first = world.files()
    (record,) = _cache_records(world)
    plain = run(["lz4", "-dcq", world.lists("_Packages.lz4")]).stdout
    assert record.name == hashlib.sha256(plain).hexdigest() + ".json"  # the digest InRelease lists
    assert record.stat().st_mode & 0o777 == 0o600
    assert record.parent.stat().st_mode & 0o777 == 0o700

    def no_scan(*_a, **_k):
        raise AssertionError("the index was scanned although its record is valid")

    monkeypatch.setattr(debchain.PackagesScanner, "feed", no_scan)
    assert world.files() == first  # same evidence and digests, from the record


def test_index_cache_follows_a_new_index_and_ignores_a_tampered_record(tmp_path, keys):
    world = make_world(tmp_path, keys, repo_debs=["igt-1.0"], installed=["igt-1.0"], cached=["igt-1.0"])
    first = world.files()
    (record,) = _cache_records(world)
    good = record.read_bytes()
    doc = json.loads(good)
    (start, length), = doc["spans"]
    for spans in ([[start + 1, length]], [[start, length + 5]], [[start + 9, length - 9]], [[10**9, 40]]):
        record.write_text(json.dumps(doc | {"spans": spans}))
        assert world.files() == first  # refused record: the whole index is scanned again
    record.write_text("{not json")
    assert world.files() == first

    # The repository moves on (igt 2.0 added, InRelease re-signed, apt-get update): a new record.
    shutil.copy(world.debs["igt-2.0"], world.repo / "pool" / world.debs["igt-2.0"].name)
    packages = run(["apt-ftparchive", "packages", "pool"], cwd=world.repo).stdout
    (world.repo / "dists/test/main/binary-amd64/Packages").write_bytes(packages)
    release = run(["apt-ftparchive", "-oAPT::FTPArchive::Release::Origin=imaguard-test",
                   "-oAPT::FTPArchive::Release::Codename=test", "release", "dists/test"], cwd=world.repo).stdout
    (world.repo / "dists/test/Release").write_bytes(release)
    (world.repo / "dists/test/InRelease").unlink()
    keys.gpg("--local-user", keys.trusted, "--clearsign", "-o", world.repo / "dists/test/InRelease",
             world.repo / "dists/test/Release")
    run(["apt-get", "-q", "-o", f"Dir={world.root}", "-o", "Debug::NoLocking=1", "update"])
    assert world.files() == first  # igt 1.0 is still installed and still listed
    assert len(_cache_records(world)) == 2


def test_a_record_cannot_stand_in_for_an_index_changed_on_disk(tmp_path, keys):
    world = make_world(tmp_path, keys, repo_debs=["igt-1.0"], installed=["igt-1.0"], cached=["igt-1.0"])
    world.files()
    assert _cache_records(world)
    lst = world.lists("_Packages.lz4")
    plain = run(["lz4", "-dcq", lst]).stdout + b"\nPackage: extra\nVersion: 1\nArchitecture: all\nFilename: x\n"
    lst.write_bytes(run(["lz4", "-q", "-c"], input=plain + b"Size: 1\nSHA256: " + b"0" * 64 + b"\n").stdout)
    files = world.files()  # the record's key is the InRelease digest; the bytes no longer hash to it
    assert evidence_of(files) == {("local-db", "index-not-in-release")}


def test_a_record_that_omits_a_package_can_only_lower_its_evidence(tmp_path, keys):
    world = make_world(tmp_path, keys, repo_debs=["igt-1.0"], installed=["igt-1.0"], cached=["igt-1.0"])
    world.files()
    (record,) = _cache_records(world)
    doc = json.loads(record.read_bytes())
    record.write_text(json.dumps(doc | {"spans": []}))
    files = world.files()
    assert evidence_of(files) == {("local-db", "no-signed-source")}  # never signed, never a wrong digest


# --- fetching through apt: what _apt leaves is only read ----------------------------------------


def _fake_apt_get(tmp_path: Path, monkeypatch, body: str) -> None:
    """An apt-get on PATH that plays a compromised _apt: ``body`` runs in the download directory."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "apt-get"
    exe.write_text(f"#!/bin/sh\nset -e\n{body}\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def _victim(tmp_path: Path) -> tuple[Path, tuple[int, int, int]]:
    victim = tmp_path / "victim"
    victim.write_text("secret\n")
    os.chown(victim, 65534, 65534)
    victim.chmod(0o600)
    st = victim.stat()
    return victim, (st.st_uid, st.st_gid, st.st_mode)


@pytest.mark.parametrize(("link", "what"), [("ln -s", "a symlink"), ("ln", "a hard link")])
def test_regression_fetch_never_chowns_what_apt_left_behind_a_link(tmp_path, monkeypatch, link, what):
    victim, before = _victim(tmp_path)
    _fake_apt_get(tmp_path, monkeypatch, f'{link} {victim} "$PWD/hello_1.0-1_amd64.deb"')
    layout = aptrepo.AptLayout.read(Path("/"))
    with pytest.raises(
        debchain.ChainError, match=f"hello_1.0-1_amd64.deb: apt's download is {what}, not a .deb"
    ) as err:
        aptrepo.fetch_deb(layout, tmp_path / "debs", "hello", "1.0-1", "amd64", max_size=1 << 20)
    assert err.value.code is debchain.ChainReason.DEB_UNAVAILABLE
    st = victim.stat()
    assert (st.st_uid, st.st_gid, st.st_mode) == before
    assert victim.read_text() == "secret\n"
    assert sorted(p.name for p in (tmp_path / "debs").iterdir()) == []


def test_fetch_copies_apt_download_into_a_root_owned_file(tmp_path, monkeypatch):
    _fake_apt_get(tmp_path, monkeypatch, 'printf deb > "$PWD/hello_1.0-1_amd64.deb"; chown 65534 "$PWD"/*.deb')
    layout = aptrepo.AptLayout.read(Path("/"))
    got = aptrepo.fetch_deb(layout, tmp_path / "debs", "hello", "1.0-1", "amd64", max_size=1 << 20)
    assert got == tmp_path / "debs" / "hello_1.0-1_amd64.deb"
    st = got.lstat()
    assert (st.st_uid, st.st_gid, st.st_mode, st.st_nlink) == (0, 0, 0o100644, 1)
    assert got.read_bytes() == b"deb"
    assert [p.name for p in (tmp_path / "debs").iterdir()] == [got.name]  # the temp dir and temp file are gone
    # A missing download is "apt cannot", not an error.
    (tmp_path / "other").mkdir()
    _fake_apt_get(tmp_path / "other", monkeypatch, "true")
    assert aptrepo.fetch_deb(layout, tmp_path / "d2", "hello", "1.0-1", "amd64", max_size=1 << 20) is None


@pytest.mark.parametrize("tamper", ["other-deb", "same-size"])
def test_regression_a_deb_that_is_not_the_signed_one_is_never_parsed(tmp_path, keys, monkeypatch, tamper):
    # Decompressing and parsing are the attack surface (r6: a 61 KB .deb made tarfile take 924 MiB):
    # only the .deb whose size and SHA256 the signed index gives may reach them.
    world = make_world(tmp_path, keys, repo_debs=["igt-1.0"], installed=["igt-1.0"], cached=["igt-1.0-rebuilt"])
    cached = world.root / "var/cache/apt/archives/igt_1.0_all.deb"
    if tamper == "same-size":
        good = world.debs["igt-1.0"].read_bytes()
        cached.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    parsed: list[str] = []

    def spy(fd: int, name: str, **kw):
        parsed.append(name)
        return read_deb(fd, name, **kw)

    monkeypatch.setattr(deb_module, "read_deb", spy)
    files = world.files()
    assert evidence_of(files) == {("local-db", "deb-hash-mismatch")}
    assert parsed == []
    shutil.copy(world.debs["igt-1.0"], cached)
    assert evidence_of(world.files()) == {("repo-verified", "")}
    assert parsed == [str(cached)]
