"""Fixtures for the root tier: IMA keys made by openssl, evmctl, and mounts that refuse xattrs for real.

Mounts are always taken down in teardown, even when the test failed, after ``chattr -i -a`` so that
pytest can remove its temporary directories.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import TYPE_CHECKING

import pytest
from rootlib import KeyPair, OpenWatch, ext4_image, make_keypair, mounted, run

from imaguard.cli.main import main

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


@pytest.fixture(autouse=True)
def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("root tier: needs root on the host (security.* xattrs, mounts, chattr)")


@pytest.fixture(scope="session")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., KeyPair]:
    """``keypair(kind, label="main")``: one openssl key per (kind, label) for the session (RSA-4096 is slow)."""
    directory = tmp_path_factory.mktemp("keys")
    cache: dict[tuple[str, str], KeyPair] = {}

    def get(kind: str, label: str = "main") -> KeyPair:
        if (kind, label) not in cache:
            cache[kind, label] = make_keypair(directory, kind, label)
        return cache[kind, label]

    return get


@pytest.fixture(scope="session")
def evmctl() -> str:
    """Path of evmctl; its absence fails the root tier instead of skipping it."""
    path = shutil.which("evmctl")
    if path is None:
        pytest.fail("evmctl (Debian package ima-evm-utils) is required by the root tier")
    return path


@pytest.fixture
def imaguard_json(capsys: pytest.CaptureFixture[str]) -> Callable[[list[str]], tuple[int, dict[str, object]]]:
    """Run ``imaguard ARGV --json`` in-process; return the exit code and the parsed JSON document."""

    def call(argv: list[str]) -> tuple[int, dict[str, object]]:
        capsys.readouterr()
        code = main([*argv, "--json"])
        out, err = capsys.readouterr()
        assert "Traceback" not in err, err
        return code, json.loads(out)

    return call


@pytest.fixture(name="run")
def _run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, dict[str, object], str]]:
    """``run(*argv)``: ``imaguard ARGV --json``: exit code, the JSON document, stderr (never a traceback)."""

    def call(*argv: str) -> tuple[int, dict[str, object], str]:
        capsys.readouterr()
        code = main([*argv, "--json"])
        out, err = capsys.readouterr()
        assert "Traceback" not in err, err
        return code, json.loads(out), err

    return call


@pytest.fixture
def ext4_dir(tmp_path: Path) -> Iterator[Path]:
    """A fresh ext4 filesystem on a loop image (chattr +i works here)."""
    with ext4_image(tmp_path, 16, []) as mnt:
        yield mnt


@pytest.fixture
def ext4_tight_xattr_dir(tmp_path: Path) -> Iterator[Path]:
    """ext4 with 1 KiB blocks and 128-byte inodes: no in-inode xattrs, one 1 KiB block holds them all."""
    with ext4_image(tmp_path, 16, ["-b", "1024", "-I", "128", "-O", "^ea_inode"]) as mnt:
        yield mnt


@pytest.fixture
def ramfs_dir(tmp_path: Path) -> Iterator[Path]:
    """ramfs has no xattr handlers: getxattr/setxattr of security.ima fail with EOPNOTSUPP."""
    with mounted(["-t", "ramfs", "ramfs"], tmp_path / "ramfs") as mnt:
        yield mnt


@pytest.fixture
def ro_bind(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(rw, ro): one directory, writable, and the same through a read-only bind mount."""
    rw = tmp_path / "rw"
    rw.mkdir()
    with mounted(["--bind", str(rw)], tmp_path / "ro") as ro:
        run(["mount", "-o", "remount,bind,ro", str(ro)])
        yield rw, ro


@pytest.fixture
def tmpfs_dir(tmp_path: Path) -> Iterator[Path]:
    """A private tmpfs (supports security.* xattrs) big enough for a copy of /usr/bin and its libraries."""
    with mounted(["-t", "tmpfs", "-o", "size=3g,mode=0755", "tmpfs"], tmp_path / "tmpfs") as mnt:
        yield mnt


@pytest.fixture
def open_watch() -> Iterator[OpenWatch]:
    watch = OpenWatch()
    try:
        yield watch
    finally:
        watch.close()
