"""What a consistent forger does after changing a report's entries: recompute the summary a
dashboard reads (``log`` counts, templates and boot_aggregate, ``counts``) from them, so that
``report verify`` judges the change itself and not a stale count (``summary-mismatch``)."""

from __future__ import annotations

from collections import Counter

from imaguard.report.model import EntryClass, ProcessClass, SignatureStatus


def resummarized(doc: dict) -> dict:
    entries = doc["entries"]
    classes = Counter(e["class"] for e in entries)
    first = entries[0] if entries else None
    doc["log"].update(
        entries=len(entries), violations=classes["violation"], templates=dict(Counter(e["template"] for e in entries)),
        boot_aggregate=first["digest"] if first and first["class"] == "boot-aggregate" else None,
    )  # fmt: skip
    signatures = Counter(e["signature"]["status"] for e in entries)
    processes = Counter(p["class"] for p in doc["processes"])
    doc["counts"] = {
        "entries": {str(c): classes[str(c)] for c in EntryClass},
        "processes": {str(c): processes[str(c)] for c in ProcessClass},
        "signatures": {str(s): signatures[str(s)] for s in SignatureStatus},
    }
    return doc
