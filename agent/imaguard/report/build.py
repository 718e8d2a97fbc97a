"""Join a replayed measurement log, the digest index and the running processes into a Report (pure).

Only a :class:`imaguard.ima.replay.ReplayedLog` becomes a report (STYLE.md 2): a parsed log that
was never replayed has no PCR 10 to vouch for it. Lookups into the digest index go through the
:class:`PackageLookup` protocol, so this module does no I/O; ``report/source.py`` opens the index.

Classification (issue 7 item 3):
- an entry whose digest is a trusted digest of some package file is ``package`` (all such files
  are listed, the one at the measured path first);
- otherwise, if a package owns the measured path (also under its other merged-/usr name), it is
  ``modified``; else ``unknown``;
- a process (and each executable mapping) takes the class of the *last* log entry for its path
  (IMA measures a file again after it changed); absent from the log it is ``not-measured`` with
  the likely reason. Only when the running file is the file at that path: one deleted or replaced
  since, or another file than the path names in the reporter's namespace, is ``untraced``.
- The log names files by path in the measuring process's mount namespace, so one path may be
  logged with several contents (an upgrade, a container's own ``/usr/bin/python3``). Then the
  last entry is not evidence for the running file: it is hashed (``digest_here``, the I/O side's)
  and traced to the last entry with its digest, or ``untraced`` (``running-digest-not-logged``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from imaguard.errors import ImaguardError, TrustError
from imaguard.ima.replay import ReplayedLog
from imaguard.ima.templates import ByteOrder
from imaguard.ima.xattr import ImaSignature, parse_xattr
from imaguard.keys.material import Certificate, parse_certificate
from imaguard.keys.signer import Verifier
from imaguard.report.model import (
    EntryClass,
    EntryReport,
    HostFacts,
    LogSummary,
    MappingReport,
    PackageRef,
    ProcessClass,
    ProcessReport,
    QuoteReport,
    Report,
    SignatureStatus,
)
from imaguard.report.paths import usr_aliases

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from imaguard.ima.logstream import Entry
    from imaguard.packages.index import IndexEntry
    from imaguard.report.facts import DigestHere, FileId, ProcessInfo

__all__ = [
    "KEY_STATUSES",
    "LogItem",
    "PackageLookup",
    "build_report",
    "extended_of",
    "log_item",
    "log_items",
    "signature_form",
    "structural_class",
    "summarize",
    "usr_aliases",
]

class PackageLookup(Protocol):
    def lookup_full(self, digest: bytes) -> list[IndexEntry]: ...

    def lookup_path(self, path: bytes) -> list[IndexEntry]: ...


@dataclass(frozen=True, slots=True)
class LogItem:
    """What the report needs of one log entry, independent of the parser's own types."""

    index: int
    pcr: int
    template: str
    path: bytes
    algo: str  # the file-data hash algorithm name ("sha256"), "" when the template carries none
    digest: bytes
    sig: bytes | None  # None: the template has no sig field; b"": the field is empty
    buf: bytes | None
    violation: bool
    extended: tuple[bytes, bytes]  # (sha1, sha256) extended into PCR 10 for this entry
    template_data: bytes

    @property
    def digest_text(self) -> str:
        """The report's ``digest``: ``algo:hex``, or bare hex when the template names no algorithm."""
        return f"{self.algo}:{self.digest.hex()}" if self.algo else self.digest.hex()


def extended_of(hashed: bytes, violation: bool) -> tuple[bytes, bytes]:
    """What the kernel extends into PCR 10 (sha1, sha256) for an entry whose template hash covers
    ``hashed``: the hash of it in each bank ("type 2" extend), all-ones for a violation."""
    if violation:
        return b"\xff" * 20, b"\xff" * 32
    return hashlib.sha1(hashed).digest(), hashlib.sha256(hashed).digest()  # noqa: S324 - the PCR bank's hash


def log_item(n: int, e: Entry) -> LogItem:
    """The report's view of one entry (also what ``report verify`` rebuilds from template data)."""
    d = e.digest
    violation = e.is_violation
    return LogItem(
        index=n, pcr=e.pcr, template=e.template_name, path=e.path,
        algo=d.algo_name if d is not None else "", digest=d.digest if d is not None else b"",
        sig=e.field("sig"), buf=e.field("buf"), violation=violation,
        extended=extended_of(e.hashed_data(), violation), template_data=e.template_data,
    )  # fmt: skip


