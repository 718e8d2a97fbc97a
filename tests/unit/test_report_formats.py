"""Exports: the Keylime runtime policy (schema v1 as Keylime validates it) and CEL JSON records."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from imaguard.digests import HashAlgo
from imaguard.ima.measurements import iter_binary
from imaguard.keys.material import load_certificate
from imaguard.packages.index import IndexEntry
from imaguard.packages.model import Evidence
from imaguard.report.formats.cel import CelRecord, cel_document, extended_digests
from imaguard.report.formats.keylime_policy import keylime_policy, unowned_dirs
from imaguard.report.model import EntryClass, EntryReport

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "tests" / "data" / "lab"


def _entry(path: bytes, content: bytes, algo: HashAlgo = HashAlgo.SHA256) -> IndexEntry:
    digest = hashlib.new(algo.kernel_name, content).digest()
    return IndexEntry("p", "1", "amd64", path, algo, Evidence.REPO_VERIFIED, "p", "1", digest)


def test_policy_lists_both_usr_names_and_leaves_weak_digests_out():
    cert = load_certificate(LAB / "ima-rsa.cert.der")
    files = [_entry(b"/bin/ls", b"ls"), _entry(b"/usr/bin/ls", b"ls2"), _entry(b"/usr/share/a b", b"ab"),
             _entry(b"/etc/x", b"x", HashAlgo.MD5)]  # fmt: skip
    policy, stats = keylime_policy(files, certificates=[cert], exclude_candidates=["/opt", "/etc", "/usr/local"],
                                   boot_aggregate="ab" * 32, timestamp="t")  # fmt: skip
    sha = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    assert policy["digests"] == {
        "/bin/ls": sorted([sha(b"ls"), sha(b"ls2")]), "/usr/bin/ls": sorted([sha(b"ls"), sha(b"ls2")]),
        "/usr/share/a_b": [sha(b"ab")], "boot_aggregate": ["ab" * 32],
    }  # fmt: skip
    # /etc holds a package file (even with only an MD5): not excluded.
    assert policy["excludes"] == ["^/opt/", "^/usr/local/"]
    assert (stats.files, stats.paths, stats.skipped_weak) == (4, 4, 1)
    assert policy["keyrings"] == {"_ima": [hashlib.sha256(cert.der).hexdigest()]}
    keys = json.loads(policy["verification-keys"])
    assert keys["keyids"] == [int.from_bytes(cert.key_id, "big")]
    assert base64.b64decode(keys["pubkeys"][0])[:2] == b"\x30\x82"
    assert policy["meta"] == {"version": 1, "generator": 0, "timestamp": "t"}
    assert set(policy) == {"meta", "release", "digests", "excludes", "keyrings", "ima", "ima-buf", "verification-keys"}
    assert policy["ima"] == {"ignored_keyrings": [], "log_hash_alg": "sha1", "dm_policy": None}


def test_unowned_dirs_look_two_levels_deep():
    assert unowned_dirs(["/usr/local", "/usr", "/opt/"], {b"/usr", b"/usr/bin", b"/opt"}) == ["/usr/local"]


def test_cel_records_carry_extended_digests_and_provenance():
    entries = list(iter_binary((LAB / "binary_runtime_measurements").read_bytes()))
    e = entries[2]
    sha1, sha256 = extended_digests(e.template_digest, e.hashed_data(), e.is_violation)
    assert (sha1, sha256) == (e.template_digest, hashlib.sha256(e.template_data).digest())
    assert extended_digests(bytes(20), b"x", violation=True) == (b"\xff" * 20, b"\xff" * 32)
    report = EntryReport(2, 10, "ima-sig", e.path, str(e.digest), EntryClass.UNKNOWN, (sha1, sha256))
    (rec,) = cel_document([CelRecord(10, e.template_name, e.template_data, sha1, sha256)], [report])
    assert rec["recnum"] == 0
    assert rec["content_type"] == "ima_template"
    assert rec["content"] == {"template_name": "ima-sig", "template_data": e.template_data.hex()}
    assert rec["digests"] == [{"hashAlg": "sha1", "digest": sha1.hex()}, {"hashAlg": "sha256", "digest": sha256.hex()}]
    assert rec["x-imaguard"]["class"] == "unknown"
    assert rec["x-imaguard"]["path"] == "/usr/bin/tpm2"
