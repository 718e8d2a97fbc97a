"""A malformed dpkg database under ``--root`` is one FormatError naming the file, never a crash.

Regressions: python-apt's ``TagFile`` segfaulted on a field name that is not UTF-8 (random bytes,
seed 4), and a missing ``Version:``, a non-UTF-8 value or a NUL in a field name were tracebacks
(KeyError, UnicodeDecodeError). Anything that might still reach python-apt runs in a subprocess,
so a crash fails the test instead of killing pytest.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imaguard.cli.main import main
from imaguard.errors import FormatError
from imaguard.packages import dpkgdb

STATUS = "var/lib/dpkg/status"
GOOD = (
    b"Package: bash\n"
    b"Essential: yes\n"
    b"Status: install ok installed\n"
    b"Architecture: amd64\n"
    b"Source: bash (5.2.15-2)\n"
    b"Version: 5.2.15-2+b8\n"
    b"Conffiles:\n"
    b" /etc/bash.bashrc 89269e1298235f1b12b4c16e4065ad0d\n"
    b" /etc/skel/.bashrc newconffile\n"
    b" /etc/old 22bfb8c1dd94b5f3813a2b25da67463f obsolete\n"
    b"Description: GNU Bourne Again SHell\n"
    b" Bash is an sh-compatible command language interpreter.\n"
    b" .\n"
    b" Package: not-a-field\n"
    b"\n"
    b"Package: gone\n"
    b"Status: deinstall ok config-files\n"
    b"Version: 1\n"
    b"\n"
    b"Package: libc6\n"
    b"Status: install ok unpacked\n"
    b"Multi-Arch: same\n"
    b"Architecture: i386\n"
    b"Source: glibc\n"
    b"Version: 2.36-9\n"
)
MISSING_VERSION = b"Package: foo\nStatus: install ok installed\nArchitecture: amd64\n"


def _root(tmp_path: Path, status: bytes) -> Path:
    (tmp_path / STATUS).parent.mkdir(parents=True)
    (tmp_path / STATUS).write_bytes(status)
    return tmp_path


def _parse(data: bytes) -> list[dpkgdb.DpkgPackage]:
    return dpkgdb.parse_status(data, name="status")


def test_a_well_formed_status_file():
    bash, libc = _parse(b"\n\n" + GOOD)  # leading empty lines, no trailing one: dpkg reads both
    assert (bash.name, bash.version, bash.architecture) == ("bash", "5.2.15-2+b8", "amd64")
    assert (bash.source_name, bash.source_version) == ("bash", "5.2.15-2")
    assert bash.conffiles == {
        b"/etc/bash.bashrc": bytes.fromhex("89269e1298235f1b12b4c16e4065ad0d"),
        b"/etc/skel/.bashrc": None,
        b"/etc/old": bytes.fromhex("22bfb8c1dd94b5f3813a2b25da67463f"),
    }
    assert (libc.name, libc.architecture, libc.source_name, libc.source_version) == ("libc6", "i386", "glibc", "2.36-9")
    assert _parse(b"") == [] == _parse(b"\n\n")


def test_the_host_status_file_reads_as_python_apt_reads_it(tmp_path):
    """Same packages as the TagFile parser this replaced, on a real, large status file."""
    apt_pkg = pytest.importorskip("apt_pkg")
    path = Path("/var/lib/dpkg/status")
    if not path.is_file():
        pytest.skip("no dpkg status file on this host")
    data = path.read_bytes()
    ours = {(p.name, p.architecture): p for p in _parse(data)}
    theirs = {}
    # Both parsers read the same snapshot: dpkg (unattended-upgrades on a fresh CI machine) may
    # rewrite the host's file between two reads of it.
    snapshot = tmp_path / "status"
    snapshot.write_bytes(data)
    with snapshot.open("rb") as fh:
        for section in apt_pkg.TagFile(fh, bytes=True):
            s = dict(section)
            status = s.get("Status", b"").split()
            if len(status) == 3 and status[2] in dpkgdb._FILE_STATES:
                src, _, src_ver = s.get("Source", b"").decode().partition(" ")
                key = (s["Package"].decode(), s.get("Architecture", b"").decode())
                theirs[key] = (s["Version"].decode(), src or key[0], src_ver.strip("()") or s["Version"].decode())
    assert {k: (p.version, p.source_name, p.source_version) for k, p in ours.items()} == theirs


@pytest.mark.parametrize(
    ("status", "message"),
    [
        pytest.param(MISSING_VERSION, r"status:1: package 'foo' has no Version field", id="no-version"),
        pytest.param(
            b"Package: a\nStatus: install ok installed\nVersion: 1\n\nPackage: b\nStatus: install ok installed\n"
            b"Version: 1.\xff\n",
            r"status:5: Version is not ASCII",
            id="version-not-utf8",
        ),
        pytest.param(b"Package: \xe9\nStatus: install ok installed\nVersion: 1\n", r"status:1: Package is not ASCII",
                     id="package-not-utf8"),
        pytest.param(b"Package: a\nStatus: install ok \xff\nVersion: 1\n", r"status:1: bad Status", id="status-not-utf8"),
        pytest.param(bytes(range(256)) * 4, r"status:1: not a field", id="all-bytes"),
        pytest.param(b"Package: a\nX\0: b\n", r"status:2: not a field", id="nul-in-field-name"),
        pytest.param(b"Package: a\nno colon here\n", r"status:2: not a field", id="no-colon"),
        pytest.param(b"Package: a\n  \nVersion: 1\n", r"status:2: not a field", id="whitespace-only-line"),
        pytest.param(b"Package: a\n\n continued\n", r"status:2: not a field", id="continuation-opens-paragraph"),
        pytest.param(b" Package: a\n", r"status:1: not a field", id="continuation-first"),
        pytest.param(b"Package: a\nVersion: 1\nVersion: 2\n", r"status:1: field Version appears twice", id="dup"),
        pytest.param(b"Version: 1\nStatus: install ok installed\n", r"status:1: paragraph without a Package",
                     id="no-package"),
        pytest.param(b"Package: a\nStatus: install ok\nVersion: 1\n", r"status:1: bad Status", id="status-2-words"),
        pytest.param(b"Package: ../../x\nStatus: install ok installed\nVersion: 1\n", r"bad package name",
                     id="name-traverses"),
        pytest.param(b"Package: a\nStatus: install ok installed\nVersion: 1/../../x\n", r"bad version",
                     id="version-traverses"),
        pytest.param(b"Package: a\nStatus: install ok installed\nVersion: 1\nArchitecture: ../x\n",
                     r"bad architecture", id="arch-traverses"),
        pytest.param(b"Package: a\nStatus: install ok installed\nVersion: 1\nSource: b (1\n", r"bad Source",
                     id="source-unclosed"),
        pytest.param(b"Package: a\nStatus: install ok installed\nVersion: 1\nConffiles:\n etc/x newconffile\n",
                     r"status:1: bad Conffiles line", id="conffile-relative"),
        pytest.param(b"Package: a\nStatus: install ok installed\nVersion: 1\nConffiles:\n /etc/x\n",
                     r"status:1: bad Conffiles line", id="conffile-no-md5"),
    ],
)
def test_malformed_status_is_a_format_error(status, message):
    with pytest.raises(FormatError, match=message):
        _parse(status)


def test_the_error_names_the_line_of_the_paragraph():
    data = GOOD + b"\n" + MISSING_VERSION
    line = GOOD.count(b"\n") + 2
    with pytest.raises(FormatError, match=rf"^status:{line}: package 'foo' has no Version"):
        _parse(data)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 6])
def test_regression_random_status_is_a_clean_error_in_a_subprocess(tmp_path, seed):
    """Seed 4 made python-apt's TagFile dereference NULL (exit 139): a field name that is not UTF-8."""
    root = _root(tmp_path, random.Random(seed).randbytes(3000))  # noqa: S311 - the reviewer's bytes, not a secret
    code = "import sys; from imaguard.cli.main import main; sys.exit(main(sys.argv[1:]))"
    argv = ["packages", "list", "--root", str(root), "--state-dir", str(tmp_path / "st"), "--no-fetch", "--json"]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, env=env, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert doc["error"]["reason"] == "malformed"
    assert doc["error"]["message"].startswith(f"{root / STATUS}:")
    assert b"Traceback" not in proc.stderr


