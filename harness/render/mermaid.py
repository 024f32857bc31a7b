"""The ladder as a Mermaid ``sequenceDiagram``.

Hosts are participants ``P1``, ``P2``, ... named with ``as`` (and their lifeline label in
parentheses); requests are ``->>``, responses ``-->>``, TCP control ``-)``.  Characters
Mermaid would read as syntax or HTML (``#``, ``;``, ``<``, ``>``) are written as its
``#code;`` entities.
"""

from __future__ import annotations

from collections.abc import Mapping

from harness.ladder.model import Ladder, Step
from harness.render.style import RESPONSES, family, label

_ESCAPES = {"#": "#35;", ";": "#59;", "<": "#60;", ">": "#62;"}


def render(
    ladder: Ladder, *, lifelines: Mapping[str, str] | None = None, title: str | None = None
) -> str:
    del title  # a sequenceDiagram has no place for one that every Mermaid version reads
    lifelines = lifelines or {}
    ids = {host: f"P{n}" for n, host in enumerate(ladder.participants, 1)}
    lines = ["sequenceDiagram"]
    lines += [
        f"    participant {pid} as {_escape(_named(host, lifelines))}" for host, pid in ids.items()
    ]
    for step in ladder.steps:
        text = _escape(f"{step.index} {label(step)}")
        lines.append(f"    {ids[step.src]}{_arrow(step)}{ids[step.dst]}: {text}")
    return "\n".join(lines) + "\n"


def _named(host: str, lifelines: Mapping[str, str]) -> str:
    return f"{host} ({lifelines[host]})" if lifelines.get(host) else host


def _arrow(step: Step) -> str:
    if family(step) == "tcp":
        return "-)"
    return "-->>" if step.kind in RESPONSES else "->>"


def _escape(text: str) -> str:
    return "".join(_ESCAPES.get(ch, ch) for ch in text)
