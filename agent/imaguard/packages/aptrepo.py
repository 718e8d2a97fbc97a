"""apt's side of the deb chain (I/O): its configuration, sources, keyrings, lists and .deb files.

Reads what apt itself uses under ``root``: ``Dir::*`` from apt's configuration (the host's, or the
root's own ``etc/apt/apt.conf.d``), the sources with their ``Signed-By``, the InRelease files in
``Dir::State::lists`` (checked with ``gpgv``), and the Packages files next to them. Each check
itself is in ``debchain`` (pure).

Trust anchors (the keys gpgv accepts) never come from the tree being inspected (DESIGN.md §1.2):
a mounted image that could vouch for its own packages would get anything it ships signed. They
are this host's apt keyrings: a ``Signed-By`` path is the host's file at that path, a repository
without ``Signed-By`` gets the host's ``trusted.gpg`` and ``trusted.gpg.d`` (found through the
host's apt configuration), and a key block written inline into an image's sources is no anchor
at all. ``--trusted-keyring`` (``TrustedKeyring``) replaces every anchor, the host's included:
for an image of another distribution. The image's sources, lists and archives are still read
from the image: they are what gets checked against the anchors.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import hashlib
import json
import lzma
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imaguard.errors import FormatError, HostStateError, ImaguardError, UsageError
from imaguard.fsio import check_private_directory, ensure_directory, read_regular, write_atomically
from imaguard.packages import debchain
from imaguard.packages.aptsources import Repository, parse_deb822_sources, parse_one_line_sources
from imaguard.packages.debchain import ChainError, ChainReason, IndexedVersion
from imaguard.packages.dpkgdb import apt_pkg_module

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

__all__ = ["AptLayout", "Indexes", "TrustedKeyring", "deb_file_name", "fetch_deb", "load_indexes"]

_CHUNK = 1 << 20
# apt's compiled-in defaults (apt-pkg/init.cc), used for a --root whose apt.conf does not set them.
_DEFAULTS = {
    "Dir": "/",
    "Dir::Etc": "etc/apt/",
    "Dir::Etc::sourcelist": "sources.list",
    "Dir::Etc::sourceparts": "sources.list.d",
    "Dir::Etc::trusted": "trusted.gpg",
    "Dir::Etc::trustedparts": "trusted.gpg.d",
    "Dir::State": "var/lib/apt/",
    "Dir::State::lists": "lists/",
    "Dir::Cache": "var/cache/apt/",
    "Dir::Cache::archives": "archives/",
}
_LIST_EXTS = ("", ".lz4", ".zst", ".gz", ".xz", ".bz2", ".lzma")


# An armored key file of a few keys is some KiB; Debian's whole archive keyring is ~100 KiB.
_MAX_KEYRING = 16 << 20
_MAX_APT_FILE = 16 << 20  # sources and Release files: Debian's InRelease is ~150 KB


@dataclass(frozen=True, slots=True)
class TrustedKeyring:
    """The keys of ``--trusted-keyring`` files, read once: when given, the only trust anchors."""

    names: tuple[str, ...]
    keyring: bytes  # binary OpenPGP keyring (armored files dearmored), what gpgv reads

    @classmethod
    def read(cls, paths: Sequence[Path]) -> TrustedKeyring:
        """Read and check every file now: a missing or malformed anchor is the user's mistake, said once."""
        out = b""
        for path in paths:
            try:
                data = read_regular(path, _MAX_KEYRING)
            except OSError as exc:
                what = f"larger than {_MAX_KEYRING} bytes, not a keyring" if exc.errno == errno.EFBIG else (
                    f"cannot read: {exc.strerror}")  # fmt: skip
                raise UsageError(f"--trusted-keyring {path}: {what}") from exc
            try:
                out += debchain.keyring_bytes(data, name=f"--trusted-keyring {path}")
            except FormatError as exc:
                raise UsageError(str(exc)) from exc
        return cls(tuple(str(p) for p in paths), out)


