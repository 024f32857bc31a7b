"""The judges' ladder queries answered once per ladder (harness/checks/steps.py
``per_ladder``): the kept answers follow the ladder's steps, are no part of the ladder's
data, and a caller's copy cannot change them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from harness.checks.base import SEED, Check, Precondition, passed
from harness.checks.offline import Ends, _as_run
from harness.checks.steps import commands, reply_to, smtp_conns, where
from harness.ladder.model import Ladder, Step, StepKind, detail


def _step(index: int, kind: StepKind, text: str, conn: int = 1, **items: object) -> Step:
    src, dst = ("client", "server") if kind == StepKind.COMMAND else ("server", "client")
    return Step(index, index, src, dst, kind, text, (index,), conn, detail(**items))


def _ladder() -> Ladder:
    return Ladder(
        [
            _step(1, StepKind.REPLY, "220 hi", code=220, answers="<greeting>"),
            _step(2, StepKind.COMMAND, "EHLO c", verb="EHLO"),
            _step(3, StepKind.REPLY, "250 ok", code=250, answers="EHLO"),
        ]
    )


def test_answers_follow_steps_added_after_a_question() -> None:
    ladder = _ladder()
    assert [s.index for s in commands(ladder)] == [2]
    ladder.steps.append(_step(4, StepKind.COMMAND, "QUIT", verb="QUIT"))
    assert [s.index for s in commands(ladder)] == [2, 4]
    assert [s.index for s in where(ladder, StepKind.COMMAND, conn=1)] == [2, 4]


def test_answers_follow_steps_replaced() -> None:
    ladder = _ladder()
    assert smtp_conns(ladder) == [1]
    ladder.steps = [_step(1, StepKind.COMMAND, "NOOP", conn=7, verb="NOOP")]
    assert smtp_conns(ladder) == [7]
    assert reply_to(ladder, ladder.steps[0]) is None


def test_a_callers_copy_does_not_change_the_kept_answer() -> None:
    ladder = _ladder()
    commands(ladder).clear()
    where(ladder, StepKind.REPLY).clear()
    assert [s.index for s in commands(ladder)] == [2]
    assert [s.index for s in where(ladder, StepKind.REPLY)] == [1, 3]


def test_kept_answers_are_not_ladder_data() -> None:
    ladder = _ladder()
    fresh = Ladder.from_json(ladder.to_json())
    assert reply_to(ladder, ladder.steps[1]) == ladder.steps[2]
    assert ladder.queries and not fresh.queries
    assert fresh == ladder and fresh.to_json() == ladder.to_json()
    other = dataclasses.replace(ladder, steps=ladder.steps[:1])
    assert not other.queries and commands(other) == []


def test_a_precondition_that_needs_a_kind_of_step_is_not_looked_for_without_one() -> None:
    """``Precondition.needs``: a ladder with none of those kinds is not exercised, and the
    find (the costly part) never runs; with one, the find decides."""
    looked: list[int] = []

    def find(run):
        looked.append(len(run.ladder.steps))
        return [s for s in run.ladder.steps if s.kind == StepKind.RST]

    pre = Precondition("the receiver's RST", find, needs=(StepKind.RST,))
    check = Check(
        "x.y",
        "t",
        "RFC 0",
        ("receiver",),
        (SEED,),
        lambda seen: passed("ok", *seen.found[0]),
        (pre,),
    )
    quiet = Ladder([Step(1, 0, "a", "b", StepKind.SYN, "SYN", (1,), 1)])
    reset = Ladder([*quiet.steps, Step(2, 0, "b", "a", StepKind.RST, "RST", (2,), 1)])
    ends = Ends("a", "b")
    assert check.judge([_as_run(quiet, ends, Path("x"))]) is pre.unexercised
    assert looked == []
    assert check.judge([_as_run(reset, ends, Path("x"))]).verdict.value == "pass"
    assert looked == [2]
