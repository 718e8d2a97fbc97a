"""With --root, trust anchors come from the host (or --trusted-keyring), never from the image.

Regression of the audit finding (reproduced in /tmp/audit-4): an image that ships its own key (in
its trusted.gpg.d, as an inline Signed-By block, at a Signed-By path, or through its own apt.conf)
next to a repository signed with it got that repository's packages ``repo-verified``, so
``enroll --source local --root`` and ``imaguard-keyring bundle --root`` signed whatever the image
wanted. Each world here is a real signed repository (debworld: apt-ftparchive, gpg, apt-get
update, dpkg --root) whose key the host does not hold.
"""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import pytest
from debworld import make_keys, make_world

from imaguard.cli.main import main
from imaguard.packages import aptrepo, debchain
from imaguard.packages.deb import DebSource
from imaguard_keyring.cli import main as keyring_main

pytestmark = pytest.mark.root

SELF_ANCHORED = "(trust anchors: this host's apt keyrings, never the image's; --trusted-keyring replaces them)"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    with make_keys(tmp_path_factory.mktemp("gnupg")) as k:
        yield k


def _image(tmp_path: Path, keys, form: str):
    """A world whose root vouches for its own repository in the way ``form`` names."""
    world = make_world(tmp_path, keys, repo_debs=["igt-1.0"], installed=["igt-1.0"], cached=["igt-1.0"])
    sources = world.root / "etc/apt/sources.list.d/test.sources"
    head = sources.read_bytes().split(b"Signed-By:")[0]
    binary = keys.gpg("--export", keys.trusted).stdout
    if form == "trusted.gpg.d":  # the audit's reproducer: the image's default keyrings
        (world.root / "etc/apt/trusted.gpg.d/evil.gpg").write_bytes(binary)
        sources.write_bytes(head)
    elif form == "own-apt-conf":  # the image's apt.conf points trusted.gpg.d somewhere of its own
        (world.root / "etc/apt/evil.d").mkdir()
        (world.root / "etc/apt/evil.d/evil.gpg").write_bytes(binary)
        (world.root / "etc/apt/apt.conf.d/99evil").write_text('Dir::Etc::TrustedParts "/etc/apt/evil.d";\n')
        sources.write_bytes(head)
    elif form == "signed-by-image-only-path":  # a keyring file the host does not have
        (world.root / "etc/apt/keyrings/imaguard-test-evil.gpg").write_bytes(binary)
        sources.write_bytes(head + b"Signed-By: /etc/apt/keyrings/imaguard-test-evil.gpg\n")
    elif form == "signed-by-host-path":  # the image's file at a path where the host has another keyring
        host = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
        assert host.is_file(), "the host has debian-archive-keyring (scripts/setup.sh)"
        (world.root / "usr/share/keyrings").mkdir(parents=True)
        (world.root / "usr/share/keyrings/debian-archive-keyring.gpg").write_bytes(binary)
        sources.write_bytes(head + f"Signed-By: {host}\n".encode())
    elif form == "signed-by-mount-point":  # review: the image guesses where it is mounted on the host
        (world.root / "etc/apt/keyrings/evil.gpg").write_bytes(binary)
        sources.write_bytes(head + f"Signed-By: {world.root}/etc/apt/keyrings/evil.gpg\n".encode())
    elif form == "signed-by-proc-cwd":  # review: an operator who ran `cd IMAGE; imaguard … --root .`
        (world.root / "etc/apt/keyrings/evil.gpg").write_bytes(binary)
        sources.write_bytes(head + b"Signed-By: /proc/self/cwd/etc/apt/keyrings/evil.gpg\n")
    elif form == "signed-by-user-file":  # review: a file any local user could put in /tmp
        planted = tmp_path / "planted" / "evil.gpg"
        planted.parent.mkdir(mode=0o755)
        planted.write_bytes(binary)
        os.chown(planted, 65534, 65534)
        sources.write_bytes(head + f"Signed-By: {planted}\n".encode())
    elif form == "signed-by-fifo":  # review: a FIFO hung the chain, /dev/zero would read forever
        fifo = tmp_path / "anchor.fifo"
        os.mkfifo(fifo)
        sources.write_bytes(head + f"Signed-By: {fifo}\n".encode())
    else:
        assert form == "inline"  # make_world's own form: a key block in the image's .sources
    return world


def _files(world, *, anchors=()):
    source = DebSource(world.root, world.state, fetch=False, trusted_keyrings=anchors)
    return {f.path: f for f in source.files(source.package("igt"))}


