"""The attestation report: a versioned JSON document (pure). Schema: docs/report.md.

``schema_version`` changes only when a field changes meaning or disappears; new fields may appear
in the same version, so readers must ignore fields they do not know. Paths are bytes in the model
and JSON strings decoded as UTF-8 with surrogate escapes (``\\udcXX`` for undecodable bytes), as
everywhere in imaguard.
"""

from __future__ import annotations

import base64
import enum
import json
from dataclasses import dataclass, field
from typing import Any

from imaguard import strictjson
from imaguard.errors import FormatError

__all__ = [
    "PAYLOAD_TYPE",
    "SCHEMA",
    "SCHEMA_VERSION",
    "EntryClass",
    "EntryReport",
    "HostFacts",
    "LogSummary",
    "MappingReport",
    "PackageRef",
    "ProcessClass",
    "ProcessReport",
    "QuoteReport",
    "Report",
    "SignatureStatus",
    "VerifiableReport",
    "path_text",
    "read_report",
]

SCHEMA = "imaguard.report"
# 2: ``signature.status`` ``verified`` means verified with a certificate given to the reporter
# (--cert/--ima-cert), no longer also with one found in the log (now ``logged-key``).
SCHEMA_VERSION = 2
PAYLOAD_TYPE = "application/vnd.imaguard.report+json"


def path_text(path: bytes) -> str:
    return path.decode("utf-8", "surrogateescape")


class EntryClass(enum.StrEnum):
    """What one measurement-log entry is (codes are part of the JSON contract)."""

    PACKAGE = "package"  # the digest is a trusted digest of a package file
    MODIFIED = "modified"  # a package owns the path, its content is not any package's
    UNKNOWN = "unknown"  # measured, from no package
    BOOT_AGGREGATE = "boot-aggregate"  # the first entry: PCRs 0-7/0-9 at IMA start
    BUFFER = "buffer"  # ima-buf: keys (KEY_CHECK), critical data, kexec command lines
    VIOLATION = "violation"  # ToMToU / open-writers: the kernel logged zeros, extended ones


class ProcessClass(enum.StrEnum):
    PACKAGE = "package"
    MODIFIED = "modified"
    UNKNOWN = "unknown"
    NOT_MEASURED = "not-measured"  # running but absent from the log; ``reason`` says the likely why
    # The running file is not the file its path names here (replaced, another mount namespace,
    # fileless) or could not be read: the log's entries for the path say nothing about it; ``reason``.
    UNTRACED = "untraced"


class SignatureStatus(enum.StrEnum):
    """The ``sig`` field of an ima-sig entry against the certificates known to the report."""

    VERIFIED = "verified"  # with a certificate the operator gave (--cert/--ima-cert)
    # Verifies only with a certificate found in the log (an ima-buf KEY_CHECK entry): any user can
    # have a key measured (a keyring of their own named `_ima`), so it proves no kernel trust.
    LOGGED_KEY = "logged-key"
    UNKNOWN_KEY = "unknown-key"
    BAD_SIGNATURE = "bad-signature"
    UNSIGNED = "unsigned"  # the field is empty: the file had no signature when measured
    MALFORMED = "malformed"
    UNSUPPORTED_FORM = "unsupported-form"  # digest-only values, sig v3, EVM forms
    NOT_RECORDED = "not-recorded"  # the template has no sig field (ima-ng)


@dataclass(frozen=True, slots=True)
class PackageRef:
    """The package file whose trusted digest matched (or that owns the path, for ``modified``)."""

    name: str
    version: str
    arch: str
    source_name: str
    source_version: str
    path: bytes
    digest: str  # "sha256:<hex>", the package's trusted digest
    evidence: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "arch": self.arch,
                "source": {"name": self.source_name, "version": self.source_version},
                "path": path_text(self.path), "digest": self.digest, "evidence": self.evidence}  # fmt: skip


