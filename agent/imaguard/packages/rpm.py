"""Installed RPM packages and their file digests, trusted only through a verified header.

What is verified, and how (DESIGN.md §1.2, rpm part):

* Headers are read from the rpmdb under ``root`` (``usr/lib/sysimage/rpm`` or ``var/lib/rpm``,
  any backend rpm 4.18 reads) and exported byte for byte (``hdr.unload()``, equal to the stored blob).
* Each exported blob is checked by rpm itself: ``headerCheck`` (``ts.hdrCheck``) on a transaction
  set whose verify flags are 0 (no check disabled), against a keyring of trust anchors (``_anchors``):
  ``--trusted-keyring`` files when given; else, for the root ``/``, the ``gpg-pubkey`` entries of
  its rpmdb (the host's own keyring, as ``rpm -K`` uses); else (``--root`` an image) the keyring of
  this host's rpmdb — never the image's own ``gpg-pubkey`` entries, or an image would vouch for
  itself by importing its own key (audit). It verifies the header signature (``RSAHEADER``/``DSAHEADER``) and the
  header digests (``SHA256HEADER``, ``SHA1HEADER``) over the header's immutable region. A header is
  *verified* when it carries a signature tag and rpm answers ``RPMRC_OK``.
* Trusted values are read from that immutable region only, by ``rpmheader`` (strict parser),
  never through rpm's header API: rpm lets an unsigned install-time ("dribble") entry replace a
  region entry of the same tag, so the API could return a ``FILEDIGESTS`` nobody signed.
* Listing uses a second transaction set with ``RPMVSF_NOHDRCHK`` only so that a header rpm would
  silently skip as damaged is listed and reported (``header-verify-failed``) instead of vanishing;
  the verdict always comes from the full check above.

Evidence per file: a verified header gives ``repo-verified`` (sha256/384/512/224 digests;
md5 and sha1 stay ``local-db`` with ``weak-digest-algo``). When the package also ships the
vendor's per-file IMA signature (``FILESIGNATURES``) and it is a well-formed sig v2 over the file
digest's algorithm, the file is ``vendor-signed`` and carries it. rpmsign (4.14 and later) puts
``FILESIGNATURES`` into the *signature* header, which rpm merges into the installed header outside
the region: the header signature does not cover it. That is sound because an IMA signature
authenticates itself (the kernel or ``keys.Verifier`` checks it against the vendor's IMA
certificate and the trusted digest); it is never a trust root here. A malformed one leaves the
file ``repo-verified`` with a ``vendor-signature-*`` reason. An unverified header gives
``local-db`` with its reason: ``header-unsigned``, ``header-key-unknown`` (signer not in rpm's
keyring), ``header-key-untrusted``, ``header-verify-failed`` (signature or digest mismatch: a
tampered header), ``header-unverifiable``, ``header-no-region``.

Files rpm did not put on disk (``FILESTATES`` not-installed, net-shared, wrong-color, replaced by
another package) are left out; those states are install-time, unsigned data.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from imaguard.digests import HashAlgo
from imaguard.errors import FormatError, HostStateError, UnsupportedError, UsageError
from imaguard.fsio import read_regular
from imaguard.packages.model import Evidence, FileKind, InstalledPackage, PackageFile
from imaguard.packages.rpmheader import (
    DEFAULT_PGP_HASH,
    FileState,
    HeaderBlob,
    Tag,
    decode_file_signature,
    file_kind,
    hash_algo_from_rpm,
    parse_source_rpm,
    vendor_signature,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

__all__ = ["RPMDB_DIRS", "HeaderTrust", "RpmSource"]

_log = logging.getLogger(__name__)

# Where distributions keep the rpmdb, newest layout first (relative to the root).
RPMDB_DIRS = ("usr/lib/sysimage/rpm", "var/lib/rpm")
# rpmdb file name → rpm 4.18 backend able to read it (bdb_ro: read-only Berkeley DB, EL ≤ 8).
_BACKENDS = (("rpmdb.sqlite", "sqlite"), ("Packages.db", "ndb"), ("Packages", "bdb_ro"))

# rpmfileAttrs (rpm 4.18 include/rpm/rpmfiles.h).
_RPMFILE_CONFIG = 1 << 0
_RPMFILE_DOC = 1 << 1
_RPMFILE_GHOST = 1 << 6

_SKIPPED_STATES = frozenset({FileState.REPLACED, FileState.NOT_INSTALLED, FileState.NET_SHARED, FileState.WRONG_COLOR})
# Collision-prone file digests: never enough to sign, even from a verified header.
_WEAK_ALGOS = frozenset({HashAlgo.MD5, HashAlgo.SHA1})
_PUBKEY_PSEUDO_PACKAGE = "gpg-pubkey"
_T = TypeVar("_T")


def _import_rpm() -> Any:
    try:
        import rpm  # noqa: PLC0415 - optional binding, imported only when an rpm source is opened
    except ImportError as exc:
        raise UnsupportedError(
            "the rpm Python binding is not installed (Debian package python3-rpm)", reason="missing-binding"
        ) from exc
    return rpm


@dataclass(frozen=True, slots=True)
class HeaderTrust:
    """rpm's verdict on one installed header: ``verified`` or the reason code why not."""

    verified: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class _Header:
    package: InstalledPackage
    blob: HeaderBlob | None  # None: refused by the strict reader (trust says header-malformed)
    trust: HeaderTrust


