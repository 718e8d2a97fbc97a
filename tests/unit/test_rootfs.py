"""--root trees are resolved inside the tree: absolute symlinks never reach the host."""

from __future__ import annotations

import os

import pytest

from imaguard.errors import HostStateError
from imaguard.ima import xattr_store
from imaguard.rootfs import Root


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/tool").write_bytes(b"inside")
    (tmp_path / "bin").symlink_to("usr/bin")  # merged-/usr style, relative
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/alt").symlink_to("/usr/bin/tool")  # absolute: must mean <root>/usr/bin/tool
    (tmp_path / "escape").symlink_to("/etc")  # absolute: must not mean the host's /etc
    return tmp_path


def test_paths_resolve_inside_the_root(tree):
    root = Root.at(tree)
    try:
        with xattr_store.open_regular(b"/bin/tool", root) as (fd, _st):
            assert os.pread(fd, 100, 0) == b"inside"
        assert root.readlink(b"/etc/alt") == b"/usr/bin/tool"
        fd = root.open(b"/etc/alt", os.O_RDONLY)  # a followed absolute link stays inside
        assert os.pread(fd, 100, 0) == b"inside"
        os.close(fd)
        with pytest.raises(FileNotFoundError):
            root.open(b"/escape/passwd", os.O_RDONLY)
    finally:
        root.close()


def test_final_symlink_is_not_followed_and_named_with_the_root(tree):
    root = Root.at(tree)
    try:
        with pytest.raises(HostStateError) as err, xattr_store.open_regular(b"/etc/alt", root):
            pass
        assert err.value.reason == "not-regular-file"
        assert str(err.value) == f"{tree}/etc/alt: cannot open: is a symbolic link"
    finally:
        root.close()


def test_slash_is_the_host():
    assert Root.at("/").is_host


def test_probe_and_reopen_read_the_probed_inode_not_a_later_one(tree):
    root = Root.at(tree)
    try:
        st, handle = root.probe(b"/bin/tool")  # resolved inside the root, through /bin -> usr/bin
        assert handle is not None
        try:
            assert st.st_ino == (tree / "usr/bin/tool").stat().st_ino
            # Swap the name for another file: the handle still opens the inode that was examined.
            (tree / "usr/bin/tool").rename(tree / "usr/bin/old")
            (tree / "usr/bin/tool").write_bytes(b"swapped")
            with xattr_store.open_regular(b"/bin/tool", root, handle) as (fd, fst):
                assert os.pread(fd, 100, 0) == b"inside"
                assert fst.st_ino == st.st_ino
        finally:
            os.close(handle)
        lst, link_handle = root.probe(b"/etc/alt")  # the final symlink is not followed
        os.close(link_handle)
        assert (tree / "etc/alt").is_symlink()
        assert lst.st_mode == os.lstat(tree / "etc/alt").st_mode
        with pytest.raises(FileNotFoundError):
            root.probe(b"/escape/passwd")
    finally:
        root.close()


def test_probe_on_the_host_is_lstat_without_a_handle(tree):
    st, handle = Root.host().probe(os.fsencode(tree / "etc/alt"))
    assert handle is None
    assert st == os.lstat(tree / "etc/alt")