def log_items(replayed: ReplayedLog) -> list[LogItem]:
    """The report's view of each entry of a replayed log (which must have kept its entries)."""
    if replayed.entries is None:
        raise ValueError("replay the log with keep_entries=True to build a report")
    return [log_item(n, e) for n, e in enumerate(replayed.entries)]


def _ref(e: IndexEntry) -> PackageRef:
    return PackageRef(e.name, e.version, e.arch, e.source_name, e.source_version, e.path,
                      f"{e.algo.kernel_name}:{e.digest.hex()}", str(e.evidence))  # fmt: skip


def structural_class(item: LogItem) -> EntryClass | None:
    """The class the entry itself decides (violation, boot aggregate, buffer); None for a file
    measurement, whose class (package, modified, unknown) comes from the package index."""
    if item.violation:
        return EntryClass.VIOLATION
    if item.index == 0 and item.path == b"boot_aggregate":
        return EntryClass.BOOT_AGGREGATE
    if item.buf is not None:
        return EntryClass.BUFFER
    return None


class _Classifier:
    def __init__(self, lookup: PackageLookup) -> None:
        self.lookup = lookup
        self._owners: dict[bytes, tuple[PackageRef, ...]] = {}
        self._digests: dict[tuple[str, bytes], tuple[PackageRef, ...]] = {}

    def owners(self, path: bytes) -> tuple[PackageRef, ...]:
        found = self._owners.get(path)
        if found is None:
            found = tuple(_ref(e) for alias in usr_aliases(path) for e in self.lookup.lookup_path(alias))
            self._owners[path] = found
        return found

    def by_digest(self, algo: str, digest: bytes, path: bytes) -> tuple[PackageRef, ...]:
        key = (algo, digest)
        hits = self._digests.get(key)
        if hits is None:
            hits = tuple(_ref(e) for e in self.lookup.lookup_full(digest) if e.algo.kernel_name == algo)
            self._digests[key] = hits
        names = set(usr_aliases(path))
        return tuple(sorted(hits, key=lambda r: r.path not in names))

    def classify(self, item: LogItem) -> tuple[EntryClass, tuple[PackageRef, ...]]:
        klass = structural_class(item)
        if klass is not None:
            return klass, ()
        hits = self.by_digest(item.algo, item.digest, item.path)
        if hits:
            return EntryClass.PACKAGE, hits
        owners = self.owners(item.path)
        if owners:
            return EntryClass.MODIFIED, owners
        return EntryClass.UNKNOWN, ()


# Statuses that depend on the certificates the reporter had, not on the log entry alone.
KEY_STATUSES = frozenset({SignatureStatus.VERIFIED, SignatureStatus.LOGGED_KEY, SignatureStatus.UNKNOWN_KEY,
                          SignatureStatus.BAD_SIGNATURE})  # fmt: skip


def signature_form(item: LogItem) -> tuple[SignatureStatus | None, str | None, str, ImaSignature | None]:
    """What the ``sig`` field alone says: (status, key id, detail, None) when that decides the
    status; (None, key id, "", signature) when only checking the signature with a key can."""
    if item.sig is None:
        return SignatureStatus.NOT_RECORDED, None, "", None
    if not item.sig:
        return SignatureStatus.UNSIGNED, None, "", None
    try:
        value = parse_xattr(item.sig)
    except ImaguardError as exc:
        return SignatureStatus.MALFORMED, None, str(exc), None
    if not isinstance(value, ImaSignature):
        return SignatureStatus.UNSUPPORTED_FORM, None, f"security.ima form {value.form}", None
    if value.algo.kernel_name != item.algo:
        return (SignatureStatus.UNSUPPORTED_FORM, value.keyid_hex,
                f"signed over {value.algo.kernel_name}, the log has {item.algo or 'no'} digest", None)  # fmt: skip
    return None, value.keyid_hex, "", value


