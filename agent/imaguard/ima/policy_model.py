"""The typed model of an IMA policy: actions, hooks, conditions, rules; validation and rendering (pure).

A :class:`Rule` can only be built if ``ima_validate_rule`` (``security/integrity/ima/ima_policy.c``,
Linux 6.1) would accept it, so code past the parser never meets a rule the kernel refuses. The text
side (parsing, positions in messages) is :mod:`imaguard.ima.policy`.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from imaguard.errors import FormatError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from imaguard.digests import HashAlgo

__all__ = [
    "DEBIAN_12",
    "DEFAULT_MAX_RULES",
    "FUNC_ALIASES",
    "MAX_ID",
    "MAX_RULE_LENGTH",
    "TEMPLATES",
    "Action",
    "AppraiseType",
    "Func",
    "IdCondition",
    "IdField",
    "InvalidRuleError",
    "KernelFeatures",
    "LsmCondition",
    "LsmField",
    "Mask",
    "MaskFlag",
    "Op",
    "Policy",
    "Rule",
    "render",
    "render_rule",
]

# ima_write_policy cuts a write() at PAGE_SIZE - 1 bytes, newline included.
MAX_RULE_LENGTH = 4094
DEFAULT_MAX_RULES = 4096


class Action(enum.Enum):
    """Rule actions (``policy_tokens``, Opt_measure … Opt_dont_hash)."""

    MEASURE = "measure"
    DONT_MEASURE = "dont_measure"
    APPRAISE = "appraise"
    DONT_APPRAISE = "dont_appraise"
    AUDIT = "audit"
    HASH = "hash"
    DONT_HASH = "dont_hash"

    @property
    def is_appraise(self) -> bool:
        return self in (Action.APPRAISE, Action.DONT_APPRAISE)


class Func(enum.Enum):
    """``func=`` hooks (``enum ima_hooks``, ima.h); ``since`` is the mainline release that added it."""

    FILE_CHECK = "FILE_CHECK"
    MMAP_CHECK = "MMAP_CHECK"
    MMAP_CHECK_REQPROT = "MMAP_CHECK_REQPROT"
    BPRM_CHECK = "BPRM_CHECK"
    CREDS_CHECK = "CREDS_CHECK"
    MODULE_CHECK = "MODULE_CHECK"
    FIRMWARE_CHECK = "FIRMWARE_CHECK"
    KEXEC_KERNEL_CHECK = "KEXEC_KERNEL_CHECK"
    KEXEC_INITRAMFS_CHECK = "KEXEC_INITRAMFS_CHECK"
    POLICY_CHECK = "POLICY_CHECK"
    KEXEC_CMDLINE = "KEXEC_CMDLINE"
    KEY_CHECK = "KEY_CHECK"
    CRITICAL_DATA = "CRITICAL_DATA"
    SETXATTR_CHECK = "SETXATTR_CHECK"

    @property
    def since(self) -> tuple[int, int]:
        # Only the hook newer than 6.1 matters for the targets we support; absent from 6.1.176.
        return (6, 3) if self is Func.MMAP_CHECK_REQPROT else (0, 0)


# Old spellings the kernel still accepts; rendered under their current name.
FUNC_ALIASES = {"FILE_MMAP": Func.MMAP_CHECK, "PATH_CHECK": Func.FILE_CHECK}


class MaskFlag(enum.Enum):
    MAY_EXEC = "MAY_EXEC"
    MAY_WRITE = "MAY_WRITE"
    MAY_READ = "MAY_READ"
    MAY_APPEND = "MAY_APPEND"


@dataclass(frozen=True, slots=True)
class Mask:
    """``mask=FLAG`` matches exactly that access; ``mask=^FLAG`` any access that includes it."""

    flag: MaskFlag
    inverted: bool = False

    def render(self) -> str:
        return ("^" if self.inverted else "") + self.flag.value


class IdField(enum.Enum):
    """Numeric id conditions, in rendering order; ``uid``/``euid`` and ``gid``/``egid`` share a slot."""

    UID = "uid"
    EUID = "euid"
    GID = "gid"
    EGID = "egid"
    FOWNER = "fowner"
    FGROUP = "fgroup"

    @property
    def slot(self) -> str:
        return {"euid": "uid", "egid": "gid"}.get(self.value, self.value)

    @property
    def is_subject(self) -> bool:
        """Compared with the credentials of the process, not with the file."""
        return self in (IdField.UID, IdField.EUID, IdField.GID, IdField.EGID)


class Op(enum.Enum):
    EQ = "="
    LT = "<"
    GT = ">"

    def compare(self, actual: int, value: int) -> bool:
        if self is Op.LT:
            return actual < value
        if self is Op.GT:
            return actual > value
        return actual == value


# make_kuid refuses (uid_t)-1, the invalid id.
MAX_ID = 0xFFFF_FFFE


@dataclass(frozen=True, slots=True)
class IdCondition:
    field: IdField
    op: Op
    value: int

    def __post_init__(self) -> None:
        if not 0 <= self.value <= MAX_ID:
            raise FormatError(f"{self.field.value} value {self.value} outside 0..{MAX_ID}")

    def render(self) -> str:
        return f"{self.field.value}{self.op.value}{self.value}"


class LsmField(enum.Enum):
    OBJ_USER = "obj_user"
    OBJ_ROLE = "obj_role"
    OBJ_TYPE = "obj_type"
    SUBJ_USER = "subj_user"
    SUBJ_ROLE = "subj_role"
    SUBJ_TYPE = "subj_type"


@dataclass(frozen=True, slots=True)
class LsmCondition:
    field: LsmField
    value: str

    def render(self) -> str:
        return f"{self.field.value}={self.value}"


class AppraiseType(enum.Enum):
    IMASIG = "imasig"
    IMASIG_MODSIG = "imasig|modsig"
    SIGV3 = "sigv3"


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_ID_ORDER = list(IdField)
_LSM_ORDER = list(LsmField)

# builtin_templates[] in ima_template.c (6.1); a custom ima_template_fmt has no name to refer to.
TEMPLATES = frozenset({"ima", "ima-ng", "ima-ngv2", "ima-sig", "ima-sigv2", "ima-buf", "ima-modsig", "evm-sig"})


@dataclass(frozen=True, slots=True)
class KernelFeatures:
    """What the target kernel was built with; rules needing more are refused before loading."""

    version: tuple[int, int] = (6, 1)
    modsig: bool = False  # CONFIG_IMA_APPRAISE_MODSIG: appraise_type=imasig|modsig, appraise_flag=
    asymmetric_keys: bool = True  # CONFIG_IMA_MEASURE_ASYMMETRIC_KEYS: func=KEY_CHECK, keyrings=


# Debian 12's linux-image-amd64 (6.1.0-50, config checked in the lab image).
DEBIAN_12 = KernelFeatures()

# Which conditions and options each hook accepts (ima_validate_rule, 6.1).
_FILE_KEYS = frozenset(
    {"mask", "fsmagic", "fsname", "fsuuid", "uid", "euid", "gid", "egid", "fowner", "fgroup", "pcr",
     "appraise_type", "appraise_algos", "permit_directio", "digest_type", "lsm", "template"}
)  # fmt: skip
_ALLOWED: dict[Func | None, frozenset[str]] = {
    **dict.fromkeys(
        (None, Func.FILE_CHECK, Func.MMAP_CHECK, Func.MMAP_CHECK_REQPROT, Func.BPRM_CHECK, Func.CREDS_CHECK,
         Func.FIRMWARE_CHECK, Func.POLICY_CHECK),
        _FILE_KEYS,
    ),
    **dict.fromkeys(
        (Func.MODULE_CHECK, Func.KEXEC_KERNEL_CHECK, Func.KEXEC_INITRAMFS_CHECK),
        (_FILE_KEYS - {"digest_type"}) | {"appraise_flag"},
    ),
    Func.KEXEC_CMDLINE: frozenset(
        {"fsmagic", "fsname", "fsuuid", "uid", "euid", "gid", "egid", "fowner", "fgroup", "pcr", "lsm", "template"}
    ),
    Func.KEY_CHECK: frozenset({"uid", "gid", "pcr", "keyrings", "template"}),
    Func.CRITICAL_DATA: frozenset({"uid", "gid", "pcr", "label", "template"}),
    Func.SETXATTR_CHECK: frozenset({"appraise_algos"}),
}
_MEASURE_ONLY_FUNCS = (Func.KEXEC_CMDLINE, Func.KEY_CHECK, Func.CRITICAL_DATA)
_MODSIG_FUNCS = (Func.MODULE_CHECK, Func.KEXEC_KERNEL_CHECK, Func.KEXEC_INITRAMFS_CHECK)


@dataclass(frozen=True, slots=True)
class Rule:
    """One policy rule. Built only if the kernel's grammar allows it (FormatError otherwise)."""

    action: Action
    func: Func | None = None
    mask: Mask | None = None
    fsmagic: int | None = None
    fsname: str | None = None
    fsuuid: str | None = None
    ids: tuple[IdCondition, ...] = ()
    lsm: tuple[LsmCondition, ...] = ()
    digest_type: str | None = None
    appraise_type: AppraiseType | None = None
    appraise_flag: str | None = None
    appraise_algos: tuple[HashAlgo, ...] = ()
    permit_directio: bool = False
    pcr: int | None = None
    template: str | None = None
    keyrings: tuple[str, ...] = ()
    label: tuple[str, ...] = ()
    line: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        # Conditions are a set to the kernel: keep them in one order so that equal rules compare equal.
        object.__setattr__(self, "ids", tuple(sorted(self.ids, key=lambda c: _ID_ORDER.index(c.field))))
        object.__setattr__(self, "lsm", tuple(sorted(self.lsm, key=lambda c: _LSM_ORDER.index(c.field))))
        problem = _rule_problem(self)
        if problem is not None:
            raise InvalidRuleError(problem[1], problem[0])

    def keywords(self) -> frozenset[str]:
        """The keywords this rule uses (``lsm`` for any LSM condition)."""
        used = {name for name in _SCALAR_KEYS if getattr(self, name) is not None}
        used.update(c.field.value for c in self.ids)
        for name, flag in (("lsm", self.lsm), ("appraise_algos", self.appraise_algos),
                           ("permit_directio", self.permit_directio), ("keyrings", self.keyrings),
                           ("label", self.label)):  # fmt: skip
            if flag:
                used.add(name)
        return frozenset(used)

    @property
    def requires_signature(self) -> bool:
        return self.appraise_type is not None


