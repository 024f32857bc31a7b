"""The ladder as an SVG 1.1 sequence diagram.

Rules kept here:

1. Layout: host boxes on top (the name, and under it the caller's lifeline label, e.g.
   "Postfix 3.7.11"), a dashed lifeline under each; one row per step with its number and
   time (seconds since the first step) in the gutter on the left.  Every step number is
   drawn, in the ladder's order (the step list is the contract; nothing is renumbered).
2. Nothing is cut: a column gap is as wide as the longest label of an arrow over it needs
   (widths from the text, ``CHAR`` per character); a label longer than ``WRAP`` characters
   wraps onto more lines and its row grows.  The whole text is also the row's ``<title>``.
3. One arrow per packet: steps one packet completed (``style.packet_groups``; a FIN+ACK
   that acknowledges the peer's FIN and sends our own is two steps) share one arrow, drawn
   at the group's last row, each step's label on its own row above it; a solid bracket in
   the gutter joins their numbers.  A pipelined group (``style.pipelined_groups``) gets a
   dashed bracket left of it.
4. Colours by tone (``style.Tone``): DNS purple, TCP grey, SMTP blue, 4yz replies amber,
   5yz replies red, damage (gaps, anomalies) black; responses (answers, replies, SYN-ACK,
   ACKs of FINs) are dashed.  A legend under the diagram says so.
5. ``links=True`` (the HTML page) makes each step number a link to ``#step-N``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from harness.ladder.model import Ladder, Step
from harness.render.style import (
    RESPONSES,
    Tone,
    heading,
    label,
    packet_groups,
    pipelined_groups,
    seconds,
    strongest,
    tone,
)

COLOURS = {
    Tone.DNS: "#7b3fb2",
    Tone.TCP: "#707070",
    Tone.SMTP: "#1f5fbf",
    Tone.TRANSIENT: "#b45309",
    Tone.PERMANENT: "#c62828",
    Tone.DAMAGE: "#000000",
}
LEGEND = {
    Tone.DNS: "DNS",
    Tone.TCP: "TCP",
    Tone.SMTP: "SMTP",
    Tone.TRANSIENT: "4xx reply",
    Tone.PERMANENT: "5xx reply",
    Tone.DAMAGE: "gap / anomaly",
}
CHAR = 7.0  # width of an 11.5px DejaVu Sans Mono character (6.92), a little rounded up
LINE, ROW, WRAP = 14, 28, 72  # a label line, a one-line row, the longest label line
NUMBER_X, TIME_X, PIPE_X, PACKET_X, LEFT = 34, 100, 108, 116, 128
PAD = 16  # room at each end of an arrow: its head, and air
BOX_MIN, BOX_PAD, GAP_MIN, SELF = 120, 24, 24, 36
GREY = "#555555"


@dataclass(frozen=True, slots=True)
class _Row:
    step: Step
    lines: list[str]
    y: int  # the arrow's height (a row without an arrow keeps its label above it too)


def render(
    ladder: Ladder,
    *,
    lifelines: Mapping[str, str] | None = None,
    title: str | None = None,
    links: bool = False,
) -> str:
    lifelines = lifelines or {}
    hosts = ladder.participants
    boxes = [_box_width(host, lifelines.get(host, "")) for host in hosts]
    box_h = 48 if any(lifelines.get(h) for h in hosts) else 34
    rows, groups = _rows(ladder, 8 + box_h + 8)
    x = _columns(hosts, boxes, groups, {r.step.index: r.lines for r in rows})
    bottom = (rows[-1].y if rows else 8 + box_h) + 16
    width = _width(hosts, boxes, x, rows)
    legend, legend_h = _legend(width, bottom + 18)
    height = bottom + 18 + legend_h
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="DejaVu Sans Mono, Menlo, Consolas, monospace" font-size="11.5">',
        f"<title>{escape(heading(ladder, title))}</title>",
        _defs(),
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{NUMBER_X}" y="20" text-anchor="end" font-weight="bold">#</text>',
        f'<text x="{TIME_X}" y="20" text-anchor="end" font-weight="bold">time (s)</text>',
    ]
    parts += [
        _lifeline(h, lifelines.get(h, ""), x[h], w, box_h, bottom)
        for h, w in zip(hosts, boxes, strict=True)
    ]
    by_index = {r.step.index: r for r in rows}
    for group in pipelined_groups(ladder):
        parts.append(_bracket(group, by_index, PIPE_X, GREY, "pipelined", dashed=True))
    for group in groups:
        parts += [_label_row(ladder, by_index[s.index], x, links) for s in group]
        parts.append(_arrow(group, by_index[group[-1].index].y, x))
        if len(group) > 1:
            colour = COLOURS[strongest(group)]
            parts.append(_bracket(group, by_index, PACKET_X, colour, "one packet"))
    parts += [legend, "</svg>"]
    return "\n".join(parts) + "\n"


def _box_width(host: str, lifeline: str) -> int:
    return max(BOX_MIN, int(max(len(host), len(lifeline)) * CHAR) + BOX_PAD)


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(text, WRAP, break_on_hyphens=False, drop_whitespace=True) or [""]


def _rows(ladder: Ladder, top: int) -> tuple[list[_Row], list[list[Step]]]:
    """Every step's row (its label lines, its height), and the packet groups."""
    rows, cursor = [], top
    groups = packet_groups(ladder)
    for group in groups:
        for step in group:
            lines = _wrap(label(step))
            y = cursor + (len(lines) - 1) * LINE + 20
            rows.append(_Row(step, lines, y))
            cursor = y + ROW - 20
    return rows, groups


