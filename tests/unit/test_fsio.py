"""fsio's shared primitives: exact directory modes under any umask, the state-directory check,
the bounded regular-file reader (run as root on the host: chown and other uids are real)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from imaguard.errors import HostStateError
from imaguard.fsio import (
    check_private_directory,
    ensure_directory,
    ensure_private_directory,
    read_open_regular,
    read_regular,
)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def umask_000():
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_ensure_directory_gives_exact_modes_under_umask_000(tmp_path, umask_000):
    leaf = tmp_path / "a" / "b" / "state"
    ensure_directory(leaf)
    assert (_mode(tmp_path / "a"), _mode(tmp_path / "a" / "b"), _mode(leaf)) == (0o755, 0o755, 0o700)
    ensure_directory(tmp_path / "pub", mode=0o755)
    assert _mode(tmp_path / "pub") == 0o755


def test_ensure_directory_leaves_an_existing_directory_and_refuses_a_file(tmp_path):
    existing = tmp_path / "d"
    existing.mkdir(mode=0o750)
    existing.chmod(0o750)
    ensure_directory(existing)
    assert _mode(existing) == 0o750
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError):
        ensure_directory(tmp_path / "f")
    with pytest.raises(NotADirectoryError):
        ensure_directory(tmp_path / "f" / "sub")


def test_check_private_directory_accepts_root_owned_dirs_under_sticky_tmp(tmp_path):
    d = tmp_path / "state"
    ensure_directory(d)
    check_private_directory(d)  # tmp_path lies under /tmp (1777, sticky): fine above the leaf


@pytest.mark.parametrize("gid", [0, 100])  # root's group too: its members are not root
@pytest.mark.parametrize("mode", [0o777, 0o775, 0o1777, 0o702, 0o770])
def test_check_private_directory_refuses_a_directory_others_can_write(tmp_path, mode, gid):
    d = tmp_path / "state"
    d.mkdir()
    os.chown(d, 0, gid)
    d.chmod(mode)
    with pytest.raises(HostStateError) as err:
        check_private_directory(d)
    assert err.value.reason == "unsafe-state-dir"
    assert str(err.value) == (f"{d}: the state directory is writable by other users (mode {mode:04o}); what it "
                              "holds is trusted, so it must be writable by root only (chown root, chmod go-w)")


def test_check_private_directory_refuses_another_owner_and_an_unsafe_parent(tmp_path):
    d = tmp_path / "theirs"
    d.mkdir()
    os.chown(d, 65534, 65534)
    with pytest.raises(HostStateError, match=r"is owned by uid 65534; "):
        check_private_directory(d)
    parent = tmp_path / "open"
    parent.mkdir()
    parent.chmod(0o777)  # not sticky: another user could rename state/ away and put theirs there
    (parent / "state").mkdir()
    with pytest.raises(HostStateError) as err:
        check_private_directory(parent / "state")
    assert f"lies under {parent}, which is writable by other users (mode 0777)" in str(err.value)


def test_check_private_directory_judges_a_symlink_by_its_target(tmp_path):
    target = tmp_path / "real"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    check_private_directory(tmp_path / "link")
    target.chmod(0o777)
    with pytest.raises(HostStateError, match="writable by other users"):
        check_private_directory(tmp_path / "link")


def test_read_regular_reads_bounded_and_refuses_links_fifos_devices(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"12345")
    assert read_regular(f, 5) == b"12345"
    with pytest.raises(OSError, match="larger than 4 bytes") as err:
        read_regular(f, 4)
    assert err.value.errno == errno.EFBIG
    (tmp_path / "link").symlink_to(f)
    with pytest.raises(OSError, match="Too many levels of symbolic links") as err:
        read_regular(tmp_path / "link", 100)
    assert err.value.errno == errno.ELOOP
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError, match="not a regular file") as err:
        read_regular(tmp_path / "fifo", 100)  # O_NONBLOCK: returns at once, no writer needed
    assert err.value.errno == errno.EINVAL
    with pytest.raises(OSError, match="not a regular file") as err:
        read_regular(Path("/dev/zero"), 100)
    assert err.value.errno == errno.EINVAL
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert read_regular(Path("f"), 10, dir_fd=dfd) == b"12345"
    finally:
        os.close(dfd)


def test_read_open_regular_bounds_a_descriptor_and_refuses_a_fifo_or_a_sparse_giant(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"12345")
    fd = os.open(f, os.O_RDONLY)
    try:
        assert read_open_regular(fd, 5, "f") == b"12345"
    finally:
        os.close(fd)
    os.truncate(f, 1 << 40)  # 1 TiB, sparse: refused from its size, before a byte is read
    fd = os.open(f, os.O_RDONLY)
    try:
        with pytest.raises(OSError, match="larger than 4096 bytes") as err:
            read_open_regular(fd, 4096, "f")
        assert (err.value.errno, err.value.filename) == (errno.EFBIG, "f")
    finally:
        os.close(fd)
    os.mkfifo(tmp_path / "fifo")
    fd = os.open(tmp_path / "fifo", os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(OSError, match="not a regular file") as err:
            read_open_regular(fd, 100, "fifo")
        assert err.value.errno == errno.EINVAL
    finally:
        os.close(fd)


def test_ensure_private_directory_makes_0700_and_judges_what_it_found_above(tmp_path, umask_000):
    ensure_private_directory(tmp_path / "a" / "state")
    assert (_mode(tmp_path / "a"), _mode(tmp_path / "a" / "state")) == (0o755, 0o700)
    (tmp_path / "open").mkdir(mode=0o777)  # made by someone else before us, under umask 000
    with pytest.raises(HostStateError) as err:
        ensure_private_directory(tmp_path / "open" / "state")
    assert err.value.reason == "unsafe-state-dir"
    assert _mode(tmp_path / "open" / "state") == 0o700  # made, then refused: nothing is trusted in it
