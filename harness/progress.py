"""A one-line progress bar on a terminal: what is done, the rate, and other counts; and the
notices printed above it.

Rules kept here:
- Output only when the stream (stderr unless told) is a terminal; elsewhere (a pipe, a
  file, CI) nothing at all, so piped output and logs never carry it.
- ``Progress(total=None, unit="packets")``; ``advance(n, note, **counts)`` adds ``n`` done
  and sets other figures shown beside it (``sessions=12``) and a note after them (the
  matrix's last cell); ``close()`` ends the line (it erases it).  A usable context manager.
  With a ``total`` the line shows a percentage; with a ``label``, it comes first.
- Redrawn at most every ``every`` seconds of wall time, so a tight loop pays one clock
  read per call; the rate is what was done since it was made, per second (``rate=False``:
  not shown).
- A line printed while a bar is drawn (an MTA's "waiting for ..." from its timer thread)
  goes through ``notice``: the bar's line is erased, the notice written on a line of its
  own, the bar drawn again under it; never the two on one line.  Drawing and notices take
  one lock, so a notice from another thread never lands inside a redraw.
- The bar is cut to the terminal's width less one column: a line that wrapped could not be
  erased or redrawn by returning to its start.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from typing import TextIO

_lock = threading.Lock()
_shown: list[Progress] = []  # the bars drawn on a terminal now


def notice(line: str, stream: TextIO | None = None) -> None:
    """Print ``line`` on ``stream`` (stderr unless told), above the bar drawn there, if any."""
    stream = sys.stderr if stream is None else stream
    with _lock:
        bar = next((b for b in _shown if b._stream is stream), None)
        if bar is not None:
            bar._write("")
        stream.write(f"{line}\n")
        if bar is not None:
            bar._write(bar._text)
        stream.flush()


class Progress:
    def __init__(
        self,
        total: int | None = None,
        unit: str = "items",
        *,
        stream: TextIO | None = None,
        every: float = 0.25,
        label: str = "",
        rate: bool = True,
    ) -> None:
        self.total, self.unit, self.done = total, unit, 0
        self.counts: dict[str, int] = {}
        self.note = ""
        self._stream = sys.stderr if stream is None else stream
        self.live = self._stream.isatty()
        self._every, self._label, self._rate = every, label, rate
        self._began = self._drawn = time.monotonic()
        self._width, self._text = 0, ""

    def advance(self, n: int = 1, note: str | None = None, **counts: int) -> None:
        self.done += n
        self.counts.update(counts)
        self.note = self.note if note is None else note
        if self.live and (now := time.monotonic()) - self._drawn >= self._every:
            self._drawn = now
            self._draw(self.line(now - self._began))

    def line(self, seconds: float) -> str:
        """The text of the bar after *seconds*."""
        done = f"{self.done:,} {self.unit}"
        if self.total:
            done = f"{100 * self.done // self.total:3d}% {self.done:,}/{self.total:,} {self.unit}"
        if self._rate:
            done += f" ({self.done / seconds:,.0f}/s)" if seconds > 0 else " (-)"
        others = "".join(f", {n:,} {name}" for name, n in self.counts.items())
        label = f"{self._label}: " if self._label else ""
        note = f"  {self.note}" if self.note else ""
        return f"{label}{done}{others}{note}"

    def _draw(self, text: str) -> None:
        text = text[: self._columns() - 1]
        with _lock:
            self._text = text
            self._write(text)
            self._stream.flush()
            if self not in _shown:
                _shown.append(self)

    def _write(self, text: str) -> None:
        """Over the bar's line (the lock held): ``text``, padded over what was there."""
        pad = " " * max(0, self._width - len(text))
        self._stream.write(f"\r{text}{pad}" + ("\r" if not text else ""))
        self._width = len(text)

    def _columns(self) -> int:
        """The terminal's width; unknown (not a file, a size of 0): $COLUMNS, else 80."""
        try:
            columns = os.get_terminal_size(self._stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            columns = 0
        return columns or shutil.get_terminal_size().columns

    def close(self) -> None:
        with _lock:
            if self in _shown:
                _shown.remove(self)
            if self.live and self._width:
                self._write("")
                self._stream.flush()
        self.live = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
