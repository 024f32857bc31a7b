"""Renderers: a ladder in, a document out (text, SVG, HTML, Mermaid, JSON).

Rules kept here:

1. A renderer reads only the ladder (design rule 2): steps, participants, metadata; and
   what its caller knows that the capture does not: ``lifelines`` (host -> a label under
   its name, e.g. "Postfix 3.7.11") and ``title`` (what the ladder is of, e.g. the
   scenario's name).  JSON, the interchange form, is the ladder alone.
2. Columns are ``Ladder.participants`` (order of first appearance); every step keeps its
   number and goes from its ``src`` column to its ``dst`` column, labelled by
   ``style.label`` (a diagram may draw one arrow for the steps one packet carried).
3. ``render(ladder, fmt, ...)`` is the one entry point; ``FORMATS`` names the formats, each
   renderer's module imported when its format is first asked for.
"""

from __future__ import annotations

from collections.abc import Mapping

from harness import signals
from harness.errors import HarnessError
from harness.ladder.model import Ladder

# format -> the module that renders it, imported when that format is asked for: SVG and HTML
# bring urllib and xml (10 MB resident) that a text or JSON ladder never needs
FORMATS: dict[str, str] = {
    "text": "harness.render.text",
    "svg": "harness.render.svg",
    "html": "harness.render.html",
    "mermaid": "harness.render.mermaid",
    "json": "harness.render.json",
}


def render(
    ladder: Ladder,
    fmt: str,
    *,
    lifelines: Mapping[str, str] | None = None,
    title: str | None = None,
) -> str:
    """*ladder* as a document in format *fmt* (one of ``FORMATS``)."""
    try:
        module = FORMATS[fmt]
    except KeyError:
        raise HarnessError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})") from None
    return signals.imported(module).render(ladder, lifelines=lifelines, title=title)
