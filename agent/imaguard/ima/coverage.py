"""Collect the facts the enforce gate decides on (I/O adapter of :mod:`imaguard.ima.gate`).

Walks every mounted filesystem under a root that the policy's appraise rules can reach (``statfs``
for the magic, ``/proc/self/mountinfo`` for the type name and ``noexec``, ``/dev/disk/by-uuid`` for
the UUID), reads ``security.ima`` of each file a rule may cover through one descriptor, and checks
signatures and hashes against the file's content. Reads only: nothing is written, no key is loaded.

The key ids the kernel would verify against come from the ``.ima`` keyring if the kernel made
one, else ``_ima`` (:func:`kernel_key_ids`); where the kernel has none (a host without IMA), the caller passes
certificate files instead and says so.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import stat
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from imaguard.errors import FormatError, HostStateError, TrustError, UsageError
from imaguard.ima import keyring, xattr_store
from imaguard.ima.gate import (
    ELF_HEADER_BYTES,
    ELF_MIN_SIZE,
    LOADER_MACHINES,
    FileFacts,
    FileKind,
    FsFacts,
    classify,
    covering_rules,
    covers_plain_files,
    elf_shared_object,
    fs_excluded,
)
from imaguard.ima.xattr import ImaDigest, ImaSignature, parse_xattr
from imaguard.sign.parallel import run_jobs

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from imaguard.config import Limits
    from imaguard.ima.policy import Policy, Rule
    from imaguard.keys.signer import Verifier

__all__ = [
    "IMA_KEYRINGS",
    "KernelKeys",
    "Mount",
    "collect",
    "fs_type_name",
    "ima_keyring_keys",
    "in_root_path",
    "kernel_key_ids",
    "key_id_from_description",
    "mount_of",
    "parse_mountinfo",
]

IMA_KEYRINGS = (keyring.IMA_KEYRING, keyring.TRUSTED_IMA_KEYRING)
_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of ``/proc/self/mountinfo`` (``fs/proc_namespace.c`` ``show_mountinfo``)."""

    mountpoint: str
    fstype: str
    noexec: bool


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> tuple[Mount, ...]:
    """Parse ``/proc/self/mountinfo``; FormatError naming the line that does not fit."""
    mounts: list[Mount] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if not sep or len(fields) < 6 or not rest:
            raise FormatError(f"/proc/self/mountinfo line {lineno}: unexpected format: {line!r}")
        mounts.append(Mount(_unescape(fields[4]), rest[0], "noexec" in fields[5].split(",")))
    return tuple(mounts)


def key_id_from_description(description: str) -> bytes | None:
    """The IMA key id (last 4 bytes of the SKID) of an x509 key named ``"CN: <skid hex>"``."""
    _, sep, tail = description.rpartition(": ")
    try:
        raw = bytes.fromhex(tail) if sep else b""
    except ValueError:
        return None
    return raw[-4:] if len(raw) >= 4 else None


@dataclass(frozen=True, slots=True)
class KernelKeys:
    """The keyring the kernel verifies IMA signatures against, and the key ids linked into it."""

    keyring: str  # ".ima" or "_ima"
    ids: frozenset[bytes]


def ima_keyring_keys(
    keys: Sequence[keyring.ProcKey], links: Callable[[int], Sequence[int]], describe: Callable[[int], str]
) -> KernelKeys | None:
    """The key ids IMA verifies against, from ``/proc/keys`` entries; None when there is no IMA keyring.

    security/integrity/digsig.c uses ``.ima`` when built with CONFIG_INTEGRITY_TRUSTED_KEYRING (the
    kernel then creates it at boot) and ``_ima`` otherwise, never both: keys in the other keyring
    verify nothing, so where ``.ima`` exists only its keys count. ``links`` lists a keyring's key
    serials, ``describe`` names a key that ``/proc/keys`` does not show.
    """
    rings = {k.description: k for k in keys if k.type == "keyring" and k.description in IMA_KEYRINGS}
    ring = rings.get(keyring.TRUSTED_IMA_KEYRING) or rings.get(keyring.IMA_KEYRING)
    if ring is None:
        return None
    by_serial = {k.serial: k for k in keys}
    ids: set[bytes] = set()
    for serial in links(ring.serial):
        key = by_serial.get(serial)
        key_id = key_id_from_description(key.description if key is not None else describe(serial))
        if key_id is not None:
            ids.add(key_id)
    return KernelKeys(ring.description, frozenset(ids))


# --- I/O below -----------------------------------------------------------------------------------


def kernel_key_ids() -> KernelKeys | None:
    """The keys of the keyring IMA verifies against (:func:`ima_keyring_keys`), read from the kernel."""
    return ima_keyring_keys(keyring.read_proc_keys(), keyring.keyring_links,
                            lambda serial: keyring.describe_key(serial).description)  # fmt: skip


def _read_mounts() -> tuple[Mount, ...]:
    path = "/proc/self/mountinfo"
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:  # noqa: PTH123 - plain read
            return parse_mountinfo(f.read(1 << 22))
    except OSError as exc:
        raise HostStateError(f"cannot read {path}: {exc.strerror}", errno=exc.errno, path=path) from exc