class RpmSource:
    """The rpmdb under ``root`` as a PackageSource (``state_dir`` is unused: nothing is cached)."""

    def __init__(self, root: Path, state_dir: Path, trusted_keyrings: Sequence[Path] = ()) -> None:
        self._rpm = _import_rpm()
        self._root = root
        self._state_dir = state_dir
        dbpath, backend = _find_rpmdb(root)
        self._query_ts = self._open(dbpath, backend, self._rpm.RPMVSF_NOHDRCHK)
        self._check_ts = self._open(dbpath, backend, 0)
        anchors = _anchors(self._rpm, root, trusted_keyrings)
        if anchors is not None:  # before any hdrCheck, which would load the rpmdb's own keys
            self._check_ts.setKeyring(anchors)

    @property
    def kind(self) -> str:
        return "rpm"

    def _open(self, dbpath: str, backend: str, vsflags: int) -> Any:
        return _open_ts(self._rpm, self._root, dbpath, backend, vsflags)

    # --- headers -------------------------------------------------------------------------------

    def _headers(self, name: str | None = None) -> Iterator[_Header]:
        rpm = self._rpm
        mi = self._query_ts.dbMatch(rpm.RPMDBI_NAME, name) if name else self._query_ts.dbMatch()
        for hdr in mi:
            header = self._load(hdr)
            if header is not None:
                yield header

    def _load(self, hdr: Any) -> _Header | None:
        rpm = self._rpm
        try:
            blob = HeaderBlob.parse(bytes(hdr.unload()))
            package = _identity(blob)
        except FormatError as exc:
            # The strict reader refuses it: listed under rpm's (untrusted) view of its name, never trusted.
            _log.warning("rpmdb header of %s refused: %s", hdr[rpm.RPMTAG_NEVRA], exc)
            if hdr[rpm.RPMTAG_NAME] == _PUBKEY_PSEUDO_PACKAGE:
                return None
            package = InstalledPackage(hdr[rpm.RPMTAG_NAME], hdr[rpm.RPMTAG_EVR], hdr[rpm.RPMTAG_ARCH] or "")
            return _Header(package, None, HeaderTrust(verified=False, reason="header-malformed"))
        if package is None:
            return None
        trust = self._verify(blob)
        if trust.verified:
            vendor = blob.string(Tag.VENDOR)
            if vendor:
                package = dataclasses.replace(package, origin=vendor.decode("utf-8", "replace"))
        return _Header(package, blob, trust)

    def _verify(self, blob: HeaderBlob) -> HeaderTrust:
        rpm = self._rpm
        if not blob.region:
            return HeaderTrust(verified=False, reason="header-no-region")
        if not blob.signed_tags:
            return HeaderTrust(verified=False, reason="header-unsigned")
        # The core method returns (rc, msg); the Python wrapper turns every non-OK into one exception.
        rc, msg = rpm.TransactionSetCore.hdrCheck(self._check_ts, blob.blob)
        if rc == rpm.RPMRC_OK:
            return HeaderTrust(verified=True)
        reason = {
            rpm.RPMRC_NOKEY: "header-key-unknown",
            rpm.RPMRC_NOTTRUSTED: "header-key-untrusted",
            rpm.RPMRC_FAIL: "header-verify-failed",
        }.get(rc, "header-unverifiable")
        _log.debug("rpm header check: %s: %s", reason, (msg or "").strip().replace("\n", "; "))
        return HeaderTrust(verified=False, reason=reason)

    def header_trust(self, pkg: InstalledPackage) -> HeaderTrust:
        """rpm's verdict on the installed header of ``pkg``."""
        return self._find(pkg).trust

    # --- PackageSource -------------------------------------------------------------------------

    def packages(self) -> Iterator[InstalledPackage]:
        found = [h.package for h in self._headers()]
        yield from sorted(found, key=lambda p: (p.name, p.architecture, p.version))

    def package(self, name: str) -> InstalledPackage:
        """``NAME``, ``NAME.ARCH``, ``NAME-VERSION`` or ``NAME-VERSION.ARCH`` (VERSION: ``[E:]V-R``)."""
        # The name index is install-time data: keep only headers whose signed name really is ``name``.
        matches = [h.package for h in self._headers(name) if h.package.name == name]
        if not matches:
            matches = [p for p in self.packages() if name in _spellings(p)]
        if not matches:
            raise UsageError(f"package {name!r} is not installed", reason="not-installed")
        if len(matches) > 1:
            idents = ", ".join(sorted(p.ident for p in matches))
            raise UsageError(f"{name!r} names several installed packages: {idents}", reason="ambiguous-package")
        return matches[0]

    def files(self, pkg: InstalledPackage) -> Iterator[PackageFile]:
        yield from _files(self._find(pkg))

    def _find(self, pkg: InstalledPackage) -> _Header:
        for header in self._headers(pkg.name):
            p = header.package
            if (p.name, p.version, p.architecture) == (pkg.name, pkg.version, pkg.architecture):
                return header
        raise UsageError(f"package {pkg.ident} is not installed", reason="not-installed")


