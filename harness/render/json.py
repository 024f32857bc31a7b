"""The ladder as JSON (``Ladder.to_json``): the interchange form, read back by ``from_json``."""

from __future__ import annotations

from harness.ladder.model import Ladder


def render(ladder: Ladder) -> str:
    return ladder.to_json() + "\n"
