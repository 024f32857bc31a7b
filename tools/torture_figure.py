"""One measured figure of the torture (``tools/torture.py``): a count next to its result.

Rules kept here:

1. A figure is one thing measured: what, the count, and the count it must be (``want``);
   its result is ``ok`` when the count is that, ``FAIL`` when not, and ``noted`` for a count
   that describes the run without judging it (``want`` None: how many runs ended before
   their signal, how many queries got FORMERR).
2. Its line is ``<what>  <count>  <result>``: the last two fields are always a number and
   one of ``RESULTS``, whatever ``what`` says, so a reader (or a test) can split any line.
3. Details that help reproduce a FAIL (which run, which delay, which input) go to stderr
   through ``detail``; stdout holds figures only.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

RESULTS = ("ok", "FAIL", "noted")
WIDTH = 84


class Figure(NamedTuple):
    what: str
    count: int
    want: int | None = 0

    @property
    def result(self) -> str:
        if self.want is None:
            return "noted"
        return "ok" if self.count == self.want else "FAIL"

    @property
    def failed(self) -> bool:
        return self.result == "FAIL"

    def line(self) -> str:
        return f"{self.what:<{WIDTH}} {self.count:>9}  {self.result}"


def noted(what: str, count: int) -> Figure:
    return Figure(what, count, None)


def detail(text: str) -> None:
    """A line for whoever reproduces a failure: stderr, so that stdout stays figures."""
    print(f"torture: {text}", file=sys.stderr, flush=True)
