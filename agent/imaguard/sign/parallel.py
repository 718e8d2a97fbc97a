"""Run a per-file job on every core.

Threads would serialise on the GIL for the per-file Python work (open, fstat, xattrs), so the
work goes to forked worker processes. Keys are not picklable; forking after the job is built
hands each worker the loaded key and the path list without ever serialising them.

The pool is a few pipes rather than ``concurrent.futures``: per file the work is a fraction of
a millisecond, so an executor's queues, feeder threads, per-chunk pickling of paths and ~25 ms
of imports were a visible share of a run. With ``jobs`` = N the parent forks N - 1 workers and
is the N-th: it hands chunk numbers to the workers through one shared pipe (4-byte writes are
atomic, so each number reaches exactly one worker) and, rather than wait for a result, runs the
next chunk itself. Workers send pickled results back on their own pipe; the parent yields every
result in path order.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import selectors
import struct
import sys
from typing import TYPE_CHECKING, Generic, TypeVar

from imaguard.interrupts import ignore_interrupts

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


__all__ = ["default_jobs", "run_jobs"]

T = TypeVar("T")
R = TypeVar("R")

# Below this many files a pool costs more than it saves.
_MIN_PARALLEL = 64
_CHUNK = 32
# Chunks handed to each worker and not yet returned: enough that none idles while the parent is
# busy with a chunk of its own, few enough that the parent is not left waiting at the end.
_IN_FLIGHT_PER_WORKER = 3

_INDEX = struct.Struct("=I")
_HEADER = struct.Struct("=IQ")  # chunk number, length of the pickled payload
_OK, _RAISED = 0, 1


def default_jobs() -> int:
    return len(os.sched_getaffinity(0)) or 1


def run_jobs(job: Callable[[T], R], paths: list[T], jobs: int, chunk: int = _CHUNK) -> Iterator[R]:
    """Yield ``job(path)`` for every path, in order, using up to ``jobs`` processes."""
    nchunks = -(-len(paths) // chunk)
    if jobs <= 1 or len(paths) < _MIN_PARALLEL:
        for p in paths:
            yield job(p)
        return
    yield from _Pool(job, paths, min(jobs, nchunks) - 1, chunk).results()


class _Pool(Generic[T, R]):
    """The parent and ``workers`` forked children share the chunks; see the module docstring."""

    def __init__(self, job: Callable[[T], R], paths: list[T], workers: int, chunk: int) -> None:
        self._job = job
        self._paths = paths
        self._size = chunk
        self._nchunks = -(-len(paths) // chunk)
        self._workers = workers
        self._next = 0  # first chunk not yet handed to anyone
        self._in_flight = 0  # chunks handed to workers, results not yet received
        self._pids: list[int] = []
        self._task_r = self._task_w = -1
        self._result_fds: list[int] = []

    def results(self) -> Iterator[R]:
        try:
            self._start()
            yield from self._collect()
        finally:
            self._stop()

    def _chunk(self, index: int) -> list[R]:
        return [self._job(p) for p in self._paths[index * self._size : (index + 1) * self._size]]

    # --- the parent ------------------------------------------------------------------------------

    def _start(self) -> None:
        self._task_r, self._task_w = os.pipe()
        pipes = [os.pipe() for _ in range(self._workers)]
        self._result_fds = [r for r, _ in pipes]
        # Unflushed output would otherwise be copied into every child.
        sys.stdout.flush()
        sys.stderr.flush()
        # Keep the collector off the inherited heap: touching it would copy every page per child.
        gc.freeze()
        try:
            for _, w in pipes:
                pid = os.fork()
                if pid == 0:  # pragma: no cover - runs in the child, which never returns
                    status = 1
                    try:
                        # Ctrl-C (and SIGTERM from systemd's stop) reaches the whole process
                        # group: a worker interrupted between setxattr and its checks would skip
                        # the rollback. The parent handles it (_stop) and the worker finishes its chunk.
                        ignore_interrupts()
                        for fd in (self._task_w, *self._result_fds, *(pw for _, pw in pipes)):
                            if fd != w:
                                os.close(fd)
                        status = self._work(w)
                    except BaseException:  # noqa: BLE001 - the child must never run on into parent code
                        sys.excepthook(*sys.exc_info())
                    finally:
                        os._exit(status)
                self._pids.append(pid)
        finally:
            gc.unfreeze()
            os.close(self._task_r)
            for _, w in pipes:
                os.close(w)

    def _hand_out(self) -> None:
        """Top up the workers' queue; after the last chunk, EOF for them."""
        limit = _IN_FLIGHT_PER_WORKER * self._workers
        while self._in_flight < limit and self._next < self._nchunks:
            try:
                os.write(self._task_w, _INDEX.pack(self._next))
            except BrokenPipeError as exc:
                raise RuntimeError(f"the worker processes exited before chunk {self._next} was handed out") from exc
            self._next += 1
            self._in_flight += 1
        if self._next == self._nchunks:
            self._close_tasks()

    def _collect(self) -> Iterator[R]:
        done: dict[int, list[R]] = {}
        buffers = {fd: bytearray() for fd in self._result_fds}
        with selectors.DefaultSelector() as sel:
            for fd in self._result_fds:
                sel.register(fd, selectors.EVENT_READ)
            self._hand_out()
            for want in range(self._nchunks):
                while want not in done:
                    # Work rather than wait while chunks are left; block only when none are.
                    if self._next < self._nchunks:
                        ready = sel.select(timeout=0)
                        if not ready:
                            self._next += 1
                            done[self._next - 1] = self._chunk(self._next - 1)
                    elif sel.get_map():
                        ready = sel.select()
                    else:
                        raise RuntimeError(f"a worker process exited before chunk {want} was done")
                    for key, _ in ready:
                        self._receive(key.fd, buffers[key.fd], done, sel)
                    self._hand_out()
                yield from done.pop(want)

    def _receive(self, fd: int, buf: bytearray, done: dict[int, list[R]], sel: selectors.BaseSelector) -> None:
        data = os.read(fd, 1 << 20)
        if data:
            buf += data
            self._in_flight -= _take_messages(buf, done)
            return
        # A worker leaves only once the task pipe is closed; leaving earlier, it died. (One that
        # dies later is noticed when its chunk is missing and no worker is left to send it.)
        sel.unregister(fd)
        if self._task_w != -1:
            raise RuntimeError("a worker process exited while chunks were still being handed out")

    def _close_tasks(self) -> None:
        if self._task_w != -1:
            os.close(self._task_w)
            self._task_w = -1

    def _stop(self) -> None:
        # Workers finish their chunk: a file is never left half-labelled by a kill. Closing our
        # ends makes them see EOF (no more work) or EPIPE (nobody reads) and exit.
        self._close_tasks()
        for fd in self._result_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._result_fds = []
        for pid in self._pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self._pids = []

    # --- a worker --------------------------------------------------------------------------------

    def _work(self, out: int) -> int:
        """The child's loop: chunk numbers in until EOF, pickled results out. Returns the exit status."""
        try:
            while True:
                raw = _read_exactly(self._task_r, _INDEX.size)
                if raw is None:
                    return 0
                (index,) = _INDEX.unpack(raw)
                try:
                    payload = pickle.dumps((_OK, self._chunk(index)), pickle.HIGHEST_PROTOCOL)
                except Exception as exc:  # noqa: BLE001 - handed to the parent, which re-raises it
                    payload = _pickle_exception(exc)
                _write_all(out, _HEADER.pack(index, len(payload)) + payload)
        except KeyboardInterrupt:
            return 130
        except BrokenPipeError:
            return 0  # the parent stopped reading: nothing left to do
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stdout.flush()
                sys.stderr.flush()


def _take_messages(buf: bytearray, done: dict[int, list[R]]) -> int:
    """Move the complete messages at the start of ``buf`` into ``done`` and count them.

    A worker's exception is raised here, in the parent.
    """
    taken = 0
    while len(buf) >= _HEADER.size:
        index, size = _HEADER.unpack_from(buf)
        end = _HEADER.size + size
        if len(buf) < end:
            break
        kind, value = pickle.loads(buf[_HEADER.size : end])  # noqa: S301 - written by our own child
        del buf[:end]
        if kind == _RAISED:
            raise value
        done[index] = value
        taken += 1
    return taken


def _pickle_exception(exc: Exception) -> bytes:
    try:
        return pickle.dumps((_RAISED, exc), pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - an unpicklable exception still reaches the parent, as text
        return pickle.dumps((_RAISED, RuntimeError(f"worker: {exc!r}")), pickle.HIGHEST_PROTOCOL)


def _read_exactly(fd: int, size: int) -> bytes | None:
    """``size`` bytes from ``fd``, or None at EOF."""
    data = b""
    while len(data) < size:
        part = os.read(fd, size - len(data))
        if not part:
            return None
        data += part
    return data


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
