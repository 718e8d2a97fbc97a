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

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["MAX_PASSWORD_FILE_SIZE", "PASSWORD_HELP", "key_password"]

# A password is a line; a limit keeps a wrong path (a disk image, /dev/zero) from being slurped.
MAX_PASSWORD_FILE_SIZE = 64 << 10
_PEM_HEADER_BYTES = 4096

PASSWORD_HELP = "file holding the key's password (else IMAGUARD_KEY_PASSWORD, else a prompt on a terminal)"  # noqa: S105 - help text, not a password


def key_password(password_file: Path | None, key_path: Path) -> bytes | None:
    if password_file is not None:
        # Here, not at the top: `imaguard hash` imports this module and must not load X.509 code.
        from imaguard.keys.material import read_small_file  # noqa: PLC0415

        data = read_small_file(password_file, "password", MAX_PASSWORD_FILE_SIZE, "key-password", unreadable="usage")
        return data.rstrip(b"\r\n")
    env = os.environ.get("IMAGUARD_KEY_PASSWORD")
    if env is not None:
        return env.encode()
    try:
        with key_path.open("rb") as f:  # the PEM header is at the start; never read a wrong path whole
            encrypted = b"ENCRYPTED" in f.read(_PEM_HEADER_BYTES)
    except OSError:
        return None  # load_private_key reports the unreadable key
    if encrypted and sys.stdin.isatty():
        entered: str = getpass.getpass(f"password for {key_path}: ")
        return entered.encode()
    return None
