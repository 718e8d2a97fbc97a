"""A throw-away signed apt repository and a dpkg root installed from it (real apt, gpg, dpkg).

Shared by the deb, packages CLI and enrollment tests: ``make_world`` builds the repository with
``apt-ftparchive``, signs it with a key made in a temporary GNUPGHOME, writes the root's lists
with ``apt-get -o Dir=ROOT update`` and installs with ``dpkg --root``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from imaguard.packages.deb import DebSource

__all__ = ["IGT_1", "MAINT_SCRIPTS", "Keys", "World", "build_deb", "make_keys", "make_world", "need", "reserialise_bundle",
           "run"]


def run(argv, **kw) -> subprocess.CompletedProcess[bytes]:
    kw.setdefault("capture_output", True)
    proc = subprocess.run([str(a) for a in argv], check=False, **kw)
    assert proc.returncode == 0, (argv, proc.stdout[-2000:], proc.stderr[-2000:])
    return proc


def need(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"the deb tier needs {missing} (scripts/setup.sh: apt-utils, gpg, gpgv, dpkg-dev, lz4)")


# --- a throw-away repository --------------------------------------------------------------------


@dataclass
class Keys:
    home: Path
    trusted: str
    untrusted: str

    def gpg(self, *args, **kw):
        return run(["gpg", "--batch", "--quiet", "--homedir", self.home, *args], **kw)


@contextlib.contextmanager
def make_keys(home: Path) -> Iterator[Keys]:
    """Two throw-away OpenPGP keys in ``home``: one the repository signs with, one nobody trusts."""
    need("gpg", "gpgv")
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)
    fprs = []
    for uid in ("imaguard repo <repo@example.org>", "someone else <evil@example.org>"):
        run(
            [
                "gpg",
                "--batch",
                "--quiet",
                "--homedir",
                home,
                "--passphrase",
                "",
                "--quick-gen-key",
                uid,
                "ed25519",
                "sign",
                "never",
            ]
        )
        out = run(["gpg", "--batch", "--homedir", home, "--with-colons", "--fingerprint", uid]).stdout
        fprs.append(re.search(rb"^fpr:+([0-9A-F]{40}):", out, re.M).group(1).decode())
    try:
        yield Keys(home, *fprs)
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], check=False)


def build_deb(
    out: Path,
    name: str,
    version: str,
    files: dict[bytes, bytes],
    comp: str = "xz",
    *,
    arch: str = "all",
    scripts: dict[str, bytes] | None = None,
    extra_control: str = "",
) -> Path:
    tree = out / f"tree-{name}-{version}-{len(files)}-{comp}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: t <t@example.org>\n"
        f"Description: test\n{extra_control}"
    )
    for script, body in (scripts or {}).items():
        (tree / "DEBIAN" / script).write_bytes(body)
        (tree / "DEBIAN" / script).chmod(0o755)
    conffiles = [p for p in files if p.startswith(b"/etc/")]
    if conffiles:
        (tree / "DEBIAN" / "conffiles").write_bytes(b"".join(p + b"\n" for p in conffiles))
    for path, data in files.items():
        target = tree / os.fsdecode(path.lstrip(b"/"))  # surrogateescape: the raw bytes on disk
        target.parent.mkdir(parents=True, exist_ok=True)
        if data.startswith(b"->"):
            target.symlink_to(os.fsdecode(data[2:]))
        else:
            target.write_bytes(data)
            target.chmod(0o755 if b"/bin/" in path else 0o644)
    deb = out / f"{tree.name}.deb"  # unique: the rebuilt 1.0 must not overwrite the real one
    run(["dpkg-deb", f"-Z{comp}", "--root-owner-group", "--build", tree, deb])
    return deb


# Maintainer scripts: dpkg runs them chrootless (--force-script-chrootless) on the host, so they do nothing.
MAINT_SCRIPTS = {
    "postinst": b"#!/bin/sh\n# igt-maint postinst: does nothing\nexit 0\n",
    "prerm": b"#!/bin/sh\n# igt-maint prerm: does nothing\nexit 0\n",
}

IGT_1 = {
    b"/usr/share/igt/with space": b"space\n",
    b"/usr/share/igt/caf\xe9": b"latin-1 name\n",
    b"/usr/share/igt/link": b"->with space",
    b"/usr/bin/igt": b"#!/bin/sh\necho igt\n",
    b"/etc/igt.conf": b"setting=1\n",
}


@dataclass
class World:
    root: Path
    repo: Path
    state: Path
    keys: Keys
    debs: dict[str, Path]
    keyring: Path  # the repository's key, outside the root: the --trusted-keyring its checks need

    def source(self, *, fetch=False) -> DebSource:
        # Keys the root carries (its inline Signed-By) are no trust anchor for another root.
        return DebSource(self.root, self.state, fetch=fetch, trusted_keyrings=(self.keyring,))

    @property
    def root_args(self) -> list[str]:
        """``--root`` for the CLI, with the repository's key as the trust anchor it needs."""
        return ["--root", str(self.root), "--trusted-keyring", str(self.keyring)]

    def files(self, name="igt", *, fetch=False):
        source = self.source(fetch=fetch)
        return list(source.files(source.package(name)))

    def lists(self, suffix: str) -> Path:
        (path,) = (self.root / "var/lib/apt/lists").glob(f"*{suffix}")
        return path