def _signature(item: LogItem, trusted: Verifier, logged: Verifier) -> tuple[SignatureStatus, str | None, str]:
    """``verified`` only with a certificate the operator gave; ``logged-key`` when only a
    certificate found in the log verifies it (the log shows that a key was loaded into *some*
    keyring of that name, not that the kernel trusts it)."""
    status, key_id, detail, value = signature_form(item)
    if status is not None or value is None:
        return status or SignatureStatus.MALFORMED, key_id, detail
    try:
        cert = trusted.verify_digest(value.keyid, value.algo, item.digest, value.signature)
    except TrustError as exc:
        try:
            cert = logged.verify_digest(value.keyid, value.algo, item.digest, value.signature)
        except TrustError as logged_exc:
            unknown = exc.reason == "unknown-key" and logged_exc.reason == "unknown-key"
            status = SignatureStatus.UNKNOWN_KEY if unknown else SignatureStatus.BAD_SIGNATURE
            return status, key_id, str(logged_exc if exc.reason == "unknown-key" else exc)
        return (SignatureStatus.LOGGED_KEY, key_id,
                f"{cert.subject}: a certificate only the log shows, not one given as trusted")  # fmt: skip
    return SignatureStatus.VERIFIED, key_id, cert.subject


def _logged_certificates(items: Sequence[LogItem]) -> list[Certificate]:
    """Certificates the kernel measured when they were loaded into a keyring (KEY_CHECK, ima-buf)."""
    found: list[Certificate] = []
    for item in items:
        if item.buf and item.template == "ima-buf" and item.buf[:1] == b"\x30":
            try:
                found.append(parse_certificate(item.buf, f"log entry {item.index} ({item.path!r})"))
            except ImaguardError:
                continue  # not a certificate (critical data), or a key unfit for IMA
    return found


def _not_measured_reason(proc_start: float, first_measured_start: float | None, file_entries: int) -> str:
    if file_entries == 0:
        return "no-file-measurements"
    if first_measured_start is not None and proc_start < first_measured_start:
        return "started-before-policy"
    return "not-measured-by-policy"


# How the kernel names a memfd's file (mm/memfd.c memfd_create: "memfd:" + name, d_path adds "/"
# and " (deleted)": it was never linked).
_MEMFD = b"/memfd:"


def _file_algo(item: LogItem) -> str:
    """The algorithm that gives the entry's file digest ("ima" names none: SHA-1, or MD5 if 16 bytes)."""
    return item.algo or ("md5" if len(item.digest) == 16 else "sha1")


@dataclass(frozen=True, slots=True)
class _Tracer:
    """Traces a running file to the last log entry for its path — or, where the log holds several
    contents for that path (an upgrade; another mount namespace's file logged under the same path),
    to the last entry whose digest is the running file's, which only hashing it can tell."""

    last: dict[bytes, int]
    entries: Sequence[EntryReport]
    clf: _Classifier
    by_digest: dict[bytes, dict[tuple[str, bytes], int]]  # for paths logged with several contents
    digest_here: DigestHere | None

    def mapping(
        self, path: bytes, deleted: bool, same_file: bool | None, reason: str, file_id: FileId | None = None
    ) -> MappingReport:
        idx = self.last.get(path)
        if deleted and path.startswith(_MEMFD):
            # Fileless: memfd_create()'s name, which the process chose; no path names it, so neither
            # the log's entries for that name nor any package can be this file.
            return MappingReport(path, ProcessClass.UNTRACED, None, "memfd")
        if deleted:
            # The path now names another file (or none): its log entries may be of that one.
            klass = ProcessClass.NOT_MEASURED if idx is None else ProcessClass.UNTRACED
            return MappingReport(path, klass, None, "file-replaced-since-start", self.clf.owners(path), deleted)
        if same_file is False:
            # Another mount namespace, a bind mount, a chroot: our package index and the log's
            # entries for this path are about the file the path names here, not the one running.
            return MappingReport(path, ProcessClass.UNTRACED, None, "running-file-not-at-path")
        if same_file is None:
            return MappingReport(path, ProcessClass.UNTRACED, None, "running-file-unchecked")
        if idx is None:
            return MappingReport(path, ProcessClass.NOT_MEASURED, None, reason, self.clf.owners(path), deleted)
        contents = self.by_digest.get(path)
        if contents is not None:
            found = self._by_content(path, file_id, contents)
            if found is None:
                # Logged under this path, but not with what runs (or not hashable now): the last
                # entry may be another file's, so no entry is this file's evidence.
                return MappingReport(path, ProcessClass.UNTRACED, None, "running-digest-not-logged")
            idx = found
        entry = self.entries[idx]
        return MappingReport(path, ProcessClass(str(entry.klass)), entry.index, "", entry.packages, deleted)

    def _by_content(self, path: bytes, file_id: FileId | None, contents: dict[tuple[str, bytes], int]) -> int | None:
        if file_id is None or self.digest_here is None:
            return None
        best: int | None = None
        for algo in {a for a, _ in contents}:
            digest = self.digest_here(path, file_id, algo)
            pos = contents.get((algo, digest)) if digest is not None else None
            if pos is not None and (best is None or pos > best):
                best = pos
        return best