class _Statfs(ctypes.Structure):
    # struct statfs (x86_64, aarch64): f_type is the first word; the rest is not read here.
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 112)]


def _fs_magic(path: str) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    buf = _Statfs()
    if libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise HostStateError(f"statfs {path}: {os.strerror(err)}", errno=err, path=path)
    return int(buf.f_type) & 0xFFFF_FFFF_FFFF_FFFF


def _uuids() -> dict[int, str]:
    """st_rdev of each block device → its filesystem UUID (udev's /dev/disk/by-uuid)."""
    found: dict[int, str] = {}
    directory = Path("/dev/disk/by-uuid")
    try:
        links = list(directory.iterdir())
    except OSError:
        return found
    for link in links:
        try:
            found[link.stat().st_rdev] = link.name.lower()
        except OSError:
            continue
    return found


def _under(path: str, top: str) -> bool:
    return top in ("/", path) or path.startswith(top.rstrip("/") + "/")


def _is_automount(path: str, mounts: tuple[Mount, ...]) -> bool:
    # statfs on an autofs trigger would mount it; what it mounts shows up as a mount of its own.
    return any(m.mountpoint == path and m.fstype == "autofs" for m in mounts)


def mount_of(directory: str, mounts: tuple[Mount, ...]) -> Mount | None:
    """The mount ``directory`` is on: the deepest mountpoint above it and, of mounts stacked on one
    mountpoint, the last (mountinfo lists mounts in mount order: the last one hides the others)."""
    best: tuple[int, int, Mount] | None = None
    for n, m in enumerate(mounts):
        if _under(directory, m.mountpoint) and (best is None or (len(m.mountpoint), n) > best[:2]):
            best = (len(m.mountpoint), n, m)
    return best[2] if best is not None else None


def fs_type_name(mountinfo_type: str) -> str:
    """The filesystem type as ``fsname=`` compares it (``sb->s_type->name``): mountinfo shows FUSE
    mounts as ``fuse.SUBTYPE`` (``fuse.sshfs``), the kernel's rule matching sees ``fuse``."""
    return mountinfo_type.partition(".")[0]


def _fs_of(directory: str, st: os.stat_result, mounts: tuple[Mount, ...], uuids: dict[int, str]) -> FsFacts:
    mount = mount_of(directory, mounts)
    return FsFacts(
        magic=_fs_magic(directory),
        name=fs_type_name(mount.fstype) if mount is not None else "",
        uuid=uuids.get(st.st_dev),
        noexec=mount.noexec if mount is not None else False,
    )


@dataclass(frozen=True, slots=True)
class _Candidate:
    path: str
    in_root: str  # the path as the host booted from the root will see it: what classify looks at
    kinds: frozenset[FileKind]
    fs: FsFacts
    uid: int
    gid: int
    mode: int = 0
    covered: bool = True  # in scope by name and mode alone
    elf_probe: bool = False  # read the ELF header: as a shared object more rules would cover it


def collect(
    policy: Policy,
    root: str,
    verifier: Verifier,
    loaded_key_ids: frozenset[bytes],
    limits: Limits,
    *,
    jobs: int = 1,
) -> Iterator[FileFacts]:
    """Facts of every file under ``root`` that an appraise rule of ``policy`` may cover."""
    top = os.path.realpath(root)
    if not os.path.isdir(top):  # noqa: PTH112
        raise UsageError(f"{root}: not a directory")
    mounts = _read_mounts()
    starts = [top, *sorted({m.mountpoint for m in mounts if _under(m.mountpoint, top) and m.mountpoint != top})]
    uuids = _uuids()
    walk = _Walk(policy, top, covers_plain_files(policy), frozenset(m.mountpoint for m in mounts), set(), {})
    candidates: list[_Candidate] = []
    for start in starts:
        try:
            st = os.lstat(start)
        except OSError:
            continue  # a mountpoint hidden by another mount, or gone
        if _is_automount(start, mounts) or not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            continue
        fs = _fs_of(start, st, mounts, uuids)
        if fs_excluded(policy, fs):
            continue
        if stat.S_ISREG(st.st_mode):  # a file bind-mounted over another
            candidates.extend(walk.candidate(start, st, fs))
            continue
        candidates.extend(walk.tree(start, fs))
    job = functools.partial(_facts, verifier=verifier, loaded_key_ids=loaded_key_ids, limits=limits)
    yield from (facts for facts in run_jobs(job, candidates, jobs) if facts is not None)


# Separate debug info (gdb's debug-file-directory): ELF ET_DYN copies that are read, never mapped.
_DEBUG_DIR = "/usr/lib/debug/"


def in_root_path(path: str, root: str) -> str:
    """``path`` (under ``root``, both real paths) as seen from inside ``root``: ``/srv/r/boot/x`` → ``/boot/x``."""
    if root == "/":
        return path
    return path[len(root):] or "/"


