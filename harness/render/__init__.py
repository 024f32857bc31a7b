"""Renderers: a ladder in, a document out (text, SVG, HTML, Mermaid, JSON).

Rules kept here:

1. A renderer reads only the ladder (design rule 2): steps, participants, metadata.
2. Columns are ``Ladder.participants`` (order of first appearance); every step is one
   arrow from its ``src`` column to its ``dst`` column, labelled by ``style.label``.
3. ``render(ladder, fmt)`` is the one entry point; ``FORMATS`` names the formats.
"""

from __future__ import annotations

from collections.abc import Callable

from harness.errors import HarnessError
from harness.ladder.model import Ladder
from harness.render import html, json, mermaid, svg, text

FORMATS: dict[str, Callable[[Ladder], str]] = {
    "text": text.render,
    "svg": svg.render,
    "html": html.render,
    "mermaid": mermaid.render,
    "json": json.render,
}


def render(ladder: Ladder, fmt: str) -> str:
    """*ladder* as a document in format *fmt* (one of ``FORMATS``)."""
    try:
        renderer = FORMATS[fmt]
    except KeyError:
        raise HarnessError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})") from None
    return renderer(ladder)
