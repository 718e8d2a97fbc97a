"""The kernel keyring IMA verifies against: find or create ``_ima``, add X.509 certificates.

System calls go through ctypes (``add_key(2)``, ``keyctl(2)``; constants from
``include/uapi/linux/keyctl.h``, Linux 6.1), so no keyutils binary or library is needed.

Which keyring the kernel uses (``security/integrity/digsig.c``, 6.1):

- without ``CONFIG_INTEGRITY_TRUSTED_KEYRING`` the kernel looks ``_ima`` up with ``request_key()``
  in the keyrings of the process being appraised, so root creates ``_ima`` and links it into the
  user keyring ``@u``, which every root process reaches through its (user-)session keyring.
  The kernel caches the keyring after its first successful lookup; until then, an exec from a
  process whose keyrings do not reach ``@u`` (a systemd service with ``KeyringMode=private``) fails
  appraisal even when correctly signed, so load keys from, and first appraise in, a process that
  possesses ``@u``;
- with it, the kernel creates the restricted ``.ima`` keyring at boot: only a certificate signed by a
  key in ``.builtin_trusted_keys`` (or ``.secondary_trusted_keys``) is accepted, and ``_ima`` is
  ignored. :func:`trusted_ima_keyring` detects this; :func:`find_or_create_ima_keyring` refuses it.

The parsers (``/proc/keys``, ``KEYCTL_DESCRIBE``, ``/proc/crypto``, kernel config) are pure
functions; the I/O is in the functions that say so.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as errno_mod
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from imaguard.errors import FormatError, HostStateError, ImaguardError, TrustError, UnsupportedError

__all__ = [
    "ECDSA_MISSING_MESSAGE",
    "IMA_KEYRING",
    "KEY_SPEC_USER_KEYRING",
    "TRUSTED_IMA_KEYRING",
    "KeyDescription",
    "ProcKey",
    "add_certificate",
    "add_key_error",
    "certificate_is_ec",
    "describe_key",
    "ecdsa_support",
    "find_or_create_ima_keyring",
    "kernel_ecdsa_support",
    "keyring_links",
    "parse_key_description",
    "parse_proc_keys",
    "possess_user_keyring",
    "read_proc_keys",
    "request_keyring",
    "search_keyring",
    "trusted_ima_keyring",
    "trusted_ima_requirement",
    "unlink_key",
]

IMA_KEYRING = "_ima"  # root-creatable keyring (digsig.c keyring_name[INTEGRITY_KEYRING_IMA])
TRUSTED_IMA_KEYRING = ".ima"  # restricted keyring made at boot with CONFIG_INTEGRITY_TRUSTED_KEYRING

# include/uapi/linux/keyctl.h
KEY_SPEC_USER_KEYRING = -4
_KEY_SPEC_THREAD_KEYRING = -1
_KEYCTL_GET_KEYRING_ID = 0
_KEYCTL_LINK = 8
_KEYCTL_DESCRIBE = 6
_KEYCTL_READ = 11
_KEYCTL_SEARCH = 10
_KEYCTL_UNLINK = 9

# System call numbers: arch/x86/entry/syscalls/syscall_64.tbl, include/uapi/asm-generic/unistd.h.
_SYSCALLS: dict[str, tuple[int, int]] = {
    "x86_64": (248, 250),
    "aarch64": (217, 219),
    "riscv64": (217, 219),
}

ECDSA_MISSING_MESSAGE = (
    "the running kernel cannot use EC (ECDSA) keys: it was built without CONFIG_CRYPTO_ECDSA "
    "(Debian 12's 6.1 kernel is one); use an RSA certificate (e.g. RSA-2048) for IMA"
)

# request_key(2): arch/x86/entry/syscalls/syscall_64.tbl, include/uapi/asm-generic/unistd.h.
_REQUEST_KEY: dict[str, int] = {"x86_64": 249, "aarch64": 218, "riscv64": 218}

# Upper bound for a keyring's link list read back (4 bytes per key; keyrings hold few keys).
_MAX_KEYRING_LINKS = 4096


@dataclass(frozen=True, slots=True)
class ProcKey:
    """One line of ``/proc/keys`` (``security/keys/proc.c`` ``proc_keys_show``, 6.1)."""

    serial: int
    flags: str
    usage: int
    timeout: str
    perm: int
    uid: int
    gid: int
    type: str
    description: str
    summary: str


@dataclass(frozen=True, slots=True)
class KeyDescription:
    """``KEYCTL_DESCRIBE``: ``type;uid;gid;perm;description`` (``security/keys/keyctl.c``)."""

    type: str
    uid: int
    gid: int
    perm: int
    description: str


def parse_proc_keys(text: str) -> tuple[ProcKey, ...]:
    """Parse ``/proc/keys``; raise FormatError naming the line that does not fit."""
    keys: list[ProcKey] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        # 8 fixed columns, then "description: summary". The description may hold ": " itself
        # (x509 keys are named "CN: SKID"), the type's summary never does: split at the last one.
        # The type column is cut to 9 characters ("asymmetri").
        parts = line.split(None, 8)
        if len(parts) != 9:
            raise FormatError(f"/proc/keys line {lineno}: expected 9 columns: {line!r}")
        serial_s, flags, usage_s, timeout, perm_s, uid_s, gid_s, key_type, rest = parts
        description, sep, summary = rest.rpartition(": ")
        if not sep:
            description, summary = rest.removesuffix(":"), ""
        try:
            keys.append(
                ProcKey(
                    serial=int(serial_s, 16),
                    flags=flags,
                    usage=int(usage_s),
                    timeout=timeout,
                    perm=int(perm_s, 16),
                    uid=int(uid_s),
                    gid=int(gid_s),
                    type=key_type,
                    description=description,
                    summary=summary,
                )
            )
        except ValueError as exc:
            raise FormatError(f"/proc/keys line {lineno}: bad number: {line!r}") from exc
    return tuple(keys)


def parse_key_description(raw: bytes) -> KeyDescription:
    """Parse a ``KEYCTL_DESCRIBE`` answer (NUL-terminated or not)."""
    text = raw.rstrip(b"\0").decode("utf-8", errors="replace")
    parts = text.split(";", 4)
    if len(parts) != 5:
        raise FormatError(f"keyctl describe: expected 'type;uid;gid;perm;description', got {text!r}")
    try:
        return KeyDescription(parts[0], int(parts[1]), int(parts[2]), int(parts[3], 16), parts[4])
    except ValueError as exc:
        raise FormatError(f"keyctl describe: bad number in {text!r}") from exc


def trusted_ima_keyring(keys: Sequence[ProcKey]) -> ProcKey | None:
    """The kernel's restricted ``.ima`` keyring, if this kernel made one at boot."""
    for key in keys:
        if key.type == "keyring" and key.description == TRUSTED_IMA_KEYRING:
            return key
    return None


