"""``imaguard report verify``: signature, payload type, schema version, nonce, quote, replay (pure).

Order of checks, each failing closed with a TrustError (exit 3) that names it:
1. a signed report (DSSE envelope) must verify with a given certificate and carry the report
   payload type; a bare report given with ``--cert`` is refused (``report-not-signed``);
2. the document is an imaguard report of schema version 1 (FormatError otherwise);
3. the entries' extended digests, replayed from zero, give the report's PCR 10 (both banks);
4. with ``--nonce``, the report was made for that nonce and carries a TPM quote;
5. the quote is signed by the AK in the report, is for the report's nonce, selects PCR 10 only,
   and its PCR digest equals the replayed PCR 10 of the quoted bank.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from imaguard.errors import FormatError, TrustError, UsageError
from imaguard.keys.material import Certificate
from imaguard.report.envelope import is_envelope, open_envelope
from imaguard.report.model import read_report
from imaguard.report.tpmquote import Quote, verify_quote

__all__ = ["Verified", "replay_entries", "verify_report"]

_BANKS = {"sha1": 20, "sha256": 32}


@dataclass(frozen=True, slots=True)
class Verified:
    signed_by: str | None  # the certificate subject, when signed
    nonce: str | None
    quoted: bool
    pcr10: dict[str, str]
    entries: int
    checks: tuple[str, ...]


def replay_entries(entries: list[Any], source: str) -> dict[str, bytes]:
    """PCR 10 from the ``extended`` digests the report lists per entry: PCR = H(PCR || x) from zero."""
    pcrs = {bank: bytes(size) for bank, size in _BANKS.items()}
    for n, entry in enumerate(entries):
        pcr = entry.get("pcr") if isinstance(entry, dict) else None
        # JSON gives floats (1e999 is inf), bools and strings too: only a plain integer is a PCR index.
        if type(pcr) is not int:
            raise FormatError(f"{source}: entry {n} has no integer pcr (got {pcr!r})", reason="bad-report")
        if pcr != 10:
            continue
        try:
            extended = entry["extended"]
            for bank, size in _BANKS.items():
                value = bytes.fromhex(extended[bank])
                if len(value) != size:
                    raise ValueError(f"{bank} digest of {len(value)} bytes")
                pcrs[bank] = hashlib.new(bank, pcrs[bank] + value).digest()
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"{source}: entry {n} has no usable extended digests ({exc})",
                              reason="bad-report") from exc
    return pcrs


def verify_report(data: bytes, *, certs: tuple[Certificate, ...], nonce: str | None, source: str) -> Verified:
    checks: list[str] = []
    signed_by: str | None = None
    if is_envelope(data):
        if not certs:
            raise UsageError(f"{source}: the report is signed; give the signer's certificate with --cert",
                             reason="cert-required")  # fmt: skip
        data, signed_by = open_envelope(data, certs, source)
        checks += ["signature", "payload-type"]
    elif certs:
        raise TrustError(f"{source}: the report is not signed, but --cert asks for a signed one",
                         reason="report-not-signed")  # fmt: skip
    report = read_report(data, source)
    checks.append("schema-version")
    entries = report.document.get("entries")
    if not isinstance(entries, list):
        raise FormatError(f"{source}: report without entries", reason="bad-report")
    replayed = replay_entries(entries, source)
    for bank, value in replayed.items():
        if report.pcr10.get(bank) != value:
            raise TrustError(f"{source}: the report's entries replay to PCR 10 {bank} {value.hex()}, "
                             f"but it claims {report.pcr10.get(bank, b'').hex() or 'nothing'}",
                             reason="replay-mismatch")  # fmt: skip
    checks.append("replay")
    if nonce is not None:
        if report.nonce != nonce:
            raise TrustError(f"{source}: the report was made for nonce {report.nonce!r}, not {nonce!r}",
                             reason="wrong-nonce")  # fmt: skip
        if report.quote is None:
            raise TrustError(f"{source}: the report has no TPM quote, so the nonce proves nothing", reason="no-quote")
        checks.append("nonce")
    if report.quote is not None:
        quote = report.quote
        if quote.nonce != report.nonce:
            raise TrustError(f"{source}: the quote was made for nonce {quote.nonce!r}, "
                             f"the report says {report.nonce!r}", reason="wrong-nonce")  # fmt: skip
        expected = replayed.get(quote.bank)
        if expected is None:
            raise TrustError(f"{source}: the quote is over bank {quote.bank}, which the report does not replay",
                             reason="quote-selection")  # fmt: skip
        verify_quote(Quote(quote.attest, quote.signature, quote.ak_public_pem, quote.bank, quote.pcr10),
                     nonce=quote.nonce, expected_pcr10=expected)  # fmt: skip
        checks.append("quote")
    return Verified(signed_by, report.nonce, report.quote is not None, {b: v.hex() for b, v in replayed.items()},
                    len(entries), tuple(checks))  # fmt: skip
