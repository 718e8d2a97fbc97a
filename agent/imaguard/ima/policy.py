"""The kernel's IMA policy language: parse policy text into typed rules (pure: text in, rules out).

The model, validation and rendering live in :mod:`imaguard.ima.policy_model`; their names are
re-exported here so that callers import one module.

Follows ``Documentation/ABI/testing/ima_policy`` and ``ima_parse_rule``/``ima_validate_rule`` in
``security/integrity/ima/ima_policy.c`` as of Linux 6.1 (Debian 12: 6.1.0, checked against the
tokens in its image). Where the kernel is lax this parser is stricter, never the other way round,
so that a policy it accepts is one the kernel accepts (a rejected rule discards the whole policy,
and on Debian 12 the policy can be written once per boot):

- a rule starts with its action (the kernel takes it anywhere, but ``template=`` only after it);
- every keyword appears at most once (the kernel silently keeps the last ``fsname=``);
- numbers are plain decimal (the kernel's ``kstrtoul`` also takes ``+5``);
- ``#`` starts a comment only at the beginning of a line, as in the kernel; blank lines are skipped.

Things only the running kernel knows are not checked here: whether the active LSM understands an
``obj_*``/``subj_*`` value, whether an ``appraise_algos=`` algorithm is built in.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from imaguard.digests import HashAlgo
from imaguard.errors import FormatError
from imaguard.ima.policy_model import (
    DEBIAN_12,
    DEFAULT_MAX_RULES,
    FUNC_ALIASES,
    MAX_ID,
    MAX_RULE_LENGTH,
    TEMPLATES,
    Action,
    AppraiseType,
    Func,
    IdCondition,
    IdField,
    InvalidRuleError,
    KernelFeatures,
    LsmCondition,
    LsmField,
    Mask,
    MaskFlag,
    Op,
    Policy,
    Rule,
    render,
    render_rule,
)

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "DEBIAN_12",
    "DEFAULT_MAX_RULES",
    "MAX_RULE_LENGTH",
    "TEMPLATES",
    "Action",
    "AppraiseType",
    "Func",
    "IdCondition",
    "IdField",
    "KernelFeatures",
    "LsmCondition",
    "LsmField",
    "Mask",
    "MaskFlag",
    "Op",
    "Policy",
    "PolicySyntaxError",
    "Rule",
    "parse_policy",
    "parse_rule",
    "render",
    "render_rule",
]

_ALGOS = {algo.kernel_name: algo for algo in HashAlgo}


class PolicySyntaxError(FormatError):
    """A policy rule the kernel would refuse; names the source, line and column (1-based)."""

    def __init__(self, source: str, line: int, column: int, message: str) -> None:
        super().__init__(f"{source} line {line}, column {column}: {message}")
        self.source = source
        self.line = line
        self.column = column


# Keyword characters, then the operator: "uid>5" → ("uid", ">", "5").
_TOKEN = re.compile(r"([a-z_]+)([=<>])(.*)", re.DOTALL)
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEX = re.compile(r"(0[xX])?[0-9a-fA-F]+")


def parse_policy(
    text: str, *, source: str = "policy", kernel: KernelFeatures = DEBIAN_12, max_rules: int = DEFAULT_MAX_RULES
) -> Policy:
    """Parse a policy text (rules, ``#`` comment lines, blank lines); PolicySyntaxError on the first bad rule."""
    rules: list[Rule] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip(" \t")
        if not stripped or stripped.startswith("#"):
            continue
        if len(rules) >= max_rules:
            raise PolicySyntaxError(source, lineno, 1, f"more than {max_rules} rules")
        rules.append(_parse_line(line, lineno, source, kernel))
    return Policy(tuple(rules))


def parse_rule(text: str, *, kernel: KernelFeatures = DEBIAN_12) -> Rule:
    """Parse exactly one rule (no comments, one line)."""
    if "\n" in text:
        raise PolicySyntaxError("rule", 1, text.index("\n") + 1, "rule spans lines")
    if not text.strip(" \t") or text.strip(" \t").startswith("#"):
        raise PolicySyntaxError("rule", 1, 1, "empty rule")
    return _parse_line(text, 1, "rule", kernel)


class _Line:
    """Where a rule came from, for messages."""

    def __init__(self, source: str, lineno: int) -> None:
        self.source = source
        self.lineno = lineno

    def fail(self, column: int, message: str) -> PolicySyntaxError:
        return PolicySyntaxError(self.source, self.lineno, column, message)


def _parse_line(text: str, lineno: int, source: str, kernel: KernelFeatures) -> Rule:
    line = _Line(source, lineno)
    for index, char in enumerate(text):
        if char == "\r":
            raise line.fail(index + 1, "carriage return in rule (DOS line ending?)")
        if char != "\t" and not (char.isascii() and char.isprintable()):
            raise line.fail(index + 1, f"non-ASCII or non-printable character {char!r}")
    if len(text) > MAX_RULE_LENGTH:
        raise line.fail(MAX_RULE_LENGTH + 1, f"rule longer than {MAX_RULE_LENGTH} characters")
    # The kernel splits on spaces and tabs only (strsep " \t").
    tokens = [(m.start() + 1, m.group()) for m in re.finditer(r"[^ \t]+", text)]
    first_col, first = tokens[0]
    try:
        action = Action(first)
    except ValueError:
        hint = " (a line starting with '/' would make the kernel load a policy file)" if first.startswith("/") else ""
        raise line.fail(first_col, f"unknown action {first!r} (a rule starts with its action){hint}") from None
    fields: dict[str, object] = {}
    columns: dict[str, int] = {}
    ids: list[IdCondition] = []
    lsm: list[LsmCondition] = []
    for column, token in tokens[1:]:
        key, value = _parse_token(token, column, line, kernel, fields)
        if isinstance(value, IdCondition | LsmCondition):
            key = value.field.value
        if key in columns:
            raise line.fail(column, f"{key} appears twice in one rule")
        columns[key] = column
        if isinstance(value, IdCondition):
            ids.append(value)
        elif isinstance(value, LsmCondition):
            lsm.append(value)
            columns.setdefault("lsm", column)
        else:
            fields[key] = value
    try:
        return Rule(action=action, ids=tuple(ids), lsm=tuple(lsm), line=lineno, **fields)  # type: ignore[arg-type]
    except InvalidRuleError as exc:
        raise line.fail(columns.get(exc.key, first_col), str(exc)) from None


class _BadValueError(Exception):
    """A keyword's value the kernel would refuse (message only; the caller adds the position)."""


def _parse_token(
    token: str, column: int, line: _Line, kernel: KernelFeatures, fields: dict[str, object]
) -> tuple[str, object]:
    if token == "permit_directio":  # noqa: S105 - a policy keyword, not a password
        return token, True
    if token in Action._value2member_map_:
        raise line.fail(column, f"second action {token!r} in one rule")
    match = _TOKEN.fullmatch(token)
    if match is None:
        hint = " ('#' starts a comment only at the beginning of a line)" if token.startswith("#") else ""
        raise line.fail(column, f"unknown keyword {token!r}{hint}")
    key, op, value = match.groups()
    try:
        if key in IdField._value2member_map_:
            return key, _id_condition(IdField(key), Op(op), value)
        known = key in _VALUE_PARSERS or key in LsmField._value2member_map_
        if not known:
            raise line.fail(column, f"unknown keyword {token!r}")
        if op != "=":
            raise _BadValueError(f"{key} takes '=', not {op!r}")
        if not value:
            raise _BadValueError(f"{key}= needs a value")
        if key in LsmField._value2member_map_:
            return key, LsmCondition(LsmField(key), value)
        return key, _VALUE_PARSERS[key](value, kernel, fields)
    except _BadValueError as exc:
        raise line.fail(column, str(exc)) from None


def _id_condition(fid: IdField, op: Op, value: str) -> IdCondition:
    if not value.isascii() or not value.isdigit():
        raise _BadValueError(f"{fid.value}{op.value}{value}: not a decimal id")
    if int(value) > MAX_ID:
        raise _BadValueError(f"{fid.value}{op.value}{value}: id outside 0..{MAX_ID}")
    return IdCondition(fid, op, int(value))


def _func(value: str, kernel: KernelFeatures, _fields: dict[str, object]) -> Func:
    func = FUNC_ALIASES.get(value)
    if func is None:
        try:
            func = Func(value)
        except ValueError:
            raise _BadValueError(f"unknown hook func={value}") from None
    if func.since > kernel.version:
        need, have = ".".join(map(str, func.since)), ".".join(map(str, kernel.version))
        raise _BadValueError(f"func={value} needs Linux {need}; the target kernel is {have}")
    if func is Func.KEY_CHECK and not kernel.asymmetric_keys:
        raise _BadValueError("func=KEY_CHECK needs CONFIG_IMA_MEASURE_ASYMMETRIC_KEYS")
    return func


def _mask(value: str, _kernel: KernelFeatures, _fields: dict[str, object]) -> Mask:
    inverted = value.startswith("^")
    try:
        return Mask(MaskFlag(value[1:] if inverted else value), inverted)
    except ValueError:
        raise _BadValueError(f"unknown mask {value!r} (MAY_EXEC, MAY_WRITE, MAY_READ, MAY_APPEND; ^ for any)") from None


def _fsmagic(value: str, _kernel: KernelFeatures, _fields: dict[str, object]) -> int:
    if not _HEX.fullmatch(value) or int(value, 16) >= 1 << 64:
        raise _BadValueError(f"fsmagic={value} is not a 64-bit hex number")
    return int(value, 16)


def _fsuuid(value: str, _kernel: KernelFeatures, _fields: dict[str, object]) -> str:
    if not _UUID.fullmatch(value):
        raise _BadValueError(f"fsuuid={value} is not a UUID (8-4-4-4-12 hex digits)")
    return value.lower()


def _digest_type(value: str, _kernel: KernelFeatures, fields: dict[str, object]) -> str:
    if value != "verity":
        raise _BadValueError(f"digest_type={value}: only 'verity' exists")
    if "appraise_type" in fields:
        raise _BadValueError("digest_type=verity must come before appraise_type=")
    return value


def _appraise_type(value: str, kernel: KernelFeatures, fields: dict[str, object]) -> AppraiseType:
    try:
        atype = AppraiseType(value)
    except ValueError:
        raise _BadValueError(f"appraise_type={value}: use imasig, imasig|modsig or sigv3") from None
    if atype is AppraiseType.IMASIG_MODSIG and not kernel.modsig:
        raise _BadValueError("appraise_type=imasig|modsig needs CONFIG_IMA_APPRAISE_MODSIG (not in Debian 12)")
    if atype is AppraiseType.SIGV3 and "digest_type" not in fields:
        raise _BadValueError("appraise_type=sigv3 needs digest_type=verity before it")
    return atype


def _appraise_flag(value: str, kernel: KernelFeatures, _fields: dict[str, object]) -> str:
    if value != "check_blacklist":
        raise _BadValueError(f"appraise_flag={value}: only check_blacklist exists")
    if not kernel.modsig:
        raise _BadValueError("appraise_flag= needs CONFIG_IMA_APPRAISE_MODSIG (not in Debian 12)")
    return value


def _appraise_algos(value: str, _kernel: KernelFeatures, _fields: dict[str, object]) -> tuple[HashAlgo, ...]:
    algos: list[HashAlgo] = []
    for name in value.split(","):
        if name not in _ALGOS:
            raise _BadValueError(f"appraise_algos: unknown hash algorithm {name!r}")
        if _ALGOS[name] in algos:
            raise _BadValueError(f"appraise_algos: {name} listed twice")
        algos.append(_ALGOS[name])
    return tuple(algos)


def _pcr(value: str, _kernel: KernelFeatures, _fields: dict[str, object]) -> int:
    # measured_pcrs is an unsigned long: PCRs 0..63 (INVALID_PCR).
    if not value.isascii() or not value.isdigit() or int(value) > 63:
        raise _BadValueError(f"pcr={value} is not a number in 0..63")
    return int(value)


def _template(value: str, _kernel: KernelFeatures, _fields: dict[str, object]) -> str:
    if value not in TEMPLATES:
        raise _BadValueError(f"unknown template {value!r} ({', '.join(sorted(TEMPLATES))})")
    return value


def _fsname(value: str, _kernel: KernelFeatures, _fields: dict[str, object]) -> str:
    return value


def _list(name: str) -> Callable[[str, KernelFeatures, dict[str, object]], tuple[str, ...]]:
    def parse(value: str, kernel: KernelFeatures, _fields: dict[str, object]) -> tuple[str, ...]:
        # ima_alloc_rule_opt_list: '|'-separated, no empty item.
        items = tuple(value.split("|"))
        if not all(items):
            raise _BadValueError(f"{name}= has an empty item")
        if name == "keyrings" and not kernel.asymmetric_keys:
            raise _BadValueError("keyrings= needs CONFIG_IMA_MEASURE_ASYMMETRIC_KEYS")
        return items

    return parse


_VALUE_PARSERS: dict[str, Callable[[str, KernelFeatures, dict[str, object]], object]] = {
    "func": _func,
    "mask": _mask,
    "fsmagic": _fsmagic,
    "fsname": _fsname,
    "fsuuid": _fsuuid,
    "digest_type": _digest_type,
    "appraise_type": _appraise_type,
    "appraise_flag": _appraise_flag,
    "appraise_algos": _appraise_algos,
    "pcr": _pcr,
    "template": _template,
    "keyrings": _list("keyrings"),
    "label": _list("label"),
}
