"""A self-contained HTML page: the SVG diagram, then a table of every step.

The table shows what the diagram cuts: the whole text, the kind, the connection and the
evidence (packet numbers, as in Wireshark's ``frame.number``).  No external resources.
"""

from __future__ import annotations

from html import escape

from harness.ladder.model import Ladder
from harness.render import svg
from harness.render.style import family, seconds

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin-top: 1.5em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 6px; vertical-align: top; text-align: left; }
td.text { font-family: monospace; white-space: pre-wrap; }
tr.dns td.kind { color: #7b3fb2; } tr.tcp td.kind { color: #707070; }
tr.smtp td.kind { color: #1f5fbf; } tr.damage td.kind { color: #c62828; }
"""


def render(ladder: Ladder) -> str:
    title = escape(ladder.source or "ladder")
    diagram = svg.render(ladder).split("\n", 1)[1]  # without the XML declaration
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{title}</h1>\n{_warnings(ladder)}{diagram}{_table(ladder)}</body>\n</html>\n"
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
            f'<td class="text">{escape(s.text)}</td>'
            f"<td>{', '.join(map(str, s.evidence))}</td><td>{s.conn or ''}</td>"
        )
        rows.append(f'<tr class="{family(s)}">{cells}</tr>')
    rows.append("</table>\n")
    return "\n".join(rows)
