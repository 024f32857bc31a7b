"""A terminal ladder: one column per host, one arrow per step, the step text on the arrow.

Layout: ``number time frames`` in a gutter (``frames``: the packets that carried the step,
as Wireshark numbers them, ``first…last`` when the list is longer than its column), then
the columns spread evenly over ``width`` (100-120 is the target).  Host names head the
columns, their lifeline labels (e.g. "Postfix 3.7.11") on the line under them.  ``──►``
points right, ``◄──`` left; text that does not fit between the arrow's ends is cut with …
(the SVG and HTML show it whole); an arrow crossing a column hides its lifeline.
Steps one packet completed (``style.packet_groups``) are joined by a bracket right of the
frames column, ``┐`` on the first, ``│`` between, ``┘`` on the last, as the SVG's solid
bracket joins them; each keeps its own row and number.
"""

from __future__ import annotations

from collections.abc import Mapping

from harness.ladder.model import Ladder, Step
from harness.render.style import clip, frames, label, packet_groups, seconds

WIDTH = 110
_FRAMES = 9  # the frames column
_GUTTER = 14 + _FRAMES  # "nnnn tttt.ttt fffffffff "
_MARGIN = 8  # room for half a host name outside the outer lifelines


def render(
    ladder: Ladder,
    width: int = WIDTH,
    *,
    lifelines: Mapping[str, str] | None = None,
    title: str | None = None,
) -> str:
    del title  # a terminal ladder is shown where its name already is
    hosts = ladder.participants
    if not hosts:
        return "(no steps)\n"
    columns = _columns(len(hosts), width)
    lines = [_header(hosts, columns, width, "   # time (s) frames")]
    if lifelines and any(lifelines.get(h) for h in hosts):
        lines.append(_header([lifelines.get(h, "") for h in hosts], columns, width))
    lines.append("".join(_lifelines(columns, width)).rstrip())
    brackets = _brackets(ladder)
    for step in ladder.steps:
        row = _lifelines(columns, width)
        row[_GUTTER] = brackets.get(step.index, " ")
        _arrow(row, columns[hosts.index(step.src)], columns[hosts.index(step.dst)], step)
        prefix = f"{step.index:>4} {seconds(ladder, step):8.3f} {_frames(step):<{_FRAMES}}"
        lines.append(prefix + "".join(row)[len(prefix) :].rstrip())
    return "\n".join(lines) + "\n"


def _brackets(ladder: Ladder) -> dict[int, str]:
    """Step number -> its piece of the bracket joining the steps of one packet."""
    pieces = {}
    for group in packet_groups(ladder):
        if len(group) > 1:
            pieces.update({step.index: "│" for step in group})
            pieces[group[0].index], pieces[group[-1].index] = "┐", "┘"
    return pieces


def _frames(step: Step) -> str:
    text = frames(step)
    if len(text) <= _FRAMES or not step.evidence:
        return text
    return clip(f"{step.evidence[0]}…{step.evidence[-1]}", _FRAMES)


def _columns(n: int, width: int) -> list[int]:
    """Lifeline positions: the outer ones _MARGIN inside the area, the rest evenly between."""
    first, last = _GUTTER + _MARGIN, width - _MARGIN
    if n == 1:
        return [first]
    return [first + (last - first) * i // (n - 1) for i in range(n)]


def _header(names: list[str], columns: list[int], width: int, gutter: str = "") -> str:
    row = [" "] * width
    row[: len(gutter)] = gutter
    room = (columns[1] - columns[0] - 1) if len(columns) > 1 else width - _GUTTER
    for name, x in zip(names, columns, strict=True):
        name = clip(name, room)
        start = max(len(gutter) + 1, min(width - len(name), x - len(name) // 2))
        row[start : start + len(name)] = name
    return "".join(row).rstrip()


def _lifelines(columns: list[int], width: int) -> list[str]:
    row = [" "] * width
    for x in columns:
        row[x] = "│"
    return row


def _arrow(row: list[str], a: int, b: int, step: Step) -> None:
    """Draw the arrow from column *a* to column *b* into *row*, text in the middle."""
    if a == b:
        b = a + 6
    lo, hi = min(a, b), max(a, b)
    row[lo + 1 : hi] = "─" * (hi - lo - 1)
    if b > a:
        row[hi - 1] = "►"
    else:
        row[lo + 1] = "◄"
    text = clip(label(step), hi - lo - 7)
    if text:
        text = f" {text} "
        start = lo + (hi - lo - len(text)) // 2 + 1
        row[start : start + len(text)] = text