def summarize(replayed: ReplayedLog, source: str, byteorder: ByteOrder = "little") -> LogSummary:
    boot = replayed.boot_aggregate
    boot_digest = boot.digest if boot is not None else None
    return LogSummary(
        source=source, entries=replayed.count, violations=replayed.violations,
        templates=tuple(sorted(replayed.templates.items())),
        pcr10=tuple((bank, replayed.pcr(10, bank).hex()) for bank in ("sha1", "sha256") if bank in replayed.pcrs),
        truncated_at=replayed.truncated.offset if replayed.truncated is not None else None,
        boot_aggregate=str(boot_digest) if boot_digest is not None else None, byteorder=byteorder,
    )  # fmt: skip


def build_report(
    replayed: ReplayedLog,
    *,
    source: str,
    lookup: PackageLookup,
    processes: Iterable[ProcessInfo],
    host: HostFacts,
    generator: str,
    created: str,
    certificates: Sequence[Certificate] = (),
    nonce: str | None = None,
    quote: QuoteReport | None = None,
    byteorder: ByteOrder = "little",
    digest_here: DigestHere | None = None,
) -> Report:
    """The report of ``replayed`` (read from ``source``, whose length fields are ``byteorder``) on this host.

    ``certificates`` are the ones the operator trusts: only they make a signature ``verified``.
    """
    if not isinstance(replayed, ReplayedLog):
        raise TypeError("build_report needs a ReplayedLog: replay the parsed log first")
    items = log_items(replayed)
    trusted = Verifier.of(certificates)
    logged = Verifier.of(_logged_certificates(items))
    clf = _Classifier(lookup)
    entries: list[EntryReport] = []
    last: dict[bytes, int] = {}
    contents: dict[bytes, dict[tuple[str, bytes], int]] = {}
    for pos, item in enumerate(items):
        klass, refs = clf.classify(item)
        status, key_id, detail = _signature(item, trusted, logged)
        entries.append(EntryReport(item.index, item.pcr, item.template, item.path, item.digest_text, klass,
                                   item.extended, item.template_data, refs, status, key_id, detail))  # fmt: skip
        if klass in (EntryClass.PACKAGE, EntryClass.MODIFIED, EntryClass.UNKNOWN):
            last[item.path] = pos
            contents.setdefault(item.path, {})[(_file_algo(item), item.digest)] = pos
    several = {path: found for path, found in contents.items() if len({d for _, d in found}) > 1}
    # Kernel threads have no executable and no error; a process whose executable could not be read
    # stays in the report (could not check is a value), untraced with its error.
    procs = [p for p in processes if p.exe is not None or p.error]
    measured_starts = [p.start_time for p in procs if p.exe in last and p.exe_same_file and not p.exe_deleted]
    first = min(measured_starts) if measured_starts else None
    reports: list[ProcessReport] = []
    tracer = _Tracer(last, entries, clf, several, digest_here)
    for p in procs:
        if p.exe is None:
            unread = MappingReport(b"", ProcessClass.UNTRACED, None, "executable-unreadable")
            reports.append(ProcessReport(p.pid, p.name, p.start_time, unread, (), p.error))
            continue
        reason = _not_measured_reason(p.start_time, first, len(last))
        exe = tracer.mapping(p.exe, p.exe_deleted, p.exe_same_file, reason, p.exe_file_id)
        maps = tuple(tracer.mapping(m.path, m.deleted, m.same_file, reason, m.file_id)
                     for m in p.mappings if m.path != p.exe)  # fmt: skip
        reports.append(ProcessReport(p.pid, p.name, p.start_time, exe, maps, p.error))
    return Report(generator, created, nonce, host, summarize(replayed, source, byteorder), tuple(entries),
                  tuple(reports), quote)  # fmt: skip
