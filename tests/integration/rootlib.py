"""Helpers of the root tier: openssl keys, reference tools, mounts, xattrs, inotify.

Plain functions (fixtures live in conftest.py); test modules import them as ``rootlib``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

IMA_XATTR = "security.ima"

# Key kinds of the acceptance matrix: id -> openssl `req -newkey` arguments.
KEY_KINDS: dict[str, list[str]] = {
    "rsa2048": ["-newkey", "rsa:2048"],
    "rsa4096": ["-newkey", "rsa:4096"],
    "p256": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "p384": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
}


def run(argv: list[str], *, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a tool; on unexpected failure fail the test with its output."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        pytest.fail(f"{argv} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


@dataclass(frozen=True)
class KeyPair:
    """A private key (PEM, unencrypted) and its self-signed certificate in PEM and DER."""

    kind: str
    key: Path
    cert_pem: Path
    cert_der: Path

    @property
    def skid_tail(self) -> str:
        """Last 4 bytes of the certificate's subject key identifier (hex), read by openssl."""
        out = run(["openssl", "x509", "-in", str(self.cert_pem), "-noout", "-ext", "subjectKeyIdentifier"])
        return out.stdout.split("\n", 1)[1].strip().replace(":", "").lower()[-8:]


def make_keypair(directory: Path, kind: str, label: str) -> KeyPair:
    """Generate a key and a self-signed certificate fit for IMA, with openssl as the issue prescribes."""
    base = directory / f"{kind}-{label}"
    key, pem, der = base.with_suffix(".key"), base.with_suffix(".pem"), base.with_suffix(".der")
    run(
        [
            "openssl", "req", "-x509", *KEY_KINDS[kind], "-nodes", "-keyout", str(key), "-out", str(pem),
            "-days", "3650", "-subj", f"/CN=imaguard test {kind} {label}",
            "-addext", "keyUsage=digitalSignature", "-addext", "subjectKeyIdentifier=hash",
        ]
    )
    run(["openssl", "x509", "-in", str(pem), "-outform", "DER", "-out", str(der)])
    return KeyPair(kind, key, pem, der)


def get_ima(path: Path | str) -> bytes | None:
    """``security.ima`` of ``path`` without following symlinks, or None when it has none."""
    try:
        return os.getxattr(path, IMA_XATTR, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            return None
        raise


def digest_ng(data: bytes) -> bytes:
    """A valid digest-ng value (0x04, sha256): stands for "the previous label" in rollback tests."""
    return b"\x04\x04" + hashlib.sha256(data).digest()


def write_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def flip_one_byte(path: Path, offset: int = 0) -> None:
    """Change exactly one byte in place (same size), as an attacker patching a binary would."""
    with path.open("r+b") as f:
        f.seek(offset)
        old = f.read(1)
        f.seek(offset)
        f.write(bytes([old[0] ^ 0x01]))


# --- mounts -------------------------------------------------------------------------------------


def _unmount(target: Path) -> None:
    errors = []
    for argv in (["umount", str(target)], ["umount", "-l", str(target)]):
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode == 0:
            return
        errors.append(proc.stderr.strip())
    pytest.fail(f"cannot unmount {target}: {errors}")


def unlock_tree(top: Path) -> None:
    """``chattr -i -a`` on every regular file and directory below ``top``, so that removal works."""
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath, name)
            if p.is_symlink() or not (p.is_file() or p.is_dir()):
                continue
            subprocess.run(["chattr", "-i", "-a", str(p)], capture_output=True, check=False)


@contextlib.contextmanager
def mounted(argv: list[str], target: Path, *, unlock: bool = False) -> Iterator[Path]:
    """``mount ARGV TARGET`` for the duration of the block; unmounted even when the block fails."""
    target.mkdir(parents=True, exist_ok=True)
    run(["mount", *argv, str(target)])
    try:
        yield target
    finally:
        try:
            if unlock:
                unlock_tree(target)
        finally:
            _unmount(target)


@contextlib.contextmanager
def ext4_image(directory: Path, size_mib: int, mkfs_opts: list[str]) -> Iterator[Path]:
    """A fresh ext4 filesystem in a sparse image file, mounted with ``-o loop``."""
    image = directory / "ext4.img"
    with image.open("wb") as f:
        f.truncate(size_mib << 20)
    run(["mkfs.ext4", "-q", "-F", *mkfs_opts, str(image)])
    with mounted(["-t", "ext4", "-o", "loop", str(image)], directory / "mnt", unlock=True) as mnt:
        yield mnt


# --- inotify: prove that a file was never opened -----------------------------------------------

_IN_OPEN = 0x00000020  # include/uapi/linux/inotify.h
_EVENT = struct.Struct("iIII")  # struct inotify_event without the name


class OpenWatch:
    """Records the entries opened in the watched directories (IN_OPEN fires for FIFOs and devices too)."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._dirs: dict[int, Path] = {}

    def watch(self, directory: Path) -> None:
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(directory), _IN_OPEN)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")
        self._dirs[wd] = directory

    def opened(self) -> set[Path]:
        """Paths opened since the last call (a directory itself when it was opened, e.g. to list it)."""
        seen: set[Path] = set()
        while True:
            try:
                buf = os.read(self._fd, 65536)
            except BlockingIOError:
                return seen
            offset = 0
            while offset < len(buf):
                wd, _mask, _cookie, length = _EVENT.unpack_from(buf, offset)
                name = buf[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
                seen.add(self._dirs[wd] / os.fsdecode(name) if name else self._dirs[wd])
                offset += _EVENT.size + length

    def close(self) -> None:
        os.close(self._fd)
