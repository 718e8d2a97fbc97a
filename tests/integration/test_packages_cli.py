"""`imaguard packages list|files|verify|index|owner` on a real dpkg root installed from a signed repo."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from debworld import IGT_1, make_keys, make_world

from imaguard.cli.main import main

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with make_keys(tmp_path_factory.mktemp("gnupg")) as keys:
        yield make_world(tmp_path_factory.mktemp("w"), keys, repo_debs=["igt-1.0"], installed=["igt-1.0"],
                         cached=["igt-1.0"])


def _run(capsys, *argv):
    code = main([*argv, "--json"])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, json.loads(out.out)


def _common(world):
    return [*world.root_args, "--state-dir", str(world.state), "--no-fetch"]


def test_list_and_files(world, capsys):
    code, doc = _run(capsys, "packages", "list", *_common(world))
    assert code == 0
    assert [p["name"] for p in doc["packages"]] == ["igt"]
    assert doc["packages"][0]["version"] == "1.0"
    code, doc = _run(capsys, "packages", "files", "igt", *_common(world))
    assert code == 0
    files = {os.fsencode(f["path"]): f for f in doc["files"]}
    for path, content in IGT_1.items():
        entry = files[path]
        if content.startswith(b"->"):
            assert entry["link_target"] == os.fsdecode(content[2:])
            continue
        assert entry["evidence"] == "repo-verified"
        assert entry["digest"] == hashlib.sha256(content).hexdigest()
    assert files[b"/etc/igt.conf"]["config"] is True


def test_verify_reports_a_modified_file_with_both_digests(world, capsys, tmp_path):
    code, doc = _run(capsys, "packages", "verify", *_common(world))
    assert code == 0, doc
    assert doc["summary"] == {"ok": len(IGT_1)}
    target = world.root / "usr/bin/igt"
    original = target.read_bytes()
    try:
        target.write_bytes(b"#!/bin/sh\necho changed\n")
        code, doc = _run(capsys, "packages", "verify", "igt", *_common(world))
        assert code == 3
        (bad,) = doc["files"]
        assert bad == {
            "package": "igt=1.0/all", "path": "/usr/bin/igt", "status": "digest-mismatch",
            "evidence": "repo-verified", "algo": "sha256",
            "expected": hashlib.sha256(original).hexdigest(),
            "actual": hashlib.sha256(b"#!/bin/sh\necho changed\n").hexdigest(),
        }
        target.unlink()
        code, doc = _run(capsys, "packages", "verify", "igt", *_common(world))
        assert code == 3
        assert [(f["path"], f["status"]) for f in doc["files"]] == [("/usr/bin/igt", "missing")]
    finally:
        target.write_bytes(original)
        target.chmod(0o755)


def test_human_output_names_both_digests(world, capsys):
    target = world.root / "usr/share/igt/with space"
    original = target.read_bytes()
    try:
        target.write_bytes(b"other\n")
        assert main(["packages", "verify", "igt", *_common(world)]) == 3
        out = capsys.readouterr().out
        assert (f"digest-mismatch  igt: /usr/share/igt/with space [repo-verified] expected sha256:"
                f"{hashlib.sha256(original).hexdigest()} actual sha256:{hashlib.sha256(b'other' + bytes([10])).hexdigest()}") in out
    finally:
        target.write_bytes(original)


def test_index_and_owner_lookup(world, capsys, tmp_path):
    code, doc = _run(capsys, "packages", "index", *_common(world))
    assert code == 0
    assert doc["packages"] == 1
    assert doc["by_evidence"] == {"repo-verified": doc["files"]}  # every file of the world's one package
    assert main(["packages", "index", *_common(world)]) == 0
    assert capsys.readouterr().out == (f"index: 1 packages, {doc['files']} file digests in {doc['index']} "
                                       f"(repo-verified {doc['files']})\n")
    copy = tmp_path / "somewhere"
    copy.write_bytes(IGT_1[b"/usr/share/igt/caf\xe9"])
    code, doc = _run(capsys, "packages", "owner", str(copy), "--state-dir", str(world.state))
    assert code == 0
    assert doc["results"][0]["owners"] == [
        {"package": "igt=1.0/all", "path": "/usr/share/igt/caf\udce9", "evidence": "repo-verified"}
    ]
    stranger = tmp_path / "stranger"
    stranger.write_bytes(b"in no package\n")
    code, doc = _run(capsys, "packages", "owner", str(stranger), "--state-dir", str(world.state))
    assert code == 3
    assert doc["results"][0]["owners"] == []


def test_unknown_package_is_one_clear_line(world, capsys):
    assert main(["packages", "files", "nosuchpkg", *_common(world)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imaguard: error: ")
    assert "nosuchpkg" in err
    assert "Traceback" not in err


def test_verify_real_host_package_agrees(capsys, tmp_path):
    code, doc = _run(capsys, "packages", "verify", "coreutils", "--state-dir", str(tmp_path), "--no-fetch")
    assert code == 0, doc["files"]
    assert doc["summary"]["ok"] > 100


def test_whole_package_workers_report_the_same_as_per_file_workers(world, capsys, monkeypatch):
    import imaguard.cli.packages as cli_packages  # noqa: PLC0415 - the test switches its threshold

    target = world.root / "usr/share/igt/with space"
    original = target.read_bytes()
    try:
        target.write_bytes(b"changed\n")
        per_file = _run(capsys, "packages", "verify", *_common(world), "-j", "2")
        monkeypatch.setattr(cli_packages, "_PER_PACKAGE_MIN", 1)
        per_package = _run(capsys, "packages", "verify", *_common(world), "-j", "2")
    finally:
        target.write_bytes(original)
    assert per_file == per_package
    assert per_file[0] == 3
    assert [f["status"] for f in per_file[1]["files"]] == ["digest-mismatch"]