class InvalidRuleError(FormatError):
    """A rule the kernel's ima_validate_rule refuses; ``key`` is the keyword to blame."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.key = key


_SCALAR_KEYS = (
    "func", "mask", "fsmagic", "fsname", "fsuuid", "digest_type", "appraise_type", "appraise_flag", "pcr", "template",
)  # fmt: skip


def _rule_problem(rule: Rule) -> tuple[str, str] | None:
    """The first way ``rule`` breaks ima_validate_rule: (keyword to blame, message), or None."""
    return (
        _duplicate_problem(rule) or _value_problem(rule) or _action_problem(rule) or _hook_problem(rule)
        or _option_problem(rule)
    )


def _duplicate_problem(rule: Rule) -> tuple[str, str] | None:
    slots = [c.field.slot for c in rule.ids]
    for cond in rule.ids:
        if slots.count(cond.field.slot) > 1:
            kind = "user" if cond.field.slot == "uid" else "group"
            return f"e{cond.field.slot}", (
                f"{cond.field.slot} and e{cond.field.slot} cannot both be in one rule "
                f"(the kernel keeps one {kind} id per rule)"
            )
    if len({c.field for c in rule.lsm}) != len(rule.lsm):
        return "lsm", "an LSM condition appears twice"
    return None


def _action_problem(rule: Rule) -> tuple[str, str] | None:
    action = rule.action.value
    for key, wanted in (("pcr", Action.MEASURE), ("template", Action.MEASURE), ("appraise_type", Action.APPRAISE),
                        ("appraise_flag", Action.APPRAISE), ("appraise_algos", Action.APPRAISE)):  # fmt: skip
        if key in rule.keywords() and rule.action is not wanted:
            return key, f"{key}= is only allowed on {wanted.value} rules, not on {action}"
    if rule.func in _MEASURE_ONLY_FUNCS and rule.action not in (Action.MEASURE, Action.DONT_MEASURE):
        return "func", f"func={rule.func.value} only takes measure or dont_measure, not {action}"
    if rule.func is Func.SETXATTR_CHECK:
        if rule.action is not Action.APPRAISE:
            return "func", f"func=SETXATTR_CHECK only takes appraise, not {action}"
        if not rule.appraise_algos:
            return "func", "func=SETXATTR_CHECK needs appraise_algos="
    return None


def _hook_problem(rule: Rule) -> tuple[str, str] | None:
    func_name = f"func={rule.func.value}" if rule.func else "a rule without func="
    for key in sorted(rule.keywords() - _ALLOWED[rule.func] - {"func"}, key=_RENDER_ORDER.index):
        if key == "keyrings":
            return key, "keyrings= needs func=KEY_CHECK"
        if key == "label":
            return key, "label= needs func=CRITICAL_DATA"
        shown = "an LSM condition (obj_*, subj_*)" if key == "lsm" else f"{key}="
        return key, f"{shown} is not allowed with {func_name}"
    if rule.appraise_type is AppraiseType.IMASIG_MODSIG and rule.func not in _MODSIG_FUNCS:
        return "appraise_type", (
            "appraise_type=imasig|modsig needs func=MODULE_CHECK, KEXEC_KERNEL_CHECK or KEXEC_INITRAMFS_CHECK"
        )
    return None


def _value_problem(rule: Rule) -> tuple[str, str] | None:
    # What the parser checks per token, for rules built directly (STYLE.md §1).
    if rule.template is not None and rule.template not in TEMPLATES:
        return "template", f"unknown template {rule.template!r}"
    if rule.digest_type not in (None, "verity"):
        return "digest_type", f"digest_type={rule.digest_type}: only 'verity' exists"
    if rule.appraise_flag not in (None, "check_blacklist"):
        return "appraise_flag", f"appraise_flag={rule.appraise_flag}: only check_blacklist exists"
    if rule.fsuuid is not None and not _UUID.fullmatch(rule.fsuuid):
        return "fsuuid", f"fsuuid={rule.fsuuid} is not a lower-case UUID"
    words = [("fsname", rule.fsname or "x"), *((c.field.value, c.value) for c in rule.lsm)]
    words += [("keyrings", k.replace("|", "")) for k in rule.keyrings] + [("label", x) for x in rule.label]
    for key, word in words:
        if not word or not word.isascii() or not word.isprintable() or " " in word:
            return key, f"{key} value {word!r} cannot be written in a rule"
    return None


def _option_problem(rule: Rule) -> tuple[str, str] | None:
    if rule.appraise_flag is not None and rule.appraise_type is not AppraiseType.IMASIG_MODSIG:
        return "appraise_flag", "appraise_flag=check_blacklist needs appraise_type=imasig|modsig"
    if rule.digest_type is not None and rule.appraise_type not in (None, AppraiseType.SIGV3):
        shown = rule.appraise_type.value
        return "appraise_type", f"appraise_type={shown} contradicts digest_type=verity (use sigv3)"
    if rule.appraise_type is AppraiseType.SIGV3 and rule.digest_type is None:
        return "appraise_type", "appraise_type=sigv3 needs digest_type=verity before it"
    if rule.action is Action.APPRAISE and rule.digest_type is not None and rule.appraise_type is None:
        return "digest_type", "appraise rules with digest_type=verity need appraise_type=sigv3"
    for name, items in (("keyrings", rule.keyrings), ("label", rule.label)):
        if any(not item or "|" in item for item in items):
            return name, f"{name}= has an empty item"
    if rule.pcr is not None and not 0 <= rule.pcr <= 63:
        return "pcr", f"pcr={rule.pcr} outside 0..63"
    if rule.fsmagic is not None and not 0 <= rule.fsmagic < 1 << 64:
        return "fsmagic", "fsmagic= does not fit in 64 bits"
    return None


_RENDER_ORDER = [
    "func", "mask", "fsmagic", "fsname", "fsuuid", "uid", "euid", "gid", "egid", "fowner", "fgroup", "lsm",
    "digest_type", "appraise_type", "appraise_flag", "appraise_algos", "permit_directio", "pcr", "template",
    "keyrings", "label",
]  # fmt: skip


def render_rule(rule: Rule) -> str:
    """The canonical text of one rule (``digest_type=`` before ``appraise_type=``, as the kernel needs)."""
    parts: list[str | None] = [
        rule.action.value,
        rule.func and f"func={rule.func.value}",
        None if rule.mask is None else f"mask={rule.mask.render()}",
        None if rule.fsmagic is None else f"fsmagic=0x{rule.fsmagic:x}",
        rule.fsname and f"fsname={rule.fsname}",
        rule.fsuuid and f"fsuuid={rule.fsuuid}",
        *(c.render() for c in rule.ids),
        *(c.render() for c in rule.lsm),
        rule.digest_type and f"digest_type={rule.digest_type}",
        rule.appraise_type and f"appraise_type={rule.appraise_type.value}",
        rule.appraise_flag and f"appraise_flag={rule.appraise_flag}",
        _joined("appraise_algos", ",", [a.kernel_name for a in rule.appraise_algos]),
        "permit_directio" if rule.permit_directio else None,
        None if rule.pcr is None else f"pcr={rule.pcr}",
        rule.template and f"template={rule.template}",
        _joined("keyrings", "|", rule.keyrings),
        _joined("label", "|", rule.label),
    ]
    return " ".join(part for part in parts if part)


def _joined(key: str, sep: str, items: Sequence[str]) -> str | None:
    return f"{key}={sep.join(items)}" if items else None


@dataclass(frozen=True, slots=True)
class Policy:
    """A whole policy: rules in order (the first matching rule of each kind decides)."""

    rules: tuple[Rule, ...]

    @property
    def appraise_rules(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.action.is_appraise)


def render(policy: Policy) -> str:
    """The policy as the kernel takes it: one rule per line, no comments."""
    return "".join(render_rule(rule) + "\n" for rule in policy.rules)
