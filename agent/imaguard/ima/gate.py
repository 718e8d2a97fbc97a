"""The enforce gate (pure): which files would the appraise rules cover, and would each one pass?

DESIGN.md §1.4: appraise rules are loaded only after a fresh check shows that every file they will
match carries a signature that verifies against keys already in the kernel keyring. The adapter
(:mod:`imaguard.ima.coverage`) collects :class:`FileFacts`; this module decides.

Rule matching follows ``ima_match_policy``/``ima_match_rules`` (``ima_policy.c``, 6.1): rules are
tried in order and, for appraisal, the first rule that matches (``appraise`` or ``dont_appraise``)
decides. What cannot be known before the fact is approximated on the safe side:

- **Which hooks a file meets.** Approximated from the file: a file with an execute bit may be
  exec'd (``BPRM_CHECK``, ``CREDS_CHECK``, and ``FILE_CHECK`` with ``MAY_EXEC``: execve opens the
  program with that access mode) and mapped executable (``MMAP_CHECK``); a shared object (named
  ``*.so``/``*.so.N``, or another file whose header says ELF ``ET_DYN`` for a machine the host
  loads: the adapter reads it where that changes which rules cover the file, outside
  ``/usr/lib/debug``) may be mapped executable; ``*.ko*`` files are
  kernel modules (``MODULE_CHECK``), files under ``/lib/firmware`` firmware, ``vmlinuz*`` and
  ``initrd*`` kexec images; every file may be opened (``FILE_CHECK``). Files that are mapped
  executable without being named, marked or built so (a JIT cache) are *not* found, nor is
  anything on a filesystem the walk did not reach. Files on a ``noexec`` mount are left
  out of the exec hooks: executing or mapping them executable fails there anyway, so enforcing
  cannot break what works today.
- **Conditions on the process** (``uid=``, ``euid=``, ``gid=``, ``egid=``, ``subj_*=``) and on LSM
  labels of the file (``obj_*=``) cannot be evaluated here: an ``appraise`` rule with them is taken
  to match (the file counts as covered), a ``dont_appraise`` rule with them is taken not to match.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from imaguard.ima.policy import Action, Func, IdField, MaskFlag, Policy, Rule
from imaguard.ima.xattr import ImaDigest, ImaSignature, XattrValue

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "ELF_HEADER_BYTES",
    "ELF_MIN_SIZE",
    "LOADER_MACHINES",
    "REFUSAL_REASONS",
    "Decision",
    "FileFacts",
    "FileKind",
    "FsFacts",
    "GateResult",
    "Uncovered",
    "classify",
    "covering_rules",
    "covers_plain_files",
    "elf_shared_object",
    "fs_excluded",
    "run_gate",
]

# The kernel's MAY_* bits (include/linux/fs.h).
_MAY = {MaskFlag.MAY_EXEC: 0x1, MaskFlag.MAY_WRITE: 0x2, MaskFlag.MAY_READ: 0x4, MaskFlag.MAY_APPEND: 0x8}
_EXEC, _WRITE, _READ, _APPEND = 0x1, 0x2, 0x4, 0x8

# Stable reason codes of files the policy would deny (STYLE.md §7): spelled once, here.
REFUSAL_REASONS = frozenset(
    {"no-signature", "unknown-key", "bad-signature", "unchecked-signature", "digest-only", "bad-digest",
     "unsupported-form", "malformed", "unsupported-fs", "unreadable", "needs-sigv3", "denied-hash-algo"}
)  # fmt: skip


class FileKind(enum.Enum):
    """What the hooks approximation takes a file for (see the module docstring)."""

    EXECUTABLE = "executable"
    SHARED_OBJECT = "shared-object"
    KERNEL_MODULE = "kernel-module"
    FIRMWARE = "firmware"
    KEXEC_IMAGE = "kexec-image"
    OTHER = "other"


# As enroll's scope (sign/plan.py): libfoo.so, libfoo.so.1.2.3, libfoo.so.1.2a; not libfoo.so.old.
_SO_NAME = re.compile(r".*\.so(\.[0-9][0-9A-Za-z.]*)?")
_MODULE_NAME = re.compile(r".*\.ko(\.(xz|gz|zst))?")


# ELF identification, type and machine (include/uapi/linux/elf.h): e_ident[EI_CLASS] at 4,
# e_ident[EI_DATA] at 5, e_type at 16, e_machine at 18 (ELF32 and ELF64 alike), in EI_DATA's byte order.
ELF_HEADER_BYTES = 20
ELF_MIN_SIZE = 52  # sizeof(Elf32_Ehdr): a shorter file cannot be loaded
_ELFMAG = b"\x7fELF"
_ELFCLASS = (1, 2)  # ELFCLASS32, ELFCLASS64
_ELFDATA: dict[int, Literal["little", "big"]] = {1: "little", 2: "big"}  # ELFDATA2LSB, ELFDATA2MSB
_ET_DYN = 3
# e_machine values (include/uapi/linux/elf-em.h) the dynamic loaders of a host of this uname -m accept:
# the native one and, where multiarch runs it, the 32-bit one (i386 on amd64, armhf on arm64).
LOADER_MACHINES = {
    "x86_64": frozenset({62, 3}),  # EM_X86_64, EM_386
    "i686": frozenset({3}),
    "aarch64": frozenset({183, 40}),  # EM_AARCH64, EM_ARM
    "armv7l": frozenset({40}),
    "ppc64le": frozenset({21}),  # EM_PPC64
    "s390x": frozenset({22}),  # EM_S390
    "riscv64": frozenset({243}),  # EM_RISCV
}


def elf_shared_object(header: bytes, machines: frozenset[int] | None = None) -> bool:
    """Whether the first bytes of a file are an ELF header of type ``ET_DYN`` (shared object, or PIE:
    the dynamic loader maps either executable) for one of ``machines`` (None: any machine; ld.so
    refuses another machine's object before mapping it)."""
    if len(header) < ELF_HEADER_BYTES or header[:4] != _ELFMAG or header[4] not in _ELFCLASS:
        return False
    order = _ELFDATA.get(header[5])
    if order is None or int.from_bytes(header[16:18], order) != _ET_DYN:
        return False
    return machines is None or int.from_bytes(header[18:20], order) in machines


def classify(path: str, mode: int, *, elf_shared_object: bool = False) -> frozenset[FileKind]:
    """The kinds of a regular file, from its path, mode bits and (if known) its ELF type.

    ``path`` is the path inside the root being checked (``/boot/vmlinuz``, not ``ROOT/boot/vmlinuz``):
    the kernel that boots from that root sees it there.
    """
    name = path.rsplit("/", 1)[-1]
    kinds = set()
    if mode & 0o111:
        kinds.add(FileKind.EXECUTABLE)
    if elf_shared_object or _SO_NAME.fullmatch(name):
        kinds.add(FileKind.SHARED_OBJECT)
    if _MODULE_NAME.fullmatch(name):
        kinds.add(FileKind.KERNEL_MODULE)
    if "/lib/firmware/" in path:
        kinds.add(FileKind.FIRMWARE)
    if path.startswith("/boot/") and name.startswith(("vmlinuz", "initrd")):
        kinds.add(FileKind.KEXEC_IMAGE)
    return frozenset(kinds or {FileKind.OTHER})


# FILE_CHECK masks: ima_file_check() passes the open's acc_mode & (MAY_READ|MAY_WRITE|MAY_EXEC|MAY_APPEND)
# (ima_main.c, 6.1). open(2) (fs/open.c build_open_flags) always has READ or WRITE: O_RDONLY, O_WRONLY,
# O_RDWR, O_TRUNC adds WRITE, O_APPEND adds APPEND; APPEND alone or EXEC never comes from it.
_FILE_OPENS = (_READ, _WRITE, _READ | _WRITE, _READ | _APPEND, _WRITE | _APPEND, _READ | _WRITE | _APPEND)
# Opens for execution, of files with an execute bit only: execve's do_open_execat (acc_mode MAY_EXEC)
# and uselib (MAY_READ | MAY_EXEC); may_open() refuses both on a noexec mount before IMA sees them.
_EXEC_OPENS = (_EXEC, _READ | _EXEC)
_EXEC_HOOKS = (Func.BPRM_CHECK, Func.CREDS_CHECK, Func.MMAP_CHECK, Func.MMAP_CHECK_REQPROT)
# (hook, access masks the hook is called with) for each kind; the plain opens of any file are added apart.
_HOOKS: dict[FileKind, tuple[tuple[Func, tuple[int, ...]], ...]] = {
    FileKind.EXECUTABLE: ((Func.BPRM_CHECK, (_EXEC,)), (Func.CREDS_CHECK, (_EXEC,)), (Func.MMAP_CHECK, (_EXEC,)),
                          (Func.MMAP_CHECK_REQPROT, (_EXEC,)), (Func.FILE_CHECK, _EXEC_OPENS)),
    FileKind.SHARED_OBJECT: ((Func.MMAP_CHECK, (_EXEC,)), (Func.MMAP_CHECK_REQPROT, (_EXEC,))),
    FileKind.KERNEL_MODULE: ((Func.MODULE_CHECK, (_READ,)),),
    FileKind.FIRMWARE: ((Func.FIRMWARE_CHECK, (_READ,)),),
    FileKind.KEXEC_IMAGE: ((Func.KEXEC_KERNEL_CHECK, (_READ,)), (Func.KEXEC_INITRAMFS_CHECK, (_READ,))),
    FileKind.OTHER: (),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class FsFacts:
    """The filesystem a file lives on, as the kernel's rule conditions see it."""

    magic: int
    name: str
    uuid: str | None = None  # lower-case, None when it cannot be told
    noexec: bool = False


@dataclass(frozen=True, slots=True)
class FileFacts:
    """What the adapter found out about one file.

    ``xattr_error`` is a reason code when ``security.ima`` could not be read or parsed
    (``unsupported-fs``, ``unreadable``, ``malformed``). ``signature_valid`` is the result of checking
    a signature against a certificate with its key id (None: no certificate at hand for that key);
    ``digest_matches`` whether a bare digest equals the file's content (None: not checked).
    """

    path: str
    kinds: frozenset[FileKind]
    fs: FsFacts
    uid: int
    gid: int
    xattr: XattrValue | None = None
    xattr_error: str = ""
    signature_valid: bool | None = None
    digest_matches: bool | None = None


class Decision(enum.Enum):
    ALLOW = "allow"
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)
class Uncovered:
    """A file the policy would appraise and that would fail: path, stable reason, explanation, rule line."""

    path: str
    reason: str
    detail: str
    rule_line: int


@dataclass(frozen=True, slots=True)
class GateResult:
    decision: Decision
    in_scope: int
    uncovered: tuple[Uncovered, ...]
    appraise_rules: int

    @property
    def allowed(self) -> bool:
        return self.decision is Decision.ALLOW


class _Match(enum.Enum):
    NO = 0
    YES = 1
    MAYBE = 2


def _fs_match(rule: Rule, fs: FsFacts) -> _Match:
    if rule.fsmagic is not None and rule.fsmagic != fs.magic:
        return _Match.NO
    if rule.fsname is not None and rule.fsname != fs.name:
        return _Match.NO
    if rule.fsuuid is not None:
        if fs.uuid is None:
            return _Match.MAYBE
        if rule.fsuuid != fs.uuid:
            return _Match.NO
    return _Match.YES


def _match(rule: Rule, facts: FileFacts, func: Func, mask: int) -> _Match:
    """ima_match_rules for one hook call, with MAYBE where the outcome depends on the process."""
    if rule.func is not None and rule.func is not func:
        return _Match.NO
    if rule.mask is not None:  # mask= equals the hook's mask exactly; ^mask= shares a bit with it
        bit = _MAY[rule.mask.flag]
        if (rule.mask.inverted and not (mask & bit)) or (not rule.mask.inverted and mask != bit):
            return _Match.NO
    result = _fs_match(rule, facts.fs)
    if result is _Match.NO:
        return result
    for cond in rule.ids:
        if cond.field is IdField.FOWNER and not cond.op.compare(facts.uid, cond.value):
            return _Match.NO
        if cond.field is IdField.FGROUP and not cond.op.compare(facts.gid, cond.value):
            return _Match.NO
        if cond.field.is_subject:
            result = _Match.MAYBE
    return _Match.MAYBE if rule.lsm else result


def covering_rules(policy: Policy, facts: FileFacts) -> tuple[Rule, ...]:
    """The appraise rules that may decide for this file, over every hook it may meet; () if none."""
    covering: list[Rule] = []
    for kind in facts.kinds:
        for func, masks in _HOOKS[kind]:
            for mask in masks:
                if facts.fs.noexec and (func in _EXEC_HOOKS or mask & _EXEC):
                    continue
                covering.extend(r for r in _decide(policy, facts, func, mask) if r not in covering)
    # Any file may be opened; rules without func= match every hook.
    for mask in _FILE_OPENS:
        covering.extend(r for r in _decide(policy, facts, Func.FILE_CHECK, mask) if r not in covering)
    return tuple(sorted(covering, key=lambda r: r.line))


def covers_plain_files(policy: Policy) -> bool:
    """Whether an appraise rule can cover files of no special kind (so every file must be looked at)."""
    return any(r.action is Action.APPRAISE and r.func in (None, Func.FILE_CHECK) for r in policy.rules)


def _decide(policy: Policy, facts: FileFacts, func: Func, mask: int) -> list[Rule]:
    # First match wins (ima_match_policy); a MAYBE appraise rule covers and the search goes on.
    found: list[Rule] = []
    for rule in policy.appraise_rules:
        result = _match(rule, facts, func, mask)
        if result is _Match.NO:
            continue
        if rule.action is Action.DONT_APPRAISE:
            if result is _Match.YES:
                break
            continue
        found.append(rule)
        if result is _Match.YES:
            break
    return found


def fs_excluded(policy: Policy, fs: FsFacts) -> bool:
    """True when no appraise rule can cover any file on ``fs`` (the walk may skip it entirely)."""
    for rule in policy.appraise_rules:
        result = _fs_match(rule, fs)
        if result is _Match.NO:
            continue
        if rule.action is Action.APPRAISE:
            return False
        unconditional = rule.func is None and rule.mask is None and not rule.ids and not rule.lsm
        if unconditional and result is _Match.YES:
            return True
    return True


def _failure(
    facts: FileFacts, loaded_key_ids: frozenset[bytes], rules: tuple[Rule, ...]
) -> tuple[str, str, Rule] | None:
    """Why the kernel would deny this file (reason, detail, the rule to blame), or None if it would pass.

    ``rules`` are the appraise rules that may decide for the file (sorted by line); the file must pass
    each of them. The checks follow the kernel's order (6.1): ``xattr_verify`` in ``ima_appraise.c``
    first, then ``process_measurement``'s ``appraise_algos=`` check, which runs only after a pass.
    """
    signing = tuple(r for r in rules if r.requires_signature)
    first = signing[0] if signing else rules[0]
    # digest_type=verity appraise_type=sigv3: xattr_verify fails a v2 signature or a hash with
    # "verity-signature-required" (IMA_DIGSIG_REQUIRED | IMA_VERITY_REQUIRED).
    verity = next((r for r in signing if r.digest_type == "verity"), None)
    if facts.xattr_error:
        return facts.xattr_error, f"security.ima cannot be used ({facts.xattr_error})", first
    value = facts.xattr
    if value is None:
        return "no-signature", "no security.ima", first
    if isinstance(value, ImaDigest):
        if verity is not None:
            return "needs-sigv3", _NEEDS_SIGV3.format(f"a {value.form} hash"), verity
        if signing:
            return "digest-only", f"security.ima holds a {value.form} hash, the rule requires a signature", first
        if facts.digest_matches is not True:
            return "bad-digest", "the security.ima hash does not match the file", first
    elif not isinstance(value, ImaSignature) or value.form != "sigv2":
        return "unsupported-form", f"security.ima is a {value.form} value", first
    elif verity is not None:
        return "needs-sigv3", _NEEDS_SIGV3.format(f"a v2 signature (key {value.keyid_hex})"), verity
    elif value.keyid not in loaded_key_ids:
        return "unknown-key", f"signed with key {value.keyid_hex}, which is not loaded", first
    elif facts.signature_valid is None:
        return "unchecked-signature", f"key {value.keyid_hex} is loaded but no certificate was given to check it", first
    elif not facts.signature_valid:
        return "bad-signature", f"the signature does not verify with key {value.keyid_hex}", first
    return _algo_failure(value, rules)


# What xattr_verify says of a v2 signature or a hash under digest_type=verity (ima_appraise.c, 6.1).
_NEEDS_SIGV3 = (
    "security.ima holds {}, the rule (digest_type=verity appraise_type=sigv3) requires a v3 fs-verity signature"
)


def _algo_failure(value: ImaDigest | ImaSignature, rules: tuple[Rule, ...]) -> tuple[str, str, Rule] | None:
    """process_measurement (ima_main.c, 6.1): after appraisal passed, EACCES ("denied-hash-algorithm")
    if the deciding rule has ``appraise_algos=`` without the algorithm of security.ima (the hash's or
    the signature's, as ``ima_get_hash_algo`` reads it)."""
    for rule in rules:
        if rule.appraise_algos and value.algo not in rule.appraise_algos:
            allowed = ",".join(a.kernel_name for a in rule.appraise_algos)
            kind = "signature" if isinstance(value, ImaSignature) else "hash"
            detail = f"security.ima is a {value.algo.kernel_name} {kind}, the rule allows only appraise_algos={allowed}"
            return "denied-hash-algo", detail, rule
    return None


def run_gate(policy: Policy, files: Iterable[FileFacts], loaded_key_ids: frozenset[bytes]) -> GateResult:
    """Allow only if every file an appraise rule may cover would pass appraisal with the loaded keys."""
    uncovered: list[Uncovered] = []
    in_scope = 0
    for facts in files:
        rules = covering_rules(policy, facts)
        if not rules:
            continue
        in_scope += 1
        failure = _failure(facts, loaded_key_ids, rules)
        if failure is not None:
            uncovered.append(Uncovered(facts.path, failure[0], failure[1], failure[2].line))
    uncovered.sort(key=lambda u: u.path)
    decision = Decision.REFUSE if uncovered else Decision.ALLOW
    return GateResult(decision, in_scope, tuple(uncovered), len(policy.appraise_rules))
