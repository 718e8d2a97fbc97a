"""LogBuilder: measurement lists with real template bytes, for edge-case tests, fuzzing and bench/log_parse.

Entries are made with ``Entry.build`` (template data laid out as the kernel's ``ima_fs.c`` writes
it, template digest computed), so a list built here is indistinguishable from a kernel's in form.
The field values are synthetic; for real kernel output see tests/data/lab/.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from imaguard.ima.measurements import Entry
from imaguard.ima.templates import ByteOrder

__all__ = ["LogBuilder", "d_ng", "generate", "n_ng", "sig_v2", "write_logs"]


def d_ng(digest: bytes, algo: str = "sha256", kind: str = "") -> bytes:
    """A ``d-ng`` (or, with ``kind``, ``d-ngv2``) field: ``[kind:]algo:`` NUL digest."""
    return (f"{kind}:" if kind else "").encode() + algo.encode() + b":\x00" + digest


def n_ng(name: bytes | str) -> bytes:
    return (name.encode() if isinstance(name, str) else name) + b"\x00"


def sig_v2(keyid: bytes, signature: bytes, algo_id: int = 4) -> bytes:
    """A ``security.ima`` signature v2 value (type 0x03), as the ``sig`` field carries it."""
    return struct.pack(">BBBIH", 3, 2, algo_id, int.from_bytes(keyid, "big"), len(signature)) + signature


class LogBuilder:
    """Collects entries; ``binary()``/``ascii()`` render the list as the kernel's two files."""

    def __init__(self, byteorder: ByteOrder = "little") -> None:
        self.byteorder: ByteOrder = byteorder
        self.entries: list[Entry] = []

    def add(self, template: str, fields: tuple[bytes, ...], *, pcr: int = 10, violation: bool = False) -> Entry:
        e = Entry.build(template, fields, pcr=pcr, byteorder=self.byteorder, violation=violation)
        self.entries.append(e)
        return e

    def boot_aggregate(self, digest: bytes | None = None, template: str = "ima-ng") -> Entry:
        value = digest if digest is not None else hashlib.sha256(b"boot").digest()
        fields = (d_ng(value), n_ng("boot_aggregate"))
        return self.add(template, fields + ((b"",) if template == "ima-sig" else ()))

    def file(self, path: str | bytes, content: bytes, *, template: str = "ima-sig", sig: bytes = b"",
             algo: str = "sha256", pcr: int = 10) -> Entry:
        digest = hashlib.new(algo, content).digest()
        fields: tuple[bytes, ...] = (d_ng(digest, algo), n_ng(path))
        if template in ("ima-sig", "ima-modsig"):
            fields += (sig,)
        if template == "ima-modsig":
            fields += (b"", b"")  # no appended signature: empty d-modsig and modsig
        return self.add(template, fields, pcr=pcr)

    def violation(self, path: str | bytes, template: str = "ima-sig") -> Entry:
        """A ToMToU/open-writers record: zero file digest, zero template digest."""
        fields: tuple[bytes, ...] = (d_ng(bytes(32)), n_ng(path)) + ((b"",) if template == "ima-sig" else ())
        return self.add(template, fields, violation=True)

    def buf(self, name: str, data: bytes) -> Entry:
        return self.add("ima-buf", (d_ng(hashlib.sha256(data).digest()), n_ng(name), data))

    def ima(self, path: str | bytes, content: bytes) -> Entry:
        """The legacy ``ima`` template: sha1 ``d``, name without NUL."""
        name = path.encode() if isinstance(path, str) else path
        return self.add("ima", (hashlib.sha1(content).digest(), name))

    def binary(self) -> bytes:
        return b"".join(e.to_binary(self.byteorder) for e in self.entries)

    def ascii(self) -> bytes:
        return b"".join(e.to_ascii(self.byteorder) for e in self.entries)


_DIRS = ("/usr/bin/", "/usr/sbin/", "/usr/lib/x86_64-linux-gnu/", "/usr/libexec/", "/usr/lib/python3/dist-packages/")


def generate(n: int, *, seed: int = 7, signed_share: float = 0.3) -> Iterator[Entry]:
    """``n`` entries like a busy host's: boot_aggregate, one key, then ima-sig files (some signed)."""
    rnd = random.Random(seed)  # noqa: S311 - reproducible synthetic data, not secrets
    yield Entry.build("ima-sig", (d_ng(hashlib.sha256(b"boot").digest()), n_ng("boot_aggregate"), b""))
    if n > 1:
        yield Entry.build("ima-buf", (d_ng(hashlib.sha256(b"key").digest()), n_ng("_ima"), rnd.randbytes(900)))
    keyid = rnd.randbytes(4)
    for i in range(2, n):
        path = f"{_DIRS[i % len(_DIRS)]}file-{i:07d}-{rnd.getrandbits(32):08x}"
        digest = hashlib.sha256(path.encode()).digest()
        sig = sig_v2(keyid, rnd.randbytes(256)) if rnd.random() < signed_share else b""
        yield Entry.build("ima-sig", (d_ng(digest), n_ng(path), sig))


def write_logs(entries: Iterable[Entry], binary: BinaryIO, ascii_out: BinaryIO | None = None) -> int:
    """Write entries to a binary (and optionally ASCII) file; return the count."""
    count = 0
    for e in entries:
        binary.write(e.to_binary())
        if ascii_out is not None:
            ascii_out.write(e.to_ascii())
        count += 1
    return count