@dataclass(frozen=True, slots=True)
class EntryReport:
    index: int
    pcr: int
    template: str
    path: bytes  # the file path, or the buffer's name (keyring, critical-data label)
    digest: str  # "algo:hex" from the log
    klass: EntryClass
    extended: tuple[bytes, bytes]  # what the kernel extended into PCR banks sha1 and sha256
    template_data: bytes  # the entry's template data as logged: what ``extended`` hashes, what verify re-parses
    packages: tuple[PackageRef, ...] = ()  # every package file with this digest; owners for modified
    signature: SignatureStatus = SignatureStatus.NOT_RECORDED
    signature_key_id: str | None = None
    signature_detail: str = ""

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "index": self.index, "pcr": self.pcr, "template": self.template, "path": path_text(self.path),
            "digest": self.digest, "class": str(self.klass), "packages": [p.to_json() for p in self.packages],
            "extended": {"sha1": self.extended[0].hex(), "sha256": self.extended[1].hex()},
            "template_data": base64.b64encode(self.template_data).decode(),
            "signature": {"status": str(self.signature), "key_id": self.signature_key_id},
        }  # fmt: skip
        if self.signature_detail:
            doc["signature"]["detail"] = self.signature_detail
        return doc


@dataclass(frozen=True, slots=True)
class MappingReport:
    path: bytes
    klass: ProcessClass
    entry: int | None  # index of the log entry it matched
    reason: str = ""
    packages: tuple[PackageRef, ...] = ()
    deleted: bool = False

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"path": path_text(self.path), "class": str(self.klass), "entry": self.entry,
                               "packages": [p.to_json() for p in self.packages]}  # fmt: skip
        if self.reason:
            doc["reason"] = self.reason
        if self.deleted:
            doc["deleted"] = True
        return doc


@dataclass(frozen=True, slots=True)
class ProcessReport:
    pid: int
    name: str
    start_time: float
    exe: MappingReport
    mappings: tuple[MappingReport, ...]
    error: str = ""

    @property
    def klass(self) -> ProcessClass:
        return self.exe.klass

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"pid": self.pid, "name": self.name, "start_time": round(self.start_time, 2),
                               "class": str(self.klass), "exe": self.exe.to_json(),
                               "mappings": [m.to_json() for m in self.mappings]}  # fmt: skip
        if self.error:
            doc["error"] = self.error
        return doc


@dataclass(frozen=True, slots=True)
class HostFacts:
    machine_id: str | None
    boot_id: str | None
    hostname: str
    kernel_release: str
    kernel_version: str
    ima_policy_state: str
    ima_policy_sha256: str | None
    ima_keys: tuple[tuple[str, str, str | None], ...]  # (keyring, description, key id)

    def to_json(self) -> dict[str, Any]:
        return {
            "machine_id": self.machine_id, "boot_id": self.boot_id, "hostname": self.hostname,
            "kernel": {"release": self.kernel_release, "version": self.kernel_version},
            "ima_policy": {"state": self.ima_policy_state, "sha256": self.ima_policy_sha256},
            "ima_keys": [{"keyring": k, "description": d, "key_id": i} for k, d, i in self.ima_keys],
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class LogSummary:
    source: str
    entries: int
    violations: int
    templates: tuple[tuple[str, int], ...]
    pcr10: tuple[tuple[str, str], ...]  # (bank, hex) replayed
    truncated_at: int | None = None
    boot_aggregate: str | None = None  # "algo:hex"
    byteorder: str = "little"  # of the template data's length fields (big only on big-endian hosts)

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "entries": self.entries, "violations": self.violations,
                "byteorder": self.byteorder,
                "templates": dict(self.templates), "truncated_at": self.truncated_at,
                "boot_aggregate": self.boot_aggregate,
                "replay": {"pcr10": dict(self.pcr10)}}  # fmt: skip