@dataclass(frozen=True, slots=True)
class AptLayout:
    """Where apt keeps things (absolute host paths): sources, lists and archives under ``root``;
    the trust anchors on this host, or ``trusted_keyring`` instead of them (module docstring)."""

    root: Path
    sourcelist: Path
    sourceparts: Path
    trusted: Path  # the host's Dir::Etc::trusted, whatever ``root`` is
    trustedparts: Path  # the host's Dir::Etc::trustedparts
    lists: Path
    archives: Path
    trusted_keyring: TrustedKeyring | None = None

    @property
    def is_host(self) -> bool:
        return self.root.resolve() == Path("/")

    @classmethod
    def read(cls, root: Path, trusted_keyring: TrustedKeyring | None = None) -> AptLayout:
        apt_pkg = apt_pkg_module()
        host_cnf = cnf = apt_pkg.config
        if root.resolve() != Path("/"):
            cnf = apt_pkg.Configuration()
            for k, v in _DEFAULTS.items():
                cnf.set(k, v)
            etc = root / "etc/apt"
            with contextlib.suppress(apt_pkg.Error, SystemError):
                if (etc / "apt.conf").is_file():
                    apt_pkg.read_config_file(cnf, str(etc / "apt.conf"))
                if (etc / "apt.conf.d").is_dir():
                    apt_pkg.read_config_dir(cnf, str(etc / "apt.conf.d"))

        def path(*keys: str, cnf: Any = cnf, top: Path = root) -> Path:
            # apt's FindDir: each level is relative to its parent unless absolute; all under top.
            out = top
            for k in keys:
                v = cnf.find(k) or _DEFAULTS[k]
                out = top / v.lstrip("/") if v.startswith("/") else out / v
            return out

        # The anchors: always the host's configuration, never the image's apt.conf (module docstring).
        host = Path("/")
        return cls(
            root,
            path("Dir::Etc", "Dir::Etc::sourcelist"),
            path("Dir::Etc", "Dir::Etc::sourceparts"),
            path("Dir::Etc", "Dir::Etc::trusted", cnf=host_cnf, top=host),
            path("Dir::Etc", "Dir::Etc::trustedparts", cnf=host_cnf, top=host),
            path("Dir::State", "Dir::State::lists"),
            path("Dir::Cache", "Dir::Cache::archives"),
            trusted_keyring,
        )


def _read(path: Path, limit: int = _MAX_APT_FILE) -> bytes:
    """A sources, Release or keyring file: regular, bounded, never a FIFO that would hang us."""
    try:
        return read_regular(path, limit)
    except OSError as exc:
        raise HostStateError(f"{path}: cannot read: {exc.strerror}", errno=exc.errno, path=str(path)) from exc


def _host_anchor(f: Path, root: Path, origin: str) -> bytes:
    """A keyring an image's Signed-By names, read as this host's anchor only if it is one: a root-owned
    regular file, writable by root only, in directories only root can change, and not inside the
    image (which could name itself through its mount point or /proc/self/cwd) — else no anchor."""
    resolved = f.resolve()
    image = root.resolve()

    def refuse(why: str) -> ChainError:
        return ChainError(ChainReason.UNTRUSTED_RELEASE, f"{origin}: Signed-By {f}: {why}, no trust anchor")

    if not resolved.exists():
        raise refuse("no such keyring on this host")
    if resolved == image or image in resolved.parents or resolved.parts[1:2] == ("proc",):
        raise refuse(f"lies in the image ({resolved})")
    try:
        check_private_directory(resolved.parent, "keyring directory")
        st = resolved.stat()
    except (HostStateError, OSError) as exc:
        raise refuse(str(exc)) from exc
    if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise refuse(f"owned by uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o} (root's alone: 0644)")
    try:
        return read_regular(resolved, _MAX_KEYRING)
    except OSError as exc:
        raise refuse(f"cannot read: {exc.strerror}") from exc


def repositories(layout: AptLayout) -> list[Repository]:
    """Every ``deb`` repository in sources.list and sources.list.d (``*.list``, ``*.sources``)."""
    repos: list[Repository] = []
    if layout.sourcelist.is_file():
        repos += parse_one_line_sources(_read(layout.sourcelist), name=str(layout.sourcelist))
    if layout.sourceparts.is_dir():
        for p in sorted(layout.sourceparts.iterdir()):
            if p.suffix == ".list":
                repos += parse_one_line_sources(_read(p), name=str(p))
            elif p.suffix == ".sources":
                repos += parse_deb822_sources(_read(p), name=str(p))
    return repos


