"""Replay a measurement list into PCR values (pure), and compare them with a TPM's.

The kernel extends each bank of the entry's PCR with the template digest for that bank
(``ima_pcr_extend`` with the per-bank digests of ``ima_calc_field_array_hash``, Linux 5.11+:
"Type 2" in the IMA docs): sha1 gets the logged sha1 template digest, every other bank the
bank's hash of the same template data. Violations are logged with a zero digest but extended
with all-0xff of the bank size. PCRs start at zero.

A ``ReplayedLog`` is only made here: it is the one log type a report may be built from.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from typing import TYPE_CHECKING

from imaguard.errors import FormatError
from imaguard.ima.measurements import (
    BANK_DIGEST_SIZES,
    MAX_TEMPLATE_DATA,
    Checks,
    Entry,
    LogReader,
    LogStream,
    Record,
    Truncated,
    scan_binary,
)
from imaguard.ima.templates import ByteOrder, Template

__all__ = ["PcrMismatch", "ReplayedLog", "compare", "replay", "replay_binary"]

BOOT_AGGREGATE = b"boot_aggregate"


@dataclass(frozen=True, slots=True)
class PcrMismatch:
    """A PCR whose replayed value differs from the TPM's (or that the TPM did not report)."""

    bank: str
    pcr: int
    replayed: bytes
    tpm: bytes | None

    def __str__(self) -> str:
        tpm = self.tpm.hex() if self.tpm is not None else "not read"
        return f"PCR {self.pcr} {self.bank}: log replays to {self.replayed.hex()}, TPM has {tpm}"


@dataclass(frozen=True, slots=True)
class ReplayedLog:
    """A measurement list replayed into PCR values: what a report is built from.

    ``pcrs[bank][index]`` holds the replayed value of every PCR the log extended (and PCR 10
    even when the log is empty). ``entries`` is None when the caller did not keep them (a
    bounded-memory summary). ``end`` is the log offset after the last whole record;
    ``truncated`` is set when the input stopped inside a record (a growing log).
    """

    pcrs: Mapping[str, Mapping[int, bytes]]
    count: int
    violations: int
    boot_aggregate: Entry | None
    entries: tuple[Entry, ...] | None
    end: int = 0
    truncated: Truncated | None = None
    templates: Mapping[str, int] = field(default_factory=dict)
    # For each bank given in ``expect``: after how many leading entries PCR 10 equalled the expected
    # (TPM) value. A list read after the PCR may have grown: the TPM then vouches for that prefix.
    matched: Mapping[str, int] = field(default_factory=dict)

    @property
    def banks(self) -> tuple[str, ...]:
        return tuple(self.pcrs)

    def pcr(self, index: int = 10, bank: str = "sha256") -> bytes:
        """The replayed value; a PCR the log never extended is all zero."""
        return self.pcrs[bank].get(index, bytes(BANK_DIGEST_SIZES[bank]))


def _bank_fn(bank: str) -> tuple[int, Callable[[bytes], hashlib._Hash]]:
    size = BANK_DIGEST_SIZES.get(bank)
    if size is None or bank not in hashlib.algorithms_available:
        raise FormatError(f"cannot replay the {bank!r} bank", reason="unsupported-algo")
    fn: Callable[[bytes], hashlib._Hash] = getattr(hashlib, bank, None) or (lambda b: hashlib.new(bank, b))
    return size, fn


