"""Exports: the Keylime runtime policy (schema v1 as Keylime validates it) and CEL JSON records."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from imaguard.digests import HashAlgo
from imaguard.ima.measurements import iter_binary
from imaguard.keys.material import load_certificate
from imaguard.packages.index import DigestIndex
from imaguard.packages.model import Evidence, FileKind, InstalledPackage, PackageFile
from imaguard.report.build import extended_of
from imaguard.report.formats.cel import CelRecord, cel_document
from imaguard.report.formats.keylime_policy import keylime_policy
from imaguard.report.model import EntryClass, EntryReport

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "tests" / "data" / "lab"


def test_policy_lists_both_usr_names_and_marks_excludes():
    cert = load_certificate(LAB / "ima-rsa.cert.der")
    sha = lambda b: hashlib.sha256(b).digest()  # noqa: E731
    rows = [(b"/bin/ls", sha(b"ls")), (b"/usr/bin/ls", sha(b"ls2")), (b"/usr/share/a b", sha(b"ab"))]
    policy, stats = keylime_policy(rows, skipped_weak=7, certificates=[cert], exclude_dirs=["/usr/local", "/opt/"],
                                   boot_aggregate="ab" * 32, timestamp="t")  # fmt: skip
    hx = lambda b: sha(b).hex()  # noqa: E731
    assert policy["digests"] == {
        "/bin/ls": sorted([hx(b"ls"), hx(b"ls2")]), "/usr/bin/ls": sorted([hx(b"ls"), hx(b"ls2")]),
        "/usr/share/a_b": [hx(b"ab")], "boot_aggregate": ["ab" * 32],
    }  # fmt: skip
    assert policy["excludes"] == ["^/opt/", "^/usr/local/"]
    assert (stats.files, stats.paths, stats.skipped_weak) == (3, 4, 7)
    assert policy["keyrings"] == {"_ima": [hashlib.sha256(cert.der).hexdigest()]}
    keys = json.loads(policy["verification-keys"])
    assert keys["keyids"] == [int.from_bytes(cert.key_id, "big")]
    assert base64.b64decode(keys["pubkeys"][0])[:2] == b"\x30\x82"
    assert policy["meta"] == {"version": 1, "generator": 0, "timestamp": "t"}
    assert set(policy) == {"meta", "release", "digests", "excludes", "keyrings", "ima", "ima-buf", "verification-keys"}
    assert policy["ima"] == {"ignored_keyrings": [], "log_hash_alg": "sha1", "dm_policy": None}


def test_index_range_query_finds_files_under_a_directory(tmp_path):
    with DigestIndex.open(tmp_path) as idx:
        idx.replace_package(InstalledPackage("p", "1", "all"), [
            PackageFile(b"/usr/local0", FileKind.REGULAR, Evidence.REPO_VERIFIED, b"\1" * 32, HashAlgo.SHA256),
            PackageFile(b"/etc/x", FileKind.REGULAR, Evidence.LOCAL_DB, b"\1" * 16, HashAlgo.MD5)])  # fmt: skip
        assert idx.has_files_under(b"/etc")
        assert not idx.has_files_under(b"/usr/local")  # "/usr/local0" is not under it
        assert not idx.has_files_under(b"/opt/")
        assert list(idx.iter_digests(HashAlgo.SHA256)) == [(b"/usr/local0", b"\1" * 32)]


def test_cel_records_carry_extended_digests_and_provenance():
    entries = list(iter_binary((LAB / "binary_runtime_measurements").read_bytes()))
    e = entries[2]
    sha1, sha256 = extended_of(e.hashed_data(), e.is_violation)
    assert (sha1, sha256) == (e.template_digest, hashlib.sha256(e.template_data).digest())
    assert extended_of(b"x", violation=True) == (b"\xff" * 20, b"\xff" * 32)
    report = EntryReport(2, 10, "ima-sig", e.path, str(e.digest), EntryClass.UNKNOWN, (sha1, sha256), e.template_data)
    (rec,) = cel_document([CelRecord(10, e.template_name, e.template_data, sha1, sha256)], [report])
    assert rec["recnum"] == 0
    assert rec["content_type"] == "ima_template"
    assert rec["content"] == {"template_name": "ima-sig", "template_data": e.template_data.hex()}
    assert rec["digests"] == [{"hashAlg": "sha1", "digest": sha1.hex()}, {"hashAlg": "sha256", "digest": sha256.hex()}]
    assert rec["x-imaguard"]["class"] == "unknown"
    assert rec["x-imaguard"]["path"] == "/usr/bin/tpm2"
