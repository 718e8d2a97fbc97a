"""What the next boot of a root will load and enforce: its IMA keys, their loader, its initramfs.

The checks behind `imaguard policy install` that stand between an installed policy and a host that
does not come up (DESIGN.md §1.4): the next boot loads only the certificates in ROOT/etc/keys/ima,
through the initramfs-tools hook (copied into each initramfs when it is built) or dracut's module,
and honours ``ima_appraise=log`` only when every kernel that may boot allows it and secure boot is off.
Reads the root (and runs ``lsinitramfs`` for images it cannot read itself); writes nothing. Every
read stays inside the root and never blocks: configuration and certificates through
``rootfiles`` (no symlink followed, regular files only, bounded), initramfs images and mtimes
through ``openat2(RESOLVE_IN_ROOT)`` (an image's ``boot/initrd.img-X -> /boot/...`` is the
image's own), opened non-blocking and judged by ``fstat`` (a FIFO is no initramfs).
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import stat
import subprocess
from pathlib import Path

from imaguard.errors import FormatError, HostStateError
from imaguard.ima import bootfiles
from imaguard.ima.hostfacts import AppraiseMode, SecureBootState, effective_appraise_mode, parse_kernel_config
from imaguard.ima.rootfiles import list_root_dir, read_root_file
from imaguard.keys import Certificate, Verifier, load_certificate, parse_certificate
from imaguard.rootfs import Root

__all__ = ["boot_key_loaders", "boot_keys", "next_boot_may_enforce", "stale_initramfs"]


def boot_keys(root: Path, certs: list[Path]) -> tuple[frozenset[bytes], Verifier, list[str]]:
    """The key ids the next boot loads (only the certificates in ROOT/KEY_DIR: what the initramfs hook
    and dracut's integrity module load), a verifier over those and ``--cert``, and the files."""
    files = [root / bootfiles.KEY_DIR / name for name in _cert_names(root)]
    at_boot = [_boot_certificate(root, p.name) for p in files]
    extra = [load_certificate(p) for p in certs]  # checks signatures; loads nothing at boot
    return frozenset(c.key_id for c in at_boot), Verifier.of([*at_boot, *extra]), [str(p) for p in files]


def _cert_names(root: Path) -> list[str]:
    return [n for n in list_root_dir(root, bootfiles.KEY_DIR) or [] if n.endswith(".der")]


def _boot_certificate(root: Path, name: str) -> Certificate:
    data = read_root_file(root, f"{bootfiles.KEY_DIR}/{name}")
    path = root / bootfiles.KEY_DIR / name
    if data is None:
        raise HostStateError(f"{path}: removed while read", reason="unreadable", path=str(path))
    return parse_certificate(data, str(path))


def boot_key_loaders(root: Path) -> list[str]:
    """What in ROOT loads KEY_DIR at boot, as `imaguard keys install` puts it in place: the initramfs-tools
    hook and init-top script, or the dracut drop-in with dracut's integrity module and its key loader."""
    found = []
    if (root / bootfiles.INITRAMFS_HOOK).is_file() and (root / bootfiles.INITRAMFS_SCRIPT).is_file():
        found.append("initramfs-tools")
    if (root / bootfiles.DRACUT_CONF).is_file() and (root / bootfiles.DRACUT_MODULE_DIR / "ima-keys-load.sh").is_file():
        found.append("dracut")
    return found


# Images the boot loader may start. Not: DKMS's backups (*.old-dkms) and kdump's image, which no
# normal boot uses.
_IMAGE_GLOBS = {"initramfs-tools": ("initrd.img-*",), "dracut": ("initrd.img-*", "initramfs-*.img")}
_NOT_BOOTED = (".old-dkms", "kdump.img")
_REBUILD = {"initramfs-tools": "update-initramfs -u -k all", "dracut": "dracut -f --regenerate-all"}


def _open_in_root(root: Path, path: Path, flags: int) -> int:
    """Open ``path`` (under ``root``) with symlinks resolved as if ROOT were / (RESOLVE_IN_ROOT)."""
    inside = Root.at(str(root))
    try:
        return inside.open(b"/" + os.fsencode(path.relative_to(root)), flags | os.O_CLOEXEC)
    finally:
        inside.close()


def _mtime_ns(root: Path, path: Path) -> int | None:
    """mtime of ``path``, following symlinks inside ROOT (an absolute link target is under ROOT)."""
    try:
        fd = _open_in_root(root, path, os.O_PATH)
    except OSError:
        return None
    try:
        return os.fstat(fd).st_mtime_ns
    finally:
        os.close(fd)


class DamagedImageError(Exception):
    """The initramfs cannot be unpacked: the kernel would boot without the keys it should hold."""


def _keys_in_image(root: Path, image: Path) -> tuple[str, dict[str, bytes | None] | None]:
    """The certificates in an initramfs image, and how they were read: ``content`` (names and bytes,
    gzip, xz or uncompressed), ``names`` (lsinitramfs, for zstd and the rest), or ``mtime`` (neither
    could read it: only the image's age was checked). DamagedImageError when the image is damaged where
    it can be read, or lsinitramfs fails on it."""
    try:
        fd = _open_in_root(root, image, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return "mtime", None
    try:
        return _keys_in_open_image(fd)
    finally:
        os.close(fd)


def _keys_in_open_image(fd: int) -> tuple[str, dict[str, bytes | None] | None]:
    prefix = f"{bootfiles.KEY_DIR}/"
    files = None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block us, and no boot loader can load it
            raise DamagedImageError("not a regular file")
        # By its size: read(LIMIT + 1) would allocate the whole limit up front (a MemoryError in
        # a 1 GiB guest), and an image past the limit is left to lsinitramfs.
        if st.st_size <= bootfiles.MAX_INITRAMFS_SIZE:
            files = bootfiles.initramfs_files(_read_exactly(fd, st.st_size), prefix)
    except OSError:
        return "mtime", None
    except FormatError as exc:
        raise DamagedImageError(str(exc)) from exc
    if files is not None:
        return "content", dict(files)
    tool = shutil.which("lsinitramfs")
    if tool is None:
        return "mtime", None
    try:
        # The very file examined, through its descriptor: a path could be swapped meanwhile.
        proc = subprocess.run([tool, f"/proc/self/fd/{fd}"], capture_output=True, check=False, timeout=300,
                              pass_fds=(fd,))  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return "mtime", None
    names = [n.decode("utf-8", "surrogateescape").removeprefix("./") for n in proc.stdout.splitlines()]
    if proc.returncode != 0 or not names:
        said = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise DamagedImageError(f"lsinitramfs cannot list it (exit {proc.returncode}{': ' + said[0] if said else ''})")
    return "names", {n: None for n in names if n.startswith(prefix) and n.endswith(".der")}


def _read_exactly(fd: int, size: int) -> bytes:
    """``size`` bytes from ``fd`` (fewer if it shrank meanwhile: then the archive reads as truncated)."""
    chunks: list[bytes] = []
    left = size
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _boot_names(root: Path, patterns: tuple[str, ...]) -> list[Path]:
    names = list_root_dir(root, "boot") or []
    return [root / "boot" / n for n in names if any(fnmatch.fnmatchcase(n, g) for g in patterns)]


def stale_initramfs(root: Path, loaders: list[str], checked: dict[str, str]) -> str:
    """Why the initramfs images under ROOT/boot would not load the keys of ROOT/KEY_DIR ("" if they would).

    The initramfs-tools hook copies the certificates into the image when update-initramfs runs: a key
    installed (or removed) afterwards is not what the next boot loads, and files re-signed with a new
    key would all be denied. dracut's module reads $NEWROOT/etc/keys/ima at boot, so for dracut only
    the drop-in that includes the module must be older than the image. Every image must be fresh:
    the boot loader may start any of them. Equal mtimes count as fresh (timestamps are coarse). For
    initramfs-tools the certificates in each image must also be those of ROOT/KEY_DIR, where the
    image can be read (``checked`` says how each was).
    """
    key_dir = root / bootfiles.KEY_DIR
    inputs: dict[Path, None] = {}
    images: dict[Path, None] = {}
    for loader in loaders:
        if loader == "initramfs-tools":
            loader_files = [root / bootfiles.INITRAMFS_HOOK, root / bootfiles.INITRAMFS_SCRIPT]
            inputs.update(dict.fromkeys([key_dir, *(key_dir / n for n in _cert_names(root)), *loader_files]))
        else:
            inputs[root / bootfiles.DRACUT_CONF] = None
        for pattern in _IMAGE_GLOBS[loader]:
            images.update(dict.fromkeys(p for p in _boot_names(root, (pattern,)) if not p.name.endswith(_NOT_BOOTED)))
    chroot = "" if root.resolve() == Path("/") else f"chroot {root} "
    how = "rebuild: " + " ; ".join(f"{chroot}{_REBUILD[loader]}" for loader in loaders)
    if not images:
        names = " or ".join(dict.fromkeys(g for loader in loaders for g in _IMAGE_GLOBS[loader]))
        return (f"no initramfs image under {root / 'boot'} ({names}): nothing would load {key_dir} at the next "
                f"boot, so every appraised file would be denied; {how}")  # fmt: skip
    newest, newest_ns = max(((p, _mtime_ns(root, p) or 0) for p in inputs), key=lambda item: item[1])
    stale = [p for p in images if (_mtime_ns(root, p) or -1) < newest_ns]
    if stale:
        verb = "is" if len(stale) == 1 else "are"
        return (f"{', '.join(map(str, stale))} {verb} older than {newest}: an initramfs loads the IMA keys (or key "
                f"loader) of when it was built, so the next boot would not load those in {key_dir} and would deny "
                f"every file signed with a key the image lacks; {how}")  # fmt: skip
    if "initramfs-tools" not in loaders:
        return ""
    want = {f"{bootfiles.KEY_DIR}/{n}": read_root_file(root, f"{bootfiles.KEY_DIR}/{n}") for n in _cert_names(root)}
    for image in images:
        try:
            how_read, held = _keys_in_image(root, image)
        except DamagedImageError as exc:
            checked[str(image)] = "damaged"
            return (f"{image} cannot be unpacked: {exc}; the kernel would boot without the IMA keys it should "
                    f"hold and deny every appraised file; {how}")  # fmt: skip
        checked[str(image)] = how_read
        if held is None:
            continue
        differ = sorted(n for n in want.keys() | held.keys()
                        if n not in held or n not in want or held[n] not in (None, want[n]))  # fmt: skip
        if differ:
            names = ", ".join(n.rpartition("/")[2] for n in sorted(held)) or "no IMA certificate"
            return (f"{image} holds {names}, not the certificates in {key_dir} (differing: "
                    f"{', '.join(n.rpartition('/')[2] for n in differ)}): the next boot would load the IMA keys of "
                    f"the image and deny every file signed with a key it lacks; {how}")  # fmt: skip
    return ""


def next_boot_may_enforce(root: Path, secure_boot: SecureBootState) -> str:
    """Why the boot after a log-stage install might enforce instead of log ("" when it cannot).

    The kernel ignores ima_appraise=log without CONFIG_IMA_APPRAISE_BOOTPARAM and under secure boot
    (hostfacts.effective_appraise_mode): a log-stage boot policy would then deny every unsigned file
    in scope from early boot on, a host that may not come up. Every kernel under ROOT/boot may be
    the one booted; ``secure_boot`` is the state of the firmware that boots ROOT.
    """
    configs = _boot_names(root, ("config-*",))
    if not configs:
        return f"no kernel config under {root / 'boot'} tells whether ima_appraise=log will be honoured"
    for path in configs:
        text = read_root_file(root, f"boot/{path.name}")
        config = parse_kernel_config(text.decode("utf-8", "replace"), str(path)) if text is not None else None
        mode, why = effective_appraise_mode(("ima_appraise=log",), config, secure_boot)
        if mode is not AppraiseMode.LOG:
            return why
    return ""
