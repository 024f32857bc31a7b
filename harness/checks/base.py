"""Conformance checks: what one check is, how its verdict is earned, and the registry.

Rules kept here:
- A check is data plus one judge: an id (``area.name``), a title, the RFC words it enforces
  (``rfc``: the section, and the rule in a few words), the roles the MTA under test can
  play in it, the setups it runs, its ``kind`` and its ``requires``.  Its judge reads the
  runs' ladders (design rule 2), plus the per-recipient outcomes and the stored messages
  where the rule is about them (bounces, smuggling).
- ``requires`` states what must have happened for the rule to be exercised ("an MX answer
  with a null MX reached the sender"): each ``Precondition`` finds the steps that show it,
  and is tested before the judge runs.  One that finds nothing makes the verdict ``n/a``,
  with the reason; the judge never runs.  What its find cannot do without (a kind of step,
  a command verb, a reply code: ``needs``, ``verbs``, ``codes``) it may say: a ladder with
  none of one of them is n/a the same, by a look-up, the find never run.  The steps found
  are evidence of every verdict.
  A precondition whose judge also reads what only a lab run has (the stored copies, the
  sender's queue, the scenario's users) says so in ``lab``: judging a passive capture
  (``harness.checks.offline``) makes such a check n/a with that reason; one that looks
  inside TLS says so in ``inside_tls``: in a capture whose TLS was not decrypted, n/a too.
- A ``rule`` check judges: ``pass``, ``fail`` (a MUST broken) or ``deviation-known`` (a
  SHOULD broken, or a documented departure).  An ``observation`` reports a fact with
  several allowed answers (who closes first, when the PTR is asked): its verdict is
  ``observed`` with the ``value`` seen.  Only rules pass or fail.
- A verdict is earned: every pass, deviation-known and observation cites steps (the
  preconditions' and the judge's own, ``Cite`` = (run, step index)), each a step of that
  run's ladder; a fail cites what it can (a fail about something that never happened may
  have nothing to cite: its note says what is missing).  A judge that breaks this, returns
  a verdict its kind cannot give, or lacks what it needs (``Unjudged``), gives an
  ``error``: the harness's fault, never a guess in either direction.
- A ``Setup`` is TOML-shaped data laid over the seed (``scenario_from_data``).  On the side
  under test it only sets what a real MTA is also given (recipients, message, users, the
  VRFY policy); ``reference`` holds what our scripted peer needs to stand in for an MTA
  there (e.g. ``ehlo = true``) and is used only in the "harness" column; ``by_role`` holds
  data laid over ``data`` only when the check plays that role (e.g. a reply rule for the
  scripted receiver, which exists only when the sender is under test), in every column.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import importlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from harness.checks.queries import Present, present
from harness.errors import HarnessError, InternalError
from harness.ladder.model import Step, StepKind
from harness.result import RunResult
from harness.verdict import Verdict

if TYPE_CHECKING:
    from harness.scenario import Scenario

ROLES = ("sender", "receiver")
SENDER, RECEIVER, BOTH = ("sender",), ("receiver",), ROLES
QUEUE = "the sender's queue (what became of each recipient)"  # a lab run's alone (``lab``)
REFERENCE = "harness"  # the column where our scripted peers play the role under test
MODULES = ("seed", "dns", "session", "esmtp", "data", "close", "tcp", "tls")

Cite = tuple[int, int]  # (run, step index): a step of one of the check's runs


class Kind(StrEnum):
    RULE = "rule"  # pass / fail / deviation-known
    OBSERVATION = "observation"  # observed, with the value seen


GIVES = {  # what each kind of check may conclude, besides n/a and error
    Kind.RULE: frozenset({Verdict.PASS, Verdict.FAIL, Verdict.KNOWN}),
    Kind.OBSERVATION: frozenset({Verdict.OBSERVED}),
}
# verdicts read once here (an enum member read off its class costs ~70 ns): ``_earned``
# runs for every verdict judged
_UNEARNED = frozenset({Verdict.NA, Verdict.ERROR})  # what needs no evidence, nor checks it
_OBSERVED, _FAIL = Verdict.OBSERVED, Verdict.FAIL


class Unjudged(InternalError):
    """The run lacks what the judgement needs; the cell is an error, not a verdict."""


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    evidence: tuple[Cite, ...] = ()
    note: str = ""
    value: str | None = None  # an observation's value

    def __post_init__(self) -> None:
        if self.verdict.__class__ is not Verdict:  # a string from JSON
            object.__setattr__(self, "verdict", Verdict(self.verdict))

    def steps(self, run: int = 0) -> tuple[int, ...]:
        """The cited step indexes of one run."""
        return tuple(index for r, index in self.evidence if r == run)


Cited = Step | int | None


def cites(steps: Iterable[Cited], run: int = 0) -> tuple[Cite, ...]:
    """(run, index) for each step given (a Step, its index, or None: left out)."""
    out = []
    for step in steps:
        if step is not None:
            out.append((run, step.index if isinstance(step, Step) else int(step)))
    return tuple(out)


def passed(note: str, *steps: Cited, run: int = 0) -> Outcome:
    return Outcome(Verdict.PASS, cites(steps, run), note)


def failed(note: str, *steps: Cited, run: int = 0) -> Outcome:
    return Outcome(Verdict.FAIL, cites(steps, run), note)


def known(note: str, *steps: Cited, run: int = 0) -> Outcome:
    return Outcome(Verdict.KNOWN, cites(steps, run), note)


def observed(value: str, note: str, *steps: Cited, run: int = 0) -> Outcome:
    return Outcome(Verdict.OBSERVED, cites(steps, run), note, value)


def not_applicable(note: str) -> Outcome:
    return Outcome(Verdict.NA, (), note)


def error(note: str) -> Outcome:
    return Outcome(Verdict.ERROR, (), note)


@dataclass(frozen=True)
class Precondition:
    """What must have happened for a rule to be exercised, and how to see it."""

    says: str  # "an MX answer with a null MX reached the sender"
    find: Callable[[RunResult], Sequence[Step]]  # the steps that show it; none: not exercised
    run: int = 0  # which of the check's runs it looks at
    lab: str = ""  # what only a lab run has that the judge reads too ("" : a capture will do)
    inside_tls: bool = False  # it looks inside TLS: a capture not decrypted cannot show it
    # what ``find`` finds nothing without: a kind of step (the RST a reset needs), a command
    # verb (STARTTLS), a reply code (554); a ladder with none of one of them is not
    # exercised, told by a look-up in what it has (``queries.present``), the find never run
    needs: tuple[StepKind, ...] = ()
    verbs: tuple[str, ...] = ()
    codes: tuple[int, ...] = ()

    @functools.cached_property
    def gated(self) -> bool:
        """Whether it names what its find needs (``lacks`` can tell anything)."""
        return bool(self.needs or self.verbs or self.codes)

    def lacks(self, has: Present) -> bool:
        """Whether a ladder that has ``has`` (``present``) lacks what ``find`` needs (then
        it would find nothing)."""
        return (
            bool(self.needs and has.kinds.isdisjoint(self.needs))
            or bool(self.verbs and has.verbs.isdisjoint(self.verbs))
            or bool(self.codes and has.codes.isdisjoint(self.codes))
        )

    @functools.cached_property
    def unexercised(self) -> Outcome:
        """The n/a when it finds nothing (made once: most checks of a session end here)."""
        return not_applicable(f"not exercised: it needs {self.says}, which did not happen")


@dataclass(frozen=True)
class Seen:
    """What a judge is given: the runs, one per setup, and each precondition's steps."""

    runs: tuple[RunResult, ...]
    found: tuple[tuple[Step, ...], ...]

    @property
    def run(self) -> RunResult:
        return self.runs[0]


