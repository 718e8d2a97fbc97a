"""The digest index: trusted digest → the package files that carry it (SQLite in the state dir).

Reports and the daemon answer "which package is this?" with one indexed lookup. Each package is
replaced in its own transaction (delete, insert), so a crash mid-update leaves every package
either at its old or its new state, never half of each.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from imaguard.digests import HashAlgo
from imaguard.errors import HostStateError, UsageError
from imaguard.fsio import check_private_directory, ensure_private_directory
from imaguard.packages.model import Evidence

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from imaguard.packages.model import InstalledPackage, PackageFile, PackageSource

__all__ = ["INDEX_NAME", "DigestIndex", "IndexEntry"]

INDEX_NAME = "index.sqlite"
# 2: a package is (name, version, arch): RPM installs some packages side by side in several versions
# ("install-only": kernels and their modules), and each version's files are genuine.
_SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE packages (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL, version TEXT NOT NULL, arch TEXT NOT NULL,
    source_name TEXT NOT NULL, source_version TEXT NOT NULL, origin TEXT NOT NULL,
    UNIQUE (name, version, arch)
);
CREATE TABLE files (
    package_id INTEGER NOT NULL REFERENCES packages(id) ON DELETE CASCADE,
    path BLOB NOT NULL,
    digest BLOB NOT NULL,
    algo INTEGER NOT NULL,
    evidence TEXT NOT NULL
);
CREATE INDEX files_digest ON files (digest);
CREATE INDEX files_package ON files (package_id);
CREATE INDEX files_path ON files (path);
"""


@dataclass(frozen=True, slots=True)
class IndexEntry:
    name: str
    version: str
    arch: str
    path: bytes
    algo: HashAlgo
    evidence: Evidence
    source_name: str = ""
    source_version: str = ""
    digest: bytes = b""


_ENTRY_SQL = (
    "SELECT p.name, p.version, p.arch, f.path, f.algo, f.evidence, p.source_name, p.source_version, f.digest "
    "FROM files f JOIN packages p ON p.id = f.package_id "
)


def _entry(r: tuple[str, str, str, bytes, int, str, str, str, bytes]) -> IndexEntry:
    return IndexEntry(r[0], r[1], r[2], bytes(r[3]), HashAlgo(r[4]), Evidence(r[5]), r[6], r[7], bytes(r[8]))


def _create(state_dir: Path, path: Path) -> None:
    """Make an empty index at ``path``: built under a temporary name and linked into place, so that
    ``path`` is an imaguard index from its first byte (a file there that is not one is someone
    else's) and a concurrent builder's index is never replaced. ``state_dir`` exists, checked."""
    fd, tmp = tempfile.mkstemp(prefix=f".{INDEX_NAME}.", dir=state_dir)
    try:
        os.fchmod(fd, 0o644)  # as SQLite creates files: package digests are no secret
        db = sqlite3.connect(tmp, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the file
            db.executescript("BEGIN IMMEDIATE;" + _SCHEMA)  # one transaction: tables and marker, or nothing
            db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(_SCHEMA_VERSION),))
            db.execute("COMMIT")
        finally:
            db.close()  # the last connection checkpoints into the file and removes the -wal file
        os.fsync(fd)
        with contextlib.suppress(FileExistsError):  # another builder was first: use its index
            os.link(tmp, path)
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
    dfd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _foreign(path: Path, why: str) -> UsageError:
    return UsageError(f"{path}: not an imaguard digest index ({why}); move it away and build one with "
                      "`imaguard packages index`", reason="not-an-index")


def _check(db: sqlite3.Connection, path: Path) -> None:
    """Refuse, before anything is written, a file that is not an imaguard index of this schema."""
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        if exc.sqlite_errorcode == sqlite3.SQLITE_NOTADB:
            raise _foreign(path, "not an SQLite database") from exc
        raise
    if not tables:
        raise _foreign(path, "an empty database")
    try:
        row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
    except sqlite3.OperationalError:  # no meta table, or one of another layout
        row = None
    if row is None:
        raise _foreign(path, "no schema marker")
    if row[0] != str(_SCHEMA_VERSION):
        raise HostStateError(f"{path}: index schema {row[0]}, expected {_SCHEMA_VERSION}; remove it to rebuild",
                             reason="index-schema", path=str(path))
    missing = sorted({"packages", "files"} - tables)
    if missing:
        raise _foreign(path, f"no {missing[0]} table")


