"""SIGTERM, SIGHUP and SIGQUIT as Ctrl-C: the signals that end a command from outside (kill's
default and systemd's stop, a dropped SSH session or closed terminal, Ctrl-\\) left at their default
kill the process without running any cleanup — a temp file beside a key, half a set of files.
Raised as KeyboardInterrupt instead, every ``except BaseException``/``finally`` cleanup runs and
the command ends as an interrupted one (exit 130). Both tools' ``main`` run inside
``signals_interrupt``; forked workers that must finish their step ignore them (``ignore_interrupts``)."""

from __future__ import annotations

import contextlib
import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import FrameType

__all__ = ["INTERRUPT_SIGNALS", "ignore_interrupts", "signals_interrupt"]

INTERRUPT_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Inside the block, SIGTERM, SIGHUP and SIGQUIT raise KeyboardInterrupt; the previous handlers
    are put back after. One already ignored (``nohup``'s SIGHUP) stays ignored, as Python leaves an
    ignored SIGINT. Outside the main thread (where handlers cannot be set) it does nothing."""
    previous = {}
    try:
        for signum in INTERRUPT_SIGNALS:
            if signal.getsignal(signum) is signal.SIG_IGN:
                continue  # ignored on purpose by whoever started us (nohup, a background job): left so
            previous[signum] = signal.signal(signum, _interrupt)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def ignore_interrupts() -> None:
    """In a forked worker whose parent stops it cleanly: Ctrl-C and the signals above reach the whole
    process group, and a worker stopped between a write and its checks would skip their rollback."""
    for signum in (signal.SIGINT, *INTERRUPT_SIGNALS):
        signal.signal(signum, signal.SIG_IGN)
