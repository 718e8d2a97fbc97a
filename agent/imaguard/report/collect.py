"""Gather what a report is made of on this host (I/O): log, replay, index, processes, identity, quote.

With a nonce the log is read, the TPM quotes PCR 10, and the log is read again: when the two reads
differ (something was measured meanwhile, e.g. tpm2_quote's first exec) the cycle is repeated, so
the quoted PCR always belongs to exactly the log in the report.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imaguard import __version__
from imaguard.errors import TrustError
from imaguard.host.identity import read_identity
from imaguard.host.processes import RunningDigests, list_processes
from imaguard.ima.logsource import log_path, read_bytes, read_log, replay_bytes
from imaguard.ima.measurements import detect_byteorder
from imaguard.ima.replay import ReplayedLog
from imaguard.packages.index import DigestIndex
from imaguard.report.build import build_report
from imaguard.report.formats.cel import CelRecord, cel_document
from imaguard.report.model import HostFacts, QuoteReport, Report

if TYPE_CHECKING:
    from collections.abc import Sequence

    from imaguard.keys.material import Certificate

# read_log and replay_bytes live in ima/logsource (the keylime-policy export reads the list the same
# way without importing this module's process and X.509 code); still exported here for callers.
__all__ = ["Collected", "cel_of", "collect", "read_log", "replay_bytes"]

_QUOTE_ATTEMPTS = 4


@dataclass(frozen=True, slots=True)
class Collected:
    report: Report
    replayed: ReplayedLog


def _host() -> HostFacts:
    ident = read_identity()
    return HostFacts(ident.machine_id, ident.boot_id, ident.hostname, ident.kernel_release, ident.kernel_version,
                     ident.ima_policy_state, ident.ima_policy_sha256,
                     tuple((k.keyring, k.description, k.key_id) for k in ident.ima_keys))  # fmt: skip


def _quoted(log_file: Path | None, nonce: str) -> tuple[bytes, QuoteReport]:
    from imaguard.report.quote import make_quote  # noqa: PLC0415 - only with --nonce

    path = log_path(log_file)
    before = read_bytes(path)
    for _ in range(_QUOTE_ATTEMPTS):
        quote = make_quote(nonce)
        after = read_bytes(path)
        if after == before:
            return after, QuoteReport(nonce, quote.pcr_bank, quote.pcr_value, quote.attest, quote.signature,
                                      quote.ak_public_pem)  # fmt: skip
        before = after
    raise TrustError(f"{path} kept growing while quoting ({_QUOTE_ATTEMPTS} attempts): no stable quote",
                     reason="log-unstable")  # fmt: skip


def collect(
    *,
    state_dir: Path,
    log_file: Path | None,
    certificates: Sequence[Certificate],
    nonce: str | None,
    processes: bool = True,
) -> Collected:
    # Processes first: whatever they run was exec'd (and measured) before the log is read, so a
    # program started in between is not misreported as not measured.
    procs = list_processes() if processes else ()
    quote = None
    if nonce is not None:
        data, quote = _quoted(log_file, nonce)
        source = log_path(log_file)
    else:
        data, source = read_log(log_file)
    replayed = replay_bytes(data, source)
    byteorder = detect_byteorder(data)
    with DigestIndex.open(state_dir, read_only=True) as index:
        report = build_report(
            replayed, source=source, lookup=index, processes=procs, host=_host(),
            generator=f"imaguard {__version__}", certificates=certificates, nonce=nonce, quote=quote,
            byteorder=byteorder, digest_here=RunningDigests(),
            created=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )  # fmt: skip
    if quote is not None:
        replayed_value = replayed.pcr(10, quote.bank)
        if replayed_value != quote.pcr10:
            raise TrustError(f"the TPM's PCR 10 ({quote.bank}) {quote.pcr10.hex()} differs from the replayed log "
                             f"{replayed_value.hex()}: the log does not match this TPM",
                             reason="quote-log-mismatch")  # fmt: skip
    return Collected(report, replayed)


def cel_of(collected: Collected) -> list[dict[str, Any]]:
    # The digests are the report's own `extended` (report/build.extended_of): the logged template
    # digest is the sha1 bank's value only in the sha1 list, not in a per-bank sha256 one.
    entries = collected.replayed.entries or ()
    records = [CelRecord(e.pcr, e.template_name, e.template_data, *r.extended)
               for e, r in zip(entries, collected.report.entries, strict=True)]
    return cel_document(records, collected.report.entries)
