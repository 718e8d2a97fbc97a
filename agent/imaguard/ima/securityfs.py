"""IMA's securityfs interface: mount it, load a policy, read the measurement lists.

Kernel behaviour this follows (``security/integrity/ima/ima_fs.c``, ``ima_policy.c``, Linux 6.1):

- ``ima_write_policy`` parses only the first line of each ``write()`` and returns its length, so a
  policy is written one rule per ``write()`` and every return value is checked;
- the rules take effect when the file is closed, and only if every rule was accepted; a rejected
  rule (EINVAL) discards the whole policy;
- without ``CONFIG_IMA_WRITE_POLICY`` (Debian 12) the policy file is removed after the first
  successful load: a policy can be loaded once per boot.
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import os
from collections.abc import Sequence
from pathlib import Path

from imaguard.errors import FormatError, HostStateError, UnsupportedError
from imaguard.ima import policy

__all__ = [
    "ASCII_MEASUREMENTS",
    "BINARY_MEASUREMENTS",
    "DEFAULT_MEASUREMENTS_LIMIT",
    "IMA_DIR",
    "POLICY_ACTIONS",
    "SECURITYFS",
    "PolicyRuleRejectedError",
    "ensure_mounted",
    "is_mounted",
    "policy_rules",
    "read_counter",
    "read_measurements",
    "validate_rule",
    "write_policy",
]

SECURITYFS = "/sys/kernel/security"
IMA_DIR = f"{SECURITYFS}/ima"
BINARY_MEASUREMENTS = "binary_runtime_measurements"
ASCII_MEASUREMENTS = "ascii_runtime_measurements"
DEFAULT_MEASUREMENTS_LIMIT = 256 << 20

# Actions ima_parse_rule accepts (ima_policy.c policy_tokens, 6.1).
POLICY_ACTIONS = frozenset(action.value for action in policy.Action)

class PolicyRuleRejectedError(HostStateError):
    """The kernel refused one rule; ``index`` (1-based) and ``line`` (in the source, 0 if unknown) say which."""

    def __init__(self, message: str, *, rule: str, index: int, line: int, errno: int | None, path: str) -> None:
        super().__init__(message, reason="policy-rule-rejected", errno=errno, path=path)
        self.rule = rule
        self.index = index
        self.line = line


_MS_NOSUID = 2
_MS_NODEV = 4
_MS_NOEXEC = 8


def validate_rule(rule: str) -> str:
    """Check one policy rule against the kernel's grammar (:mod:`imaguard.ima.policy`); return it stripped.

    The last check before a rule reaches the kernel: a refused rule would discard the whole policy.
    """
    text = rule.strip()
    policy.parse_rule(text)
    return text


def policy_rules(text: str) -> tuple[str, ...]:
    """The rules of a policy text, each checked against the kernel's grammar; comments and blank lines dropped."""
    lines = text.split("\n")
    return tuple(lines[rule.line - 1].strip() for rule in policy.parse_policy(text).rules)


def is_mounted(mountinfo: str, mountpoint: str = SECURITYFS) -> bool:
    """Whether ``/proc/self/mountinfo`` text shows securityfs mounted at ``mountpoint``."""
    for line in mountinfo.splitlines():
        fields, sep, tail = line.partition(" - ")
        parts = fields.split()
        if sep and len(parts) >= 5 and parts[4] == mountpoint and tail.split(None, 1)[:1] == ["securityfs"]:
            return True
    return False


# --- I/O below -----------------------------------------------------------------------------------


def ensure_mounted(mountpoint: str = SECURITYFS) -> bool:
    """Mount securityfs at ``mountpoint`` unless it is; True if this call mounted it."""
    try:
        with Path("/proc/self/mountinfo").open(encoding="utf-8", errors="replace") as f:
            if is_mounted(f.read(1 << 22), mountpoint):
                return False
    except OSError as exc:
        raise HostStateError(
            f"cannot read /proc/self/mountinfo: {exc.strerror}", errno=exc.errno, path="/proc/self/mountinfo"
        ) from exc
    libc = ctypes.CDLL(None, use_errno=True)
    res = libc.mount(
        b"securityfs", mountpoint.encode(), b"securityfs", ctypes.c_ulong(_MS_NOSUID | _MS_NODEV | _MS_NOEXEC), None
    )
    if res != 0:
        err = ctypes.get_errno()
        if err == errno_mod.ENODEV:
            raise UnsupportedError("the kernel has no securityfs (CONFIG_SECURITYFS)", reason="no-securityfs")
        raise HostStateError(
            f"cannot mount securityfs on {mountpoint}: {os.strerror(err)}",
            reason="mount-failed",
            errno=err,
            path=mountpoint,
        )
    return True


