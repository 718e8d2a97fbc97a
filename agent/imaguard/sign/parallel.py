"""Run a per-file job on every core.

Threads would serialise on the GIL for the per-file Python work (open, fstat, xattrs), so the
work goes to forked worker processes. Keys are not picklable; forking after the job is built
hands each worker the loaded key without ever serialising it.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from imaguard.sign.files import FileResult

__all__ = ["default_jobs", "run_jobs"]

# Below this many files a pool costs more than it saves.
_MIN_PARALLEL = 64
_CHUNK = 32

# Set in the parent just before forking and read only by the workers (see module docstring).
_JOB: Callable[[str], FileResult] | None = None


def _run_chunk(paths: list[str]) -> list[FileResult]:
    assert _JOB is not None  # noqa: S101 - set before the pool forks
    return [_JOB(p) for p in paths]


def default_jobs() -> int:
    return len(os.sched_getaffinity(0)) or 1


def _chunks(paths: Iterable[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    for p in paths:
        chunk.append(p)
        if len(chunk) == _CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run_jobs(job: Callable[[str], FileResult], paths: list[str], jobs: int) -> Iterator[FileResult]:
    """Yield ``job(path)`` for every path, in order, using up to ``jobs`` processes."""
    global _JOB  # noqa: PLW0603 - the fork hand-off described above
    if jobs <= 1 or len(paths) < _MIN_PARALLEL:
        for p in paths:
            yield job(p)
        return
    _JOB = job
    try:
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            for chunk_results in pool.map(_run_chunk, _chunks(paths)):
                yield from chunk_results
    finally:
        _JOB = None
