"""Build the lab image: debootstrap a Debian rootfs, add the lab's guest files, make an ext4 image.

Layout under ``cache_root()``::

    rootfs/<rootfs-key>/          debootstrap output (kept, so image-only changes rebuild in seconds)
    rootfs/<rootfs-key>.apt/      lists/ (signed InRelease + Packages, fetched right after debootstrap)
                                  and archives/ (the .debs debootstrap installed): enroll's chain
    <image-key>/rootfs.img        raw ext4, the read-only backing file of every run's qcow2 overlay
    <image-key>/vmlinuz, initrd.img, recipe.json, build.json

Both levels are built into ``*.tmp`` and renamed when complete, so an interrupted build is never
mistaken for a cached one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .recipe import GUESTFS_DIR, PRUNE, PRUNE_MODULES, Recipe, cache_root

__all__ = ["Image", "apt_sidecar", "build", "find_image", "make_ext4", "rootfs_dir"]

# Where the guest files live inside the image; everything here is replaced on each image build.
GUEST_LIB = "usr/local/lib/imaguard-lab"


@dataclass(frozen=True, slots=True)
class Image:
    """A built, cached lab image."""

    directory: Path
    key: str

    @property
    def rootfs_img(self) -> Path:
        return self.directory / "rootfs.img"

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"

    def info(self) -> dict[str, object]:
        data: dict[str, object] = json.loads((self.directory / "build.json").read_text())
        return data


def _log(msg: str) -> None:
    print(f"lab: {msg}", file=sys.stderr, flush=True)


def _run(cmd: list[str], log: Path) -> None:
    with log.open("ab") as out:
        out.write(("$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        raise RuntimeError(f"{cmd[0]} failed (exit {proc.returncode}); last lines of {log}:\n" + "\n".join(tail))


def find_image(recipe: Recipe | None = None) -> Image | None:
    """The cached image for ``recipe`` if it is complete, else None."""
    recipe = recipe or Recipe()
    key = recipe.image_key()
    directory = cache_root() / key
    if (directory / "build.json").is_file():
        return Image(directory, key)
    return None


def _require_root() -> None:
    if os.geteuid() != 0:
        raise RuntimeError("building the lab image needs root (debootstrap, mkfs.ext4 -d with ownership)")


def rootfs_dir(recipe: Recipe) -> Path:
    return cache_root() / "rootfs" / recipe.rootfs_key()


def apt_sidecar(recipe: Recipe) -> Path:
    """``lists/`` and ``archives/`` of the rootfs, kept out of the image (see the module docstring)."""
    return cache_root() / "rootfs" / (recipe.rootfs_key() + ".apt")


def _apt_update(root: Path, log: Path) -> None:
    """``apt-get update`` for the tree at ``root``, run on the host with the tree's own apt config.

    APT_CONFIG points apt at a file that sets ``Dir`` first, so the host's apt.conf.d (hooks,
    compressed-index settings) is never read; lists are stored uncompressed.
    """
    conf = root.with_name(root.name + ".apt.conf")
    conf.write_text(
        f'Dir "{root}/";\n'
        'APT::Sandbox::User "root";\n'  # the tree's _apt uid means nothing on the host
        'Debug::NoLocking "true";\n'
        'Acquire::GzipIndexes "false";\n'
        'Acquire::Languages "none";\n'
    )
    try:
        with log.open("ab") as out:
            out.write(f"$ APT_CONFIG={conf} apt-get update\n".encode())
            out.flush()
            proc = subprocess.run(
                ["apt-get", "-q", "update"], stdout=out, stderr=subprocess.STDOUT, check=False,
                env={**os.environ, "APT_CONFIG": str(conf), "LC_ALL": "C"},
            )  # fmt: skip
    finally:
        conf.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise RuntimeError(f"apt-get update for {root} failed (exit {proc.returncode}); see {log}")


def _build_rootfs(recipe: Recipe) -> tuple[Path, float]:
    # Keyed by Recipe.rootfs_key(): a change to this function needs a Recipe.rootfs_epoch bump.
    final = rootfs_dir(recipe)
    if (final / ".lab-rootfs-complete").is_file():
        return final, 0.0
    _require_root()
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    sidecar = apt_sidecar(recipe)
    shutil.rmtree(sidecar, ignore_errors=True)
    log = final.with_name(final.name + ".log")
    log.write_text("")
    _log(f"debootstrap {recipe.suite} ({len(recipe.packages)} packages) into {tmp}; log {log} (~4 min)")
    start = time.monotonic()
    _run(
        [
            "debootstrap",
            f"--variant={recipe.variant}",
            "--include=" + ",".join(recipe.packages),
            recipe.suite,
            str(tmp),
            recipe.mirror,
        ],
        log,
    )
    if not list((tmp / "boot").glob("initrd.img-*")):
        raise RuntimeError(f"debootstrap left no initrd in {tmp / 'boot'}; see {log}")
    # Right after debootstrap, so the signed indexes list exactly the versions it installed.
    _apt_update(tmp, log)
    side_tmp = sidecar.with_name(sidecar.name + ".tmp")
    shutil.rmtree(side_tmp, ignore_errors=True)
    side_tmp.mkdir()
    shutil.move(tmp / "var/lib/apt/lists", side_tmp / "lists")
    shutil.move(tmp / "var/cache/apt/archives", side_tmp / "archives")
    for rel in PRUNE:
        shutil.rmtree(tmp / rel, ignore_errors=True)
    for moddir in (tmp / "usr/lib/modules").glob("*"):
        for rel in PRUNE_MODULES:
            shutil.rmtree(moddir / rel, ignore_errors=True)
    (tmp / ".lab-rootfs-complete").write_text(json.dumps(asdict(recipe), sort_keys=True))
    side_tmp.rename(sidecar)
    tmp.rename(final)
    return final, time.monotonic() - start


def _install_guest_files(rootfs: Path) -> None:
    lib = rootfs / GUEST_LIB
    shutil.rmtree(lib, ignore_errors=True)
    shutil.copytree(GUESTFS_DIR, lib)
    for path in lib.rglob("*"):
        if path.is_file():
            path.chmod(0o755 if path.suffix in ("", ".sh") else 0o644)
    links = {
        "usr/local/bin/imaguard": f"/{GUEST_LIB}/imaguard",
        "usr/local/sbin/imaguard-lab-init": f"/{GUEST_LIB}/init",
        # systemd mode (runner.MODES): pulled in by systemd.wants= on the kernel command line only
        "etc/systemd/system/imaguard-lab.service": f"/{GUEST_LIB}/imaguard-lab.service",
    }
    for rel, target in links.items():
        link = rootfs / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    # The project tree arrives on the work disk at /lab/src (runner.py); a .pth makes it importable.
    pth = rootfs / "usr/local/lib/python3.11/dist-packages/imaguard-lab.pth"
    pth.parent.mkdir(parents=True, exist_ok=True)
    pth.write_text("/lab/src/agent\n")
    (rootfs / "etc/hostname").write_text("imaguard-lab\n")
    # debootstrap leaves these two 0755 (seen in the issue-6 stage run: the enforce gate rightly
    # counted them as unsigned programs); nothing executes them
    for rel in ("etc/hostname", "etc/resolv.conf"):
        if (rootfs / rel).is_file() and not (rootfs / rel).is_symlink():
            (rootfs / rel).chmod(0o644)
    # update-initramfs in the guest (`imaguard keys install`, then a reboot with the guest's own
    # initrd): MODULES=most took more than 5 minutes under TCG; dep (the modules this guest's root
    # device needs) keeps it short. The image's own initrd, built by debootstrap, stays "most".
    conf = rootfs / "etc/initramfs-tools/conf.d/imaguard-lab"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text("# imaguard lab: see vagrant/lab/README.md (update-initramfs under TCG)\nMODULES=dep\n")


def make_ext4(tree: Path, image: Path, size_mib: int, log: Path) -> float:
    """``mkfs.ext4 -d tree image``; returns the seconds it took."""
    _log(f"mkfs.ext4 -d {tree} ({size_mib} MiB sparse)")
    start = time.monotonic()
    # -d copies ownership, modes and xattrs (security.* too), so files can be labelled beforehand
    _run(
        ["mkfs.ext4", "-q", "-F", "-L", "imaguard-lab", "-E", "root_owner=0:0", "-d", str(tree), str(image),
         f"{size_mib}M"],
        log,
    )  # fmt: skip
    return time.monotonic() - start


def build(recipe: Recipe | None = None, *, force: bool = False) -> Image:
    """Return the cached image for ``recipe``, building what is missing."""
    recipe = recipe or Recipe()
    if not force:
        found = find_image(recipe)
        if found is not None:
            return found
    _require_root()
    total_start = time.monotonic()
    rootfs, debootstrap_s = _build_rootfs(recipe)
    key = recipe.image_key()
    final = cache_root() / key
    tmp = final.with_name(key + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log = tmp / "build.log"
    _install_guest_files(rootfs)
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    initrds = sorted((rootfs / "boot").glob("initrd.img-*"))
    if not kernels or not initrds:
        raise RuntimeError(f"no kernel/initrd in {rootfs / 'boot'}")
    shutil.copy2(kernels[-1], tmp / "vmlinuz")
    shutil.copy2(initrds[-1], tmp / "initrd.img")
    mkfs_s = make_ext4(rootfs, tmp / "rootfs.img", recipe.image_mib, log)
    info = {
        "image_key": key,
        "rootfs_key": recipe.rootfs_key(),
        "kernel": kernels[-1].name.removeprefix("vmlinuz-"),
        "debootstrap_seconds": round(debootstrap_s, 1),
        "mkfs_seconds": round(mkfs_s, 1),
        "total_seconds": round(time.monotonic() - total_start, 1),
        "image_allocated_bytes": (tmp / "rootfs.img").stat().st_blocks * 512,
        "image_apparent_bytes": (tmp / "rootfs.img").stat().st_size,
        "kernel_bytes": (tmp / "vmlinuz").stat().st_size,
        "initrd_bytes": (tmp / "initrd.img").stat().st_size,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (tmp / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2, sort_keys=True) + "\n")
    (tmp / "build.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    _log(f"image {key} ready: {info}")
    return Image(final, key)