Judge = Callable[[Seen], Outcome]


@dataclass(frozen=True)
class Setup:
    """One scenario a check runs: overrides on the seed, and the reference peer's extras."""

    name: str
    data: dict = field(default_factory=dict)
    reference: dict = field(default_factory=dict)
    by_role: dict[str, dict] = field(default_factory=dict)

    def scenario_data(self, mta: str, role: str) -> dict:
        """The TOML-shaped data of this setup with ``mta`` playing ``role``."""
        data = copy.deepcopy(self.data)
        for section, keys in self.by_role.get(role, {}).items():
            data.setdefault(section, {}).update(copy.deepcopy(keys))
        data.setdefault("scenario", {}).setdefault("name", self.name)
        if mta == REFERENCE:
            for section, keys in self.reference.items():
                data.setdefault(section, {}).update(copy.deepcopy(keys))
        else:
            data.setdefault(role, {})["mta"] = mta
        return data

    def scenario(self, mta: str, role: str) -> Scenario:
        from harness.scenario import FIXTURES, scenario_from_data  # a lab's, not a capture's

        path = FIXTURES / "scenarios" / "checks" / f"{self.name}.toml"  # anchors relative paths
        return scenario_from_data(self.scenario_data(mta, role), path)

    def key(self, mta: str, role: str) -> str:
        """Equal keys mean equal runs (the matrix runs each once)."""
        return json.dumps([mta, role, self.scenario_data(mta, role)], sort_keys=True)


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    rfc: str
    roles: tuple[str, ...]
    setups: tuple[Setup, ...]
    judge_seen: Judge
    requires: tuple[Precondition, ...] = ()
    kind: Kind = Kind.RULE

    def judge(self, results: Sequence[RunResult], has: Present | None = None) -> Outcome:
        """The verdict over one run per setup, earned by the rules above; ``has``: what the
        first run's ladder has (``present``), when the caller knows it already."""
        if len(results) != len(self.setups):
            raise InternalError(f"{self.id}: {len(results)} runs for {len(self.setups)} setups")
        found: list[tuple[Step, ...]] = []
        try:
            for pre in self.requires:
                run = results[pre.run]
                if pre.gated:
                    known = has if has is not None and not pre.run else present(run.ladder)
                    if pre.lacks(known):
                        return pre.unexercised
                steps = tuple(pre.find(run))
                if not steps:
                    return pre.unexercised
                found.append(steps)
            outcome = self.judge_seen(Seen(tuple(results), tuple(found)))
        except Unjudged as exc:
            return error(str(exc))
        return self._earned(outcome, results, found, has)

    def lacking(self, has: Present) -> Outcome | None:
        """The n/a ``judge`` gives a single run whose ladder has ``has``, when the first
        precondition (the first it asks) lacks what its find needs; None when that takes
        the judgement itself (or the check compares several runs)."""
        if len(self.setups) != 1 or not self.requires:
            return None
        first = self.requires[0]
        return first.unexercised if first.gated and first.lacks(has) else None

    def _earned(
        self,
        outcome: Outcome,
        results: Sequence[RunResult],
        found: list[tuple[Step, ...]],
        has: Present | None,
    ) -> Outcome:
        """The outcome with the preconditions' steps cited, or an error if it is not earned."""
        verdict = outcome.verdict
        if verdict in _UNEARNED:
            return outcome
        if verdict not in GIVES[self.kind]:
            return error(f"judge bug: a {self.kind} check cannot give {verdict}")
        if verdict is _OBSERVED and not outcome.value:
            return error("judge bug: an observation without its value")
        pairs = zip(self.requires, found, strict=True)
        given = [(pre.run, step.index) for pre, steps in pairs for step in steps]
        evidence = tuple(sorted(set(given).union(outcome.evidence)))
        if not evidence and verdict is not _FAIL:
            return error(f"judge bug: {verdict} without evidence ({outcome.note})")
        unknown = _unknown(evidence, results, has)
        if unknown is not None:
            run, index = unknown
            return error(f"judge bug: cited step {index} of run {run + 1} does not exist")
        if evidence == outcome.evidence:
            return outcome  # the judge cited all, in order: the same outcome
        return Outcome(verdict, evidence, outcome.note, outcome.value)