@dataclass(frozen=True, slots=True)
class QuoteReport:
    nonce: str
    bank: str
    pcr10: bytes
    attest: bytes
    signature: bytes
    ak_public_pem: bytes

    def to_json(self) -> dict[str, Any]:
        b64 = base64.b64encode
        return {"nonce": self.nonce, "bank": self.bank, "pcr10": self.pcr10.hex(), "attest": b64(self.attest).decode(),
                "signature": b64(self.signature).decode(), "ak_public_pem": self.ak_public_pem.decode()}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Report:
    generator: str
    created: str  # RFC 3339 UTC
    nonce: str | None
    host: HostFacts
    log: LogSummary
    entries: tuple[EntryReport, ...]
    processes: tuple[ProcessReport, ...]
    quote: QuoteReport | None = None
    warnings: tuple[str, ...] = field(default=())

    def counts(self) -> dict[str, dict[str, int]]:
        entries: dict[str, int] = {str(c): 0 for c in EntryClass}
        for e in self.entries:
            entries[str(e.klass)] += 1
        procs: dict[str, int] = {str(c): 0 for c in ProcessClass}
        for p in self.processes:
            procs[str(p.klass)] += 1
        sigs: dict[str, int] = {str(s): 0 for s in SignatureStatus}
        for e in self.entries:
            sigs[str(e.signature)] += 1
        return {"entries": entries, "processes": procs, "signatures": sigs}

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "generator": self.generator,
            "created": self.created, "nonce": self.nonce, "host": self.host.to_json(), "log": self.log.to_json(),
            "counts": self.counts(), "entries": [e.to_json() for e in self.entries],
            "processes": [p.to_json() for p in self.processes],
            "quote": self.quote.to_json() if self.quote is not None else None,
            "warnings": list(self.warnings),
        }  # fmt: skip

    def to_bytes(self) -> bytes:
        # Compact: the C encoder; indenting switches json to its pure-Python encoder, 10x slower on
        # a host with hundreds of processes. `python3 -m json.tool` pretty-prints for people.
        return json.dumps(self.to_json(), separators=(",", ":")).encode() + b"\n"


@dataclass(frozen=True, slots=True)
class VerifiableReport:
    """The fields ``report verify`` decides on, read back from a report document."""

    schema_version: int
    nonce: str | None
    pcr10: dict[str, bytes]
    quote: QuoteReport | None
    document: dict[str, Any]


def _quote(doc: Any, source: str) -> QuoteReport | None:
    if doc is None:
        return None
    try:
        return QuoteReport(
            nonce=str(doc["nonce"]), bank=str(doc["bank"]), pcr10=bytes.fromhex(doc["pcr10"]),
            attest=base64.b64decode(doc["attest"], validate=True),
            signature=base64.b64decode(doc["signature"], validate=True),
            ak_public_pem=str(doc["ak_public_pem"]).encode(),
        )  # fmt: skip
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"{source}: malformed quote in the report ({exc})", reason="bad-report") from exc


def read_report(data: bytes, source: str) -> VerifiableReport:
    """Parse a report document; FormatError for anything not an imaguard report of a known version."""
    try:
        doc = strictjson.loads(data)
    except (ValueError, RecursionError) as exc:  # nesting past the recursion limit is not a crash either
        raise FormatError(f"{source}: not JSON ({exc})", reason="bad-report") from exc
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise FormatError(f"{source}: not an imaguard report (schema {SCHEMA!r} missing)", reason="bad-report")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise FormatError(f"{source}: report schema version {version!r}, this imaguard reads {SCHEMA_VERSION}",
                          reason="report-version")  # fmt: skip
    log = doc.get("log")
    replayed = log.get("replay") if isinstance(log, dict) else None
    values = replayed.get("pcr10") if isinstance(replayed, dict) else None
    if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
        raise FormatError(f"{source}: report without a replayed PCR 10 (log.replay.pcr10: an object of bank: hex)",
                          reason="bad-report")  # fmt: skip
    try:
        pcr10 = {str(k): bytes.fromhex(v) for k, v in values.items()}
    except ValueError as exc:
        raise FormatError(f"{source}: log.replay.pcr10 holds a value that is not hex", reason="bad-report") from exc
    if "nonce" not in doc:
        raise FormatError(f"{source}: report without its nonce field (null when none was given)", reason="bad-report")
    nonce = doc["nonce"]
    if nonce is not None and not isinstance(nonce, str):
        raise FormatError(f"{source}: nonce must be a string", reason="bad-report")
    quote = _quote(doc.get("quote"), source)
    for what, text in (("nonce", nonce), ("quote.nonce", quote.nonce if quote is not None else None)):
        if text is not None and not is_utf8_text(text):  # JSON allows a lone surrogate; UTF-8 does not
            raise FormatError(f"{source}: {what} is not UTF-8 text", reason="bad-report")
    return VerifiableReport(int(version), nonce, pcr10, quote, doc)


def is_utf8_text(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (a nonce is hashed as UTF-8 into the TPM quote): JSON's
    ``\\ud800`` and undecodable command-line bytes give lone surrogates, which do not."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
