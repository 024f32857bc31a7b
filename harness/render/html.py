"""A self-contained HTML page: the SVG diagram, then a table of every step.

Rules kept here:

- The table shows what the diagram leaves out: the whole text, the kind, the connection
  and the evidence (packet numbers, as in Wireshark's ``frame.number``).
- Every step's row is ``id="step-N"`` (N its ladder number), so ``ladder.html#step-N``
  names one step; the diagram's step numbers link there, and the row named is marked.
- The page's title says what the ladder is of (``style.heading``), never a whole path; the
  capture's path is in the page, under the heading.
- No external resources: the only links are to the page's own anchors.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape

from harness.ladder.model import Ladder
from harness.render import svg
from harness.render.style import heading, seconds, tls_mark, tone

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
p.source { font-family: monospace; color: #555; }
table { border-collapse: collapse; margin-top: 1.5em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 6px; vertical-align: top; text-align: left; }
td.text { font-family: monospace; white-space: pre-wrap; }
tr:target { background: #fff3b0; outline: 2px solid #e0b000; }
svg a text { text-decoration: underline; }
"""


def _tone_css() -> str:
    return "".join(f"tr.{t} td.kind {{ color: {c}; }}\n" for t, c in svg.COLOURS.items())


def render(
    ladder: Ladder, *, lifelines: Mapping[str, str] | None = None, title: str | None = None
) -> str:
    name = escape(heading(ladder, title))
    diagram = svg.render(ladder, lifelines=lifelines, title=title, links=True)
    diagram = diagram.split("\n", 1)[1]  # without the XML declaration
    source = f'<p class="source">{escape(ladder.source)}</p>\n' if ladder.source else ""
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{name}</title>\n<style>{_STYLE}{_tone_css()}</style>\n</head>\n<body>\n"
        f"<h1>{name}</h1>\n{source}{_warnings(ladder)}{diagram}{_table(ladder)}"
        "</body>\n</html>\n"
    )


def _warnings(ladder: Ladder) -> str:
    if not ladder.warnings:
        return ""
    items = ", ".join(f"{escape(k)}: {v}" for k, v in sorted(ladder.warnings.items()))
    return f"<p>Skipped packets: {items}</p>\n"


def _table(ladder: Ladder) -> str:
    head = "".join(
        f"<th>{h}</th>" for h in ("#", "time (s)", "from", "to", "kind", "text", "packets", "conn")
    )
    rows = [f"<table>\n<tr>{head}</tr>"]
    for s in ladder.steps:
        cells = (
            f"<td>{s.index}</td><td>{seconds(ladder, s):.6f}</td><td>{escape(s.src)}</td>"
            f'<td>{escape(s.dst)}</td><td class="kind">{s.kind}</td>'
            f'<td class="text">{escape(tls_mark(s) + s.text)}</td>'
            f"<td>{', '.join(map(str, s.evidence))}</td><td>{s.conn or ''}</td>"
        )
        rows.append(f'<tr id="step-{s.index}" class="{tone(s)}">{cells}</tr>')
    rows.append("</table>\n")
    return "\n".join(rows)
