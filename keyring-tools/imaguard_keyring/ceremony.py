"""The key ceremony's file work: create the CA directory, issue IMA certificates, export for MOK.

Layout of a CA directory (keep it offline; only ``ca.pem``/``ca.der`` ever leave it)::

    ca.key   private key, PKCS#8 PEM, mode 0600, encrypted when a password was given (PBES2:
             PBKDF2-HMAC-SHA256, 600,000 iterations, AES-256-CBC; ``pkcs8``)
    ca.pem   CA certificate (PEM)
    ca.der   the same certificate in DER (what mokutil --import wants)

An issued certificate ``NAME`` is written as ``NAME.key`` (0600), ``NAME.pem`` and ``NAME.der``
(DER is what ``/etc/keys/ima/`` and ``evmctl import`` take). Nothing is ever overwritten: every
file is created with O_EXCL, and if one of a set fails the ones already written are removed, so
a ceremony leaves all its files or none.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from imaguard.errors import HostStateError, UsageError
from imaguard.interrupts import INTERRUPT_SIGNALS, signals_interrupt
from imaguard.keys import load_certificate, load_private_key
from imaguard.keys.material import key_id_from_public_key, read_small_file
from imaguard.keys.revocation import parse_ca_certificate
from imaguard_keyring import pkcs8
from imaguard_keyring.paths import is_directory, lexists
from imaguard_keyring.profiles import (
    KeyType,
    build_ca_certificate,
    build_ima_certificate,
    issued_by,
    key_type_of,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from imaguard.keys.material import Certificate, PrivateKey

__all__ = [
    "INTERRUPT_SIGNALS",
    "NAME_RULE",
    "Authority",
    "Issued",
    "ca_files",
    "create_ca",
    "is_valid_name",
    "issue_certificate",
    "issued_files",
    "load_authority",
    "load_ca_certificate",
    "load_issued_certificate",
    "new_signing_key",
    "prepare_mok",
    "refuse_existing",
    "signals_interrupt",
    "write_new_files",
]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_KEY_MODE = 0o600
_CERT_MODE = 0o644


@dataclass(frozen=True, slots=True)
class Issued:
    """What a ceremony step wrote: the certificate, its key id and the files."""

    cert: x509.Certificate
    key_id: bytes
    key_kind: KeyType
    files: tuple[Path, ...]

    @property
    def skid(self) -> bytes:
        return self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest

    @property
    def sha256_fingerprint(self) -> str:
        return hashlib.sha256(self.cert.public_bytes(serialization.Encoding.DER)).hexdigest()

    def to_json(self) -> dict[str, object]:
        return {
            "subject": self.cert.subject.rfc4514_string(),
            "key_id": self.key_id.hex(),
            "skid": self.skid.hex(),
            "key_type": self.key_kind.value,
            "serial": f"{self.cert.serial_number:x}",
            "not_after": f"{self.cert.not_valid_after:%Y-%m-%dT%H:%M:%SZ}",
            "sha256_fingerprint": self.sha256_fingerprint,
            "files": [str(p) for p in self.files],
        }


@dataclass(frozen=True, slots=True)
class Authority:
    """A CA loaded for signing: its certificate and its private key."""

    cert: Certificate
    key: PrivateKey
    directory: Path


NAME_RULE = "1-64 letters, digits, '.', '_' or '-', not starting with a dot or dash"


def is_valid_name(name: str) -> bool:
    """Whether ``name`` can be the file name stem of an issued certificate."""
    return _NAME.fullmatch(name) is not None


def _check_name(name: str) -> str:
    if not is_valid_name(name):
        raise UsageError(f"--name {name!r}: use {NAME_RULE}", reason="bad-name")
    return name


def _missing_directories(directory: Path) -> list[Path]:
    """The directories to create for ``directory``, outermost first; UsageError ``not-a-directory``
    if a file (or a dangling symlink) stands where one of them goes."""
    missing: list[Path] = []
    current = directory
    while not is_directory(current):
        if lexists(current):
            raise UsageError(f"{current}: not a directory", reason="not-a-directory")
        missing.append(current)
        current = current.parent
    return missing[::-1]


def _make_directories(directory: Path, made: list[Path]) -> None:
    """Create ``directory`` and its missing parents, each mode 0700 whatever the umask
    (``mkdir(parents=True)`` gives the parents the umask's mode: 0777 under umask 000); each one
    made is appended to ``made`` (parents first)."""
    for missing in _missing_directories(directory):
        try:
            missing.mkdir(mode=0o700)
        except FileExistsError:
            if not is_directory(missing):
                raise UsageError(f"{missing}: not a directory", reason="not-a-directory") from None
            continue
        made.append(missing)
        missing.chmod(0o700)


def refuse_existing(paths: Iterable[Path]) -> None:
    """UsageError ``exists`` for the first path that exists (checked again, atomically, on write),
    ``not-a-directory`` when a file stands where its directory goes."""
    for path in paths:
        _missing_directories(path.parent)
        if lexists(path):
            raise UsageError(f"{path}: already exists; refusing to overwrite", reason="exists")


def ca_files(out: Path) -> tuple[Path, Path, Path]:
    """The key, PEM and DER paths of a CA directory."""
    return out / "ca.key", out / "ca.pem", out / "ca.der"


def issued_files(out: Path, name: str) -> tuple[Path, Path, Path]:
    """The key, PEM and DER paths of the certificate ``name``."""
    stem = _check_name(name)
    return out / f"{stem}.key", out / f"{stem}.pem", out / f"{stem}.der"


def write_new_files(files: Sequence[tuple[Path, bytes, int]]) -> None:
    """Create every file exclusively with its mode; on any failure, Ctrl-C, SIGTERM, SIGHUP or SIGQUIT
    remove the ones created (a lone private key would make the rerun refuse with "already exists")
    and the directories made for them."""
    refuse_existing(p for p, _, _ in files)
    created: list[Path] = []
    made: list[Path] = []
    try:
        with signals_interrupt():
            for path, data, mode in files:
                _make_directories(path.parent, made)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
                created.append(path)
                with os.fdopen(fd, "wb") as f:
                    os.fchmod(f.fileno(), mode)  # exactly this mode, whatever the umask
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            for directory in {p.parent for p, _, _ in files}:
                dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
    except BaseException as exc:
        for path in created:
            with contextlib.suppress(OSError):
                path.unlink()
        for directory in reversed(made):  # and the directories made for them: the rerun starts clean
            with contextlib.suppress(OSError):
                directory.rmdir()  # only when empty: never anything someone else put there meanwhile
        if not isinstance(exc, OSError):
            raise
        name = exc.filename or (created[-1] if created else files[0][0])
        if exc.errno == errno.EEXIST:  # appeared since refuse_existing looked: still never overwritten
            raise UsageError(f"{name}: already exists; refusing to overwrite", reason="exists") from exc
        raise HostStateError(f"{name}: cannot write: {exc.strerror}", reason="state-write", errno=exc.errno,
                             path=str(name)) from exc


def _key_bytes(key: PrivateKey, password: bytes | None) -> bytes:
    """PKCS#8 PEM; with a password PBES2 at ``pkcs8.PBKDF2_ITERATIONS`` (not BestAvailableEncryption's 2,048)."""
    pkcs8_format, none = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    if not password:
        return key.private_bytes(serialization.Encoding.PEM, pkcs8_format, none)
    params = pkcs8.Pbes2Parameters(salt=os.urandom(pkcs8.SALT_SIZE), iv=os.urandom(pkcs8.IV_SIZE))
    return pkcs8.encrypted_pem(key.private_bytes(serialization.Encoding.DER, pkcs8_format, none), password, params)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def create_ca(
    out: Path, *, common_name: str, key_type: KeyType, days: int, password: bytes | None, now: datetime.datetime
) -> Issued:
    """Make a CA key and self-signed certificate in ``out`` (created 0700 if missing)."""
    key_path, pem, der = ca_files(out)
    refuse_existing((key_path, pem, der))
    key = key_type.generate()
    cert = build_ca_certificate(key, common_name, days, now)
    files = [(key_path, _key_bytes(key, password), _KEY_MODE), (pem, _pem(cert), _CERT_MODE),
             (der, _der(cert), _CERT_MODE)]
    write_new_files(files)
    parsed = parse_ca_certificate(_der(cert), str(pem))
    return Issued(cert, parsed.key_id, key_type, tuple(p for p, _, _ in files))


def _ca_cert_path(ca: Path) -> Path:
    return ca / "ca.pem" if is_directory(ca) else ca


def load_ca_certificate(ca: Path) -> Certificate:
    """The CA certificate from a CA directory (its ``ca.pem``) or a certificate file."""
    path = _ca_cert_path(ca)
    data = read_small_file(path, "CA certificate", reason="bad-certificate")
    return parse_ca_certificate(data, str(path))


def load_authority(ca_dir: Path, password: bytes | None) -> Authority:
    """The CA certificate and its key from a CA directory; refuses a key of another certificate."""
    if not is_directory(ca_dir):
        raise UsageError(f"{ca_dir}: not a CA directory (made by `imaguard-keyring ca create`)", reason="no-ca")
    cert = load_ca_certificate(ca_dir)
    key = load_private_key(ca_dir / "ca.key", password, cert)
    return Authority(cert, key, ca_dir)


def load_issued_certificate(path: Path, authority: Certificate) -> Certificate:
    """An IMA certificate that this CA issued (for rotation); UsageError otherwise."""
    cert = load_certificate(path)
    if not issued_by(cert.cert, authority.cert):
        raise UsageError(f"{path}: not issued by the CA {authority.subject} (key id {authority.key_id.hex()})",
                         reason="wrong-ca")
    return cert


def new_signing_key(key_type: KeyType, avoid: frozenset[bytes]) -> tuple[PrivateKey, bytes]:
    """A fresh key whose IMA key id differs from every id in ``avoid`` (4-byte ids can collide)."""
    for _ in range(8):
        key = key_type.generate()
        key_id = key_id_from_public_key(key.public_key())
        if key_id not in avoid:
            return key, key_id
    raise UsageError("could not draw a key with an unused key id", reason="key-id-collision")  # pragma: no cover


def issue_certificate(
    authority: Authority,
    out: Path,
    *,
    name: str,
    key: PrivateKey,
    common_name: str,
    days: int,
    password: bytes | None,
    now: datetime.datetime,
) -> Issued:
    """Sign an IMA certificate for ``key``; write ``NAME.key``, ``NAME.pem`` and ``NAME.der``."""
    key_path, pem, der = issued_files(out, name)
    cert = build_ima_certificate(ca_cert=authority.cert.cert, ca_key=authority.key, public_key=key.public_key(),
                                 common_name=common_name, days=days, now=now)
    files = [(key_path, _key_bytes(key, password), _KEY_MODE), (pem, _pem(cert), _CERT_MODE),
             (der, _der(cert), _CERT_MODE)]
    write_new_files(files)
    return Issued(cert, key_id_from_public_key(key.public_key()), key_type_of(key), tuple(p for p, _, _ in files))


def prepare_mok(ca: Path, out: Path) -> tuple[Certificate, Path]:
    """Write the CA certificate in DER as ``ima-ca-<keyid>.der`` for ``mokutil --import``."""
    cert = load_ca_certificate(ca)
    path = out / f"ima-ca-{cert.key_id.hex()}.der"
    write_new_files([(path, cert.der, _CERT_MODE)])
    return cert, path