def trusted_ima_requirement(key: ProcKey) -> str:
    """What a kernel with a trusted ``.ima`` keyring requires, for the user."""
    return (
        f"this kernel verifies IMA signatures against its trusted keyring '.ima' "
        f"(serial {key.serial:08x}, CONFIG_INTEGRITY_TRUSTED_KEYRING) and ignores '_ima': "
        "a certificate is accepted there only if it is signed by a key in '.builtin_trusted_keys' "
        "or '.secondary_trusted_keys' (kernel build-in or enrolled as a machine owner key); "
        "load such a CA-signed certificate into '.ima' instead"
    )


def ecdsa_support(proc_crypto: str, kernel_config: str | None) -> bool | None:
    """Whether the kernel can verify ECDSA: True, False, or None when it cannot be told.

    A loaded ``ecdsa-nist-*`` algorithm in ``/proc/crypto`` proves support; otherwise the kernel
    config decides (``=m`` is enough: the asymmetric key parser loads the module on demand).
    """
    for line in proc_crypto.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("name", "driver") and value.strip().startswith("ecdsa"):
            return True
    if kernel_config is None:
        return None
    for raw_line in kernel_config.splitlines():
        line = raw_line.strip()
        if line in ("CONFIG_CRYPTO_ECDSA=y", "CONFIG_CRYPTO_ECDSA=m"):
            return True
        if line == "# CONFIG_CRYPTO_ECDSA is not set":
            return False
    return None


