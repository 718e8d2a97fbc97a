"""Reading a private key's password the same way in every command that signs (I/O).

Order: ``--password-file``, then ``IMAGUARD_KEY_PASSWORD``, then a prompt when the key is
encrypted and stdin is a terminal. A missing password for an encrypted key is reported by
``load_private_key`` itself, as a usage error naming the key.
"""

from __future__ import annotations

import getpass
import os
import sys
from typing import TYPE_CHECKING

from imaguard.errors import UsageError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["PASSWORD_HELP", "key_password"]

PASSWORD_HELP = "file holding the key's password (else IMAGUARD_KEY_PASSWORD, else a prompt on a terminal)"  # noqa: S105 - help text, not a password


def key_password(password_file: Path | None, key_path: Path) -> bytes | None:
    if password_file is not None:
        try:
            return password_file.read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise UsageError(f"{password_file}: cannot read password: {exc.strerror}") from exc
    env = os.environ.get("IMAGUARD_KEY_PASSWORD")
    if env is not None:
        return env.encode()
    try:
        encrypted = b"ENCRYPTED" in key_path.read_bytes()[:4096]
    except OSError:
        return None  # load_private_key reports the unreadable key
    if encrypted and sys.stdin.isatty():
        entered: str = getpass.getpass(f"password for {key_path}: ")
        return entered.encode()
    return None