_ARMOR_BEGIN = b"-----BEGIN PGP PUBLIC KEY BLOCK-----"
_ARMOR_END = b"-----END PGP PUBLIC KEY BLOCK-----"
_MAX_KEYRING_FILE = 4 << 20  # a keyring of public keys; far more than any distribution ships


def _anchors(rpm: Any, root: Path, trusted_keyrings: Sequence[Path]) -> Any | None:
    """The keyring headers are checked against; None: the rpmdb's own (``root`` is this host)."""
    if trusted_keyrings:
        keyring = rpm.keyring()
        for path in trusted_keyrings:
            for key in _armored_keys(path):
                try:
                    keyring.addKey(rpm.pubkey(key))
                except (ValueError, TypeError) as exc:
                    raise UsageError(f"{path}: not an OpenPGP public key rpm can read ({exc})",
                                     reason="bad-keyring") from exc  # fmt: skip
        return keyring
    if root.resolve() == Path("/"):
        return None
    # This host's rpmdb, found where distributions keep it, never through rpm's own %_dbpath: on
    # Debian that is ~/.rpmdb, which an inherited HOME (sudo -E) or ~/.rpmmacros would choose
    # (review). No rpmdb here (a Debian host): no anchors, so every header of the image is
    # header-key-unknown until its vendor's key is given.
    try:
        dbpath, backend = _find_rpmdb(Path("/"))
    except UnsupportedError:
        return rpm.keyring()
    return _open_ts(rpm, Path("/"), dbpath, backend, 0).getKeyring()


def _open_ts(rpm: Any, root: Path, dbpath: str, backend: str, vsflags: int) -> Any:
    # Macros are process-global: push them for the open, then pop back to the previous values.
    rpm.addMacro("_dbpath", dbpath)
    rpm.addMacro("_db_backend", backend)
    try:
        ts = rpm.TransactionSet(str(root), vsflags)
        rc = ts.openDB()
    finally:
        rpm.delMacro("_db_backend")
        rpm.delMacro("_dbpath")
    if rc != 0 or ts.getVSFlags() != vsflags:
        raise HostStateError(
            f"{root}: cannot open the rpm database {dbpath} ({backend})",
            reason="rpmdb-unreadable",
            path=str(root / dbpath.lstrip("/")),
        )
    return ts