def _ima_dir(ima_dir: str) -> Path:
    path = Path(ima_dir)
    if not path.is_dir():
        raise UnsupportedError(
            f"{ima_dir} does not exist: the kernel has no IMA (CONFIG_IMA) or securityfs is not mounted",
            reason="no-ima",
        )
    return path


def write_policy(rules: Sequence[str], *, ima_dir: str = IMA_DIR, lines: Sequence[int] = ()) -> int:
    """Load ``rules`` as the IMA policy: one open, one ``write()`` per rule, each checked.

    ``lines`` are the rules' line numbers in their source, for the message of a rejected rule
    (:class:`PolicyRuleRejectedError`). Returns the number of rules written. On any refusal nothing
    of this policy is in force.
    """
    checked = [validate_rule(rule) for rule in rules]
    if not checked:
        raise FormatError("refusing to load an empty IMA policy")
    path = _ima_dir(ima_dir) / "policy"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno_mod.ENOENT:
            raise HostStateError(
                f"{path} is gone: a policy was already loaded this boot and this kernel lacks "
                "CONFIG_IMA_WRITE_POLICY, so the next policy takes a reboot",
                reason="policy-already-loaded",
                errno=exc.errno,
                path=str(path),
            ) from exc
        # ima_open_policy allows one writer at a time (EBUSY).
        raise HostStateError(
            f"cannot open {path} for writing: {exc.strerror}",
            reason="policy-open-failed",
            errno=exc.errno,
            path=str(path),
        ) from exc
    try:
        for index, rule in enumerate(checked, start=1):
            _write_rule(fd, path, rule, (index, len(checked), lines[index - 1] if index <= len(lines) else 0))
    except BaseException:
        os.close(fd)
        raise
    try:
        # Closing the file is what activates the rules (ima_release_policy).
        os.close(fd)
    except OSError as exc:
        raise HostStateError(
            f"closing {path} failed: {exc.strerror}; the policy may not be in force",
            reason="policy-close-failed",
            errno=exc.errno,
            path=str(path),
        ) from exc
    return len(checked)


def _write_rule(fd: int, path: Path, rule: str, where: tuple[int, int, int]) -> None:
    index, total, line = where
    data = (rule + "\n").encode("ascii")
    which = f"{index} of {total}" + (f" (line {line})" if line else "")
    try:
        written = os.write(fd, data)
    except OSError as exc:
        raise PolicyRuleRejectedError(
            f"the kernel rejected IMA policy rule {which} with {errno_mod.errorcode.get(exc.errno or 0, exc.errno)} "
            f"({exc.strerror}): {rule!r}; no rule of this policy is in force (see the audit log, type=1807 and 1802)",
            rule=rule,
            index=index,
            line=line,
            errno=exc.errno,
            path=str(path),
        ) from exc
    if written != len(data):
        raise HostStateError(
            f"the kernel took {written} of {len(data)} bytes of IMA policy rule {which}: {rule!r}",
            reason="policy-short-write",
            path=str(path),
        )


def read_measurements(
    name: str = BINARY_MEASUREMENTS, *, limit: int = DEFAULT_MEASUREMENTS_LIMIT, ima_dir: str = IMA_DIR
) -> bytes:
    """The bytes of one measurement list file (e.g. ``binary_runtime_measurements``), at most ``limit``."""
    if "/" in name:
        raise FormatError(f"not a measurement list name: {name!r}")
    path = _ima_dir(ima_dir) / name
    chunks: list[bytes] = []
    total = 0
    try:
        # securityfs files report size 0: read until EOF, never trust st_size.
        with path.open("rb", buffering=0) as f:
            while True:
                chunk = f.read(1 << 16)
                if not chunk:
                    break
                total += len(chunk)
                if total > limit:
                    raise HostStateError(
                        f"{path} is larger than the limit of {limit} bytes",
                        reason="size-limit-exceeded",
                        path=str(path),
                    )
                chunks.append(chunk)
    except OSError as exc:
        raise HostStateError(
            f"cannot read {path}: {exc.strerror}", reason="measurements-unreadable", errno=exc.errno, path=str(path)
        ) from exc
    return b"".join(chunks)


def read_counter(name: str = "runtime_measurements_count", *, ima_dir: str = IMA_DIR) -> int:
    """An IMA counter file (``runtime_measurements_count``, ``violations``) as an int."""
    if "/" in name:
        raise FormatError(f"not an IMA counter name: {name!r}")
    path = _ima_dir(ima_dir) / name
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise HostStateError(f"cannot read {path}: {exc}", reason="counter-unreadable", path=str(path)) from exc
    try:
        return int(text)
    except ValueError as exc:
        raise FormatError(f"{path}: not a number: {text!r}") from exc
