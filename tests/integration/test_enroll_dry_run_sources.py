"""``enroll --dry-run`` plans what the real run does, whatever the source; a bundle location that is
no directory is a usage error before any file is touched.

Regressions (audit): the dry run asked the source for no signature, so ``--source vendor`` and
``bundle:DIR`` printed ``would-sign`` for files the real run skipped (``no-vendor-signature``,
``no-bundle``) or refused (``bundle-untrusted``, ``bundle-signature-invalid``), exit 0 instead of 1;
and ``bundle:/nonexistent`` (or a regular file) exited 0 with every package ``no-bundle``.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import pytest
from debworld import make_keys, make_world, reserialise_bundle

from imaguard.cli.main import main
from imaguard_keyring.cli import main as keyring_main

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.root

IGT = "/usr/bin/igt"


@pytest.fixture
def world(tmp_path):
    with make_keys(tmp_path / "gnupg") as keys:
        yield make_world(tmp_path / "w", keys, repo_debs=["igt-1.0"], installed=["igt-1.0"], cached=["igt-1.0"])


def _xattrs(root: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for p in sorted(root.rglob("*")):
        try:
            out[str(p)] = os.getxattr(p, "security.ima", follow_symlinks=False)
        except OSError:
            out[str(p)] = None
    return out


def _bundle(world, out: Path, ima, authority) -> Path:
    out.mkdir()
    code = keyring_main(["bundle", "igt", "--ima-key", str(ima.key), "--ima-cert", str(ima.cert_pem),
                         "--authority-key", str(authority.key), "--authority-cert", str(authority.cert_pem),
                         *world.root_args, "--state-dir", str(world.state), "--out", str(out)])  # fmt: skip
    assert code == 0
    return out


def _source_args(case: str, world, keypair, tmp_path: Path) -> list[str]:
    """The --source and certificate options of one case (the bundles it needs are made here)."""
    ima, authority = keypair("rsa2048", "bundle-ima"), keypair("p256", "authority")
    bundle_certs = ["--cert", str(ima.cert_pem), "--authority-cert", str(authority.cert_pem)]
    if case == "vendor":  # a deb ships no IMA signatures
        return ["--source", "vendor", "--cert", str(ima.cert_pem)]
    if case == "local":
        return ["--source", f"local:{ima.key}", "--cert", str(ima.cert_pem)]
    if case == "bundle":
        return ["--source", f"bundle:{_bundle(world, tmp_path / 'b', ima, authority)}", *bundle_certs]
    if case == "bundle-missing":  # a directory without this package's bundle
        (tmp_path / "empty").mkdir()
        return ["--source", f"bundle:{tmp_path / 'empty'}", *bundle_certs]
    if case == "bundle-tampered":
        directory = _bundle(world, tmp_path / "b", ima, authority)
        reserialise_bundle(directory / "igt_1.0_all.bundle")
        return ["--source", f"bundle:{directory}", *bundle_certs]
    if case == "bundle-other-ima-key":  # genuine bundle, but its IMA signatures are not by --cert's key
        directory = _bundle(world, tmp_path / "b", keypair("rsa2048", "not-the-ima-key"), authority)
        return ["--source", f"bundle:{directory}", *bundle_certs]
    raise AssertionError(case)


# case -> (exit code, outcome and reason of /usr/bin/igt): what the real run does.
CASES = {
    "vendor": (0, ("skipped", "no-vendor-signature")),
    "local": (0, ("signed", "")),
    "bundle": (0, ("signed", "")),
    "bundle-missing": (0, ("skipped", "no-bundle")),
    "bundle-tampered": (1, ("refused", "bundle-untrusted")),
    "bundle-other-ima-key": (1, ("refused", "bundle-signature-invalid")),
}


def _outcomes(doc) -> dict[str, tuple[str, str]]:
    return {f["path"]: (f["outcome"], f.get("reason", "")) for f in doc["files"]}


@pytest.mark.parametrize("case", CASES)
def test_dry_run_plans_exactly_what_the_real_run_then_does(world, keypair, tmp_path, run, case):
    argv = ["enroll", *_source_args(case, world, keypair, tmp_path), *world.root_args,
            "--state-dir", str(world.state), "--no-fetch", "--verbose"]  # fmt: skip
    code, want = CASES[case]
    before = _xattrs(world.root)
    dry_code, dry, _ = run(*argv, "--dry-run")
    assert (dry_code, dry["exit_code"], dry["dry_run"]) == (code, code, True)
    assert _outcomes(dry)[IGT] == want
    assert _xattrs(world.root) == before  # the dry run wrote nothing
    assert not (world.state / "enroll.journal").exists()
    real_code, real, _ = run(*argv)
    assert real_code == code
    assert real["packages_resumed_from_journal"] == 0  # the dry run left no journal to skip work by
    assert (real["summary"], real["files"]) == (dry["summary"], dry["files"])
    written = {p for p, v in _xattrs(world.root).items() if v != before[p]}
    assert written == ({str(world.root / IGT.lstrip("/"))} if want[0] == "signed" else set())


PLANS = {  # case -> (the would-sign line, the summary row of /usr/bin/igt)
    "vendor": (None, "         1  skipped         no-vendor-signature"),
    "bundle-missing": (None, "         1  skipped         no-bundle"),
    "bundle": ("would-sign     igt=1.0/all /usr/bin/igt", "         1  signed          "),
}


@pytest.mark.parametrize("case", PLANS)
def test_dry_run_prints_would_sign_only_for_what_would_be_signed(world, keypair, tmp_path, capsys, case):
    line, row = PLANS[case]
    argv = ["enroll", *_source_args(case, world, keypair, tmp_path), *world.root_args,
            "--state-dir", str(world.state), "--no-fetch", "--dry-run"]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert [s for s in out if s.startswith("would-sign")] == ([line] if line else [])
    summary = [i for i, s in enumerate(out) if s.startswith("enroll (dry run: nothing written): 10 files, ")]
    assert len(summary) == 1
    assert row in out[summary[0] + 1 :]


def _regular_file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_bytes(b"not a directory\n")
    return path


LOCATIONS = {  # case -> (the location, made under tmp_path {t}, and the error message)
    "nonexistent": (
        lambda t: t / "nonexistent", "bundle location '{t}/nonexistent': {t}/nonexistent: No such file or directory"),
    "file-url-nonexistent": (lambda t: f"file://{t}/nonexistent",
                             "bundle location 'file://{t}/nonexistent': {t}/nonexistent: No such file or directory"),
    "regular-file": (_regular_file, "bundle location '{t}/a-file': {t}/a-file: not a directory"),
    "file-url-regular-file": (lambda t: f"file://{_regular_file(t)}",
                              "bundle location 'file://{t}/a-file': {t}/a-file: not a directory"),
    "under-a-regular-file": (lambda t: f"{_regular_file(t)}/sub",
                             "bundle location '{t}/a-file/sub': {t}/a-file/sub: Not a directory"),
}  # fmt: skip


@pytest.mark.parametrize("case", LOCATIONS)
def test_a_bundle_location_that_is_no_directory_is_a_usage_error(world, keypair, tmp_path, capsys, case):
    location, message = LOCATIONS[case]
    expected = message.format(t=tmp_path)
    ima, authority = keypair("rsa2048", "bundle-ima"), keypair("p256", "authority")
    before = _xattrs(world.root)
    for dry_run in ([], ["--dry-run"]):
        argv = ["enroll", "--source", f"bundle:{location(tmp_path)}", "--cert", str(ima.cert_pem),
                "--authority-cert", str(authority.cert_pem), *world.root_args, "--state-dir", str(world.state),
                "--no-fetch", *dry_run]  # fmt: skip
        capsys.readouterr()
        assert main([*argv, "--json"]) == 2
        out, err = capsys.readouterr()
        assert json.loads(out) == {"error": {"reason": "bundle-location", "message": expected}}
        assert err == f"imaguard: error: {expected}\n"
        assert main(argv) == 2  # the text form: the same one line
        assert capsys.readouterr() == ("", f"imaguard: error: {expected}\n")
        assert _xattrs(world.root) == before
        assert not (world.state / "enroll.journal").exists()


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]], ids=["real", "dry-run"])
def test_a_bundle_url_of_another_scheme_is_a_usage_error_before_any_file(world, keypair, run, dry_run):
    # Was raised by the first file to sign: after the journal began, and never in a dry run (exit 0).
    ima, authority = keypair("rsa2048", "bundle-ima"), keypair("p256", "authority")
    before = _xattrs(world.root)
    code, doc, err = run("enroll", "--source", "bundle:ftp://x", "--cert", str(ima.cert_pem), "--authority-cert",
                         str(authority.cert_pem), *world.root_args, "--state-dir", str(world.state), "--no-fetch",
                         *dry_run)  # fmt: skip
    message = "bundle location 'ftp://x': use a directory or an http(s) URL"
    assert (code, doc, err) == (2, {"error": {"reason": "usage", "message": message}}, f"imaguard: error: {message}\n")
    assert _xattrs(world.root) == before
    assert not (world.state / "enroll.journal").exists()