def _keyring(layout: AptLayout, repo: Repository) -> bytes:
    """The binary keyring of every key that may vouch for ``repo``: the host's anchors apt would
    use for it (sources.list(5) Signed-By), or ``--trusted-keyring`` (module docstring)."""
    if layout.trusted_keyring is not None:
        return layout.trusted_keyring.keyring
    sb = repo.signed_by
    if sb.inline:
        if not layout.is_host:
            raise ChainError(
                ChainReason.UNTRUSTED_RELEASE,
                f"{repo.origin_file}: Signed-By is a key block the image carries itself, no trust anchor",
            )
        return debchain.keyring_bytes(sb.inline, name=f"{repo.origin_file}: Signed-By")
    # A Signed-By path names a keyring of this host (for --root too): the image's file is never read.
    files = [Path(p) for p in sb.keyrings]
    if files and not layout.is_host:
        return b"".join(
            debchain.keyring_bytes(_host_anchor(f, layout.root, repo.origin_file), name=str(f)) for f in files
        )
    if not files:  # apt's default: trusted.gpg and trusted.gpg.d/*.{gpg,asc}, the host's
        files = [layout.trusted] if layout.trusted.is_file() else []
        if layout.trustedparts.is_dir():
            files += sorted(p for p in layout.trustedparts.iterdir() if p.suffix in (".gpg", ".asc"))
    return b"".join(debchain.keyring_bytes(_read(f, _MAX_KEYRING), name=str(f)) for f in files)


def _gpgv(keyring: bytes, signed: Path, detached: Path | None, allowed: frozenset[str] | None) -> bytes:
    """Verify with gpgv; return the signed payload exactly as gpgv outputs it."""
    exe = shutil.which("gpgv")
    if exe is None:
        raise ChainError(ChainReason.UNTRUSTED_RELEASE, f"{signed}: gpgv is not installed (Debian package gpgv)")
    with tempfile.TemporaryDirectory(prefix="imaguard-gpgv-") as tmp, tempfile.TemporaryFile() as status:
        ring = Path(tmp) / "keyring.gpg"
        ring.write_bytes(keyring)
        if detached is not None:
            # Verify a private copy and return exactly its bytes: reading the path again after gpgv
            # would trust whatever is there by then.
            payload = _read(signed)
            copy = Path(tmp) / "Release"
            copy.write_bytes(payload)
            files, out = [str(detached), str(copy)], []
        else:
            files, out = [str(signed)], ["--output", "-"]
        # Status lines on a file of their own: on stderr they would share the stream with gpgv's log,
        # which echoes text from the signed data (the pattern behind CVE-2018-12020).
        fd = status.fileno()
        proc = subprocess.run(
            [exe, "--status-fd", str(fd), "--weak-digest", "sha1", "--keyring", str(ring), *out, *files],
            capture_output=True,
            env={"GNUPGHOME": tmp, "PATH": os.defpath, "LC_ALL": "C"},
            pass_fds=(fd,),
            check=False,
        )
        status.seek(0)
        status_lines = status.read(1 << 20)
    debchain.trusted_signers(status_lines, allowed, name=str(signed))
    if proc.returncode not in (0, 2):  # 2: some other signature had no public key, which is fine
        raise ChainError(ChainReason.UNTRUSTED_RELEASE, f"{signed}: gpgv failed with status {proc.returncode}")
    return payload if detached is not None else proc.stdout


def _verified_release(layout: AptLayout, repo: Repository, prefix: str) -> debchain.Release:
    inrelease = layout.lists / f"{prefix}InRelease"
    release, detached = layout.lists / f"{prefix}Release", layout.lists / f"{prefix}Release.gpg"
    if inrelease.is_file():
        signed, sig = inrelease, None
    elif release.is_file() and detached.is_file():
        signed, sig = release, detached
    else:
        raise ChainError(ChainReason.UNTRUSTED_RELEASE, f"{layout.lists}/{prefix}InRelease: missing")
    allowed = repo.signed_by.fingerprints or None
    try:
        if sig is None:
            debchain.check_clearsigned(_read(signed), name=str(signed))
        payload = _gpgv(_keyring(layout, repo), signed, sig, allowed)
        return debchain.parse_release(payload, name=str(signed))
    except FormatError as exc:
        raise ChainError(ChainReason.UNTRUSTED_RELEASE, f"{signed}: {exc}") from exc
    except ChainError as exc:
        if layout.is_host and layout.trusted_keyring is None:
            raise
        # For an image, say whose keys these were: the image's own keys never count.
        raise ChainError(exc.code, f"{exc} (trust anchors: {_anchors_named(layout)})") from exc


