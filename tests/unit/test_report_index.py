"""The digest index queries the report needs: by path, full entries (source package), every file."""

from __future__ import annotations

import hashlib

from imaguard.digests import HashAlgo
from imaguard.packages.index import DigestIndex
from imaguard.packages.model import Evidence, FileKind, InstalledPackage, PackageFile


def _file(path: bytes, content: bytes) -> PackageFile:
    return PackageFile(path, FileKind.REGULAR, Evidence.REPO_VERIFIED, hashlib.sha256(content).digest(),
                       HashAlgo.SHA256)  # fmt: skip


def test_path_and_full_lookups_carry_the_source_package(tmp_path):
    with DigestIndex.open(tmp_path) as index:
        index.replace_package(InstalledPackage("python3.11-minimal", "3.11.2-6", "amd64", "python3.11", "3.11.2-6"),
                              [_file(b"/usr/bin/python3.11", b"py"), _file(b"/usr/lib/x.so", b"so")])  # fmt: skip
        index.replace_package(InstalledPackage("other", "1", "all"), [_file(b"/usr/lib/x.so", b"other-so")])
        (hit,) = index.lookup_path(b"/usr/bin/python3.11")
        assert (hit.name, hit.version, hit.source_name, hit.source_version) == (
            "python3.11-minimal", "3.11.2-6", "python3.11", "3.11.2-6")  # fmt: skip
        assert hit.digest == hashlib.sha256(b"py").digest()
        assert [h.name for h in index.lookup_path(b"/usr/lib/x.so")] == ["other", "python3.11-minimal"]
        assert index.lookup_path(b"/usr/bin/none") == []
        assert index.lookup_full(hashlib.sha256(b"so").digest())[0].source_name == "python3.11"
        assert [e.path for e in index.iter_files()] == [b"/usr/bin/python3.11", b"/usr/lib/x.so", b"/usr/lib/x.so"]
