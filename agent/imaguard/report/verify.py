"""``imaguard report verify``: signature, payload type, schema version, nonce, quote, replay (pure).

Order of checks, each failing closed with a TrustError (exit 3) that names it:
1. a signed report (DSSE envelope) must verify with a given certificate and carry the report
   payload type; a bare report given with ``--cert`` is refused (``report-not-signed``);
2. the document is an imaguard report of schema version 1 (FormatError otherwise);
3. every entry is of PCR 10 (``unattested-pcr``), names a template imaguard knows
   (``unknown-template``; with pinned templates, one of them: ``template-not-allowed``), and its
   extended digests are the hashes of its template data, which parses under its template and holds
   the path, digest, signature key id and structural class (violation, boot aggregate, buffer) the
   entry states (``entry-mismatch``); a file entry has a path and a digest, and a buffer named like
   a file path does not hold what a file's ``sig`` field holds (``entry-mismatch``: the template
   name is not in the template hash, so a relabelled file entry is caught only by what it holds);
   the package classes and signature verdicts are the reporter's claims (docs/report.md);
   the extended digests, replayed from zero, give the report's PCR 10 (both banks); the summary
   (``log`` counts and templates, ``boot_aggregate``, ``counts``) is the tally of the checked
   entries and the listed processes (``summary-mismatch``);
4. with ``--nonce``, the report was made for that nonce and carries a TPM quote;
5. the quote is signed by the AK in the report, is for the report's nonce, selects PCR 10 only,
   and its PCR digest equals the replayed PCR 10 of the quoted bank;
6. with ``--ak``, the report carries a quote and its AK is one of those given (``untrusted-ak``).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from imaguard.errors import FormatError, TrustError, UsageError
from imaguard.ima.logstream import Entry
from imaguard.ima.templates import ByteOrder, Template, split_template_data, template_for
from imaguard.ima.xattr import XattrType
from imaguard.keys.material import Certificate
from imaguard.report.build import KEY_STATUSES, LogItem, log_item, signature_form, structural_class
from imaguard.report.envelope import is_envelope, open_envelope
from imaguard.report.model import (
    EntryClass,
    ProcessClass,
    SignatureStatus,
    VerifiableReport,
    path_text,
    read_report,
)
from imaguard.report.tpmquote import Quote, ak_fingerprint, ak_public_key, verify_quote

__all__ = ["Verified", "check_entries", "check_summary", "verify_report"]

_BANKS = {"sha1": 20, "sha256": 32}
# ima_template_lib.c ima_eventsig_init (6.1): a `sig` field is empty or security.ima of these types.
_SIG_FIELD_TYPES = frozenset({XattrType.DIGSIG, XattrType.VERITY_DIGSIG})


@dataclass(frozen=True, slots=True)
class Verified:
    signed_by: str | None  # the certificate subject, when signed
    nonce: str | None
    quoted: bool
    pcr10: dict[str, str]
    entries: int
    checks: tuple[str, ...]
    ak: str | None = None  # the quote's AK fingerprint, when quoted


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} is not a string")
    return value


def _extended(entry: dict[str, Any]) -> tuple[bytes, bytes]:
    extended = entry["extended"]
    out = []
    for bank, size in _BANKS.items():
        value = bytes.fromhex(_text(extended[bank], f"extended.{bank}"))
        if len(value) != size:
            raise ValueError(f"{bank} digest of {len(value)} bytes")
        out.append(value)
    return out[0], out[1]


def _known_template(name: str, where: str) -> Template:
    """The template ``name`` stands for; TrustError ``unknown-template`` unless the kernel can log it
    and imaguard knows its fields: a built-in template, or a custom format of known fields only."""
    template = template_for(name)
    if not template.known:
        # Its data would split into raw fields that state no path, digest or signature, and the
        # template name is not in the template hash: any entry could be renamed to it (audit).
        raise TrustError(f"{where} states template {name!r}, which is neither a built-in IMA template nor a "
                         "format of known fields, so its template data cannot be checked",
                         reason="unknown-template")  # fmt: skip
    return template


def _rebuilt(entry: dict[str, Any], n: int, byteorder: ByteOrder, where: str) -> tuple[LogItem, tuple[bytes, bytes]]:
    """The entry rebuilt from its template data the way the report builder sees a log entry, and
    the extended digests the report states (TypeError/ValueError/KeyError/FormatError if unusable,
    TrustError for a template imaguard does not know)."""
    stated = _extended(entry)
    violation = stated == (b"\xff" * 20, b"\xff" * 32)
    data = base64.b64decode(_text(entry["template_data"], "template_data"), validate=True)
    template = _known_template(_text(entry["template"], "template"), where)
    fields = split_template_data(template, data, byteorder)
    log_entry = Entry.build(template.name, fields, pcr=10, byteorder=byteorder, violation=violation)
    if log_entry.template_data != data:  # split and build are inverses; anything else is not log data
        raise ValueError("template data does not serialize back to itself")
    return log_item(n, log_entry), stated


def _check_claims(entry: dict[str, Any], item: LogItem, stated: tuple[bytes, bytes], where: str) -> None:
    """The entry's stated path, digest, class and signature must be what its template data says,
    and its extended digests the hash of that data (TrustError ``entry-mismatch`` otherwise)."""

    def mismatch(what: str, stated_value: object, logged: object) -> TrustError:
        return TrustError(f"{where} states {what} {stated_value!r}, its template data says {logged!r}",
                          reason="entry-mismatch")  # fmt: skip

    if not item.violation and stated != item.extended:
        bank = "sha1" if stated[0] != item.extended[0] else "sha256"
        raise mismatch(f"extended {bank}", stated[bank == "sha256"].hex(), item.extended[bank == "sha256"].hex())
    if entry.get("path") != path_text(item.path):
        raise mismatch("path", entry.get("path"), path_text(item.path))
    if entry.get("digest") != item.digest_text:
        raise mismatch("digest", entry.get("digest"), item.digest_text)
    klass = structural_class(item)
    stated_class = entry.get("class")
    if klass is not None and stated_class != str(klass):
        raise mismatch("class", stated_class, str(klass))
    if klass is None and stated_class not in (str(EntryClass.PACKAGE), str(EntryClass.MODIFIED),
                                              str(EntryClass.UNKNOWN)):  # fmt: skip
        raise mismatch("class", stated_class, "package, modified or unknown")
    _check_template_fits(item, klass, where)
    signature = entry.get("signature")
    if not isinstance(signature, dict):
        raise mismatch("signature", signature, "an object")
    status, key_id, _, _ = signature_form(item)
    if signature.get("key_id") != key_id:
        raise mismatch("signature key id", signature.get("key_id"), key_id)
    allowed = {str(status)} if status is not None else {str(s) for s in KEY_STATUSES}
    if not isinstance(signature.get("status"), str) or signature.get("status") not in allowed:
        raise mismatch("signature status", signature.get("status"), " or ".join(sorted(allowed)))


def _check_template_fits(item: LogItem, klass: EntryClass | None, where: str) -> None:
    """What the data itself shows of a renamed template (TrustError ``entry-mismatch``). The template
    name is not in the template hash, so a reporter can rename an entry to another template of the
    same field layout: ``ima-sig`` (d-ng|n-ng|sig) to ``ima-buf`` or ``d-ng|n-ng|buf`` makes an
    executed file a buffer with no signature recorded. Only such renames whose data gives them away
    are caught here; ``--template`` pins the rest (docs/report.md)."""
    if klass is None and (not item.path or not item.digest):
        raise TrustError(f"{where} is a file measurement (template {item.template!r}) without a "
                         f"{'path' if not item.path else 'file digest'}: it would vouch for no file",
                         reason="entry-mismatch")  # fmt: skip
    # The kernel fills a `sig` field with nothing or a security.ima signature (ima_eventsig_init):
    # anything else there is another template's field renamed, e.g. a buffer (a key loaded into
    # _ima, DER) passed off as an ima-sig file entry (audit).
    if item.sig and item.sig[0] not in _SIG_FIELD_TYPES:
        raise TrustError(f"{where} states template {item.template!r}, whose sig field holds no IMA signature "
                         f"(it starts with byte {item.sig[0]:#04x}); the kernel logs only an empty field or a "
                         "signature there, so this is another template's entry renamed",
                         reason="entry-mismatch")  # fmt: skip
    # The `ima` template's name is a C string the kernel copies up to its NUL: one inside it is data
    # of another layout restated as `ima` (an ima-sig entry's digest and path as d|n).
    if item.template == "ima" and b"\x00" in item.path:
        raise TrustError(f"{where} states template 'ima' with a NUL byte inside its name, which the kernel "
                         "never logs: another template's entry restated as ima", reason="entry-mismatch")
    # The kernel names a buffer after a keyring (KEY_CHECK: its buffer is a certificate or key, DER),
    # a critical-data label or kexec-cmdline; only a keyring, named by a user, can look like a path,
    # and its buffer is never empty nor a signature. A file's `sig` field is one of those two.
    buf = item.buf
    if (
        klass is EntryClass.BUFFER
        and buf is not None
        and item.path.startswith(b"/")
        and (not buf or buf[0] in _SIG_FIELD_TYPES)
    ):
        raise TrustError(f"{where} states template {item.template!r}: a buffer named like a file path "
                         f"({path_text(item.path)!r}) that holds {'an IMA signature' if buf else 'nothing'}, "
                         "as a file measurement's sig field does; the template name is not in the template "
                         "hash, so this is a file entry renamed", reason="entry-mismatch")  # fmt: skip


def check_entries(
    entries: list[Any], byteorder: ByteOrder, source: str, templates: frozenset[str] | None = None
) -> dict[str, bytes]:
    """Check every entry against its own template data, then replay PCR 10 from the ``extended``
    digests: PCR = H(PCR || x) from zero. An entry of another PCR is refused: the report states no
    value for other PCRs, so nothing would vouch for it. ``templates``: the only template names
    allowed (the verifier's knowledge of the host's policy), or None for any imaguard knows."""
    pcrs = {bank: bytes(size) for bank, size in _BANKS.items()}
    for n, entry in enumerate(entries):
        where = f"{source}: entry {n}"
        pcr = entry.get("pcr") if isinstance(entry, dict) else None
        # JSON gives floats (1e999 is inf), bools and strings too: only a plain integer is a PCR index.
        if type(pcr) is not int:
            raise FormatError(f"{where} has no integer pcr (got {pcr!r})", reason="bad-report")
        if pcr != 10:
            raise TrustError(f"{where} extends PCR {pcr}: the report attests PCR 10 only, so nothing "
                             "vouches for it", reason="unattested-pcr")  # fmt: skip
        assert isinstance(entry, dict)  # noqa: S101 - for mypy: pcr came from a dict
        if entry.get("index") != n or type(entry.get("index")) is not int:
            raise TrustError(f"{where} states index {entry.get('index')!r}", reason="entry-mismatch")
        if not isinstance(entry.get("template"), str):
            raise FormatError(f"{where} has no template name (got {entry.get('template')!r})", reason="bad-report")
        if templates is not None and entry.get("template") not in templates:
            raise TrustError(f"{where} states template {entry.get('template')!r}, not one of the --template "
                             f"names given ({', '.join(sorted(templates))})",
                             reason="template-not-allowed")  # fmt: skip
        try:
            item, stated = _rebuilt(entry, n, byteorder, where)
        except (KeyError, TypeError, ValueError, FormatError) as exc:
            raise FormatError(f"{where} has no usable template data or extended digests ({exc})",
                              reason="bad-report") from exc  # fmt: skip
        _check_claims(entry, item, stated, where)
        for (bank, value), x in zip(pcrs.items(), stated, strict=True):
            pcrs[bank] = hashlib.new(bank, value + x).digest()
    return pcrs


def _tally(values: list[Any], codes: Iterable[object] = ()) -> dict[str, int]:
    """How many of each value; every code present (0 included), as the report builder counts."""
    out = {str(c): 0 for c in codes}
    for value in values:
        key = value if isinstance(value, str) else repr(value)  # a hostile list or object: no TypeError
        out[key] = out.get(key, 0) + 1
    return out


def check_summary(document: dict[str, Any], entries: list[dict[str, Any]], source: str) -> None:
    """The summary a dashboard reads must be the tally of the checked entries (and of the processes
    the report lists): ``log.entries``, ``violations``, ``templates``, ``boot_aggregate`` and
    ``counts`` are derived, not claims (TrustError ``summary-mismatch``; audit)."""
    log, counts, processes = document.get("log"), document.get("counts"), document.get("processes")
    if not isinstance(log, dict) or not isinstance(counts, dict) or not isinstance(processes, list):
        raise FormatError(f"{source}: report without log, counts or processes", reason="bad-report")
    classes = [e.get("class") for e in entries]
    first = entries[0] if entries else None
    derived: dict[str, Any] = {
        "log.entries": (log.get("entries"), len(entries)),
        "log.violations": (log.get("violations"), classes.count(str(EntryClass.VIOLATION))),
        "log.templates": (log.get("templates"), _tally([e["template"] for e in entries])),
        "log.boot_aggregate": (log.get("boot_aggregate"), first["digest"] if first is not None
                               and first.get("class") == str(EntryClass.BOOT_AGGREGATE) else None),
        "counts.entries": (counts.get("entries"), _tally(classes, EntryClass)),
        "counts.signatures": (counts.get("signatures"),
                              _tally([e["signature"]["status"] for e in entries], SignatureStatus)),
        "counts.processes": (counts.get("processes"),
                             _tally([p.get("class") if isinstance(p, dict) else None for p in processes],
                                    ProcessClass)),
    }  # fmt: skip
    for name, (stated, tally) in derived.items():
        if stated != tally:
            raise TrustError(f"{source}: {name} states {stated!r}, but the report's "
                             f"{'processes' if name == 'counts.processes' else 'entries'} give {tally!r}",
                             reason="summary-mismatch")  # fmt: skip


def _byteorder(document: dict[str, Any], source: str) -> ByteOrder:
    log = document.get("log")
    value = log.get("byteorder") if isinstance(log, dict) else None
    if value == "little":
        return "little"
    if value == "big":
        return "big"
    raise FormatError(f"{source}: log.byteorder must be 'little' or 'big', not {value!r}", reason="bad-report")


def _check_nonce(report: VerifiableReport, nonce: str, source: str) -> None:
    if report.nonce is None:
        raise TrustError(f"{source}: the report was made without a nonce, not for {nonce!r}",
                         reason="wrong-nonce")  # fmt: skip
    if report.nonce != nonce:
        raise TrustError(f"{source}: the report was made for nonce {report.nonce!r}, not {nonce!r}",
                         reason="wrong-nonce")  # fmt: skip
    if report.quote is None:
        raise TrustError(f"{source}: the report has no TPM quote, so the nonce proves nothing", reason="no-quote")


def _check_quote(report: VerifiableReport, replayed: dict[str, bytes], source: str) -> None:
    quote = report.quote
    assert quote is not None  # noqa: S101 - the caller checked
    if quote.nonce != report.nonce:
        raise TrustError(f"{source}: the quote was made for nonce {quote.nonce!r}, "
                         f"the report says {report.nonce!r}", reason="wrong-nonce")  # fmt: skip
    expected = replayed.get(quote.bank)
    if expected is None:
        raise TrustError(f"{source}: the quote is over bank {quote.bank}, which the report does not replay",
                         reason="quote-selection")  # fmt: skip
    try:
        verify_quote(Quote(quote.attest, quote.signature, quote.ak_public_pem, quote.bank, quote.pcr10),
                     nonce=quote.nonce, expected_pcr10=expected)  # fmt: skip
    except (FormatError, TrustError) as exc:  # its messages do not know the file's name
        raise type(exc)(f"{source}: {exc}", reason=exc.reason) from exc


def _check_ak(report: VerifiableReport, aks: tuple[bytes, ...], source: str) -> None:
    if report.quote is None:
        raise TrustError(f"{source}: the report has no TPM quote, so no attestation key vouches for it",
                         reason="no-quote")  # fmt: skip
    if ak_public_key(report.quote.ak_public_pem) not in aks:
        raise TrustError(f"{source}: the quote is signed by attestation key "
                         f"{ak_fingerprint(report.quote.ak_public_pem)}, which is not one of the --ak keys given",
                         reason="untrusted-ak")  # fmt: skip


def verify_report(
    data: bytes,
    *,
    certs: tuple[Certificate, ...],
    nonce: str | None,
    source: str,
    aks: tuple[bytes, ...] = (),
    templates: frozenset[str] | None = None,
) -> Verified:
    """Check a report (see the module's list); ``aks`` are pinned AKs (SubjectPublicKeyInfo DER),
    ``templates`` the pinned template names (every entry's must be one of them)."""
    checks: list[str] = []
    signed_by: str | None = None
    try:
        signed = is_envelope(data)
    except FormatError as exc:  # it does not know the file's name
        raise FormatError(f"{source}: {exc}", reason=exc.reason) from exc
    if signed:
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
    replayed = check_entries(entries, _byteorder(report.document, source), source, templates)
    checks.append("entries")
    if templates is not None:
        checks.append("templates")
    for bank, value in replayed.items():
        if report.pcr10.get(bank) != value:
            raise TrustError(f"{source}: the report's entries replay to PCR 10 {bank} {value.hex()}, "
                             f"but it claims {report.pcr10.get(bank, b'').hex() or 'nothing'}",
                             reason="replay-mismatch")  # fmt: skip
    checks.append("replay")
    check_summary(report.document, entries, source)
    checks.append("summary")
    if nonce is not None:
        _check_nonce(report, nonce, source)
        checks.append("nonce")
    if aks:  # first: nothing of a quote by another key is worth parsing
        _check_ak(report, aks, source)
    if report.quote is not None:
        _check_quote(report, replayed, source)
        checks.append("quote")
    if aks:
        checks.append("ak")
    ak = ak_fingerprint(report.quote.ak_public_pem) if report.quote is not None else None
    return Verified(signed_by, report.nonce, report.quote is not None, {b: v.hex() for b, v in replayed.items()},
                    len(entries), tuple(checks), ak)  # fmt: skip
