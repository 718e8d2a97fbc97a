"""Bundle payloads: entries are parsed when asked for, and a malformed one is an error of that entry."""

from __future__ import annotations

import base64
import json

import pytest

from imaguard.digests import HashAlgo
from imaguard.errors import FormatError
from imaguard.ima.xattr import ImaSignature
from imaguard.sign.bundle import BUNDLE_SCHEMA, Bundle

SIG = ImaSignature(HashAlgo.SHA256, b"\x01\x02\x03\x04", b"\xaa" * 256)


def _payload(files: list[dict[str, object]]) -> bytes:
    doc = {"schema": BUNDLE_SCHEMA, "package": {"name": "p", "version": "1", "architecture": "amd64"}, "files": files}
    return json.dumps(doc).encode()


def _item(path: bytes, sha: str = "ab" * 32, ima: str = SIG.to_xattr().hex()) -> dict[str, object]:
    return {"path_b64": base64.b64encode(path).decode(), "sha256": sha, "ima": ima}


def test_entries_parse_to_the_values_in_the_payload():
    b = Bundle.from_payload(_payload([_item(b"/usr/bin/a"), _item(b"/usr/bin/\xff")]), "p.bundle")
    assert len(b) == 2
    entry = b.entry(b"/usr/bin/\xff")
    assert entry is not None
    assert (entry.path, entry.sha256, entry.signature) == (b"/usr/bin/\xff", b"\xab" * 32, SIG)
    assert b.entry(b"/usr/bin/none") is None


def test_a_malformed_entry_fails_when_its_file_is_asked_for_not_before():
    b = Bundle.from_payload(_payload([_item(b"/ok"), _item(b"/bad-hex", ima="zz"), _item(b"/short", sha="ab"),
                                      _item(b"/digest-only", ima="0404" + "00" * 32)]), "p.bundle")
    assert b.entry(b"/ok") is not None
    with pytest.raises(FormatError, match="malformed bundle entry"):
        b.entry(b"/bad-hex")
    with pytest.raises(FormatError, match="sha256 must be 32 bytes"):
        b.entry(b"/short")
    with pytest.raises(FormatError, match="not an IMA signature"):
        b.entry(b"/digest-only")


@pytest.mark.parametrize("files", [
    [{"path_b64": "not base64!", "sha256": "ab" * 32, "ima": "00"}],
    [{"path_b64": "L2E=", "sha256": 5, "ima": "00"}],
    [{"path_b64": "L2E=", "ima": "00"}],
])
def test_a_payload_without_the_entry_structure_is_malformed(files):
    with pytest.raises(FormatError, match=r"p\.bundle: (malformed bundle payload|bundle entry digests)"):
        Bundle.from_payload(_payload(files), "p.bundle")
