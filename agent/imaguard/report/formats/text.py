"""The report for a person at a terminal (pure): the summary first, then what needs a look.

What needs a look is everything not traced to a package: processes and measured files that are
``modified`` or ``unknown``, processes ``not-measured`` or ``untraced`` (among them every one whose
file was replaced since it started or is not the file at its path), processes whose package match
rests only on weak evidence (``local-db``: dpkg's unsigned MD5 sums), signatures that did not
verify. Then every process with the package and source version it runs from, and the evidence when
it is not ``repo-verified`` or ``vendor-signed``. The JSON report stays the record; this
view drops the digests and PCR inputs a person does not read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imaguard.report.model import EntryClass, ProcessClass, SignatureStatus
from imaguard.shown import one_line, shown_path

if TYPE_CHECKING:
    from imaguard.report.model import MappingReport, PackageRef, Report

__all__ = ["render_text"]

# Signature states that say something is wrong (not-recorded/unsigned say what the template or
# the file had, which the counts line shows).
_BAD_SIGNATURES = (SignatureStatus.LOGGED_KEY, SignatureStatus.UNKNOWN_KEY, SignatureStatus.BAD_SIGNATURE,
                   SignatureStatus.MALFORMED)  # fmt: skip


# Evidence that a repository signature or the vendor's own file signature backs (DESIGN.md 1.2).
_STRONG = ("repo-verified", "vendor-signed")


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "none"


def _package(p: PackageRef) -> str:
    source = f" (source {p.source_name} {p.source_version})" if p.source_name else ""
    return f"{p.name}={p.version}/{p.arch}{source}"


def _weak_evidence(m: MappingReport) -> str:
    """The evidence of a package match that no repository or vendor signature backs, else ''."""
    if m.klass is not ProcessClass.PACKAGE or not m.packages or any(p.evidence in _STRONG for p in m.packages):
        return ""
    return m.packages[0].evidence


def _mapping_note(m: MappingReport) -> str:
    if weak := _weak_evidence(m):
        return f"{_package(m.packages[0])}, evidence {weak} only"
    if m.klass is ProcessClass.MODIFIED and m.packages:
        return f"path of {', '.join(_package(p) for p in m.packages)}, other content"
    if m.reason:
        return m.reason
    return "deleted after it was mapped" if m.deleted else ""


def render_text(report: Report) -> str:
    host, log = report.host, report.log
    counts = report.counts()
    lines = [
        f"host        {host.hostname}  kernel {host.kernel_release}  boot {host.boot_id or '?'}",
        f"ima policy  {host.ima_policy_state}"
        + (f" (sha256 {host.ima_policy_sha256})" if host.ima_policy_sha256 else ""),
        "ima keys    " + (", ".join(f"{ring} {kid or '?'} ({desc})" for ring, desc, kid in host.ima_keys) or "none"),
        f"log         {log.source}: {log.entries} entries, {log.violations} violations"
        + (f", truncated at byte {log.truncated_at}" if log.truncated_at is not None else "")
        + f"; templates {', '.join(f'{n} {c}' for n, c in log.templates) or 'none'}",
        "replay      PCR 10 " + ", ".join(f"{bank} {value}" for bank, value in log.pcr10),
        f"quote       {'TPM quote over PCR 10 for nonce ' + report.quote.nonce if report.quote else 'none'}",
        f"entries     {_counts(counts['entries'])}",
        f"signatures  {_counts(counts['signatures'])}",
        f"processes   {_counts(counts['processes'])}",
    ]
    odd_procs = [p for p in report.processes
                 if p.klass is not ProcessClass.PACKAGE or p.error or _weak_evidence(p.exe)]  # fmt: skip
    odd_maps = [(p, m) for p in report.processes for m in p.mappings
                if m.klass is not ProcessClass.PACKAGE or _weak_evidence(m)]  # fmt: skip
    if odd_procs or odd_maps:
        lines += ["", "Processes not traced to a package, or only by weak evidence (class, pid, name, file, why):"]
        for p in odd_procs:
            why = p.error or _mapping_note(p.exe)
            exe = shown_path(p.exe.path) or "?"  # the executable could not be read: ``error`` says why
            lines.append(f"  {p.klass!s:12} {p.pid:>7}  {shown_path(p.name):15} {exe}  {why}".rstrip())
        for p, m in odd_maps:
            lines.append(f"  {m.klass!s:12} {p.pid:>7}  {shown_path(p.name):15} {shown_path(m.path)} (mapped)  "
                         f"{_mapping_note(m)}".rstrip())  # fmt: skip
    odd_entries = [e for e in report.entries if e.klass in (EntryClass.MODIFIED, EntryClass.UNKNOWN)
                   or e.signature in _BAD_SIGNATURES]  # fmt: skip
    if odd_entries:
        lines += ["", "Measured files not traced to a package, or with a bad signature (class, entry, path):"]
        for e in odd_entries:
            sig = f"  signature {e.signature}" if e.signature in _BAD_SIGNATURES else ""
            owner = f"  path of {', '.join(_package(p) for p in e.packages)}" if e.klass is EntryClass.MODIFIED else ""
            lines.append(f"  {e.klass!s:12} #{e.index:<6} {shown_path(e.path)}{owner}{sig}")
    if report.processes:
        lines += ["", "Processes (pid, name, class, package of the executable):"]
        for p in report.processes:
            pkg = _package(p.exe.packages[0]) if p.klass is ProcessClass.PACKAGE and p.exe.packages else ""
            if weak := _weak_evidence(p.exe):
                pkg += f"  evidence {weak}"
            lines.append(f"  {p.pid:>7}  {shown_path(p.name):15} {p.klass!s:12} {pkg}".rstrip())
    # Names, subjects and details come from processes, the log and certificates: one line each.
    return "\n".join(one_line(line) for line in lines) + "\n"