def test_packages_list_prints_one_json_error_and_exits_1(tmp_path, capsys):
    pytest.importorskip("apt_pkg")  # the deb source needs python-apt even to refuse a status file
    root = _root(tmp_path / "r", MISSING_VERSION)
    argv = ["packages", "list", "--root", str(root), "--state-dir", str(tmp_path / "st"), "--no-fetch", "--json"]
    assert main(argv) == 1
    out = capsys.readouterr()
    doc = json.loads(out.out)  # exactly one document: json.loads refuses trailing data
    assert doc == {
        "error": {"reason": "malformed", "message": f"{root / STATUS}:1: package 'foo' has no Version field"}
    }
    assert "Traceback" not in out.err


def test_lists_and_diversions_refuse_paths_open_would_refuse():
    with pytest.raises(FormatError, match=r"x.list:2: not an absolute, NUL-free path"):
        dpkgdb.parse_list(b"/usr\nusr/bin\n", name="x.list")
    with pytest.raises(FormatError, match=r"x.list:1: not an absolute"):
        dpkgdb.parse_list(b"/usr/b\0in\n", name="x.list")
    with pytest.raises(FormatError, match="NUL-free"):
        dpkgdb.parse_diversions(b"/a\n/b\0c\npkg\n", name="d")


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _mutations(seed: bytes):
    return st.tuples(st.integers(0, len(seed)), st.integers(0, 40), st.binary(max_size=12)).map(
        lambda t: seed[: t[0]] + t[2] + seed[t[0] + t[1] :]
    )


@FUZZ
@given(st.one_of(st.binary(max_size=400), _mutations(GOOD)))
def test_fuzz_status(data):
    with contextlib.suppress(FormatError):
        for pkg in _parse(data):
            assert "/" not in pkg.name + pkg.version + pkg.architecture


def test_large_garbage_is_refused_in_linear_time():
    # The scan must not backtrack: long runs of blanks, spaces and name characters.
    for data in (b"\n" * 200_000 + b" x", b"a" * 200_000, b"Package: a\n" + b" " * 200_000 + b"\n",
                 b"Package: a\nStatus: install ok installed\nVersion: 1\nSource: b (" + b"c" * 200_000):
        with pytest.raises(FormatError):
            _parse(data)


def test_fields_dpkg_installs_from_local_packages_are_read_past():
    """Regression (review): dpkg-deb -b builds, and dpkg -i copies into the status file, fields named
    "#Recommends", with non-ASCII or control bytes, or with blanks before the colon; the parser
    refused the whole file, so the host could no longer enroll. apt_pkg segfaulted on "\\xce:"."""
    for extra in (b"#Recommends: bar", b"Fi\xc3\xa9ld: x", b"X\x01Y: z", b"\xce: x", b"-Field: y", b"Odd : v"):
        status = (b"Package: foo\nStatus: install ok installed\nVersion: 1.0-1\nArchitecture: all\n" + extra
                  + b"\n continued\nDescription: x\n")  # fmt: skip
        (pkg,) = _parse(status)
        assert (pkg.name, pkg.version, pkg.architecture) == ("foo", "1.0-1", "all")
