"""Hash algorithms by the kernel's ids, and streaming hashing of an open file descriptor."""

from __future__ import annotations

import enum
import hashlib
import os
from typing import TYPE_CHECKING

from imaguard.errors import FormatError, HostStateError, UsageError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "CHUNK_SIZE",
    "HashAlgo",
    "hash_fd",
]

# 1 MiB reads: large enough that syscall overhead vanishes next to hashing, small enough for the cache.
CHUNK_SIZE = 1 << 20


class HashAlgo(enum.IntEnum):
    """``enum hash_algo`` of the kernel, ``include/uapi/linux/hash_info.h`` (Linux 6.1).

    The numeric values go on the wire (``security.ima`` byte 1 of digest-ng, byte 2 of sig v2).
    """

    MD4 = 0
    MD5 = 1
    SHA1 = 2
    RIPE_MD_160 = 3
    SHA256 = 4
    SHA384 = 5
    SHA512 = 6
    SHA224 = 7
    RIPE_MD_128 = 8
    RIPE_MD_256 = 9
    RIPE_MD_320 = 10
    WP_256 = 11
    WP_384 = 12
    WP_512 = 13
    TGR_128 = 14
    TGR_160 = 15
    TGR_192 = 16
    SM3_256 = 17
    STREEBOG_256 = 18
    STREEBOG_512 = 19

    @property
    def kernel_name(self) -> str:
        """Name as the kernel prints it (``hash_algo_name[]``, e.g. in ``sha256:`` of d-ng)."""
        return _KERNEL_NAMES[self]

    @property
    def digest_size(self) -> int:
        """Digest length in bytes (``hash_digest_size[]``)."""
        return _DIGEST_SIZES[self]

    @property
    def hashlib_name(self) -> str | None:
        """The hashlib constructor name, or None when Python cannot compute this algorithm."""
        return _HASHLIB.get(self)

    def new(self) -> hashlib._Hash:
        """A fresh hashlib object; UsageError when this Python cannot compute the algorithm."""
        name = self.hashlib_name
        if name is None:
            raise UsageError(
                f"hash algorithm {self.kernel_name} is not supported by imaguard", reason="unsupported-algo"
            )
        return hashlib.new(name)

    @classmethod
    def from_id(cls, value: int, *, offset: int | None = None) -> HashAlgo:
        """Parse a wire id; FormatError for ids the kernel does not define."""
        try:
            return cls(value)
        except ValueError:
            raise FormatError(f"unknown hash algorithm id {value}", offset=offset) from None

    @classmethod
    def from_name(cls, name: str) -> HashAlgo:
        """Parse a kernel name such as ``sha256``; UsageError for anything else."""
        for algo, kname in _KERNEL_NAMES.items():
            if kname == name.lower():
                return algo
        raise UsageError(f"unknown hash algorithm {name!r}")


_KERNEL_NAMES: dict[HashAlgo, str] = {
    HashAlgo.MD4: "md4",
    HashAlgo.MD5: "md5",
    HashAlgo.SHA1: "sha1",
    HashAlgo.RIPE_MD_160: "rmd160",
    HashAlgo.SHA256: "sha256",
    HashAlgo.SHA384: "sha384",
    HashAlgo.SHA512: "sha512",
    HashAlgo.SHA224: "sha224",
    HashAlgo.RIPE_MD_128: "rmd128",
    HashAlgo.RIPE_MD_256: "rmd256",
    HashAlgo.RIPE_MD_320: "rmd320",
    HashAlgo.WP_256: "wp256",
    HashAlgo.WP_384: "wp384",
    HashAlgo.WP_512: "wp512",
    HashAlgo.TGR_128: "tgr128",
    HashAlgo.TGR_160: "tgr160",
    HashAlgo.TGR_192: "tgr192",
    HashAlgo.SM3_256: "sm3",
    HashAlgo.STREEBOG_256: "streebog256",
    HashAlgo.STREEBOG_512: "streebog512",
}

# include/crypto/hash_info.h and crypto/hash_info.c (hash_digest_size[]).
_DIGEST_SIZES: dict[HashAlgo, int] = {
    HashAlgo.MD4: 16,
    HashAlgo.MD5: 16,
    HashAlgo.SHA1: 20,
    HashAlgo.RIPE_MD_160: 20,
    HashAlgo.SHA256: 32,
    HashAlgo.SHA384: 48,
    HashAlgo.SHA512: 64,
    HashAlgo.SHA224: 28,
    HashAlgo.RIPE_MD_128: 16,
    HashAlgo.RIPE_MD_256: 32,
    HashAlgo.RIPE_MD_320: 40,
    HashAlgo.WP_256: 32,
    HashAlgo.WP_384: 48,
    HashAlgo.WP_512: 64,
    HashAlgo.TGR_128: 16,
    HashAlgo.TGR_160: 20,
    HashAlgo.TGR_192: 24,
    HashAlgo.SM3_256: 32,
    HashAlgo.STREEBOG_256: 32,
    HashAlgo.STREEBOG_512: 64,
}

# Only algorithms that hashlib provides everywhere; md4/rmd/sm3 depend on the OpenSSL build.
_HASHLIB: dict[HashAlgo, str] = {
    HashAlgo.MD5: "md5",
    HashAlgo.SHA1: "sha1",
    HashAlgo.SHA224: "sha224",
    HashAlgo.SHA256: "sha256",
    HashAlgo.SHA384: "sha384",
    HashAlgo.SHA512: "sha512",
}


def hash_fd(
    fd: int,
    algo: HashAlgo,
    *,
    max_size: int,
    path: str = "<fd>",
    progress: Callable[[int], None] | None = None,
    size_hint: int | None = None,
) -> bytes:
    """Hash an open file descriptor from offset 0 to EOF, refusing files larger than ``max_size``.

    Reads with ``pread`` so the descriptor's own offset is irrelevant and untouched. ``size_hint``
    (the ``st_size`` the caller already has) only sizes the buffer: the file is read to EOF either way.
    """
    h = algo.new()
    offset = 0
    try:
        # Most files are far smaller than a chunk, and zeroing a fresh 1 MiB buffer for each cost
        # more than hashing it: size the buffer to the file, one byte over so that a short read
        # shows the size was right. A file larger than it said (growing, or a size-0 pseudo file)
        # fills the buffer and is read on in full chunks.
        size = os.fstat(fd).st_size if size_hint is None else size_hint
        view = memoryview(bytearray(min(CHUNK_SIZE, max(size, 0) + 1)))
        while True:
            n = os.preadv(fd, [view], offset)
            if n == 0:
                break
            offset += n
            if offset > max_size:
                raise HostStateError(
                    f"{path}: larger than the limit of {max_size} bytes",
                    reason="too-large",
                    path=path,
                )
            h.update(view[:n])
            if progress is not None:
                progress(n)
            if n == len(view) < CHUNK_SIZE:
                view = memoryview(bytearray(CHUNK_SIZE))
    except OSError as exc:
        raise HostStateError(
            f"{path}: cannot read: {exc.strerror}", reason="read-error", errno=exc.errno, path=path
        ) from exc
    return h.digest()
