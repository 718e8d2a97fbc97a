"""What the lab image is made of, and the hashes that key its cache.

Two cache levels, so that editing the guest init script does not redo the 4-minute debootstrap:
the *rootfs* key covers the debootstrap inputs only; the *image* key covers the rootfs key plus
the builder's own source and the files it installs into the guest.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = [
    "DEFAULT_MIRROR",
    "GUESTFS_DIR",
    "PACKAGES",
    "PRUNE",
    "PRUNE_MODULES",
    "Recipe",
    "cache_root",
]

# Debian packages the guest needs (issue 3 item 1). init= mode: no systemd-sysv/udev needed by us
# (udev still arrives as a dependency of initramfs-tools).
PACKAGES: tuple[str, ...] = (
    "linux-image-amd64",
    "initramfs-tools",
    "python3",
    "python3-cryptography",
    "python3-cffi-backend",  # debootstrap does not resolve the virtual python3-cffi-backend-api-*
    "python3-apt",
    "keyutils",
    "ima-evm-utils",
    "tpm2-tools",
    "attr",
    "openssl",
    "kmod",
    "procps",
    "util-linux",
    "e2fsprogs",
    "systemd",  # issue 5 item 6 runs `systemctl status`; init= mode stays (no systemd-sysv)
    "python3-psutil",  # issue 7 item 3: `imaguard report` lists processes and their mappings
)

DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Trees removed from the rootfs after debootstrap (docs, apt caches; below, kernel modules a
# virtio guest never loads), to keep the image small. Part of the rootfs key. apt's lists and the
# debootstrap .debs are moved to the ``<rootfs-key>.apt/`` sidecar first: they are the signed chain
# that ``imaguard enroll`` verifies the tree against (enrolled.py).
PRUNE = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/locale",
    "usr/share/info",
    "var/cache/apt/archives",
    "var/lib/apt/lists",
)
PRUNE_MODULES = (
    "kernel/drivers/gpu",
    "kernel/drivers/net/wireless",
    "kernel/drivers/net/ethernet",
    "kernel/drivers/media",
    "kernel/drivers/infiniband",
    "kernel/drivers/staging",
    "kernel/drivers/iio",
    "kernel/drivers/bluetooth",
    "kernel/drivers/isdn",
    "kernel/drivers/usb",
    "kernel/drivers/hid",
    "kernel/drivers/input",
    "kernel/sound",
    "kernel/net/wireless",
    "kernel/net/mac80211",
    "kernel/net/bluetooth",
    "kernel/fs/ocfs2",
    "kernel/fs/btrfs",
    "kernel/fs/xfs",
)

GUESTFS_DIR = Path(__file__).resolve().parent / "guestfs"
_BUILDER_SOURCES = ("recipe.py", "build.py")


def cache_root() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/imaguard/lab``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "imaguard" / "lab"


@dataclass(frozen=True, slots=True)
class Recipe:
    """Inputs of one image; change any field and the image is rebuilt."""

    suite: str = "bookworm"
    # IMAGUARD_LAB_MIRROR points debootstrap at a local mirror or proxy (part of the cache key).
    mirror: str = field(default_factory=lambda: os.environ.get("IMAGUARD_LAB_MIRROR", DEFAULT_MIRROR))
    variant: str = "minbase"
    packages: tuple[str, ...] = PACKAGES
    image_mib: int = 1536
    # bump to force a new rootfs when debootstrap's behaviour matters but inputs did not change
    rootfs_epoch: int = 2  # 2: apt lists fetched at build time and kept with the .debs (sidecar)

    def rootfs_key(self) -> str:
        data = {
            "suite": self.suite,
            "mirror": self.mirror,
            "variant": self.variant,
            "packages": sorted(self.packages),
            "epoch": self.rootfs_epoch,
            "prune": [*PRUNE, *PRUNE_MODULES],
        }
        return _digest(json.dumps(data, sort_keys=True).encode())

    def image_key(self) -> str:
        h = hashlib.sha256()
        h.update(self.rootfs_key().encode())
        h.update(json.dumps(asdict(self), sort_keys=True).encode())
        here = Path(__file__).resolve().parent
        for name in _BUILDER_SOURCES:
            h.update(name.encode() + b"\0" + (here / name).read_bytes())
        for path in sorted(GUESTFS_DIR.rglob("*")):
            if path.is_file():
                h.update(str(path.relative_to(GUESTFS_DIR)).encode() + b"\0" + path.read_bytes())
        return h.hexdigest()[:16]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]