@pytest.mark.parametrize(
    ("form", "why"),
    [
        ("trusted.gpg.d", "no signature by a trusted key"),
        ("own-apt-conf", "no signature by a trusted key"),
        ("signed-by-host-path", "no signature by a trusted key"),
        ("signed-by-image-only-path", "Signed-By /etc/apt/keyrings/imaguard-test-evil.gpg: no such keyring on this host"),
        ("inline", "Signed-By is a key block the image carries itself, no trust anchor"),
        ("signed-by-mount-point", "/etc/apt/keyrings/evil.gpg: lies in the image ("),
        ("signed-by-proc-cwd", "Signed-By /proc/self/cwd/etc/apt/keyrings/evil.gpg: lies in the image ("),
        ("signed-by-user-file", "evil.gpg: owned by uid 65534 with mode 0644 (root's alone: 0644), no trust anchor"),
        ("signed-by-fifo", "anchor.fifo: cannot read: not a regular file, no trust anchor"),
    ],
)
def test_regression_an_image_cannot_vouch_for_its_own_repository(tmp_path, keys, form, why, monkeypatch):
    world = _image(tmp_path, keys, form)
    monkeypatch.chdir(world.root)  # for signed-by-proc-cwd; harmless for the others
    files = _files(world)
    igt = files[b"/usr/bin/igt"]
    # dpkg's MD5 stays a hint (never signed without the loud override), and the reason says why.
    assert (str(igt.evidence), igt.digest_algo.kernel_name) == ("local-db", "md5")
    assert igt.evidence_reason.startswith("untrusted-release: ")
    assert why in igt.evidence_reason
    assert igt.evidence_reason.endswith(SELF_ANCHORED)
    assert not [f for f in files.values() if str(f.evidence) == "repo-verified"]
    # The same repository verifies once its key is a trust anchor given on purpose.
    anchored = _files(world, anchors=(world.keyring,))
    assert anchored[b"/usr/bin/igt"].evidence_reason == ""
    assert str(anchored[b"/usr/bin/igt"].evidence) == "repo-verified"


def test_trusted_keyring_replaces_the_host_anchors_too(tmp_path, keys):
    # A key the repository was not signed with: nothing verifies, and the reason names the file given.
    world = make_world(tmp_path, keys, repo_debs=["igt-1.0"], installed=["igt-1.0"], cached=["igt-1.0"])
    other = tmp_path / "other.gpg"
    other.write_bytes(keys.gpg("--export", keys.untrusted).stdout)
    igt = _files(world, anchors=(other,))[b"/usr/bin/igt"]
    assert str(igt.evidence) == "local-db"
    assert igt.evidence_reason.endswith(f"(trust anchors: --trusted-keyring {other})")
    # Several files: any of their keys counts.
    assert str(_files(world, anchors=(other, world.keyring))[b"/usr/bin/igt"].evidence) == "repo-verified"


def _cli_files(capsys, world, *extra):
    code = main(["packages", "files", "igt", "--root", str(world.root), "--state-dir", str(world.state),
                 "--no-fetch", "--json", *extra])
    out = capsys.readouterr()
    assert "Traceback" not in out.err, out.err
    return code, {f["path"]: f for f in json.loads(out.out)["files"]} if code == 0 else out.err


def test_packages_files_cli(tmp_path, keys, capsys):
    world = _image(tmp_path, keys, "trusted.gpg.d")
    code, files = _cli_files(capsys, world)
    assert code == 0
    assert files["/usr/bin/igt"]["evidence"] == "local-db"
    assert files["/usr/bin/igt"]["evidence_reason"].endswith(SELF_ANCHORED)
    code, files = _cli_files(capsys, world, "--trusted-keyring", str(world.keyring))
    assert code == 0
    assert files["/usr/bin/igt"]["evidence"] == "repo-verified"
    # A --trusted-keyring that is missing or no keyring is the user's mistake: one line, exit 2.
    code, err = _cli_files(capsys, world, "--trusted-keyring", str(tmp_path / "nope.gpg"))
    assert (code, err) == (2, f"imaguard: error: --trusted-keyring {tmp_path}/nope.gpg: cannot read: "
                              "No such file or directory\n")
    code, err = _cli_files(capsys, world, "--trusted-keyring", str(world.root / "etc/apt/sources.list.d/test.sources"))
    assert code == 2
    assert "neither a binary keyring nor an armored public key block" in err


def _enroll(capsys, world, key, *extra):
    code = main(["enroll", "--source", f"local:{key.key}", "--cert", str(key.cert_pem), "--root", str(world.root),
                 "--state-dir", str(world.state), "--no-fetch", "--json", *extra])
    out = capsys.readouterr()
    assert "Traceback" not in out.err, out.err
    return code, json.loads(out.out)