def _text_width(lines: list[str]) -> float:
    return max(len(line) for line in lines) * CHAR


def _columns(
    hosts: list[str], boxes: list[int], groups: list[list[Step]], lines: dict[int, list[str]]
) -> dict[str, int]:
    """Lifeline positions: each gap as wide as its boxes and the labels over it need
    (shorter spans first, so widening a long span never undoes a short one)."""
    column = {host: i for i, host in enumerate(hosts)}
    gaps = [(boxes[i] + boxes[i + 1]) / 2 + GAP_MIN for i in range(len(hosts) - 1)]
    needs = []
    for group in groups:
        a, b = column[group[0].src], column[group[0].dst]
        need = max(_text_width(lines[s.index]) for s in group)
        if a == b:  # a step to itself: a loop, its label right of it
            if a + 1 < len(hosts):
                needs.append((a, a + 1, need + SELF + PAD))
            continue
        needs.append((min(a, b), max(a, b), need + 2 * PAD))
    for lo, hi, need in sorted(needs, key=lambda n: n[1] - n[0]):
        short = need - sum(gaps[lo:hi])
        for i in range(lo, hi):
            gaps[i] += max(0.0, short) / (hi - lo)
    x, position = {}, LEFT + boxes[0] / 2 if hosts else LEFT
    for i, host in enumerate(hosts):
        x[host] = round(position)
        position += gaps[i] if i < len(gaps) else 0
    return x


def _width(hosts: list[str], boxes: list[int], x: dict[str, int], rows: list[_Row]) -> int:
    right = [x[h] + w / 2 for h, w in zip(hosts, boxes, strict=True)] or [LEFT]
    right += [x[r.step.src] + SELF + _text_width(r.lines) for r in rows if r.step.src == r.step.dst]
    return round(max(right)) + 20


def _defs() -> str:
    markers = "".join(
        f'<marker id="head-{name}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" '
        f'markerHeight="8" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="{colour}"/></marker>'
        for name, colour in COLOURS.items()
    )
    return f"<defs>{markers}</defs>"