class DigestIndex:
    """An open index; use as a context manager. Only files with a digest are indexed."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self.path = path

    @classmethod
    def open(cls, state_dir: Path, *, read_only: bool = False) -> DigestIndex:
        """Open the index in ``state_dir``.

        ``read_only`` (every reader: reports, ``packages owner``): the index must exist and is never
        written; without it (the builder) a missing index is created, whole or not at all. Either
        way an existing file is used only if it is an imaguard index: another program's database,
        or an empty one, is refused and left as it is.

        The index feeds reports and exports, so ``state_dir`` must be writable by root only
        (HostStateError ``unsafe-state-dir``, before any file in it is read); the builder makes a
        missing one (0700, parents 0755) and checks it then.
        """
        path = state_dir / INDEX_NAME
        try:
            if read_only:
                if state_dir.is_dir():  # a missing one holds no index: said below
                    check_private_directory(state_dir)
                if not path.is_file():
                    raise UsageError(f"{path}: no digest index; build it with `imaguard packages index`",
                                     reason="no-index")
                db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
            else:
                ensure_private_directory(state_dir)
                if not path.exists():
                    _create(state_dir, path)
                db = sqlite3.connect(path, isolation_level=None)
            try:
                _check(db, path)
                db.execute("PRAGMA foreign_keys=ON")
                if not read_only:
                    db.execute("PRAGMA synchronous=NORMAL")
            except BaseException:
                db.close()
                raise
        except (OSError, sqlite3.Error) as exc:
            raise HostStateError(f"{path}: cannot open the digest index: {exc}", reason="index-error",
                                 path=str(path)) from exc
        return cls(db, path)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> DigestIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def replace_package(self, pkg: InstalledPackage, files: Iterable[PackageFile]) -> int:
        """Atomically replace everything indexed for ``pkg`` (same name, version and arch); returns rows
        written. Other versions stay: ``build`` drops those no longer installed."""
        n = 0
        with self._transaction() as db:
            db.execute("DELETE FROM packages WHERE name=? AND version=? AND arch=?",
                       (pkg.name, pkg.version, pkg.architecture))  # fmt: skip
            cur = db.execute(
                "INSERT INTO packages (name, version, arch, source_name, source_version, origin) VALUES (?,?,?,?,?,?)",
                (pkg.name, pkg.version, pkg.architecture, pkg.source_name, pkg.source_version, pkg.origin),
            )
            pid = cur.lastrowid
            rows = (
                (pid, f.path, f.digest, int(f.digest_algo), str(f.evidence))
                for f in files
                if f.digest is not None and f.digest_algo is not None
            )
            for row in rows:
                db.execute("INSERT INTO files VALUES (?,?,?,?,?)", row)
                n += 1
        return n

    def remove_package(self, name: str, version: str, arch: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM packages WHERE name=? AND version=? AND arch=?", (name, version, arch))

    def build(
        self, source: PackageSource, progress: Callable[[InstalledPackage], None] | None = None
    ) -> tuple[int, int]:
        """One pass over every installed package; packages no longer installed are dropped."""
        seen: set[tuple[str, str, str]] = set()
        files = 0
        for pkg in source.packages():
            files += self.replace_package(pkg, source.files(pkg))
            seen.add((pkg.name, pkg.version, pkg.architecture))
            if progress is not None:
                progress(pkg)
        stale = [r for r in self._db.execute("SELECT name, version, arch FROM packages") if tuple(r) not in seen]
        for name, version, arch in stale:
            self.remove_package(name, version, arch)
        return len(seen), files

    def lookup(self, digest: bytes) -> list[IndexEntry]:
        """Every package file whose trusted digest is ``digest`` (one indexed query)."""
        rows = self._db.execute(
            "SELECT p.name, p.version, p.arch, f.path, f.algo, f.evidence FROM files f "
            "JOIN packages p ON p.id = f.package_id WHERE f.digest = ? ORDER BY p.name, f.path",
            (digest,),
        )
        return [IndexEntry(r[0], r[1], r[2], bytes(r[3]), HashAlgo(r[4]), Evidence(r[5])) for r in rows]

    def lookup_full(self, digest: bytes) -> list[IndexEntry]:
        """Like :meth:`lookup`, with source package and digest filled in (reports need them)."""
        rows = self._db.execute(_ENTRY_SQL + "WHERE f.digest = ? ORDER BY p.name, f.path", (digest,))
        return [_entry(r) for r in rows]

    def lookup_path(self, path: bytes) -> list[IndexEntry]:
        """Every package file indexed at ``path`` (one indexed query): who owns this path."""
        rows = self._db.execute(_ENTRY_SQL + "WHERE f.path = ? ORDER BY p.name", (path,))
        return [_entry(r) for r in rows]

    def iter_files(self) -> Iterator[IndexEntry]:
        """Every indexed package file, by path (exports such as a Keylime runtime policy)."""
        for r in self._db.execute(_ENTRY_SQL + "ORDER BY f.path"):
            yield _entry(r)

    def iter_digests(self, algo: HashAlgo) -> Iterator[tuple[bytes, bytes]]:
        """(path, digest) of every file indexed with ``algo``; plain tuples, for exports of 100,000 rows."""
        yield from self._db.execute("SELECT path, digest FROM files WHERE algo = ?", (int(algo),))

    def has_files_under(self, directory: bytes) -> bool:
        """Whether any indexed path lies under ``directory`` (a range scan of the path index)."""
        lo = directory.rstrip(b"/") + b"/"
        hi = lo[:-1] + b"0"  # the byte after "/": every path with the prefix sorts in [lo, hi)
        row = self._db.execute("SELECT 1 FROM files WHERE path >= ? AND path < ? LIMIT 1", (lo, hi)).fetchone()
        return row is not None

    def evidence_counts(self) -> dict[str, int]:
        """Indexed files by evidence level: how many digests can vouch for a file (repo-verified,
        vendor-signed) and how many are dpkg's MD5 hints (local-db)."""
        rows = self._db.execute("SELECT evidence, count(*) FROM files GROUP BY evidence ORDER BY evidence")
        return {str(evidence): int(n) for evidence, n in rows}

    def counts(self) -> tuple[int, int]:
        packages = self._db.execute("SELECT count(*) FROM packages").fetchone()[0]
        files = self._db.execute("SELECT count(*) FROM files").fetchone()[0]
        return int(packages), int(files)