@dataclass(frozen=True, slots=True)
class _Walk:
    """One walk over the filesystems under the root; ``seen`` holds (st_dev, st_ino) already listed."""

    policy: Policy
    root: str  # the walk's top (realpath): paths are classified as seen from inside it
    plain: bool  # an appraise rule may cover files of no special kind
    mountpoints: frozenset[str]  # from mountinfo: each is walked from its own start
    seen: set[tuple[int, int]]
    cache: dict[tuple[frozenset[FileKind], FsFacts, int, int], tuple[Rule, ...]]

    def tree(self, top: str, fs: FsFacts) -> Iterator[_Candidate]:
        """The candidates of the mount at ``top``, down to (not into) the mounts below it.

        Another mount is told by mountinfo, not by st_dev: overlayfs reports the st_dev of the layer
        a file comes from and btrfs one per subvolume, without either being a mount of its own.
        """
        stack = [top]
        while stack:
            directory = stack.pop()
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue  # unreadable directory: nothing the walk can vouch for, nothing to list
            for entry in entries:
                if entry.path in self.mountpoints:
                    continue  # another mount: walked from its own mountpoint
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
                elif stat.S_ISREG(st.st_mode):
                    yield from self.candidate(entry.path, st, fs)

    def candidate(self, path: str, st: os.stat_result, fs: FsFacts) -> Iterator[_Candidate]:
        """The file at ``path`` if an appraise rule may cover it and it was not listed yet.

        A file not taken for a shared object by name or mode whose rules would change if it were one
        is listed with ``elf_probe``: its header is read with its facts (no file is opened here).
        """
        if (st.st_dev, st.st_ino) in self.seen:
            return
        in_root = in_root_path(path, self.root)
        kinds = classify(in_root, st.st_mode)
        rules = self._rules(kinds, fs, st) if self.plain or kinds != {FileKind.OTHER} else ()
        probe = (
            st.st_size >= ELF_MIN_SIZE
            and kinds.isdisjoint((FileKind.EXECUTABLE, FileKind.SHARED_OBJECT))
            and _DEBUG_DIR not in in_root
            and self._rules(kinds | {FileKind.SHARED_OBJECT}, fs, st) != rules
        )
        if not rules and not probe:
            return
        self.seen.add((st.st_dev, st.st_ino))
        yield _Candidate(path, in_root, kinds, fs, st.st_uid, st.st_gid, st.st_mode, bool(rules), probe)

    def _rules(self, kinds: frozenset[FileKind], fs: FsFacts, st: os.stat_result) -> tuple[Rule, ...]:
        # covering_rules does not look at the path: one answer per kinds, filesystem and owner.
        key = (kinds, fs, st.st_uid, st.st_gid)
        if key not in self.cache:
            self.cache[key] = covering_rules(self.policy, FileFacts("", kinds, fs, st.st_uid, st.st_gid))
        return self.cache[key]


def _facts(
    cand: _Candidate, verifier: Verifier, loaded_key_ids: frozenset[bytes], limits: Limits
) -> FileFacts | None:
    """The file's facts; None for an ``elf_probe`` candidate that is out of scope after all."""
    base = FileFacts(cand.path, cand.kinds, cand.fs, cand.uid, cand.gid)
    try:
        with xattr_store.open_regular(cand.path) as (fd, _st):
            if cand.elf_probe:
                if elf_shared_object(_header(fd), LOADER_MACHINES.get(os.uname().machine)):
                    base = replace(base, kinds=classify(cand.in_root, cand.mode, elf_shared_object=True))
                elif not cand.covered:
                    return None
            try:
                raw = xattr_store.read_ima(fd, cand.path, limits)
            except HostStateError as exc:
                reason = "unsupported-fs" if exc.reason == "unsupported-fs" else "unreadable"
                return replace(base, xattr_error=reason)
            if raw is None:
                return base
            try:
                value = parse_xattr(raw)
            except FormatError:
                return replace(base, xattr_error="malformed")
            if isinstance(value, ImaDigest):
                if value.algo.hashlib_name is None:
                    return replace(base, xattr=value, digest_matches=False)
                digest = xattr_store.hash_file(fd, value.algo, limits, cand.path)
                return replace(base, xattr=value, digest_matches=digest == value.digest)
            checkable = isinstance(value, ImaSignature) and value.keyid in loaded_key_ids
            if not isinstance(value, ImaSignature) or not checkable or not verifier.find(value.keyid):
                return replace(base, xattr=value)
            digest = xattr_store.hash_file(fd, value.algo, limits, cand.path)
            try:
                verifier.verify_digest(value.keyid, value.algo, digest, value.signature)
            except (TrustError, UsageError):
                return replace(base, xattr=value, signature_valid=False)
            return replace(base, xattr=value, signature_valid=True)
    except (HostStateError, UsageError):
        # Not even opened: a file in scope by name or mode is reported; one that would be in scope
        # only as a shared object cannot be told from data and is left out.
        return replace(base, xattr_error="unreadable") if cand.covered else None


def _header(fd: int) -> bytes:
    try:
        return os.pread(fd, ELF_HEADER_BYTES, 0)
    except OSError:
        return b""  # unreadable content: the loader could not map it either

