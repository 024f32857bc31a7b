"""A one-line progress bar on a terminal: what is done, the rate, and other counts.

Rules kept here:
- Output only when the stream (stderr unless told) is a terminal; elsewhere (a pipe, a
  file, CI) nothing at all, so piped output and logs never carry it.
- ``Progress(total=None, unit="packets")``; ``advance(n, **counts)`` adds ``n`` done and
  sets other figures shown beside it (``sessions=12``); ``close()`` ends the line (it
  erases it).  A usable context manager.  With a ``total`` the line shows a percentage.
- Redrawn at most every ``every`` seconds of wall time, so a tight loop pays one clock
  read per call; the rate is what was done since it was made, per second.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(
        self,
        total: int | None = None,
        unit: str = "items",
        *,
        stream: TextIO | None = None,
        every: float = 0.25,
    ) -> None:
        self.total, self.unit, self.done = total, unit, 0
        self.counts: dict[str, int] = {}
        self._stream = sys.stderr if stream is None else stream
        self.live = self._stream.isatty()
        self._every = every
        self._began = self._drawn = time.monotonic()
        self._width = 0

    def advance(self, n: int = 1, **counts: int) -> None:
        self.done += n
        self.counts.update(counts)
        if self.live and (now := time.monotonic()) - self._drawn >= self._every:
            self._drawn = now
            self._draw(self.line(now - self._began))

    def line(self, seconds: float) -> str:
        """The text of the bar after *seconds*."""
        done = f"{self.done:,} {self.unit}"
        if self.total:
            done = f"{100 * self.done // self.total:3d}% {self.done:,}/{self.total:,} {self.unit}"
        rate = f"{self.done / seconds:,.0f}/s" if seconds > 0 else "-"
        others = "".join(f", {n:,} {name}" for name, n in self.counts.items())
        return f"{done} ({rate}){others}"

    def _draw(self, text: str) -> None:
        pad = " " * max(0, self._width - len(text))
        self._stream.write(f"\r{text}{pad}")
        self._stream.flush()
        self._width = len(text)

    def close(self) -> None:
        if self.live and self._width:
            self._draw("")
            self._stream.write("\r")
            self._stream.flush()
        self.live = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
