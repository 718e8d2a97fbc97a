"""sign/parallel.run_jobs: the forked pool behind sign, verify, hash, enroll and packages verify."""

from __future__ import annotations

import dataclasses
import os
import pickle
import signal

import pytest

from imaguard.errors import HostStateError
from imaguard.sign.apply import Outcome
from imaguard.sign.files import FileResult
from imaguard.sign.parallel import run_jobs
from imaguard.sign.plan import Action

PARENT = os.getpid()


def _square_and_pid(n: int) -> tuple[int, int]:
    return n * n, os.getpid()


def test_results_come_back_in_order_and_from_more_than_one_process():
    items = list(range(5000))
    out = list(run_jobs(_square_and_pid, items, jobs=2))
    assert [v for v, _ in out] == [n * n for n in items]
    assert len({pid for _, pid in out}) == 2  # the parent and one forked worker both worked


def _sigint_ignored(_n: int) -> tuple[int, bool]:
    return os.getpid(), signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_workers_leave_ctrl_c_to_the_parent():
    """Ctrl-C goes to the whole process group; a worker must not die between setxattr and the
    checks that would roll it back: it ignores SIGINT and finishes its chunk when the parent stops."""
    out = list(run_jobs(_sigint_ignored, list(range(2000)), jobs=2))
    in_workers = [ignored for pid, ignored in out if pid != PARENT]
    assert in_workers
    assert all(in_workers)
    assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN  # the parent still takes Ctrl-C


def _fail_in_worker(n: int) -> int:
    if os.getpid() != PARENT:  # the worker is handed chunks at once, so this surely happens
        raise HostStateError(f"item {n}", reason="immutable", errno=1, path=str(n))
    return n


def test_an_exception_in_a_worker_reaches_the_parent_with_its_type_and_reason():
    with pytest.raises(HostStateError, match="item") as info:
        list(run_jobs(_fail_in_worker, list(range(5000)), jobs=2))
    assert (info.value.reason, info.value.errno) == ("immutable", 1)


def _die_in_worker(n: int) -> int:
    if os.getpid() != PARENT:
        os._exit(3)
    return n


def test_a_worker_that_dies_is_an_error_never_a_silently_short_result():
    # The chunks handed to the dead worker never come back: the parent must say so. Which of its
    # three messages comes out depends on timing: when the worker dies before the parent has handed
    # out its first chunks, the next hand-out hits EPIPE ("the worker processes exited before ...").
    with pytest.raises(RuntimeError, match=r"worker process(es)? exited"):
        list(run_jobs(_die_in_worker, list(range(5000)), jobs=2))


@pytest.mark.parametrize(
    "value",
    [
        FileResult("/usr/bin/ls", "failed", "immutable", "/usr/bin/ls: cannot write", "a1b2c3d4", "sha256"),
        Outcome("coreutils", b"/usr/bin/\xffls", Action.REFUSE, "digest-mismatch", "d", "sha256",
                b"\x01" * 32, b"\x02" * 32, 1234),
    ],
)
def test_per_file_results_cross_the_pipe_unchanged(value):
    assert pickle.loads(pickle.dumps(value, pickle.HIGHEST_PROTOCOL)) == value  # noqa: S301 - our own bytes
    # Their hand-written __reduce__ must name every field: a new field left out would be lost.
    assert value.__reduce__()[1] == tuple(getattr(value, f.name) for f in dataclasses.fields(value))
