"""A progress line for the command line: ``flow tests [#######.......] 12/40``, redrawn in place.

Only for a person at a terminal (callers check ``isatty``); lines printed through
:meth:`ProgressLine.print` appear above it, and it erases itself when done. A dozen lines rather
than a terminal UI library: with rich installed, structlog loaded it at every start, a tenth of
a second of `tieline run` start-up for two progress bars.
"""

from __future__ import annotations

import sys
from typing import TextIO

_WIDTH = 30
_CLEAR = "\r\x1b[2K"  # carriage return, erase the line


class ProgressLine:
    def __init__(self, label: str, total: int, stream: TextIO | None = None):
        self.label, self.total, self.done = label, total, 0
        self.stream = stream or sys.stdout

    def advance(self, n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        self._draw()

    def print(self, text: str) -> None:
        """``text`` on its own line(s) above the progress line."""
        self.stream.write(f"{_CLEAR}{text}\n")
        self._draw()

    def _draw(self) -> None:
        filled = _WIDTH * self.done // self.total if self.total else _WIDTH
        bar = "#" * filled + "." * (_WIDTH - filled)
        self.stream.write(f"{_CLEAR}{self.label} [{bar}] {self.done}/{self.total}")
        self.stream.flush()

    def __enter__(self) -> ProgressLine:
        self._draw()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stream.write(_CLEAR)
        self.stream.flush()
