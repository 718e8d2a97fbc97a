"""Kernel hash ids and fd hashing."""

from __future__ import annotations

import hashlib
import os

import pytest

from imaguard.digests import HashAlgo, hash_fd
from imaguard.errors import HostStateError, UsageError


def test_ids_follow_hash_info_h():
    # include/uapi/linux/hash_info.h: these ids are on the wire in every security.ima value.
    assert (HashAlgo.SHA1, HashAlgo.SHA256, HashAlgo.SHA384, HashAlgo.SHA512) == (2, 4, 5, 6)
    assert (HashAlgo.SHA224, HashAlgo.SM3_256, HashAlgo.STREEBOG_512) == (7, 17, 19)
    assert HashAlgo.from_name("SHA256") is HashAlgo.SHA256
    assert HashAlgo.SHA384.digest_size == 48


@pytest.mark.parametrize("algo", [HashAlgo.SHA1, HashAlgo.SHA256, HashAlgo.SHA384, HashAlgo.SHA512])
def test_hash_fd_matches_hashlib_across_chunk_boundaries(tmp_path, algo):
    data = os.urandom((1 << 20) * 2 + 12345)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 100, os.SEEK_SET)  # the fd offset must not matter
        assert hash_fd(fd, algo, max_size=len(data)) == hashlib.new(algo.kernel_name, data).digest()
        assert os.lseek(fd, 0, os.SEEK_CUR) == 100
    finally:
        os.close(fd)


def test_hash_fd_refuses_files_over_the_limit(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(b"x" * 4096)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(HostStateError, match="larger than the limit of 4095 bytes") as err:
            hash_fd(fd, HashAlgo.SHA256, max_size=4095, path=str(path))
    finally:
        os.close(fd)
    assert err.value.reason == "too-large"


def test_algorithms_python_cannot_compute_are_refused_not_replaced():
    with pytest.raises(UsageError, match="hash algorithm streebog256 is not supported") as err:
        HashAlgo.STREEBOG_256.new()
    assert err.value.reason == "unsupported-algo"
    with pytest.raises(UsageError, match="unknown hash algorithm 'sha3'"):
        HashAlgo.from_name("sha3")


def test_hash_fd_reads_a_pseudo_file_that_claims_size_zero():
    # /proc files report st_size 0 but have content: the buffer sized from fstat must grow.
    fd = os.open("/proc/version", os.O_RDONLY)
    try:
        assert os.fstat(fd).st_size == 0
        digest = hash_fd(fd, HashAlgo.SHA256, max_size=1 << 20)
        data = os.pread(fd, 1 << 20, 0)
    finally:
        os.close(fd)
    assert data
    assert digest == hashlib.sha256(data).digest()


def test_hash_fd_reads_a_file_that_grows_past_its_fstat_size(tmp_path):
    path = tmp_path / "grows"
    path.write_bytes(b"a" * 1000)
    grown = False

    def grow(_n: int) -> None:
        nonlocal grown
        if not grown:
            grown = True
            with path.open("ab") as f:
                f.write(b"b" * 5000)

    fd = os.open(path, os.O_RDONLY)
    try:
        digest = hash_fd(fd, HashAlgo.SHA256, max_size=1 << 20, progress=grow)
    finally:
        os.close(fd)
    assert digest == hashlib.sha256(b"a" * 1000 + b"b" * 5000).digest()


@pytest.mark.parametrize("hint", [0, 1, 999, 1000, 1001, 1 << 30])
def test_size_hint_only_sizes_the_buffer_the_file_is_read_to_eof(tmp_path, hint):
    data = bytes(range(256)) * 300  # 76,800 bytes, read whatever the caller believed its size was
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        digest = hash_fd(fd, HashAlgo.SHA256, max_size=1 << 20, size_hint=hint)
    finally:
        os.close(fd)
    assert digest == hashlib.sha256(data).digest()