def _anchors_named(layout: AptLayout) -> str:
    if layout.trusted_keyring is not None:
        return "--trusted-keyring " + ", ".join(layout.trusted_keyring.names)
    return "this host's apt keyrings, never the image's; --trusted-keyring replaces them"


def _decompressor(ext: str) -> Callable[[bytes], bytes] | None:
    """An incremental decompressor for the stdlib formats; None for lz4/zst (external programs)."""
    if ext == ".gz":
        return zlib.decompressobj(wbits=47).decompress
    if ext in (".xz", ".lzma"):
        return lzma.LZMADecompressor().decompress
    if ext == ".bz2":
        return bz2.BZ2Decompressor().decompress
    if ext == "":
        return lambda b: b
    return None


def _stream_index(path: Path, ext: str) -> Iterator[bytes]:
    """Decompressed chunks of a list file; lz4/zstd through the programs apt itself would use."""
    with path.open("rb") as fh:
        step = _decompressor(ext)
        if step is not None:
            while chunk := fh.read(_CHUNK):
                yield step(chunk)
            return
        prog = {".lz4": "lz4", ".zst": "zstd"}[ext]
        exe = shutil.which(prog)
        if exe is None:
            raise HostStateError(f"{path}: needs the {prog} program to decompress", reason="no-decompressor")
        with subprocess.Popen([exe, "-dcq"], stdin=fh, stdout=subprocess.PIPE) as proc:
            assert proc.stdout is not None  # noqa: S101 - a PIPE
            while chunk := proc.stdout.read(_CHUNK):
                yield chunk
        if proc.returncode != 0:
            raise HostStateError(f"{path}: {prog} failed with status {proc.returncode}", reason="read-error")


def _scan_index(
    path: Path, ext: str, wanted: frozenset[str]
) -> tuple[list[debchain.IndexEntry], bytes, int, list[tuple[int, int]]]:
    scanner = debchain.PackagesScanner(wanted, name=str(path))
    h, size = hashlib.sha256(), 0
    try:
        for chunk in _stream_index(path, ext):
            h.update(chunk)
            size += len(chunk)
            scanner.feed(chunk)
    except (OSError, lzma.LZMAError, zlib.error, EOFError) as exc:
        raise HostStateError(f"{path}: cannot read: {exc}", reason="read-error", path=str(path)) from exc
    return scanner.finish(), h.digest(), size, scanner.spans


# --- the index cache -------------------------------------------------------------------------------
#
# Scanning Debian's 50 MB Packages for the installed names costs more than hashing it. The cache
# remembers only *where* the wanted stanzas are, under the SHA-256 that the InRelease verified in
# this run lists for the index. A run with a cache still hashes the whole index against that
# InRelease and takes the stanzas from those very bytes (``debchain.StanzaCapture``): the cache
# can point at verified stanzas, never supply one. Stale, foreign or damaged records fall back
# to the full scan.

_INDEX_CACHE_FORMAT = 1


def _cache_file(cache_dir: Path, listed: bytes) -> Path:
    return cache_dir / f"{listed.hex()}.json"


def _read_cache(path: Path, wanted: frozenset[str]) -> list[tuple[int, int]] | None:
    """The recorded spans, if the record covers every wanted name; None otherwise."""
    try:
        doc = json.loads(path.read_bytes())
        if doc["format"] != _INDEX_CACHE_FORMAT or not wanted <= set(doc["wanted"]):
            return None
        return [(int(start), int(length)) for start, length in doc["spans"]]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None