def certificate_is_ec(der: bytes) -> bool:
    """Parse an X.509 certificate (DER) and tell whether its key is an EC key."""
    try:
        cert = x509.load_der_x509_certificate(der)
        key = cert.public_key()
    except ValueError as exc:
        raise FormatError(f"not a DER X.509 certificate: {exc}") from exc
    return isinstance(key, ec.EllipticCurvePublicKey)


def add_key_error(err: int, *, is_ec: bool, keyring: int) -> ImaguardError:
    """The error for a failed ``add_key("asymmetric", …)``, named by what the caller decides."""
    strerror = os.strerror(err)
    # The kernel answers an unknown public key algorithm with ENOENT/ENOPKG (no akcipher) or
    # EBADMSG (the x509 parser rejects the key), so for an EC key these mean "no ECDSA".
    if is_ec and err in (errno_mod.ENOENT, errno_mod.ENOPKG, errno_mod.EBADMSG):
        return UnsupportedError(f"{ECDSA_MISSING_MESSAGE} (add_key: {strerror})", reason="no-ecdsa")
    if err in (errno_mod.EKEYREJECTED, errno_mod.EPERM):
        return TrustError(
            f"keyring {keyring:08x} refused the certificate ({strerror}): it is restricted to "
            "certificates signed by a trusted key",
            reason="key-rejected",
        )
    if err in (errno_mod.EBADMSG, errno_mod.EINVAL):
        return FormatError(f"the kernel could not parse the certificate ({strerror})", reason="bad-certificate")
    if err == errno_mod.EACCES:
        return HostStateError(
            f"no permission to add a key to keyring {keyring:08x} ({strerror}); run as root",
            reason="keyring-permission",
            errno=err,
        )
    if err in (errno_mod.EDQUOT, errno_mod.ENOMEM):
        return HostStateError(f"keyring quota exhausted ({strerror})", reason="keyring-quota", errno=err)
    return HostStateError(f"add_key into keyring {keyring:08x} failed: {strerror}", reason="add-key-failed", errno=err)


# --- I/O below -----------------------------------------------------------------------------------


def _syscall_numbers() -> tuple[int, int]:
    machine = platform.machine()
    try:
        return _SYSCALLS[machine]
    except KeyError:
        raise UnsupportedError(f"kernel keyring calls are not mapped for architecture {machine!r}") from None


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _add_key(key_type: bytes, description: bytes | None, payload: bytes | None, keyring: int) -> int:
    add_key_nr, _ = _syscall_numbers()
    buf = ctypes.create_string_buffer(payload, len(payload)) if payload is not None else None
    res = _libc().syscall(
        ctypes.c_long(add_key_nr),
        ctypes.c_char_p(key_type),
        ctypes.c_char_p(description),
        buf,
        ctypes.c_size_t(len(payload) if payload is not None else 0),
        ctypes.c_long(keyring),
    )
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(res)


def _keyctl(cmd: int, *args: int | bytes | ctypes.Array[ctypes.c_char] | None) -> int:
    _, keyctl_nr = _syscall_numbers()
    cargs: list[object] = []
    for arg in args:
        if isinstance(arg, int):
            cargs.append(ctypes.c_long(arg))
        elif isinstance(arg, bytes) or arg is None:
            cargs.append(ctypes.c_char_p(arg))
        else:
            cargs.append(arg)
    res = _libc().syscall(ctypes.c_long(keyctl_nr), ctypes.c_long(cmd), *cargs)
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(res)


