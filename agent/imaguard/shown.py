r"""File names as text a person reads: one line each, nothing hidden (pure).

Paths come from the filesystem, the package database and the measurement log, so anyone who can
name a file chooses them. Printed raw, a name with a newline forges a second result line (a file
"x\n  unknown-key  /usr/bin/sshd" in the enforce gate's list), and bidi controls reorder what is
shown. Text output therefore escapes a backslash as ``\\``, undecodable bytes as ``\xNN`` and
every non-printable character as ``\n``, ``\t``, ``\r``, ``\xNN`` or ``\uNNNN``; JSON output keeps
the exact name (its own escaping is unambiguous).
"""

from __future__ import annotations

__all__ = ["one_line", "shown_path"]

_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\"}


def _char(c: str) -> str:
    if c in _NAMED:
        return _NAMED[c]
    code = ord(c)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the byte that was not UTF-8
        return f"\\x{code - 0xDC00:02x}"
    if c.isprintable():
        return c
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def shown_path(path: str | bytes) -> str:
    """``path`` on one line, every character visible (see the module docstring)."""
    text = path.decode("utf-8", "surrogateescape") if isinstance(path, bytes) else path
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(_char(c) for c in text)


def one_line(message: str) -> str:
    """A message (that may quote names) on one line: as ``shown_path`` but a backslash stays one."""
    if message.isprintable():
        return message
    return "".join("\\" if c == "\\" else _char(c) for c in message)
