"""Conformance checks: what one check is, and the registry of all of them.

Rules kept here:
- A check is data plus one judge: an id (``area.name``), a title, the RFC section it
  enforces, the roles the MTA under test can play in it, and the setups it runs.  Its judge
  reads only the runs' ladders (design rule 2), plus the sender's per-recipient outcomes and
  the receiver's stored messages where the verdict is about them (bounces, smuggling).
- A ``Setup`` is TOML-shaped data laid over the seed (``scenario_from_data``).  On the side
  under test it only sets what a real MTA is also given (recipients, message, users, the
  VRFY policy); ``reference`` holds what our scripted peer needs to stand in for an MTA
  there (e.g. ``ehlo = true``) and is used only in the "harness" column; ``by_role`` holds
  data laid over ``data`` only when the check plays that role (e.g. a reply rule for the
  scripted receiver, which exists only when the sender is under test), in every column.
- Verdicts: ``pass``; ``fail`` (a MUST broken, evidence = the steps that show it);
  ``n/a`` (the run never exercised the rule, e.g. no EHLO to fall back from);
  ``deviation-known`` (a documented, tolerated departure: a SHOULD, or a pattern the
  checklist calls a fact, such as who closes first).  A judge that lacks what it needs
  (no outcome reported for a recipient) raises ``Unjudged``: an error cell, never a guess.
- Evidence is step indexes in the ladder of run ``Outcome.run`` (the setups' order).
"""

from __future__ import annotations

import copy
import fnmatch
import importlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from harness.errors import HarnessError
from harness.runner import RunResult
from harness.scenario import FIXTURES, Scenario, scenario_from_data

VERDICTS = ("pass", "fail", "n/a", "deviation-known")
ROLES = ("sender", "receiver")
SENDER, RECEIVER, BOTH = ("sender",), ("receiver",), ROLES
REFERENCE = "harness"  # the column where our scripted peers play the role under test
SCENARIO_DIR = FIXTURES / "scenarios" / "checks"  # anchors the setups' relative paths
MODULES = ("seed", "dns", "session", "esmtp", "data", "close")


class Unjudged(HarnessError):
    """The run lacks what the judgement needs; the cell is an error, not a verdict."""


@dataclass(frozen=True)
class Outcome:
    verdict: str
    evidence: tuple[int, ...] = ()
    note: str = ""
    run: int = 0  # which of the check's runs the evidence indexes

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r}: expected one of {VERDICTS}")


def passed(note: str, *evidence: int, run: int = 0) -> Outcome:
    return Outcome("pass", tuple(evidence), note, run)


def failed(note: str, *evidence: int, run: int = 0) -> Outcome:
    return Outcome("fail", tuple(evidence), note, run)


def known(note: str, *evidence: int, run: int = 0) -> Outcome:
    return Outcome("deviation-known", tuple(evidence), note, run)


def not_applicable(note: str, *evidence: int) -> Outcome:
    return Outcome("n/a", tuple(evidence), note)


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
        path = SCENARIO_DIR / f"{self.name}.toml"  # virtual: anchors relative paths only
        return scenario_from_data(self.scenario_data(mta, role), path)

    def key(self, mta: str, role: str) -> str:
        """Equal keys mean equal runs (the matrix runs each once)."""
        return json.dumps([mta, role, self.scenario_data(mta, role)], sort_keys=True)


Judge = Callable[..., Outcome]


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    rfc: str
    roles: tuple[str, ...]
    setups: tuple[Setup, ...]
    judge_runs: Judge  # called with one RunResult per setup, in order

    def judge(self, results: Sequence[RunResult]) -> Outcome:
        if len(results) != len(self.setups):
            raise HarnessError(f"{self.id}: {len(results)} runs for {len(self.setups)} setups")
        return self.judge_runs(*results)


_REGISTRY: dict[str, Check] = {}


def check(
    id: str, title: str, rfc: str, roles: tuple[str, ...], *setups: Setup
) -> Callable[[Judge], Judge]:
    """Register the decorated judge as check ``id`` over ``setups`` (the seed if none)."""

    def register(judge: Judge) -> Judge:
        if id in _REGISTRY:
            raise HarnessError(f"check {id!r} registered twice")
        _REGISTRY[id] = Check(id, title, rfc, roles, setups or (SEED,), judge)
        return judge

    return register


def registry() -> dict[str, Check]:
    """Every check, by id, in the order the modules define them."""
    for module in MODULES:
        importlib.import_module(f"harness.checks.{module}")
    return dict(_REGISTRY)


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