def _write_cache(path: Path, wanted: frozenset[str], spans: list[tuple[int, int]]) -> None:
    doc = {"format": _INDEX_CACHE_FORMAT, "wanted": sorted(wanted), "spans": spans}
    with contextlib.suppress(OSError):  # a read-only state directory costs speed, not correctness
        ensure_directory(path.parent, 0o700, 0o700)  # in the state directory: root only
        write_atomically(path, json.dumps(doc, separators=(",", ":")).encode())


def _cached_scan(
    path: Path, ext: str, rel: str, *, wanted: frozenset[str], release: debchain.Release, cache_dir: Path
) -> list[debchain.IndexEntry] | None:
    """The wanted entries through the cache, or None to scan (no record, or anything amiss)."""
    listed = release.sha256.get(rel)
    if listed is None:
        return None
    spans = _read_cache(_cache_file(cache_dir, listed[0]), wanted)
    if spans is None:
        return None
    capture = debchain.StanzaCapture(spans)
    h, size = hashlib.sha256(), 0
    try:
        for chunk in _stream_index(path, ext):
            h.update(chunk)
            size += len(chunk)
            capture.feed(chunk)
        if (h.digest(), size) != listed:
            return None  # not the index the InRelease lists: the full scan says what broke
        return capture.entries(wanted, name=str(path))
    except (OSError, lzma.LZMAError, zlib.error, EOFError, ImaguardError):
        return None


def _raw_hash(path: Path) -> tuple[bytes, int]:
    data_hash, size = hashlib.sha256(), 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            data_hash.update(chunk)
            size += len(chunk)
    return data_hash.digest(), size


def _package_lists(layout: AptLayout, repo: Repository, uri_to_filename: Any) -> Iterator[tuple[Path, str, str]]:
    """(file, its path inside the Release, compression ext) for each Packages list apt fetched."""
    names = [p.name for p in layout.lists.iterdir()] if layout.lists.is_dir() else []
    if repo.flat:
        stems = [(uri_to_filename(repo.dist_uri + "Packages"), "Packages")]
    else:
        stems = []
        for comp in repo.components:
            prefix = uri_to_filename(f"{repo.dist_uri}{comp}/binary-")
            for n in names:
                arch, sep, tail = n[len(prefix) :].partition("_")
                if n.startswith(prefix) and sep and tail.startswith("Packages"):
                    stems.append((f"{prefix}{arch}_Packages", f"{comp}/binary-{arch}/Packages"))
    for stem, rel in dict.fromkeys(stems):
        for ext in _LIST_EXTS:
            if stem + ext in names:
                yield layout.lists / (stem + ext), rel, ext
                break


def _suites(
    repos: list[Repository], uri_to_filename: Callable[[str], str]
) -> Iterator[tuple[str, Repository, ChainError | None]]:
    """One repository per suite (lists prefix), with the components of every line naming it.

    apt reads ``deb URI jammy main`` and ``deb URI jammy universe`` as one suite: one InRelease,
    verified once, listing both components' indexes. Lines of one suite that disagree on
    ``Signed-By`` make apt refuse the suite ("Conflicting values set for option Signed-By"):
    the third value is that error, and the suite is not verified.
    """
    groups: dict[str, list[Repository]] = {}
    for repo in repos:
        groups.setdefault(uri_to_filename(repo.dist_uri), []).append(repo)
    for prefix, same in groups.items():
        merged = replace(same[0], components=tuple(dict.fromkeys(c for r in same for c in r.components)))
        conflict = None
        if any(r.signed_by != merged.signed_by for r in same):
            files = ", ".join(dict.fromkeys(r.origin_file for r in same))
            conflict = ChainError(
                ChainReason.UNTRUSTED_RELEASE, f"{merged.dist_uri}: conflicting Signed-By for one suite in {files}"
            )
        yield prefix, merged, conflict


@dataclass(frozen=True, slots=True)
class Indexes:
    """Every Packages entry of wanted names, with the trust of its index, and index → origin label."""

    entries: tuple[IndexedVersion, ...]
    origins: dict[str, str]
    problems: tuple[str, ...]  # indexes that could not be read at all (also visible per package)


