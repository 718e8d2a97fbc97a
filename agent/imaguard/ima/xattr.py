"""Encode and decode ``security.ima`` values (pure: bytes in, typed values out).

Layouts follow the kernel's ``security/integrity/integrity.h`` (Linux 6.1: ``enum
evm_ima_xattr_type``, ``struct signature_v2_hdr``) and ima-evm-utils' ``src/imaevm.h``.
Multi-byte header fields are big-endian.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from imaguard.digests import HashAlgo
from imaguard.errors import FormatError

__all__ = [
    "MODSIG_MAGIC",
    "SIG_V2_HEADER_SIZE",
    "ImaDigest",
    "ImaSignature",
    "Modsig",
    "OtherForm",
    "XattrType",
    "XattrValue",
    "find_modsig",
    "parse_xattr",
]


class XattrType(enum.IntEnum):
    """First byte of the value: ``enum evm_ima_xattr_type`` (security/integrity/integrity.h, 6.1)."""

    DIGEST = 0x01  # IMA_XATTR_DIGEST: legacy sha1 (or md5) digest, no algorithm byte
    EVM_HMAC = 0x02  # EVM_XATTR_HMAC: belongs in security.evm only
    DIGSIG = 0x03  # EVM_IMA_XATTR_DIGSIG: signature (v2 header; v1/v3 recognised)
    DIGEST_NG = 0x04  # IMA_XATTR_DIGEST_NG: algorithm byte + digest
    EVM_PORTABLE_DIGSIG = 0x05  # EVM_XATTR_PORTABLE_DIGSIG: belongs in security.evm only
    VERITY_DIGSIG = 0x06  # IMA_VERITY_DIGSIG: sig v3 over an fs-verity file digest


# type(1) + version(1) + hash_algo(1) + keyid(4) + sig_size(2): rpm's check_zero_hdr compares these 9.
SIG_V2_HEADER_SIZE = 9
_SIG_HDR = struct.Struct(">BBBIH")

# Legacy 0x01 values carry no algorithm byte: the length tells sha1 from md5 (ima_get_hash_algo).
_LEGACY_ALGO_BY_LEN = {20: HashAlgo.SHA1, 16: HashAlgo.MD5}


@dataclass(frozen=True, slots=True)
class ImaDigest:
    """A bare file digest (``0x04`` digest-ng, or legacy ``0x01``); never enough for ``imasig`` rules."""

    algo: HashAlgo
    digest: bytes
    legacy: bool = False

    def __post_init__(self) -> None:
        if len(self.digest) != self.algo.digest_size:
            raise FormatError(
                f"{self.algo.kernel_name} digest must be {self.algo.digest_size} bytes, got {len(self.digest)}"
            )
        if self.legacy and self.algo not in _LEGACY_ALGO_BY_LEN.values():
            raise FormatError(f"legacy 0x01 digests are sha1 or md5, not {self.algo.kernel_name}")

    @property
    def form(self) -> str:
        return "digest" if self.legacy else "digest-ng"

    def to_xattr(self) -> bytes:
        if self.legacy:
            return bytes([XattrType.DIGEST]) + self.digest
        return bytes([XattrType.DIGEST_NG, self.algo]) + self.digest


@dataclass(frozen=True, slots=True)
class ImaSignature:
    """A signature with the v2 header layout: sig v2 (``0x03``/2) or sig v3 (``0x03``/3, ``0x06``/3).

    For v2 the signed value is the file digest itself; v3 signs a hash of ``struct ima_file_id``.
    """

    algo: HashAlgo
    keyid: bytes
    signature: bytes
    version: int = 2
    xattr_type: XattrType = XattrType.DIGSIG

    def __post_init__(self) -> None:
        if len(self.keyid) != 4:
            raise FormatError(f"key id must be 4 bytes, got {len(self.keyid)}")
        if not 0 < len(self.signature) <= 0xFFFF:
            raise FormatError(f"signature length {len(self.signature)} outside 1..65535")
        if self.version not in (2, 3):
            raise FormatError(f"signature header version {self.version} is not 2 or 3")
        if self.xattr_type is XattrType.VERITY_DIGSIG and self.version != 3:
            raise FormatError("fs-verity signatures (0x06) are always version 3")
        if self.xattr_type not in (XattrType.DIGSIG, XattrType.VERITY_DIGSIG):
            raise FormatError(f"type 0x{self.xattr_type:02x} is not an IMA signature")

    @property
    def form(self) -> str:
        """``sigv2``, ``sigv3`` or ``fs-verity``: only ``sigv2`` is verified by imaguard today."""
        if self.xattr_type is XattrType.VERITY_DIGSIG:
            return "fs-verity"
        return f"sigv{self.version}"

    @property
    def keyid_hex(self) -> str:
        return self.keyid.hex()

    def to_xattr(self) -> bytes:
        header = _SIG_HDR.pack(
            self.xattr_type, self.version, self.algo, int.from_bytes(self.keyid, "big"), len(self.signature)
        )
        return header + self.signature


@dataclass(frozen=True, slots=True)
class OtherForm:
    """A value that is well-formed enough to name but that imaguard does not interpret.

    ``kind`` is ``sigv1`` (obsolete RSA-only header), ``evm-hmac`` or ``evm-portable`` (EVM types
    found in ``security.ima``). Kept verbatim so it round-trips.
    """

    kind: str
    raw: bytes

    @property
    def form(self) -> str:
        return self.kind

    def to_xattr(self) -> bytes:
        return self.raw


XattrValue = ImaDigest | ImaSignature | OtherForm


def parse_xattr(raw: bytes) -> XattrValue:
    """Parse a ``security.ima`` value; FormatError (with the byte offset) when it is malformed."""
    if not raw:
        raise FormatError("empty security.ima value", offset=0)
    kind = raw[0]
    if kind == XattrType.DIGEST:
        algo = _LEGACY_ALGO_BY_LEN.get(len(raw) - 1)
        if algo is None:
            raise FormatError(f"legacy digest of {len(raw) - 1} bytes is neither sha1 nor md5", offset=1)
        return ImaDigest(algo, bytes(raw[1:]), legacy=True)
    if kind == XattrType.DIGEST_NG:
        if len(raw) < 2:
            raise FormatError("digest-ng value ends before its algorithm byte", offset=1)
        algo = HashAlgo.from_id(raw[1], offset=1)
        if len(raw) - 2 != algo.digest_size:
            raise FormatError(
                f"{algo.kernel_name} digest must be {algo.digest_size} bytes, got {len(raw) - 2}", offset=2
            )
        return ImaDigest(algo, bytes(raw[2:]))
    if kind in (XattrType.DIGSIG, XattrType.VERITY_DIGSIG):
        return _parse_signature(raw)
    if kind == XattrType.EVM_HMAC:
        return OtherForm("evm-hmac", bytes(raw))
    if kind == XattrType.EVM_PORTABLE_DIGSIG:
        return OtherForm("evm-portable", bytes(raw))
    raise FormatError(f"unknown security.ima type 0x{kind:02x}", offset=0)


def _parse_signature(raw: bytes) -> XattrValue:
    if len(raw) < 2:
        raise FormatError("signature ends before its version byte", offset=1)
    version = raw[1]
    if version == 1 and raw[0] == XattrType.DIGSIG:
        # signature_v1_hdr (RSA only, 8-byte key id); the kernel dropped support in 4.x.
        return OtherForm("sigv1", bytes(raw))
    if version not in (2, 3):
        raise FormatError(f"unknown signature header version {version}", offset=1)
    if len(raw) < SIG_V2_HEADER_SIZE:
        raise FormatError(f"signature header needs {SIG_V2_HEADER_SIZE} bytes, got {len(raw)}", offset=len(raw))
    _, _, algo_id, keyid, size = _SIG_HDR.unpack_from(raw)
    algo = HashAlgo.from_id(algo_id, offset=2)
    body = len(raw) - SIG_V2_HEADER_SIZE
    if size == 0:
        raise FormatError("signature size is zero", offset=7)
    if size != body:
        # The kernel (asymmetric_verify) refuses any mismatch, trailing bytes included.
        raise FormatError(f"signature size field says {size} bytes but {body} follow", offset=7)
    xtype = XattrType(raw[0])
    if xtype is XattrType.VERITY_DIGSIG and version != 3:
        raise FormatError("fs-verity signature (0x06) with a version other than 3", offset=1)
    return ImaSignature(algo, keyid.to_bytes(4, "big"), bytes(raw[SIG_V2_HEADER_SIZE:]), version, xtype)


# include/linux/module_signature.h: PKCS#7 || struct module_signature (12 bytes) || magic.
MODSIG_MAGIC = b"~Module signature appended~\n"
_MODSIG_INFO = struct.Struct(">BBBBB3xI")
_PKEY_ID_PKCS7 = 2


@dataclass(frozen=True, slots=True)
class Modsig:
    """An appended signature (``appraise_type=imasig|modsig``): where its PKCS#7 starts and its size."""

    pkcs7_offset: int
    pkcs7_len: int


def find_modsig(data: bytes) -> Modsig | None:
    """Recognise an appended (module-style) signature at the end of ``data`` (a file or its tail).

    Offsets are relative to ``data``. None when there is no trailer; FormatError when the trailer
    is present but inconsistent.
    """
    if not data.endswith(MODSIG_MAGIC):
        return None
    info_end = len(data) - len(MODSIG_MAGIC)
    info_start = info_end - _MODSIG_INFO.size
    if info_start < 0:
        raise FormatError("appended-signature magic without its info block", offset=0)
    _algo, _hash, id_type, signer_len, key_id_len, sig_len = _MODSIG_INFO.unpack_from(data, info_start)
    if id_type != _PKEY_ID_PKCS7 or signer_len or key_id_len:
        raise FormatError(f"appended signature is not PKCS#7 (id_type {id_type})", offset=info_start)
    start = info_start - sig_len
    if sig_len == 0 or start < 0:
        raise FormatError(f"appended signature length {sig_len} exceeds the data", offset=info_start)
    return Modsig(start, sig_len)