def possess_user_keyring() -> None:
    """Link root's user keyring ``@u`` into this thread's keyring, so that ``_ima`` (linked in ``@u``) is
    *possessed*: its possessor permissions (read, write) then apply to this process.

    Needed where the session keyring does not link ``@u``: a systemd service has its own session
    keyring by default (``KeyringMode=private``), and there ``_ima`` grants only "view" (the user
    permissions of a keyring made by ``keyctl newring``): reading it fails with EACCES, and so does
    adding a key (seen in the lab, issue 6). The thread keyring dies with the thread and is not
    inherited by children; nothing else changes.
    """
    _keyctl(_KEYCTL_GET_KEYRING_ID, _KEY_SPEC_THREAD_KEYRING, 1)
    _keyctl(_KEYCTL_LINK, KEY_SPEC_USER_KEYRING, _KEY_SPEC_THREAD_KEYRING)


def _possessing(call: Callable[[], int]) -> int:
    """``call()``; on EACCES once more after :func:`possess_user_keyring`."""
    try:
        return call()
    except OSError as exc:
        if exc.errno != errno_mod.EACCES:
            raise
    with contextlib.suppress(OSError):  # the retry reports the original refusal
        possess_user_keyring()
    return call()


def read_proc_keys(path: str = "/proc/keys") -> tuple[ProcKey, ...]:
    """Read and parse ``/proc/keys`` (only the keys this process may view are listed)."""
    try:
        with Path(path).open(encoding="utf-8", errors="replace") as f:
            return parse_proc_keys(f.read(1 << 20))
    except OSError as exc:
        raise HostStateError(
            f"cannot read {path}: {exc.strerror}", reason="proc-keys-unreadable", errno=exc.errno, path=path
        ) from exc


def kernel_ecdsa_support() -> bool | None:
    """Whether the running kernel can verify ECDSA, from ``/proc/crypto`` and ``/boot/config-*``."""
    try:
        with Path("/proc/crypto").open(encoding="utf-8", errors="replace") as f:
            crypto = f.read(1 << 20)
    except OSError:
        crypto = ""
    config: str | None = None
    try:
        with Path(f"/boot/config-{os.uname().release}").open(encoding="utf-8", errors="replace") as f:
            config = f.read(1 << 22)
    except OSError:
        config = None
    return ecdsa_support(crypto, config)


def describe_key(serial: int) -> KeyDescription:
    """``KEYCTL_DESCRIBE`` of one key."""
    buf = ctypes.create_string_buffer(4096)
    try:
        n = _keyctl(_KEYCTL_DESCRIBE, serial, buf, len(buf))
    except OSError as exc:
        raise HostStateError(
            f"keyctl describe {serial:08x}: {exc.strerror}", reason="keyctl-failed", errno=exc.errno
        ) from exc
    return parse_key_description(buf.raw[: min(n, len(buf))])


def keyring_links(keyring: int) -> tuple[int, ...]:
    """Serials of the keys linked into ``keyring`` (``KEYCTL_READ``)."""
    buf = ctypes.create_string_buffer(4 * _MAX_KEYRING_LINKS)
    try:
        n = _possessing(lambda: _keyctl(_KEYCTL_READ, keyring, buf, len(buf)))
    except OSError as exc:
        raise HostStateError(
            f"keyctl read {keyring:08x}: {exc.strerror}", reason="keyctl-failed", errno=exc.errno
        ) from exc
    if n > len(buf):
        raise HostStateError(f"keyring {keyring:08x} links more than {_MAX_KEYRING_LINKS} keys", reason="size-limit")
    raw = buf.raw[:n]
    return tuple(int.from_bytes(raw[i : i + 4], "little", signed=True) for i in range(0, n - n % 4, 4))


def search_keyring(name: str = IMA_KEYRING, *, parent: int = KEY_SPEC_USER_KEYRING) -> int | None:
    """Serial of keyring ``name`` reachable from ``parent`` (``KEYCTL_SEARCH``, links nothing); None if absent."""
    try:
        return _keyctl(_KEYCTL_SEARCH, parent, b"keyring", name.encode(), 0)
    except OSError as exc:
        if exc.errno in (errno_mod.ENOKEY, errno_mod.ENOENT):
            return None
        raise HostStateError(
            f"searching for keyring {name}: {exc.strerror}", reason="keyctl-failed", errno=exc.errno
        ) from exc


