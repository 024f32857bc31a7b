"""The ladder as JSON (``Ladder.to_json``): the interchange form, read back by ``from_json``.
The ladder alone: lifeline labels and titles are for documents people read."""

from __future__ import annotations

from collections.abc import Mapping

from harness.ladder.model import Ladder


def render(
    ladder: Ladder, *, lifelines: Mapping[str, str] | None = None, title: str | None = None
) -> str:
    del lifelines, title  # not part of the interchange form
    return ladder.to_json() + "\n"
