"""The ladder as an SVG 1.1 sequence diagram.

Layout: host boxes on top with their names, a dashed lifeline under each; one row per
step with its number and time (seconds since the first step) on the left and an arrow
from the sender's lifeline to the receiver's, labelled above the line.  Colours by
family: DNS purple, TCP grey, SMTP blue, damage (gaps, anomalies) red; responses
(answers, replies, SYN-ACK, ACKs of FINs) are dashed.  Labels too long for their arrow
are cut with … and sit on a white band that hides the lifelines they cross; the whole
text is the arrow's ``<title>`` (a tooltip).
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from harness.ladder.model import Ladder, Step
from harness.render.style import RESPONSES, clip, family, label, seconds

COLOURS = {"dns": "#7b3fb2", "tcp": "#707070", "smtp": "#1f5fbf", "damage": "#c62828"}
COLUMN, LEFT, TOP, ROW, BOX_W, BOX_H = 250, 120, 40, 28, 210, 34
CHAR = 7.0  # width of an 11.5px DejaVu Sans Mono character, a little rounded up


def render(ladder: Ladder) -> str:
    hosts = ladder.participants
    x = {host: LEFT + COLUMN * i + COLUMN // 2 for i, host in enumerate(hosts)}
    width = LEFT + COLUMN * max(len(hosts), 1) + 20
    bottom = TOP + ROW * (len(ladder.steps) + 1)
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{width}" '
        f'height="{bottom + 20}" viewBox="0 0 {width} {bottom + 20}" '
        'font-family="DejaVu Sans Mono, Menlo, Consolas, monospace" font-size="11.5">',
        f"<title>{escape(ladder.source or 'ladder')}</title>",
        _defs(),
        f'<rect width="{width}" height="{bottom + 20}" fill="#ffffff"/>',
        '<text x="10" y="20" font-weight="bold">#  time (s)</text>',
    ]
    for host, hx in x.items():
        parts.append(_lifeline(host, hx, bottom))
    for row, step in enumerate(ladder.steps, 1):
        parts.append(_step(ladder, step, x, TOP + row * ROW))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _defs() -> str:
    markers = "".join(
        f'<marker id="head-{name}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" '
        f'markerHeight="8" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="{colour}"/></marker>'
        for name, colour in COLOURS.items()
    )
    return f"<defs>{markers}</defs>"


def _lifeline(host: str, x: int, bottom: int) -> str:
    name = escape(clip(host, int(BOX_W / CHAR) - 1))
    return (
        f'<g><rect x="{x - BOX_W // 2}" y="8" width="{BOX_W}" height="{BOX_H}" rx="5" '
        f'fill="#eef2f8" stroke="#34495e"/>'
        f'<text x="{x}" y="{8 + BOX_H // 2 + 4}" text-anchor="middle" font-weight="bold">'
        f"{name}</text>"
        f'<line x1="{x}" y1="{8 + BOX_H}" x2="{x}" y2="{bottom}" stroke="#95a5a6" '
        f'stroke-dasharray="4,4"/></g>'
    )


def _step(ladder: Ladder, step: Step, x: dict[str, int], y: int) -> str:
    kind = family(step)
    colour = COLOURS[kind]
    x1, x2 = x[step.src], x[step.dst]
    if x1 == x2:
        x2 = x1 + COLUMN // 3
    dash = ' stroke-dasharray="6,3"' if step.kind in RESPONSES else ""
    text = clip(label(step), int((abs(x2 - x1) - 16) / CHAR))
    middle, half = (x1 + x2) / 2, len(text) * CHAR / 2 + 3
    return (
        f'<g class="{kind}"><title>{escape(f"{step.index} {step.kind}: {step.text}")}</title>'
        f'<text x="10" y="{y + 4}" fill="#555555">{step.index:>3}</text>'
        f'<text x="{LEFT - 12}" y="{y + 4}" text-anchor="end" fill="#555555">'
        f"{seconds(ladder, step):.3f}</text>"
        f'<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" stroke="{colour}" stroke-width="1.6"'
        f'{dash} marker-end="url(#head-{kind})"/>'
        f'<rect x="{middle - half:.0f}" y="{y - 16}" width="{2 * half:.0f}" height="14" '
        f'fill="#ffffff" fill-opacity="0.9"/>'
        f'<text x="{middle:.0f}" y="{y - 5}" text-anchor="middle" fill="{colour}">'
        f"{escape(text)}</text></g>"
    )
