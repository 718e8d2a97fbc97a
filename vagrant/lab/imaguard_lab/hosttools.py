"""The host tools the lab needs, and installing them with apt when asked to."""

from __future__ import annotations

import os
import shutil
import subprocess

__all__ = ["APT_PACKAGES", "TOOLS", "ensure_host_tools", "missing_tools"]

# tool -> Debian package that ships it
TOOLS: dict[str, str] = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "swtpm": "swtpm",
    "swtpm_setup": "swtpm-tools",
    "debootstrap": "debootstrap",
    "mkfs.ext4": "e2fsprogs",
    "debugfs": "e2fsprogs",
}
APT_PACKAGES = tuple(sorted(set(TOOLS.values())))


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def ensure_host_tools(*, install: bool) -> None:
    """Raise RuntimeError naming what is missing; with ``install``, apt-get it first (root only)."""
    missing = missing_tools()
    if not missing:
        return
    packages = sorted({TOOLS[t] for t in missing})
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages], check=True, env=env)
        missing = missing_tools()
        if not missing:
            return
    raise RuntimeError(f"missing host tools {', '.join(missing)}: apt-get install {' '.join(packages)}")
