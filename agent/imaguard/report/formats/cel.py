"""The measurement log as TCG Canonical Event Log JSON, each record with its package provenance (pure).

Encoding (TCG "Canonical Event Log Format" v1, JSON encoding; record layout as in David Safford's
reference ``cel.h`` and the cc-trusted ``tcgcel.py`` readers): one object per record with
``recnum``, ``pcr``, ``digests`` (``hashAlg`` name and hex ``digest`` per PCR bank: the value the
kernel *extended*, so all-ones for a violation), ``content_type`` ``"ima_template"`` and
``content`` {``template_name``, ``template_data`` (hex)}. imaguard's classification is attached in
``x-imaguard`` (a vendor member: readers that do not know it skip it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from imaguard.report.model import EntryReport

__all__ = ["CelRecord", "cel_document"]

CONTENT_IMA_TEMPLATE = "ima_template"


@dataclass(frozen=True, slots=True)
class CelRecord:
    """One IMA log entry as CEL needs it: its raw template, the digests extended."""

    pcr: int
    template_name: str
    template_data: bytes
    sha1: bytes  # extended into the sha1 bank
    sha256: bytes  # extended into the sha256 bank


def cel_document(records: Sequence[CelRecord], entries: Sequence[EntryReport]) -> list[dict[str, Any]]:
    if len(records) != len(entries):
        raise ValueError("one report entry per CEL record")
    out: list[dict[str, Any]] = []
    for n, (rec, entry) in enumerate(zip(records, entries, strict=True)):
        out.append({
            "recnum": n,
            "pcr": rec.pcr,
            "digests": [{"hashAlg": "sha1", "digest": rec.sha1.hex()},
                        {"hashAlg": "sha256", "digest": rec.sha256.hex()}],
            "content_type": CONTENT_IMA_TEMPLATE,
            "content": {"template_name": rec.template_name, "template_data": rec.template_data.hex()},
            "x-imaguard": {"class": str(entry.klass), "path": entry.to_json()["path"], "digest": entry.digest,
                           "packages": [p.to_json() for p in entry.packages],
                           "signature": entry.to_json()["signature"]},
        })  # fmt: skip
    return out
