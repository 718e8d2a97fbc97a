"""Progress display on a terminal (tqdm on stderr); silent when not a terminal or for --json."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any

__all__ = ["Progress"]


class Progress:
    """A counter that draws a bar only on an interactive stderr; ``write`` keeps lines above the bar."""

    def __init__(self, total: int, unit: str, desc: str, enabled: bool = True) -> None:
        self._bar: Any = None
        if enabled and sys.stderr.isatty() and total > 1:
            try:
                from tqdm import tqdm  # noqa: PLC0415 - optional, Debian's python3-tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, leave=False)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def postfix(self, **values: object) -> None:
        if self._bar is not None:
            self._bar.set_postfix(values, refresh=False)

    def write(self, line: str, err: bool = False) -> None:
        """Print ``line`` (to stderr when ``err``) without tearing the bar."""
        out = sys.stderr if err else sys.stdout
        if self._bar is not None:
            self._bar.write(line, file=out)
        else:
            print(line, file=out)

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.close()