def load_indexes(layout: AptLayout, wanted: frozenset[str], cache_dir: Path | None = None) -> Indexes:
    """Walk InRelease → Packages for every configured repository; keep entries of ``wanted`` packages.

    Unverified indexes are scanned too, so that a package they list gets the precise break
    (``untrusted-release``, ``index-not-in-release``) instead of a vague "no signed source".
    ``cache_dir`` (root-only, in the state directory): where the wanted stanzas of verified indexes
    were found last time, see ``_cached_scan``.
    """
    apt_pkg = apt_pkg_module()
    entries: list[IndexedVersion] = []
    origins: dict[str, str] = {}
    problems: list[str] = []
    for prefix, repo, conflict in _suites(repositories(layout), apt_pkg.uri_to_filename):
        release: debchain.Release | None = None
        broken: ChainError | None = conflict
        try:
            if conflict is None:
                release = _verified_release(layout, repo, prefix)
        except ChainError as exc:
            broken = exc
        except ImaguardError as exc:
            broken = ChainError(ChainReason.UNTRUSTED_RELEASE, str(exc))
        lists = list(_package_lists(layout, repo, apt_pkg.uri_to_filename))
        if not lists:
            # A configured repository apt never fetched (or whose lists were deleted): its packages are unknown.
            problems.append(
                str(broken) if broken is not None else f"{repo.dist_uri}: no Packages list in {layout.lists}"
            )
        for path, rel, ext in lists:
            try:
                cached = None
                if release is not None and cache_dir is not None:
                    cached = _cached_scan(path, ext, rel, wanted=wanted, release=release, cache_dir=cache_dir)
                if cached is not None:
                    found, index_broken = cached, None
                else:
                    found, index_broken = _scan_and_check(path, rel, ext, wanted=wanted, release=release,
                                                          broken=broken, cache_dir=cache_dir)
            except (ImaguardError, OSError) as exc:
                problems.append(f"{path}: {exc}")
                continue
            if release is not None:
                origins[str(path)] = "/".join(x for x in (release.origin, release.codename or release.suite) if x)
            entries += [IndexedVersion(e, str(path), index_broken) for e in found]
    return Indexes(tuple(entries), origins, tuple(problems))


def _scan_and_check(
    path: Path,
    rel: str,
    ext: str,
    *,
    wanted: frozenset[str],
    release: debchain.Release | None,
    broken: ChainError | None,
    cache_dir: Path | None,
) -> tuple[list[debchain.IndexEntry], ChainError | None]:
    """Scan the whole index; check it against the InRelease; record the spans when it matches."""
    found, digest, size, spans = _scan_index(path, ext, wanted)
    if release is None:
        return found, broken
    candidates = [(rel, digest, size)]
    if ext:
        candidates.append((rel + ext, *_raw_hash(path)))
    try:
        debchain.check_index(release, candidates, name=str(path))
    except ChainError as exc:
        return found, exc
    if cache_dir is not None and release.sha256.get(rel) == (digest, size):
        _write_cache(_cache_file(cache_dir, digest), wanted, spans)
    return found, None


def deb_file_name(name: str, version: str, arch: str) -> str:
    """The name apt gives a downloaded .deb (``_`` and ``:`` of the version quoted, as apt's QuoteString)."""
    quoted = version.replace("%", "%25").replace("_", "%5f").replace(":", "%3a")
    return f"{name}_{quoted}_{arch}.deb"


# apt-get download runs under a fresh directory here, not in the state directory: that one is 0700
# (root only), and when its sandbox user _apt cannot reach the download directory apt does not
# fail, it downloads unsandboxed as root ("Download is performed unsandboxed as root").
_FETCH_PARENT = Path("/var/tmp")  # noqa: S108 - a private mkdtemp inside the sticky directory


