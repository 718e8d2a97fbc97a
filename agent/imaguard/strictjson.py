"""JSON of signed and verified documents, read strictly (pure).

``json.loads`` keeps the last of two equal keys and reads ``NaN``/``Infinity``; another parser may
keep the first key or refuse the constant, so one signed document could show a verifier and a
dashboard two different contents. Both are refused here, as ``ValueError`` (what callers of
``json.loads`` already catch for malformed input).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["loads"]


class _DuplicateKeyError(ValueError):
    pass


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(f"the key {key!r} appears twice in one object")
        out[key] = value
    return out


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def loads(data: bytes | str) -> Any:
    """``json.loads`` refusing an object with a key twice and the constants NaN, Infinity, -Infinity."""
    return json.loads(data, object_pairs_hook=_object, parse_constant=_constant)
