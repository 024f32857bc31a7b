"""The ladder as a Mermaid ``sequenceDiagram``.

Hosts are participants ``P1``, ``P2``, ... named with ``as`` (and their lifeline label in
parentheses); requests are ``->>``, responses ``-->>``, TCP control ``-)``.  Characters
Mermaid would read as syntax or HTML (``#``, ``;``, ``<``, ``>``) are written as its
``#code;`` entities.  Steps one packet completed (``style.packet_groups``) are in one
``rect`` box headed by a note "one packet: steps 9-13" (the SVG's bracket); each keeps its
own arrow and number.
"""

from __future__ import annotations

from collections.abc import Mapping

from harness.ladder.model import Ladder, Step
from harness.render.style import RESPONSES, family, label, packet_groups

_ESCAPES = {"#": "#35;", ";": "#59;", "<": "#60;", ">": "#62;"}
_BOX = "rgba(128, 128, 128, 0.12)"  # the box of one packet's steps: a light grey


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
    for group in packet_groups(ladder):
        lines += _group(group, ids)
    return "\n".join(lines) + "\n"


def _group(group: list[Step], ids: Mapping[str, str]) -> list[str]:
    """The arrows of one packet's steps; two or more boxed together, with a note."""
    arrows = [_message(step, ids) for step in group]
    if len(group) == 1:
        return arrows
    ends = f"{ids[group[0].src]},{ids[group[0].dst]}"
    note = f"    Note over {ends}: one packet: steps {group[0].index}-{group[-1].index}"
    return [f"    rect {_BOX}", note, *arrows, "    end"]


def _message(step: Step, ids: Mapping[str, str]) -> str:
    text = _escape(f"{step.index} {label(step)}")
    return f"    {ids[step.src]}{_arrow(step)}{ids[step.dst]}: {text}"


def _named(host: str, lifelines: Mapping[str, str]) -> str:
    return f"{host} ({lifelines[host]})" if lifelines.get(host) else host


def _arrow(step: Step) -> str:
    if family(step) == "tcp":
        return "-)"
    return "-->>" if step.kind in RESPONSES else "->>"


def _escape(text: str) -> str:
    return "".join(_ESCAPES.get(ch, ch) for ch in text)
