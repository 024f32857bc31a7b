"""A ladder's answers, kept: the questions every judge of a session asks, computed once.

Rules kept here:
- Only reads: nothing here changes a ladder.  The answers are kept in the ladder's
  ``queries`` (a cache, no part of the ladder's data), under string keys (the ladder stays
  picklable), and dropped when the ladder's steps are another list or another length
  (whoever built it may still be adding steps).
- ``per_ladder(query)``: ``query(ladder, *args)`` computed once per ladder and arguments; a
  list it answers is a copy for each caller, so no caller changes another's answer.
- ``where``: the steps of some kinds whose attributes (src, dst, conn) equal those given.
- ``index``: one scan of the ladder, made the first time anything is asked of it: its steps
  by kind, its commands by verb, its replies by what they answer, each connection's first
  greeting, the connections that carried SMTP, and what it has at all (``present``: the
  kinds, verbs, codes and step numbers; a precondition that needs one of them is told "not
  exercised" by a set look-up, ``harness.checks.base.Precondition``, and a cited step is
  found the same way).  The questions judges ask most are read off it: one scan of a
  short session costs what two of those questions cost asked each by its own scan.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from harness.ladder.model import Ladder, Step, StepKind

T = TypeVar("T")
_FOR = "steps"  # the key of (the steps, their number) the kept answers were computed for
_UNKNOWN = object()  # not asked yet (None is an answer)


def per_ladder(query: Callable[..., T]) -> Callable[..., T]:
    """``query(ladder, *args)`` computed once for a ladder and the same arguments (positional
    and hashable); a list it answers is copied for each caller."""
    name = query.__qualname__
    alone = (name,)  # the key of the question without arguments, made once

    @functools.wraps(query)
    def asked(ladder: Ladder, *args: object) -> T:
        known, steps = ladder.queries, ladder.steps
        mark = known.get(_FOR)  # kept(ladder), inline: judges ask ~30 times a session
        if mark is None or mark[0] is not steps or mark[1] != len(steps):  # type: ignore[index]
            known = kept(ladder)
        key = (name, *args) if args else alone
        found = known.get(key, _UNKNOWN)
        if found is _UNKNOWN:
            found = known[key] = query(ladder, *args)
        return list(found) if type(found) is list else found  # type: ignore[return-value]

    return asked


def kept(ladder: Ladder) -> dict[object, object]:
    """The answers kept for ``ladder``, emptied if its steps are not those they came from."""
    queries, steps = ladder.queries, ladder.steps
    mark = queries.get(_FOR)
    if mark is None or mark[0] is not steps or mark[1] != len(steps):  # type: ignore[index]
        queries.clear()
        queries[_FOR] = (steps, len(steps))
    return queries


def where(ladder: Ladder, kind: str | Iterable[str], **match: object) -> list[Step]:
    """Steps of ``kind`` whose attributes (src, dst, conn) equal ``match``."""
    known = kept(ladder)
    key = ("where", kind if isinstance(kind, str) else tuple(kind), *match.items())
    found = known.get(key)
    if found is None:
        found = known[key] = _where(ladder, key[1], match)
    return list(found)  # type: ignore[call-overload]


def _where(ladder: Ladder, kind: str | tuple[str, ...], match: dict[str, object]) -> list[Step]:
    by_kind = index(ladder).by_kind
    if isinstance(kind, str):
        found = by_kind.get(kind, [])
    else:  # several kinds, in the ladder's order: a scan, unless at most one is there
        there = [k for k in kind if k in by_kind]
        if len(there) < 2:
            found = by_kind[there[0]] if there else []
        else:
            wanted = set(there)
            found = [s for s in ladder.steps if s.kind in wanted]
    for key, value in match.items():  # one pass per attribute: no generator per step
        found = [s for s in found if getattr(s, key) == value]
    return found


@dataclass(frozen=True, slots=True)
class Present:
    """What a ladder has at all: its kinds of step, its commands' verbs, its replies' codes,
    its step numbers."""

    kinds: frozenset[str]
    verbs: frozenset[str]
    codes: frozenset[int]
    numbers: frozenset[int]


@dataclass(frozen=True, slots=True)
class Index:
    """A ladder in one scan.  Every list is in the ladder's order and is the index's own:
    a caller that hands one on copies it."""

    by_kind: dict[str, list[Step]]
    by_verb: dict[str, list[Step]]  # commands, by ``verb`` ("" for none)
    by_answer: dict[object, list[Step]]  # replies, by ``answers`` (None for none)
    greetings: dict[int | None, Step]  # each connection's first reply to "<greeting>"
    smtp_conns: list[int]  # connections with a command or a reply, in order of appearance
    present: Present


@per_ladder
def index(ladder: Ladder) -> Index:
    """The ladder's ``Index``: one pass, no generator, the kinds in locals (an enum member
    read off its class costs ~70 ns)."""
    command, reply = StepKind.COMMAND, StepKind.REPLY
    by_kind: dict[str, list[Step]] = {}
    by_verb: dict[str, list[Step]] = {}
    by_answer: dict[object, list[Step]] = {}
    greetings: dict[int | None, Step] = {}
    conns: dict[int, None] = {}
    codes: set[int] = set()
    for step in ladder.steps:
        kind = step.kind
        same = by_kind.get(kind)
        if same is None:
            by_kind[kind] = [step]
        else:
            same.append(step)
        if kind is command:
            by_verb.setdefault(str(step.get("verb") or ""), []).append(step)
        elif kind is reply:
            answers = step.get("answers")
            by_answer.setdefault(answers, []).append(step)
            codes.add(int(step.get("code") or 0))
            if answers == "<greeting>" and step.conn not in greetings:
                greetings[step.conn] = step
        else:
            continue
        if step.conn is not None:
            conns[step.conn] = None
    has = Present(
        frozenset(by_kind),
        frozenset(by_verb),
        frozenset(codes),
        frozenset([s.index for s in ladder.steps]),
    )
    return Index(by_kind, by_verb, by_answer, greetings, list(conns), has)


def present(ladder: Ladder) -> Present:
    """The kinds, verbs, codes and numbers of the ladder's steps."""
    return index(ladder).present
