"""``DebSource``: installed Debian packages and their files, with the best evidence the chain gives.

dpkg's database (``dpkgdb``) says which files a package owns; the verified chain (``aptrepo`` for
apt's files and gpgv, ``debfile`` for the .deb, ``debchain`` for each check) gives their SHA-256
as ``repo-verified``. Where a link breaks, dpkg's unsigned MD5 stays as a ``local-db`` hint and
``evidence_reason`` says ``code: what broke``. Chain results are cached in the state directory per
(package, version, arch, .deb SHA256), so each .deb is read once per host, ever.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from imaguard.config import Limits
from imaguard.digests import HashAlgo, hash_fd
from imaguard.errors import FormatError, HostStateError, UnsupportedError, UsageError
from imaguard.fsio import check_private_directory, ensure_directory, read_regular, write_atomically
from imaguard.packages import aptrepo, debchain, dpkgdb
from imaguard.packages.debchain import ChainError, ChainReason
from imaguard.packages.debfile import MAINTAINER_SCRIPTS, DebMember, read_deb
from imaguard.packages.model import Evidence, FileKind, InstalledPackage, PackageFile

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from imaguard.packages.debchain import IndexEntry

__all__ = ["DebSource", "VerifiedDeb", "decode_members", "encode_members"]

# 2: maintainer scripts added; a record of another format is re-walked, never half-trusted.
_CACHE_FORMAT = 2


@dataclass(frozen=True, slots=True)
class VerifiedDeb:
    """What the verified chain gives for one package: data.tar members and maintainer scripts."""

    members: tuple[DebMember, ...]
    scripts: tuple[DebMember, ...] = ()


def _rows(members: tuple[DebMember, ...]) -> list[list[object]]:
    return [
        [
            base64.b64encode(m.path).decode(),
            str(m.kind),
            m.mode,
            m.sha256.hex() if m.sha256 is not None else None,
            base64.b64encode(m.link_target).decode() if m.link_target is not None else None,
        ]
        for m in members
    ]


def _members(rows: list[list[object]]) -> tuple[DebMember, ...]:
    out = []
    for path, kind, mode, sha, link in rows:
        digest = bytes.fromhex(str(sha)) if sha is not None else None
        if digest is not None and len(digest) != 32:
            raise FormatError("chain cache: bad digest")
        out.append(
            DebMember(
                base64.b64decode(str(path), validate=True),
                FileKind(str(kind)),
                int(str(mode)),
                digest,
                base64.b64decode(str(link), validate=True) if link is not None else None,
            )
        )
    return tuple(out)


def encode_members(deb: VerifiedDeb) -> bytes:
    """The chain cache record: paths and link targets base64 (bytes, never decoded)."""
    doc = {"format": _CACHE_FORMAT, "members": _rows(deb.members), "scripts": _rows(deb.scripts)}
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_members(data: bytes) -> VerifiedDeb:
    """Parse a chain cache record; FormatError on anything unexpected (the caller re-walks the chain)."""
    try:
        doc = json.loads(data)
        if doc["format"] != _CACHE_FORMAT:
            raise FormatError("chain cache: other format")
        scripts = _members(doc["scripts"])
        for m in scripts:  # names become paths under /var/lib/dpkg/info: only the known five
            if m.path.decode("ascii", "replace") not in MAINTAINER_SCRIPTS or m.sha256 is None:
                raise FormatError(f"chain cache: bad maintainer script record {m.path!r}")
        return VerifiedDeb(_members(doc["members"]), scripts)
    except FormatError:
        raise
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise FormatError(f"chain cache: {exc}") from exc


# A chain cache record takes ~150 bytes per member of the .deb: 64 MiB is over 400,000 members,
# more than any Debian package ships. A larger file is not ours: the chain is walked again.
CHAIN_CACHE_MAX = 64 << 20


def _private_state(state_dir: Path) -> None:
    """Refuse (``unsafe-state-dir``) a state directory others could write, or a cache directory in
    it that they own or could write (made before the directory was made private): the chain
    cache is read back as ``repo-verified``. A missing state directory is made (0700, parents
    0755) and checked then; one that cannot be made holds nothing to trust, and nothing is cached."""
    try:
        ensure_directory(state_dir)
    except OSError:
        return
    check_private_directory(state_dir)
    for sub, what in (("deb-chain", "chain cache directory"), ("apt-index", "apt index cache directory")):
        if (state_dir / sub).is_dir():
            check_private_directory(state_dir / sub, what)


def _atomic_write(path: Path, data: bytes) -> None:
    ensure_directory(path.parent)  # below the state directory, checked by ``_private_state``
    write_atomically(path, data)


class DebSource:
    """The deb ``PackageSource`` for the tree at ``root``; ``fetch``: may missing .debs be downloaded."""

    def __init__(
        self,
        root: Path,
        state_dir: Path,
        *,
        fetch: bool,
        limits: Limits | None = None,
        trusted_keyrings: Sequence[Path] = (),
    ) -> None:
        dpkgdb.apt_pkg_module()  # fail now, with the package to install, not halfway through a listing
        # --trusted-keyring: read now (a bad file is a usage error); otherwise the host's apt anchors.
        self._anchors = aptrepo.TrustedKeyring.read(trusted_keyrings) if trusted_keyrings else None
        self.root = root
        self.state_dir = state_dir
        self.fetch = fetch
        self.limits = limits or Limits()
        self._status: list[dpkgdb.DpkgPackage] | None = None
        self._indexes: aptrepo.Indexes | None = None
        self._by_name: dict[str, list[debchain.IndexedVersion]] = {}
        self._layout: aptrepo.AptLayout | None = None
        self._diversions: dict[bytes, dpkgdb.Diversion] | None = None

    @property
    def kind(self) -> str:
        return "deb"

    # --- database -------------------------------------------------------------------------------

    def _dpkg(self) -> list[dpkgdb.DpkgPackage]:
        if self._status is None:
            self._status = dpkgdb.read_status(self.root)
        return self._status

    def _apt(self) -> aptrepo.AptLayout:
        if self._layout is None:
            self._layout = aptrepo.AptLayout.read(self.root, self._anchors)
        return self._layout

    def indexes(self) -> aptrepo.Indexes:
        """The repository indexes, walked once per source (gpgv + one pass over each Packages)."""
        if self._indexes is None:
            self._check_state()  # its apt-index cache is trusted too
            wanted = frozenset(p.name for p in self._dpkg())
            self._indexes = aptrepo.load_indexes(self._apt(), wanted, self.state_dir / "apt-index")
            for iv in self._indexes.entries:
                self._by_name.setdefault(iv.entry.name, []).append(iv)
        return self._indexes

    def _choose(self, dp: dpkgdb.DpkgPackage) -> debchain.IndexedVersion:
        problems = self.indexes().problems
        try:
            return debchain.choose_entry(self._by_name.get(dp.name, ()), dp.name, dp.version, dp.architecture)
        except ChainError as exc:
            # "Not listed" is only known when every index could be read; otherwise say what was not.
            if problems and exc.code in (ChainReason.NO_SIGNED_SOURCE, ChainReason.VERSION_NOT_IN_INDEX):
                raise ChainError(ChainReason.INDEX_UNAVAILABLE, f"{exc}; not read: {problems[0]}") from exc
            raise

    def _installed(self, dp: dpkgdb.DpkgPackage) -> InstalledPackage:
        origin = ""
        with contextlib.suppress(ChainError):
            iv = self._choose(dp)
            origin = self.indexes().origins.get(iv.index, "")
        return InstalledPackage(dp.name, dp.version, dp.architecture, dp.source_name, dp.source_version, origin)

    def packages(self) -> Iterator[InstalledPackage]:
        for dp in self._dpkg():
            yield self._installed(dp)

    def _entry(self, name: str, arch: str | None = None) -> dpkgdb.DpkgPackage:
        if arch is None and ":" in name:
            name, arch = name.split(":", 1)
        for dp in self._dpkg():
            if dp.name == name and arch in (None, dp.architecture):
                return dp
        raise UsageError(f"package {name}{':' + arch if arch else ''} is not installed", reason="not-installed")

    def package(self, name: str) -> InstalledPackage:
        return self._installed(self._entry(name))

    # --- the chain ------------------------------------------------------------------------------

    def _cache_path(self, dp: dpkgdb.DpkgPackage, sha256: bytes) -> Path:
        stem = aptrepo.deb_file_name(dp.name, dp.version, dp.architecture)[: -len(".deb")]
        return self.state_dir / "deb-chain" / f"{stem}_{sha256.hex()}.json"

    def _read_checked(self, dp: dpkgdb.DpkgPackage, entry: IndexEntry, path: Path) -> VerifiedDeb | None:
        """Check the .deb's size and SHA256 against its Packages entry, and only then parse it.

        Decompressing and parsing are the attack surface (bombs, tarfile's header handling): only
        the .deb the signed index vouches for gets that far. ``read_deb`` hashes the bytes it parses
        once more, so a file changed between the two reads is a mismatch, never trusted.
        """
        try:
            fd = aptrepo.open_deb(path)
            if fd is None:
                return None
            try:
                size = os.fstat(fd).st_size
                digest = hash_fd(fd, HashAlgo.SHA256, max_size=self.limits.max_file_size, path=str(path))
                self._check_unparsed(dp, entry, digest, size, path)
                try:
                    contents = read_deb(fd, str(path), max_size=entry.size)
                except FormatError as exc:
                    raise ChainError(ChainReason.DEB_MALFORMED, f"{path}: {exc}") from exc
            finally:
                os.close(fd)
        except (HostStateError, UnsupportedError) as exc:
            raise ChainError(ChainReason.DEB_UNAVAILABLE, str(exc)) from exc
        debchain.check_deb(entry, contents.sha256, contents.size, name=str(path))
        debchain.check_deb_identity(contents.control, dp.name, dp.version, dp.architecture, deb=str(path))
        return VerifiedDeb(contents.members, contents.scripts)

    def _check_unparsed(self, dp: dpkgdb.DpkgPackage, entry: IndexEntry, digest: bytes, size: int, path: Path) -> None:
        """The .deb's hash against its entry; a .deb a verified index lists as another version is named so."""
        if (digest, size) == (entry.sha256, entry.size):
            return
        for other in self._by_name.get(dp.name, ()):
            e = other.entry
            if other.broken is None and (e.sha256, e.size) == (digest, size):
                installed = f"{dp.name} {dp.version}/{dp.architecture}"
                raise ChainError(
                    ChainReason.VERSION_NOT_IN_INDEX,
                    f"{path} is {e.name} {e.version}/{e.architecture}; installed is {installed}",
                )
        debchain.check_deb(entry, digest, size, name=str(path))

    def _walk(self, dp: dpkgdb.DpkgPackage, entry: IndexEntry) -> VerifiedDeb:
        """Find the exact .deb (apt's cache, ours, or fetched through apt) and read it checked."""
        file_name = aptrepo.deb_file_name(dp.name, dp.version, entry.architecture)
        own = self.state_dir / "debs"
        first: ChainError | None = None
        for path in (self._apt().archives / file_name, own / file_name):
            try:
                members = self._read_checked(dp, entry, path)
            except ChainError as exc:
                first = first or exc
                continue
            if members is not None:
                return members
        if self.fetch:
            fetched = aptrepo.fetch_deb(
                self._apt(), own, dp.name, dp.version, dp.architecture, max_size=self.limits.max_file_size
            )
            if fetched is not None:
                members = self._read_checked(dp, entry, fetched)
                if members is not None:
                    return members
        if first is not None:
            raise first
        where = "fetching through apt failed" if self.fetch else "fetching is disabled"
        raise ChainError(ChainReason.DEB_UNAVAILABLE, f"{file_name}: not in {self._apt().archives} or {own}; {where}")

    _state_checked = False  # ``_private_state`` passed: once per source, not per package

    def _check_state(self) -> None:
        """Refuse an unsafe state directory before any cache in it (apt-index, deb-chain) is read."""
        if not self._state_checked:
            _private_state(self.state_dir)
            self._state_checked = True

    def chain(self, pkg: InstalledPackage) -> VerifiedDeb:
        """The verified members and scripts of the package's .deb; ChainError naming the link that broke."""
        dp = self._entry(pkg.name, pkg.architecture)
        if dp.version != pkg.version:
            raise UsageError(f"{pkg.ident}: installed version is {dp.version}", reason="not-installed")
        self._check_state()  # whatever the chain gives: before the cache is trusted
        entry = self._choose(dp).entry
        cache = self._cache_path(dp, entry.sha256)
        with contextlib.suppress(OSError, FormatError):  # a symlink, FIFO or huge file: walked again
            return decode_members(read_regular(cache, CHAIN_CACHE_MAX))
        members = self._walk(dp, entry)
        with contextlib.suppress(OSError):  # a read-only state directory costs speed, not correctness
            _atomic_write(cache, encode_members(members))
        return members

    # --- files ----------------------------------------------------------------------------------

    def files(self, pkg: InstalledPackage) -> Iterator[PackageFile]:
        dp = self._entry(pkg.name, pkg.architecture)
        where = f"{self.root}/{dpkgdb.DPKG_DIR}/info/{dp.name}"
        listed = dpkgdb.read_info(self.root, dp, "list")
        md5: dict[bytes, bytes] | None = None  # dpkg's hints, read only for a path the chain does not give
        if self._diversions is None:
            self._diversions = dpkgdb.read_diversions(self.root)
        try:
            deb = self.chain(pkg)
            members: dict[bytes, DebMember] = {m.path: m for m in deb.members}
            reason = ""
        except ChainError as exc:
            deb, members, reason = VerifiedDeb(()), {}, exc.evidence_reason
        for path in dpkgdb.parse_list(listed or b"", name=f"{where}.list"):
            div = self._diversions.get(path)
            config = path in dp.conffiles
            diverted_to = div.to if div is not None and div.applies_to(dp.name) else None
            m = members.get(path)
            if m is not None:
                yield PackageFile(
                    path,
                    m.kind,
                    Evidence.REPO_VERIFIED if m.sha256 is not None else Evidence.NONE,
                    m.sha256,
                    HashAlgo.SHA256 if m.sha256 is not None else None,
                    mode=m.mode,
                    link_target=m.link_target,
                    config=config,
                    diverted_to=diverted_to,
                )
                continue
            why = reason or "not-in-deb: dpkg lists this path but the verified .deb does not ship it"
            if md5 is None:
                md5_raw = dpkgdb.read_info(self.root, dp, "md5sums")
                md5 = dpkgdb.parse_md5sums(md5_raw, name=f"{where}.md5sums") if md5_raw else {}
                md5.update({p: d for p, d in dp.conffiles.items() if d is not None})
            digest = md5.get(path)
            if digest is not None:
                yield PackageFile(
                    path,
                    FileKind.REGULAR,
                    Evidence.LOCAL_DB,
                    digest,
                    HashAlgo.MD5,
                    why,
                    config=config,
                    diverted_to=diverted_to,
                )
            else:
                yield PackageFile(
                    path, FileKind.UNKNOWN, Evidence.NONE, evidence_reason=why, config=config, diverted_to=diverted_to
                )
        # dpkg copies the maintainer scripts from control.tar into its database verbatim and executes
        # them there: package content like any data.tar file, verified by the same chain.
        for script in deb.scripts:
            name = script.path.decode()
            yield PackageFile(
                dpkgdb.info_file(self.root, dp, name),
                FileKind.REGULAR,
                Evidence.REPO_VERIFIED,
                script.sha256,
                HashAlgo.SHA256,
                mode=script.mode,
            )