@pytest.mark.parametrize("form", ["trusted.gpg.d", "inline"])
def test_enroll_local_does_not_sign_what_only_the_image_vouches_for(tmp_path, keys, keypair, capsys, form):
    world = _image(tmp_path, keys, form)
    key = keypair("rsa2048")
    binary = world.root / "usr/bin/igt"
    code, doc = _enroll(capsys, world, key)
    assert code == 0, doc
    (igt,) = [f for f in doc["files"] if f["path"] == "/usr/bin/igt"]
    assert (igt["outcome"], igt["reason"]) == ("skipped", "local-db-evidence")
    with pytest.raises(OSError):  # noqa: PT011 - ENODATA: nothing written
        os.getxattr(binary, "security.ima")
    code, doc = _enroll(capsys, world, key, "--trusted-keyring", str(world.keyring))
    assert code == 0, doc
    assert {(s["outcome"], s["reason"]): s["files"] for s in doc["summary"]}[("signed", "")] == 1
    assert main(["verify", "--cert", str(key.cert_pem), str(binary)]) == 0


def test_keyring_bundle_includes_only_host_or_given_anchors(tmp_path, keys, keypair, capsys):
    world = _image(tmp_path, keys, "trusted.gpg.d")
    ima, authority = keypair("rsa2048", "bundle-ima"), keypair("p256", "authority")
    argv = ["bundle", "igt", "--ima-key", str(ima.key), "--ima-cert", str(ima.cert_pem),
            "--authority-key", str(authority.key), "--authority-cert", str(authority.cert_pem),
            "--root", str(world.root), "--state-dir", str(world.state), "--json"]
    assert keyring_main([*argv, "--out", str(tmp_path / "b1")]) == 0
    assert [b["files"] for b in json.loads(capsys.readouterr().out)["bundles"]] == [0]
    assert keyring_main([*argv, "--out", str(tmp_path / "b2"), "--trusted-keyring", str(world.keyring)]) == 0
    assert [b["files"] for b in json.loads(capsys.readouterr().out)["bundles"]] == [4]  # IGT_1's regular files


# --- fetching: apt's sandbox user must reach the download directory (else apt runs as root) -------


def _fake_apt_get(tmp_path: Path, monkeypatch, body: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "apt-get"
    exe.write_text(f"#!/bin/sh\nset -e\n{body}\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def test_regression_apt_downloads_as_apt_although_the_state_dir_is_root_only(tmp_path, monkeypatch):
    pwd.getpwnam("_apt")  # apt's sandbox user: present wherever apt is
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    # What apt does in the sandbox, as _apt itself: a directory it cannot reach made apt fall back to root.
    _fake_apt_get(tmp_path, monkeypatch,
                  "setpriv --reuid=_apt --regid=nogroup --clear-groups sh -c 'printf deb > hello_1.0-1_amd64.deb'\n"
                  'pwd > "$0.cwd"')
    layout = aptrepo.AptLayout.read(Path("/"))
    got = aptrepo.fetch_deb(layout, state / "debs", "hello", "1.0-1", "amd64", max_size=1 << 20)
    assert got == state / "debs/hello_1.0-1_amd64.deb"
    assert got.read_bytes() == b"deb"
    assert (state.stat().st_mode & 0o777, (state / "debs").stat().st_mode & 0o777) == (0o700, 0o700)
    cwd = Path((tmp_path / "bin/apt-get.cwd").read_text().strip())
    assert cwd.parent.parent == Path("/var/tmp")
    assert not cwd.parent.exists()  # removed after the copy


def test_regression_a_state_dir_that_is_a_file_is_named_not_a_traceback(tmp_path, keys, capsys):
    world = make_world(tmp_path, keys, repo_debs=["igt-1.0"], installed=["igt-1.0"], cached=[])
    state = tmp_path / "statefile"
    state.touch()
    code = main(["packages", "files", "igt", "--root", str(world.root), "--state-dir", str(state),
                 "--trusted-keyring", str(world.keyring), "--json"])
    out = capsys.readouterr()
    assert "Traceback" not in out.err, out.err
    assert code == 0
    igt = {f["path"]: f for f in json.loads(out.out)["files"]}["/usr/bin/igt"]
    assert igt["evidence"] == "local-db"
    assert igt["evidence_reason"] == (
        f"deb-unavailable: {state}/debs: cannot make the download directory: Not a directory"
    )
    with pytest.raises(debchain.ChainError, match="Not a directory"):
        aptrepo.fetch_deb(aptrepo.AptLayout.read(Path("/")), state / "debs", "igt", "1.0", "all", max_size=1 << 20)