class _Replay:
    """PCR state and counts while entries or records are fed in: the one extend rule of both paths."""

    def __init__(self, banks: tuple[str, ...], expect: Mapping[str, bytes] | None = None) -> None:
        if not banks:
            raise FormatError("no PCR bank to replay")
        self.state: dict[str, dict[int, bytes]] = {}
        # Per bank: its PCRs, hash, all-zero start, all-ones violation value, whether it is sha1
        # (whose logged, parser-checked template digest is used as is; other banks hash the data).
        self.setup: list[_Bank] = []
        for bank in banks:
            size, fn = _bank_fn(bank)
            self.state[bank] = {10: bytes(size)}
            self.setup.append((self.state[bank], fn, bytes(size), b"\xff" * size, bank == "sha1"))
        self.zeros = {n: bytes(n) for n in BANK_DIGEST_SIZES.values()}
        self.templates: dict[str, int] = {}
        self.count = self.violations = 0
        self.boot: Entry | None = None

        # The default banks, unrolled: extend runs once per entry of lists of 100,000s.
        self.extend: Callable[[int, bytes, Template, bytes], None] = (
            self._extend_sha1_sha256 if banks == ("sha1", "sha256") else self._extend_any
        )
        self.matched: dict[str, int] = {}
        self.expect = {bank: value for bank, value in (expect or {}).items() if bank in self.state}
        if self.expect:
            self._match(10)
            self.extend = self._watched(self.extend)

    def _match(self, pcr: int) -> None:
        for bank, value in self.expect.items():
            if self.state[bank].get(pcr) == value:
                self.matched[bank] = self.count

    def _watched(
        self, extend: Callable[[int, bytes, Template, bytes], None]
    ) -> Callable[[int, bytes, Template, bytes], None]:
        def watched(pcr: int, td: bytes, template: Template, hashed: bytes) -> None:
            extend(pcr, td, template, hashed)
            if pcr == 10:  # IMA's PCR
                self._match(pcr)

        return watched

    def _extend_sha1_sha256(self, pcr: int, td: bytes, template: Template, hashed: bytes) -> None:
        (p1, f1, z1, ff1, _), (p2, f2, z2, ff2, _) = self.setup
        if td == z1 or td == self.zeros.get(len(td)):
            self.violations += 1
            x1, x2 = ff1, ff2
        else:
            x1 = td if len(td) == len(z1) else f1(hashed).digest()
            x2 = f2(hashed).digest()
        p1[pcr] = f1(p1.get(pcr, z1) + x1).digest()
        p2[pcr] = f2(p2.get(pcr, z2) + x2).digest()
        self.templates[template.name] = self.templates.get(template.name, 0) + 1
        self.count += 1

    def extend_records(self, records: list[Record]) -> None:
        """``extend`` over a batch of scanned records (``scan_binary``'s sink): the same rule, one
        tight loop per bank; entry by entry when PCR values are being watched for (``expect``)."""
        if not records:
            return
        if self.expect:
            for record in records:
                self.extend(*record)
            return
        zero = self.zeros[len(records[0][1])]  # one list's template digests share a size
        for bank in self.setup:
            violations = _extend_bank(bank, records, zero)
        self.violations += violations
        self.count += len(records)
        for template, n in Counter(map(itemgetter(2), records)).items():
            self.templates[template.name] = self.templates.get(template.name, 0) + n

    def _extend_any(self, pcr: int, td: bytes, template: Template, hashed: bytes) -> None:
        violation = td == self.zeros.get(len(td))
        self.violations += violation
        for pcrs, fn, zero, ff, is_sha1 in self.setup:
            if violation:
                x = ff
            elif is_sha1 and len(td) == len(zero):
                x = td
            else:
                x = fn(hashed).digest()
            pcrs[pcr] = fn(pcrs.get(pcr, zero) + x).digest()
        self.templates[template.name] = self.templates.get(template.name, 0) + 1
        self.count += 1

    def result(self, entries: tuple[Entry, ...] | None, source: LogStream | None) -> ReplayedLog:
        end, truncated = (source.end, source.truncated) if source is not None else (0, None)
        return ReplayedLog(
            pcrs=self.state, count=self.count, violations=self.violations, boot_aggregate=self.boot,
            entries=entries, end=end, truncated=truncated, templates=self.templates, matched=self.matched,
        )


if TYPE_CHECKING:  # hashlib._Hash exists for type checkers only
    # A bank's PCRs, hash, all-zero start, all-ones violation value, whether it is sha1.
    _Bank = tuple[dict[int, bytes], Callable[[bytes], hashlib._Hash], bytes, bytes, bool]


