"""The imaguard error tree, named by what the caller decides, and the CLI exit codes.

Every error carries a stable ``reason`` code (spelled once, here or at the raise site) so that
JSON output and dashboards can depend on it.
"""

from __future__ import annotations

import enum

__all__ = [
    "ExitCode",
    "FormatError",
    "HostStateError",
    "ImaguardError",
    "PolicyGateError",
    "TrustError",
    "UnsupportedError",
    "UsageError",
]


class ExitCode(enum.IntEnum):
    """Process exit codes (DESIGN.md §4)."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    VERIFICATION_FAILED = 3
    DAEMON_UNREACHABLE = 4
    UNSUPPORTED = 77


class ImaguardError(Exception):
    """Base of every error imaguard raises on purpose; ``str()`` is the one line a user sees."""

    reason: str = "error"
    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class UsageError(ImaguardError):
    """The user asked for something impossible (missing file, bad option value, wrong password)."""

    reason = "usage"
    exit_code = ExitCode.USAGE


class FormatError(ImaguardError):
    """Input bytes do not follow the format; ``offset`` is where parsing stopped, if known."""

    reason = "malformed"
    # The index of the record it was found in, where a list scan knows it (measurements.scan_binary).
    record: int | None = None

    def __init__(self, message: str, *, offset: int | None = None, reason: str | None = None) -> None:
        if offset is not None:
            message = f"{message} (at byte offset {offset})"
        super().__init__(message, reason=reason)
        self.offset = offset


class TrustError(ImaguardError):
    """Something did not verify: a signature, a key, a chain. Fail closed."""

    reason = "untrusted"
    exit_code = ExitCode.VERIFICATION_FAILED


class HostStateError(ImaguardError):
    """The host refused an operation; carries the errno and path it happened on."""

    reason = "host-error"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        errno: int | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.errno = errno
        self.path = path


class PolicyGateError(ImaguardError):
    """The enforce gate refused: these files would be denied by the policy (exit 3, like ``policy check``)."""

    reason = "gate-refused"
    exit_code = ExitCode.VERIFICATION_FAILED

    def __init__(self, message: str, *, unsigned: tuple[str, ...] = (), reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.unsigned = unsigned


class UnsupportedError(ImaguardError):
    """This host, kernel or installation cannot do it; the message says what is missing."""

    reason = "unsupported"
    exit_code = ExitCode.UNSUPPORTED