def request_keyring(name: str = IMA_KEYRING) -> int | None:
    """``request_key("keyring", name)`` from this process; the serial found, None if not found.

    This is the lookup ``integrity_digsig_verify`` (digsig.c, 6.1) makes in the context of the
    process being appraised: thread, process and session keyrings (or, without a session
    keyring, root's user-session keyring, which links ``@u``). A success proves the kernel's
    lookup would succeed *from this process*. It does not fill the kernel's own cache of the
    keyring pointer: only the kernel's first successful lookup during a signature verification
    does, which needs an appraise policy in force (see ``imaguard policy apply``). Nothing is
    linked (no destination keyring) and no upcall is made (no callout info).
    """
    nr = _REQUEST_KEY.get(platform.machine())
    if nr is None:
        raise UnsupportedError(f"request_key is not mapped for architecture {platform.machine()!r}")
    res = _libc().syscall(ctypes.c_long(nr), ctypes.c_char_p(b"keyring"), ctypes.c_char_p(name.encode()),
                          ctypes.c_char_p(None), ctypes.c_long(0))  # fmt: skip
    if res < 0:
        err = ctypes.get_errno()
        if err in (errno_mod.ENOKEY, errno_mod.ENOENT):
            return None
        raise HostStateError(f"request_key keyring {name}: {os.strerror(err)}", reason="keyctl-failed", errno=err)
    return int(res)


def find_or_create_ima_keyring(*, parent: int = KEY_SPEC_USER_KEYRING) -> int:
    """Serial of the ``_ima`` keyring linked into ``parent`` (default ``@u``), made if missing.

    Refuses (UnsupportedError) on a kernel with a trusted ``.ima`` keyring, where ``_ima`` would be
    silently ignored.
    """
    trusted = trusted_ima_keyring(read_proc_keys())
    if trusted is not None:
        raise UnsupportedError(trusted_ima_requirement(trusted), reason="trusted-ima-keyring")
    found = search_keyring(IMA_KEYRING, parent=parent)
    if found is not None:
        return found
    # add_key of a keyring never updates an existing one, so it is created only after the search.
    try:
        return _add_key(b"keyring", IMA_KEYRING.encode(), None, parent)
    except OSError as exc:
        raise HostStateError(
            f"creating keyring {IMA_KEYRING}: {exc.strerror}", reason="keyring-create-failed", errno=exc.errno
        ) from exc


def unlink_key(serial: int, keyring: int) -> None:
    """Unlink a key from a keyring (``KEYCTL_UNLINK``): undo an ``add_certificate`` of this run."""
    try:
        _possessing(lambda: _keyctl(_KEYCTL_UNLINK, serial, keyring))
    except OSError as exc:
        raise HostStateError(
            f"keyctl unlink {serial:08x} from {keyring:08x}: {exc.strerror}", reason="keyctl-failed", errno=exc.errno
        ) from exc


def add_certificate(
    der: bytes,
    keyring: int,
    *,
    description: str | None = None,
    check_kernel: bool = True,
) -> int:
    """Add an X.509 certificate (DER) to ``keyring`` as an ``asymmetric`` key; return its serial.

    An EC certificate is refused up front when the kernel is known to lack ECDSA (``check_kernel``);
    the kernel's own refusal of an EC key is mapped to the same error.
    """
    is_ec = certificate_is_ec(der)
    if is_ec and check_kernel and kernel_ecdsa_support() is False:
        raise UnsupportedError(ECDSA_MISSING_MESSAGE, reason="no-ecdsa")
    # No description: the kernel names the key from the certificate ("CN: SKID").
    desc = description.encode() if description is not None else None
    try:
        return _possessing(lambda: _add_key(b"asymmetric", desc, der, keyring))
    except OSError as exc:
        raise add_key_error(exc.errno or 0, is_ec=is_ec, keyring=keyring) from exc
