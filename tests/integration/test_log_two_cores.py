"""``imaguard log --summary`` of a long saved list on two cores: the same output as one process,
the same error, and no process left behind when it is interrupted or killed."""

from __future__ import annotations

import io
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imaguard.ima.splitreplay import SPLIT_MIN_BYTES
from logbuilder import generate, write_logs

IMAGUARD = str(Path(sys.executable).with_name("imaguard"))
SUMMARY = ["log", "--replay", "--summary"]


@pytest.fixture(scope="module")
def long_list(tmp_path_factory) -> Path:
    out = io.BytesIO()
    write_logs(generate(6_000), out)
    path = tmp_path_factory.mktemp("lists") / "long.bin"
    path.write_bytes(out.getvalue())
    assert path.stat().st_size >= SPLIT_MIN_BYTES  # the two-core path is taken
    return path


def _run(args: list[str], stdin: Path | None = None) -> subprocess.CompletedProcess[str]:
    with (stdin or Path("/dev/null")).open("rb") as f:
        return subprocess.run([IMAGUARD, *args], stdin=f, capture_output=True, text=True, check=False)


def test_the_same_json_and_text_as_one_process(long_list):
    for fmt in (["--json"], []):
        two = _run([*SUMMARY, *fmt, "--file", str(long_list)])
        one = _run([*SUMMARY, *fmt, "--file", "-"], stdin=long_list)  # a pipe: one process
        assert (two.returncode, one.returncode, two.stderr, one.stderr) == (0, 0, "", "")
        if fmt:
            a, b = json.loads(two.stdout), json.loads(one.stdout)
            assert a.pop("source") == str(long_list)
            assert b.pop("source") == "<stdin>"
            assert a == b
            assert a["count"] == 6_000
            assert a["boot_aggregate"].startswith("sha256:")
        else:
            assert two.stdout.replace(str(long_list), "<stdin>") == one.stdout


def test_the_same_error_as_one_process(long_list, tmp_path):
    data = bytearray(long_list.read_bytes())
    data[len(data) // 2] ^= 0x40  # inside some record past the first megabyte's half
    broken = tmp_path / "broken.bin"
    broken.write_bytes(data)
    two = _run([*SUMMARY, "--json", "--file", str(broken)])
    one = _run([*SUMMARY, "--json", "--file", "-"], stdin=broken)
    assert two.returncode == one.returncode == 1
    assert two.stderr.replace(str(broken), "<stdin>") == one.stderr
    assert "(at byte offset " in two.stderr
    assert two.stdout.replace(str(broken), "<stdin>") == one.stdout


@pytest.fixture(scope="module")
def very_long_list(long_list, tmp_path_factory) -> Path:
    """60 copies of the long list: records need not chain, so this is 360,000 valid records."""
    path = tmp_path_factory.mktemp("lists") / "very-long.bin"
    path.write_bytes(long_list.read_bytes() * 60)
    return path


def _child_of(proc: subprocess.Popen[bytes]) -> psutil.Process:
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = parent.children()
        if children:
            return children[0]
        time.sleep(0.01)
    pytest.fail("imaguard log started no second process on a long saved list")


def _gone(p: psutil.Process, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                return True  # dead; its new parent has not reaped it yet
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


@pytest.mark.slow
def test_interrupted_it_stops_both_processes_and_says_so(very_long_list):
    proc = subprocess.Popen([IMAGUARD, *SUMMARY, "--file", str(very_long_list)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    child = _child_of(proc)
    proc.send_signal(signal.SIGINT)  # the parent only, as `kill -INT` would
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert err.decode() == "imaguard: interrupted\n"
    assert out == b""
    assert _gone(child, within=0.2)  # reaped before the parent exited


@pytest.mark.slow
def test_killed_outright_it_leaves_no_reader_behind(very_long_list):
    proc = subprocess.Popen([IMAGUARD, *SUMMARY, "--file", str(very_long_list)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    child = _child_of(proc)
    time.sleep(0.1)  # past the child's start-up (where it asks to die with its parent)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert _gone(child, within=0.3)  # it would read on for a second more


@pytest.mark.slow
def test_a_second_process_killed_midway_is_an_error_not_a_verdict(very_long_list):
    """As the OOM killer would: the reader of the sha256 bank dies; one JSON document, exit 1."""
    proc = subprocess.Popen([IMAGUARD, *SUMMARY, "--json", "--file", str(very_long_list)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    child = _child_of(proc)
    time.sleep(0.1)
    child.kill()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    message = f"{very_long_list}: the second replay process ended without a result (signal 9)"
    assert err.decode() == f"imaguard: error: {message}\n"
    doc = json.loads(out)
    assert doc["entries"] == []
    assert doc["error"] == {"reason": "replay-failed", "message": message, "offset": None}
    assert "replay" not in doc


def _ignoring(signum: int):
    def pre() -> None:
        signal.signal(signum, signal.SIG_IGN)

    return pre


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGINT, signal.SIGQUIT])
def test_a_signal_ignored_by_whoever_started_it_stays_ignored(very_long_list, signum):
    """`nohup imaguard …` (SIGHUP), a script's background job (SIGINT, SIGQUIT): the signal sent to the
    whole group stops neither process, and the result is the one-process result."""
    proc = subprocess.Popen([IMAGUARD, *SUMMARY, "--json", "--file", str(very_long_list)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=_ignoring(signum))  # noqa: PLW1509 - the test starts no threads
    _child_of(proc)
    time.sleep(0.1)  # past the child's start-up
    os.killpg(proc.pid, signum)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (0, b"")
    one = _run([*SUMMARY, "--json", "--file", "-"], stdin=very_long_list)
    a, b = json.loads(out), json.loads(one.stdout)
    a.pop("source"), b.pop("source")
    assert a == b


@pytest.fixture
def readable_by_nobody(long_list):
    with tempfile.TemporaryDirectory(dir="/tmp") as shared:  # pytest's own tmp is root-only
        Path(shared).chmod(0o755)
        listed = Path(shared) / "long.bin"
        listed.write_bytes(long_list.read_bytes())
        listed.chmod(0o644)
        yield listed


def test_where_no_second_process_may_start_it_replays_in_one(readable_by_nobody):
    """Under a process limit (a container's pids.max, RLIMIT_NPROC) fork fails with EAGAIN: the same
    replay, in one process, instead of an error."""
    listed = readable_by_nobody

    def as_nobody_with_one_process() -> None:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))  # this process: no second one

    limited = subprocess.run([IMAGUARD, *SUMMARY, "--json", "--file", str(listed)], capture_output=True, text=True,
                             preexec_fn=as_nobody_with_one_process, check=False, cwd="/")  # fmt: skip
    assert (limited.returncode, limited.stderr) == (0, "")
    one = _run([*SUMMARY, "--json", "--file", "-"], stdin=listed)
    a, b = json.loads(limited.stdout), json.loads(one.stdout)
    a.pop("source"), b.pop("source")
    assert a == b