def _armored_keys(path: Path) -> list[bytes]:
    """Each ASCII-armored public key block of ``path`` (rpm reads armored keys only, as rpm --import)."""
    try:
        data = read_regular(path, _MAX_KEYRING_FILE)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the keyring: {exc.strerror}", reason="bad-keyring") from exc
    blocks = []
    start = data.find(_ARMOR_BEGIN)
    while start != -1:
        end = data.find(_ARMOR_END, start)
        if end == -1:
            break
        blocks.append(data[start : end + len(_ARMOR_END)] + b"\n")
        start = data.find(_ARMOR_BEGIN, end)
    if not blocks:
        raise UsageError(f"{path}: no ASCII-armored public key block (rpm needs `gpg --armor --export` output)",
                         reason="bad-keyring")  # fmt: skip
    return blocks


def _find_rpmdb(root: Path) -> tuple[str, str]:
    for d in RPMDB_DIRS:
        for filename, backend in _BACKENDS:
            if (root / d / filename).is_file():
                return "/" + d, backend
    raise UnsupportedError(f"{root}: no rpm database found", reason="no-package-db")


def _identity(blob: HeaderBlob) -> InstalledPackage | None:
    """Name, [E:]V-R and arch from the region; None for rpm's gpg-pubkey pseudo-packages."""
    name, version, release = (blob.string(t) for t in (Tag.NAME, Tag.VERSION, Tag.RELEASE))
    if name is None or version is None or release is None:
        raise FormatError("header without name, version or release")
    if name == _PUBKEY_PSEUDO_PACKAGE.encode():
        return None
    epoch = blob.ints(Tag.EPOCH)
    arch = blob.string(Tag.ARCH)
    source = blob.string(Tag.SOURCERPM)
    src_name, src_version = parse_source_rpm(source) if source else ("", "")
    try:
        evr = f"{version.decode()}-{release.decode()}"
        return InstalledPackage(
            name.decode(),
            f"{epoch[0]}:{evr}" if epoch is not None else evr,
            arch.decode() if arch else "",
            src_name,
            src_version,
        )
    except UnicodeDecodeError as exc:
        raise FormatError(f"package identity is not UTF-8: {name!r} {version!r} {release!r}") from exc


def _spellings(p: InstalledPackage) -> tuple[str, ...]:
    nv = f"{p.name}-{p.version}"
    return (p.name, f"{p.name}.{p.architecture}", nv, f"{nv}.{p.architecture}")


def _paths(blob: HeaderBlob) -> tuple[bytes, ...]:
    basenames = blob.strings(Tag.BASENAMES)
    if basenames is None:
        return blob.strings(Tag.OLDFILENAMES) or ()
    dirnames = blob.strings(Tag.DIRNAMES) or ()
    dirindexes = blob.ints(Tag.DIRINDEXES) or ()
    if len(dirindexes) != len(basenames) or any(i >= len(dirnames) for i in dirindexes):
        raise FormatError("DIRINDEXES do not match BASENAMES and DIRNAMES")
    return tuple(dirnames[i] + b for i, b in zip(dirindexes, basenames, strict=True))


def _per_file(values: tuple[_T, ...] | None, n: int, default: _T, what: str) -> tuple[_T, ...]:
    if values is None:
        return (default,) * n
    if len(values) != n:
        raise FormatError(f"{what} has {len(values)} entries for {n} files")
    return values