def _unknown(
    evidence: Iterable[Cite], results: Sequence[RunResult], has: Present | None = None
) -> Cite | None:
    """The first cited step that is not in its run's ladder (numbered from 1, or, for one
    session of a capture, with the capture's own numbers: ascending, with holes), or None;
    each run's numbers are looked up once (the first run's are in ``has``, if given)."""
    numbers: dict[int, frozenset[int]] = {} if has is None else {0: has.numbers}
    for run, index in evidence:
        if not 0 <= run < len(results):
            return run, index
        if run not in numbers:
            numbers[run] = present(results[run].ladder).numbers
        if index not in numbers[run]:
            return run, index
    return None


_REGISTRY: dict[str, Check] = {}


def check(
    id: str,
    title: str,
    rfc: str,
    roles: tuple[str, ...],
    *setups: Setup,
    requires: Sequence[Precondition] = (),
    kind: Kind = Kind.RULE,
) -> Callable[[Judge], Judge]:
    """Register the decorated judge as check ``id`` over ``setups`` (the seed if none)."""

    def register(judge: Judge) -> Judge:
        if id in _REGISTRY:
            raise HarnessError(f"check {id!r} registered twice")
        _REGISTRY[id] = Check(
            id, title, rfc, roles, setups or (SEED,), judge, tuple(requires), Kind(kind)
        )
        return judge

    return register


def registry() -> dict[str, Check]:
    """Every check, by id, in the order the modules define them: MODULES' order, then each
    module's own, whichever module happened to be imported first."""
    for module in MODULES:
        importlib.import_module(f"harness.checks.{module}")
    rank = {f"harness.checks.{module}": i for i, module in enumerate(MODULES)}
    ordered = sorted(_REGISTRY.values(), key=lambda c: rank.get(c.judge_seen.__module__, len(rank)))
    return {c.id: c for c in ordered}


def select(patterns: Sequence[str], roles: Sequence[str] = ROLES) -> list[Check]:
    """The checks whose id matches any pattern (an id or a glob) and that play a role asked
    for; a pattern that matches nothing is an error (a typo must not pass silently)."""
    checks = list(registry().values())
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(c.id, pattern) for c in checks):
            raise HarnessError(f"--check {pattern!r}: no such check (try 'dns.*')")
    chosen = [c for c in checks if not patterns or _matches(c.id, patterns)]
    return [c for c in chosen if set(c.roles) & set(roles)]


def _matches(check_id: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(check_id, p) for p in patterns)


SEED = Setup("seed")