def _lifeline(host: str, lifeline: str, x: int, width: int, box_h: int, bottom: int) -> str:
    name_y = 8 + (box_h // 2 + 4 if not lifeline else 19)
    under = (
        f'<text x="{x}" y="{8 + 37}" text-anchor="middle" fill="{GREY}">{escape(lifeline)}</text>'
        if lifeline
        else ""
    )
    return (
        f'<g class="host"><rect x="{x - width // 2}" y="8" width="{width}" height="{box_h}" '
        f'rx="5" fill="#eef2f8" stroke="#34495e"/>'
        f'<text x="{x}" y="{name_y}" text-anchor="middle" font-weight="bold">'
        f"{escape(host)}</text>{under}"
        f'<line x1="{x}" y1="{8 + box_h}" x2="{x}" y2="{bottom}" stroke="#95a5a6" '
        f'stroke-dasharray="4,4"/></g>'
    )


def _ends(step: Step, x: dict[str, int]) -> tuple[int, int]:
    return x[step.src], x[step.dst]


def _label_row(ladder: Ladder, row: _Row, x: dict[str, int], links: bool) -> str:
    """A step's number, time and label (the arrow is its packet's)."""
    step = row.step
    x1, x2 = _ends(step, x)
    colour = COLOURS[tone(step)]
    number = (
        f'<text x="{NUMBER_X}" y="{row.y + 4}" text-anchor="end" fill="{GREY}">{step.index}</text>'
    )
    if links:
        number = f'<a href="#step-{step.index}">{number}</a>'
    if x1 == x2:
        anchor, middle = "start", x1 + SELF
    else:
        anchor, middle = "middle", (x1 + x2) / 2
    texts = []
    for k, line in enumerate(row.lines):
        y = row.y - 5 - (len(row.lines) - 1 - k) * LINE
        half = len(line) * CHAR / 2 + 3
        left = middle - half if anchor == "middle" else middle - 3
        texts.append(
            f'<rect x="{left:.0f}" y="{y - 11}" width="{2 * half:.0f}" height="14" '
            f'fill="#ffffff" fill-opacity="0.9"/>'
            f'<text x="{middle:.0f}" y="{y}" text-anchor="{anchor}" fill="{colour}">'
            f"{escape(line)}</text>"
        )
    return (
        f'<g class="step {tone(step)}" id="svg-step-{step.index}">'
        f"<title>{escape(f'{step.index} {step.kind}: {step.text}')}</title>{number}"
        f'<text x="{TIME_X}" y="{row.y + 4}" text-anchor="end" fill="{GREY}">'
        f"{seconds(ladder, step):.3f}</text>{''.join(texts)}</g>"
    )


def _arrow(group: list[Step], y: int, x: dict[str, int]) -> str:
    """One packet's arrow; dashed when everything it carries is a response."""
    name = strongest(group)
    x1, x2 = _ends(group[0], x)
    dash = ' stroke-dasharray="6,3"' if all(s.kind in RESPONSES for s in group) else ""
    style = f'fill="none" stroke="{COLOURS[name]}" stroke-width="1.6"{dash}'
    numbers = ", ".join(str(s.index) for s in group)
    head = f'marker-end="url(#head-{name})"'
    if x1 == x2:
        shape = f'<path d="M{x1},{y - 8} h{SELF - 8} v8 H{x1 + 2}" {style} {head}/>'
    else:
        shape = f'<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" {style} {head}/>'
    return f'<g class="arrow" data-steps={quoteattr(numbers)}>{shape}</g>'


def _bracket(
    group: list[Step], rows: dict[int, _Row], x: int, colour: str, what: str, dashed: bool = False
) -> str:
    first, last = rows[group[0].index], rows[group[-1].index]
    top, end = first.y - 6, last.y + 8
    dash = ' stroke-dasharray="3,2"' if dashed else ""
    numbers = f"{group[0].index}-{group[-1].index}"
    return (
        f'<g class="bracket {what.replace(" ", "-")}"><title>steps {numbers}: {what}</title>'
        f'<path d="M{x + 5},{top} H{x} V{end} H{x + 5}" fill="none" stroke="{colour}" '
        f'stroke-width="1.4"{dash}/></g>'
    )


def _legend(width: int, top: int) -> tuple[str, int]:
    """Swatches for every tone, responses and both brackets, wrapped to the width."""
    lines = [(f'stroke="{COLOURS[t]}"', text) for t, text in LEGEND.items()]
    lines.append((f'stroke="{GREY}" stroke-dasharray="6,3"', "response"))
    brackets = [("", "one packet"), (' stroke-dasharray="3,2"', "pipelined")]
    entries = [(28, _line_swatch, *e) for e in lines] + [(6, _bracket_swatch, *e) for e in brackets]
    items, x, y = [], 10, top
    for swatch_w, swatch, style, text in entries:
        size = swatch_w + 6 + len(text) * CHAR + 18
        if x + size > width and x > 10:
            x, y = 10, y + 18
        items.append(
            f"{swatch(x, y, style)}"
            f'<text x="{x + swatch_w + 6}" y="{y}" fill="{GREY}">{escape(text)}</text>'
        )
        x += size
    return f'<g class="legend">{"".join(items)}</g>', y - top + 16


def _line_swatch(x: float, y: int, style: str) -> str:
    return f'<line x1="{x}" y1="{y - 4}" x2="{x + 28}" y2="{y - 4}" {style} stroke-width="2"/>'


def _bracket_swatch(x: float, y: int, style: str) -> str:
    return (
        f'<path d="M{x + 5},{y - 11} H{x} V{y + 2} H{x + 5}" fill="none" stroke="{GREY}" '
        f'stroke-width="1.4"{style}/>'
    )