def make_world(tmp: Path, keys: Keys, *, repo_debs: list[str], installed: list[str], cached: list[str]) -> World:
    """Repo with ``repo_debs``, root with ``installed`` (dpkg --root -i) and apt's cache holding ``cached``."""
    need("apt-ftparchive", "dpkg-deb", "apt-get", "lz4")
    out = tmp / "debs"
    out.mkdir(parents=True)
    debs = {
        "igt-1.0": build_deb(out, "igt", "1.0", IGT_1, comp="zstd"),
        "igt-1.0-rebuilt": build_deb(out, "igt", "1.0", {**IGT_1, b"/usr/bin/igt": b"#!/bin/sh\necho evil\n"}),
        "igt-2.0": build_deb(out, "igt", "2.0", {**IGT_1, b"/usr/share/igt/with space": b"v2\n"}),
        "igt-local-1.0": build_deb(out, "igt-local", "1.0", {b"/usr/bin/igt-local": b"#!/bin/sh\n"}),
        # Multi-Arch: same, so dpkg names its info files igt-maint:amd64.*; it ships maintainer scripts.
        "igt-maint-1.0": build_deb(out, "igt-maint", "1.0", {b"/usr/lib/igt-maint/data": b"d\n"}, arch="amd64",
                                   scripts=MAINT_SCRIPTS, extra_control="Multi-Arch: same\n"),
    }
    repo = tmp / "repo"
    (repo / "pool").mkdir(parents=True)
    (repo / "dists/test/main/binary-amd64").mkdir(parents=True)
    for key in repo_debs:
        shutil.copy(debs[key], repo / "pool" / debs[key].name)
    packages = run(["apt-ftparchive", "packages", "pool"], cwd=repo).stdout
    (repo / "dists/test/main/binary-amd64/Packages").write_bytes(packages)
    conf = [
        f"-oAPT::FTPArchive::Release::{k}={v}"
        for k, v in (
            ("Origin", "imaguard-test"),
            ("Suite", "test"),
            ("Codename", "test"),
            ("Components", "main"),
            ("Architectures", "amd64"),
        )
    ]
    release = run(["apt-ftparchive", *conf, "release", "dists/test"], cwd=repo).stdout
    (repo / "dists/test/Release").write_bytes(release)
    keys.gpg(
        "--local-user", keys.trusted, "--clearsign", "-o", repo / "dists/test/InRelease", repo / "dists/test/Release"
    )

    root = tmp / "root"
    for d in (
        "etc/apt/sources.list.d",
        "etc/apt/apt.conf.d",
        "etc/apt/preferences.d",
        "etc/apt/trusted.gpg.d",
        "etc/apt/keyrings",
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
    ):
        (root / d).mkdir(parents=True)
    for f in ("status", "available"):
        (root / "var/lib/dpkg" / f).touch()
    # Inline Signed-By (deb822): what apt -o Dir=ROOT update verifies with. imaguard never takes a key
    # from the root it inspects: its checks get the same key as --trusted-keyring (World.keyring).
    armored = keys.gpg("--armor", "--export", keys.trusted).stdout
    folded = b"\n".join(b" " + (ln or b".") for ln in armored.rstrip(b"\n").split(b"\n"))
    (root / "etc/apt/sources.list.d/test.sources").write_bytes(
        f"Types: deb\nURIs: file:{repo}\nSuites: test\nComponents: main\nSigned-By:\n".encode() + folded + b"\n"
    )
    run(["apt-get", "-q", "-o", f"Dir={root}", "-o", "Debug::NoLocking=1", "update"])
    for key in installed:
        run(["dpkg", f"--root={root}", "--force-script-chrootless", "--log=/dev/null", "-i", debs[key]])
    for key in cached:
        apt_name = "igt-maint_1.0_amd64.deb" if key.startswith("igt-maint") else "igt_1.0_all.deb"
        shutil.copy(debs[key], root / "var/cache/apt/archives" / apt_name)  # the name apt gives it
    keyring = tmp / "repo-key.asc"
    keyring.write_bytes(armored)
    return World(root, repo, tmp / "state", keys, debs, keyring)


def reserialise_bundle(path: Path) -> None:
    """Rewrite a bundle's payload with the same meaning but other bytes: its DSSE signature, which
    covers the bytes, no longer verifies (a bundle tampered with in transit)."""
    env = json.loads(path.read_bytes())
    payload = json.loads(base64.b64decode(env["payload"]))
    payload["package"]["version"] = "1.0"
    env["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    path.write_text(json.dumps(env))