def fetch_deb(layout: AptLayout, dest_dir: Path, name: str, version: str, arch: str, *, max_size: int) -> Path | None:
    """Download one exact .deb through ``apt-get download`` into ``dest_dir``; None when apt cannot.

    apt's own verification is not relied upon: the caller checks the result against the chain.
    apt downloads as its sandbox user ``_apt``, into ``/var/tmp/imaguard-fetch-XXXX/apt``: the
    mkdtemp directory is root's and 0711 (``_apt`` may pass through it, nobody may list it or put
    anything in it; the sticky ``/var/tmp`` keeps others from replacing it), ``apt`` inside is
    ``_apt``'s and 0700. Whatever ``_apt`` left there is only read (``_copy_download``) into
    ``dest_dir`` (made 0700 if missing), never chowned, chmodded or renamed by root. A
    ``dest_dir`` or temporary directory that cannot be made is ``deb-unavailable``, named.
    """
    exe = shutil.which("apt-get")
    if exe is None:
        return None
    try:
        ensure_directory(dest_dir, 0o700, 0o700)  # in the state directory: root only
    except OSError as exc:
        raise ChainError(
            ChainReason.DEB_UNAVAILABLE, f"{dest_dir}: cannot make the download directory: {exc.strerror}"
        ) from exc
    try:
        top = tempfile.mkdtemp(prefix="imaguard-fetch-", dir=_FETCH_PARENT)  # 0700, root's
    except OSError as exc:
        raise ChainError(
            ChainReason.DEB_UNAVAILABLE, f"{_FETCH_PARENT}: cannot make a download directory: {exc.strerror}"
        ) from exc
    try:
        work = Path(top) / "apt"
        work.mkdir(mode=0o700)
        with contextlib.suppress(KeyError, OSError):
            # No _apt user (or not root): apt runs as whoever we are; there is no sandbox to keep.
            apt_user = pwd.getpwnam("_apt")
            os.chown(work, apt_user.pw_uid, 0)
            Path(top).chmod(0o711)
        argv = [exe, "-q", "-o", "Debug::NoLocking=1"]
        if layout.root.resolve() != Path("/"):
            argv += ["-o", f"Dir={layout.root}"]
        argv += ["download", f"{name}:{arch}={version}"]
        proc = subprocess.run(argv, cwd=work, capture_output=True, check=False)
        if proc.returncode != 0:
            return None
        return _copy_download(work / deb_file_name(name, version, arch), dest_dir, max_size=max_size)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _copy_download(got: Path, dest_dir: Path, *, max_size: int) -> Path | None:
    """Copy the file ``_apt`` left at ``got`` into a new root-owned ``dest_dir/NAME``; None if there is none.

    A compromised ``_apt`` controls ``got``: a symlink or a hard link there must not make root touch
    the inode it points to, so the file is opened without following links and must be a regular
    file with one link; its bytes go into a file root creates itself (the chain checks them later).
    """
    try:
        src = os.open(got, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        why = "a symlink" if exc.errno == errno.ELOOP else exc.strerror
        raise ChainError(ChainReason.DEB_UNAVAILABLE, f"{got}: apt's download is {why}, not a .deb") from exc
    final = dest_dir / got.name
    try:
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            kind = "a hard link" if stat.S_ISREG(st.st_mode) else "not a regular file"
            raise ChainError(ChainReason.DEB_UNAVAILABLE, f"{got}: apt's download is {kind}, not a .deb")
        if st.st_size > max_size:
            raise ChainError(ChainReason.DEB_UNAVAILABLE, f"{got}: apt's download is larger than {max_size} bytes")
        dst, tmp = tempfile.mkstemp(prefix=f".{got.name}.", dir=dest_dir)  # O_EXCL, mode 0600, owned by root
        try:
            os.fchmod(dst, 0o644)
            copied = 0
            while chunk := os.read(src, _CHUNK):
                copied += len(chunk)
                if copied > max_size:
                    raise ChainError(ChainReason.DEB_UNAVAILABLE, f"{got}: grew past {max_size} bytes while copied")
                view = memoryview(chunk)
                while view:
                    view = view[os.write(dst, view) :]
            os.fsync(dst)
            Path(tmp).replace(final)
        except BaseException:
            with contextlib.suppress(OSError):
                Path(tmp).unlink()
            raise
        finally:
            os.close(dst)
    except OSError as exc:  # the state directory's trouble: this .deb is unavailable, the run goes on
        raise ChainError(ChainReason.DEB_UNAVAILABLE, f"{final}: cannot copy apt's download: {exc.strerror}") from exc
    finally:
        os.close(src)
    return final


def open_deb(path: Path) -> int | None:
    """An fd on a .deb, or None when there is no such file."""
    try:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return None
        raise HostStateError(f"{path}: cannot open: {exc.strerror}", errno=exc.errno, path=str(path)) from exc