def _files(header: _Header) -> Iterator[PackageFile]:
    blob, trust = header.blob, header.trust
    if blob is None:
        raise FormatError(f"{header.package.ident}: the rpmdb header is malformed", reason="header-malformed")
    try:
        paths = _paths(blob)
        n = len(paths)
        modes = _per_file(blob.ints(Tag.FILEMODES), n, -1, "FILEMODES")
        flags = _per_file(blob.ints(Tag.FILEFLAGS), n, 0, "FILEFLAGS")
        digests = _per_file(blob.strings(Tag.FILEDIGESTS), n, b"", "FILEDIGESTS")
        links = _per_file(blob.strings(Tag.FILELINKTOS), n, b"", "FILELINKTOS")
        algo_ids = blob.ints(Tag.FILEDIGESTALGO)
    except FormatError as exc:
        raise FormatError(f"{header.package.ident}: {exc}", reason="header-malformed") from exc
    algo = hash_algo_from_rpm(algo_ids[0] if algo_ids else DEFAULT_PGP_HASH)
    states = _states(blob, n)
    sigs, sig_reason = _signatures(blob, n)
    for i, path in enumerate(paths):
        if states[i] in _SKIPPED_STATES:
            continue
        mode = modes[i] if modes[i] >= 0 else None
        kind = file_kind(mode) if mode is not None else FileKind.UNKNOWN
        ghost = bool(flags[i] & _RPMFILE_GHOST)
        digest: bytes | None = None
        vendor: bytes | None = None
        if ghost or not digests[i]:
            # Ghosts' content is made at run time; directories and links have no digest.
            evidence = Evidence.NONE
            reason = "ghost" if ghost else "not-regular-file" if kind is not FileKind.REGULAR else "no-digest"
        elif algo is None or (digest := _digest(digests[i], algo)) is None:
            evidence, reason = Evidence.NONE, "unsupported-digest-algo" if algo is None else "malformed-digest"
        elif not trust.verified:
            evidence, reason = Evidence.LOCAL_DB, trust.reason
        elif algo in _WEAK_ALGOS:
            evidence, reason = Evidence.LOCAL_DB, "weak-digest-algo"
        else:
            evidence, reason, vendor = _vendor(sigs[i], sig_reason, algo, blob)
        yield PackageFile(
            path=path,
            kind=kind,
            evidence=evidence,
            digest=digest,
            digest_algo=algo if digest is not None else None,
            evidence_reason=reason,
            mode=mode,
            config=bool(flags[i] & _RPMFILE_CONFIG),
            ghost=ghost,
            doc=bool(flags[i] & _RPMFILE_DOC),
            link_target=(links[i] or None) if kind is FileKind.SYMLINK else None,
            vendor_signature=vendor,
        )


def _digest(value: bytes, algo: HashAlgo) -> bytes | None:
    try:
        digest = bytes.fromhex(value.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    if len(digest) != algo.digest_size:
        return None
    return digest


def _states(blob: HeaderBlob, n: int) -> tuple[int, ...]:
    """FILESTATES, install-time and unsigned: when unusable, every file is taken as installed."""
    try:
        return _per_file(blob.ints(Tag.FILESTATES, trusted=False), n, FileState.NORMAL, "FILESTATES")
    except FormatError as exc:
        _log.warning("ignoring malformed FILESTATES: %s", exc)
        return (FileState.NORMAL,) * n


def _signatures(blob: HeaderBlob, n: int) -> tuple[tuple[bytes, ...], str]:
    """Per-file FILESIGNATURES (hex, "" for none) and a reason when the array itself is unusable.

    Unsigned data (see the module docstring): a malformed array costs the vendor signatures only.
    """
    try:
        sigs = blob.strings(Tag.FILESIGNATURES, trusted=False)
        lengths = blob.ints(Tag.FILESIGNATURELENGTH, trusted=False)
    except FormatError:
        return (b"",) * n, "vendor-signature-malformed"
    if sigs is None:
        return (b"",) * n, ""
    if len(sigs) != n or (lengths is not None and len(lengths) != 1):
        return (b"",) * n, "vendor-signature-malformed"
    return sigs, ""


def _vendor(hex_sig: bytes, array_reason: str, algo: HashAlgo, blob: HeaderBlob) -> tuple[Evidence, str, bytes | None]:
    if array_reason:
        return Evidence.REPO_VERIFIED, array_reason, None
    try:
        raw = decode_file_signature(hex_sig)
        if raw is None:
            return Evidence.REPO_VERIFIED, "", None
        max_len = blob.ints(Tag.FILESIGNATURELENGTH, trusted=False)  # checked by _signatures
        vendor_signature(raw, algo, max_len[0] if max_len else None)
    except FormatError as exc:
        reason = exc.reason if exc.reason.startswith("vendor-signature") else "vendor-signature-malformed"
        return Evidence.REPO_VERIFIED, reason, None
    return Evidence.VENDOR_SIGNED, "", raw
