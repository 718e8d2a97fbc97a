"""Reading a private key's password the same way in every command that signs (I/O).

Order: ``--password-file``, then ``IMAGUARD_KEY_PASSWORD``, then a prompt when the key is
encrypted and stdin is a terminal. A missing password for an encrypted key is reported by
``load_private_key`` itself, as a usage error naming the key.
"""

from __future__ import annotations

import getpass
import os
import stat
import sys
from typing import TYPE_CHECKING

from imaguard.errors import UsageError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "MAX_PASSWORD_FILE_SIZE",
    "PASSWORD_HELP",
    "ask_password",
    "key_password",
    "looks_encrypted",
    "read_password_file",
]

# A password is a line; a limit keeps a wrong path (a disk image, /dev/zero) from being slurped.
MAX_PASSWORD_FILE_SIZE = 64 << 10
_PEM_HEADER_BYTES = 4096

_HELP = "file whose first line is the key's password, as openssl's file: (else IMAGUARD_KEY_PASSWORD, else a prompt)"
PASSWORD_HELP = _HELP


def read_password_file(path: Path) -> bytes:
    """The password in ``path``: its first line (openssl's ``-passin file:`` rule), without the line
    end. The one rule of every imaguard and imaguard-keyring command: a key made with a password
    file opens with the same file (review: the two tools read a two-line file differently)."""
    # Here, not at the top: `imaguard hash` imports this module and must not load X.509 code.
    from imaguard.keys.material import read_small_file  # noqa: PLC0415

    data = read_small_file(path, "password", MAX_PASSWORD_FILE_SIZE, "key-password", unreadable="usage")
    return data.split(b"\n", 1)[0].removesuffix(b"\r")


def ask_password(prompt: str) -> str:
    """A password typed on the terminal; end of input (Ctrl-D) is a usage error, not a traceback."""
    try:
        return getpass.getpass(prompt)
    except EOFError:
        raise UsageError("no password entered (end of input)", reason="key-password") from None


def looks_encrypted(head: bytes) -> bool:
    """Whether the first bytes of a key file are an encrypted key, without parsing the key.

    PEM names it in its header (``ENCRYPTED PRIVATE KEY``, or ``Proc-Type: 4,ENCRYPTED``). DER
    says it by shape: an encrypted PKCS#8 key (RFC 5958 EncryptedPrivateKeyInfo) is a SEQUENCE
    whose first element is a SEQUENCE (the algorithm), where every clear form (PKCS#8, PKCS#1,
    SEC1) starts with its version INTEGER.
    """
    if b"-----BEGIN" in head:
        return b"ENCRYPTED" in head
    if len(head) < 2 or head[0] != 0x30:  # DER SEQUENCE tag
        return False
    length_octets = head[1] & 0x7F if head[1] & 0x80 else 0
    inner = 2 + length_octets
    return len(head) > inner and head[inner] == 0x30  # DER SEQUENCE tag


def key_password(password_file: Path | None, key_path: Path) -> bytes | None:
    if password_file is not None:
        return read_password_file(password_file)
    env = os.environ.get("IMAGUARD_KEY_PASSWORD")
    if env is not None:
        return env.encode()
    try:
        if not stat.S_ISREG(key_path.stat().st_mode):
            # A pipe (`--key <(vault read …)`) can be read once only: peeking here would leave
            # load_private_key nothing. An encrypted key from a pipe needs --password-file.
            return None
        with key_path.open("rb") as f:  # the PEM header is at the start; never read a wrong path whole
            encrypted = looks_encrypted(f.read(_PEM_HEADER_BYTES))
    except OSError:
        return None  # load_private_key reports the unreadable key
    if encrypted and sys.stdin.isatty():
        return ask_password(f"password for {key_path}: ").encode()
    return None