def _extend_bank(bank: _Bank, records: list[Record], zero: bytes) -> int:
    """Extend one bank's PCRs with ``records`` (template digests all-zero: violations, counted)."""
    pcrs, fn, start, ff, is_sha1 = bank
    logged = is_sha1 and len(zero) == len(start)  # sha1 takes the checked, logged digest as is
    pcr10, violations = pcrs[10], 0
    for pcr, td, _, hashed in records:
        if td == zero:
            violations += 1
            x = ff
        else:
            x = td if logged else fn(hashed).digest()
        if pcr == 10:  # IMA's PCR, nearly every record: kept in a local
            pcr10 = fn(pcr10 + x).digest()
        else:
            pcrs[pcr] = fn(pcrs.get(pcr, start) + x).digest()
    pcrs[10] = pcr10
    return violations


def replay(
    entries: Iterable[Entry],
    *,
    banks: tuple[str, ...] = ("sha1", "sha256"),
    keep_entries: bool = True,
    stream: LogStream | None = None,
    expect: Mapping[str, bytes] | None = None,
) -> ReplayedLog:
    """Replay entries (from ``iter_binary``/``iter_ascii`` or a builder) into each bank's PCRs.

    With ``keep_entries=False`` memory stays constant whatever the log's length. ``stream`` names
    the LogStream the entries come from when they are passed through a wrapper, for its end
    offset and truncation (a LogStream passed as ``entries`` is used directly). ``expect`` (bank ->
    PCR 10 value read from the TPM before the list) fills ``ReplayedLog.matched``.
    """
    r = _Replay(banks, expect)
    kept: list[Entry] | None = [] if keep_entries else None
    extend = r.extend
    for e in entries:
        if r.count == 0 and e.path == BOOT_AGGREGATE:
            r.boot = e
        t = e.template
        extend(e.pcr, e.template_digest, t, e.hashed_data() if t.is_ima else e.template_data)
        if kept is not None:
            kept.append(e)
    source = stream if stream is not None else entries if isinstance(entries, LogStream) else None
    return r.result(tuple(kept) if kept is not None else None, source)


def replay_binary(
    source: bytes | bytearray | memoryview | LogReader,
    *,
    byteorder: ByteOrder = "little",
    bank: str = "sha1",
    banks: tuple[str, ...] = ("sha1", "sha256"),
    max_template_data: int = MAX_TEMPLATE_DATA,
    expect: Mapping[str, bytes] | None = None,
    checks: Checks = "all",
) -> ReplayedLog:
    """``replay(iter_binary(source, …), keep_entries=False)`` without making an Entry per record:
    the same checks and result (``entries`` is None), for long lists (``imaguard log --summary``).
    ``checks`` other than ``"all"`` checks only part of each record: for the two scans of
    ``imaguard.ima.splitreplay``, never alone (see ``scan_binary``)."""
    r = _Replay(banks, expect)
    stream = scan_binary(
        source, r.extend_records, byteorder=byteorder, bank=bank, max_template_data=max_template_data, checks=checks
    )
    if stream.first is not None and stream.first.path == BOOT_AGGREGATE:
        r.boot = stream.first
    return r.result(None, stream)


def compare(replayed: ReplayedLog, tpm: Mapping[str, Mapping[int, bytes]]) -> list[PcrMismatch]:
    """Mismatches between replayed PCRs and TPM values, for each bank and PCR the TPM reported.

    Banks only one side has are skipped (a TPM without a sha1 bank is normal), but when no bank
    is common every replayed PCR is a mismatch: nothing vouches for the log.
    """
    common = [bank for bank in replayed.pcrs if bank in tpm]
    out: list[PcrMismatch] = []
    for bank in common or list(replayed.pcrs):
        got = tpm.get(bank)
        for index in sorted(replayed.pcrs[bank]):
            value = replayed.pcr(index, bank)
            have = None if got is None else got.get(index)
            if have != value:
                out.append(PcrMismatch(bank, index, value, have))
    return out
