"""Every registered check is proven able to fail, shown to pass, and refuses to pass a run
in which nothing happened (issue 8: "Proven able to fail").

One test walks the registry, so a check added without its cases in ``tests/check_cases.py``
fails here.  Each case is a crafted run (packets written with scapy, dissected by the real
dissector); the verdicts must be exactly the ones the case states, every verdict must cite
steps of its run, and no pass may cite every step of a ladder of more than a handful of
steps (except check zero, whose rule is the whole seed).
"""

from __future__ import annotations

import dataclasses
import subprocess

import pytest
from check_cases import CASES
from conftest import PYTHON
from wire import run_of, scenario_of

from harness.checks.base import MODULES, Check, Kind, registry
from harness.checks.queries import present
from harness.outcome import OutcomeStatus
from harness.verdict import Verdict

CHECKS = registry()
EMPTY_OUTCOMES = (None, OutcomeStatus.DEFERRED, OutcomeStatus.REJECTED, OutcomeStatus.DELIVERED)


def _scenarios(check: Check, role: str) -> list:
    return [scenario_of(check, role, i) for i in range(len(check.setups))]


def test_every_check_has_its_cases() -> None:
    missing = sorted(set(CHECKS) - set(CASES))
    unknown = sorted(set(CASES) - set(CHECKS))
    assert not missing, f"checks without cases in tests/check_cases.py: {missing}"
    assert not unknown, f"cases for no registered check: {unknown}"
    for check_id, cases in CASES.items():
        check = CHECKS[check_id]
        assert cases.role in check.roles, check_id
        if check.kind is Kind.OBSERVATION:
            assert len({value for value, _ in cases.values}) >= 2, f"{check_id}: one value"
        else:
            assert cases.passing, f"{check_id}: no passing case"
            assert Verdict.FAIL in {v for v, _ in cases.failing}, f"{check_id}: no failing case"


def _judged(check: Check, role: str, build, folder):
    runs = build(_scenarios(check, role), folder)
    return runs, check.judge(runs)


def _cited(outcome, runs) -> None:
    assert outcome.evidence, outcome
    for run, index in outcome.evidence:
        assert 1 <= index <= len(runs[run].ladder.steps), (run, index)


@pytest.mark.parametrize("check_id", list(CHECKS))
def test_check_passes_fails_and_refuses_the_empty_run(check_id, tmp_path) -> None:
    check, cases = CHECKS[check_id], CASES[check_id]
    for n, build in enumerate(cases.passing):
        runs, outcome = _judged(check, cases.role, build, tmp_path / f"pass{n}")
        assert outcome.verdict is Verdict.PASS, f"pass case {n}: {outcome}"
        _cited(outcome, runs)
        every = {(r, s.index) for r, run in enumerate(runs) for s in run.ladder.steps}
        if check_id != "seed.exchange" and len(every) > 4:
            assert set(outcome.evidence) != every, f"pass case {n} cites every step"
    for n, (verdict, build) in enumerate(cases.failing):
        runs, outcome = _judged(check, cases.role, build, tmp_path / f"fail{n}")
        assert outcome.verdict is verdict, f"failing case {n}: {outcome}"
        if verdict is not Verdict.FAIL:
            _cited(outcome, runs)
    for n, (value, build) in enumerate(cases.values):
        runs, outcome = _judged(check, cases.role, build, tmp_path / f"value{n}")
        assert (outcome.verdict, outcome.value) == (Verdict.OBSERVED, value), outcome
        _cited(outcome, runs)


@pytest.mark.parametrize("check_id", list(CHECKS))
@pytest.mark.parametrize("status", EMPTY_OUTCOMES, ids=lambda s: f"outcomes-{s}")
def test_nothing_on_the_wire_never_passes(check_id, status, tmp_path) -> None:
    """Issue 8 finding 1: over a run in which nothing happened, 9 checks passed, and 6 more
    with every recipient reported deferred or rejected.  Now none may pass or observe."""
    check = CHECKS[check_id]
    for role in check.roles:
        scenarios = _scenarios(check, role)
        runs = [
            run_of(
                s,
                None,
                tmp_path / f"{role}{i}",
                outcomes=None if status is None else dict.fromkeys(s.sender.recipients, status),
            )
            for i, s in enumerate(scenarios)
        ]
        outcome = check.judge(runs)
        assert outcome.verdict in (Verdict.NA, Verdict.FAIL, Verdict.ERROR), (role, outcome)


GATED = [
    (check_id, n)
    for check_id, check in CHECKS.items()
    for n, pre in enumerate(check.requires)
    if pre.needs or pre.verbs or pre.codes
]


@pytest.mark.parametrize(("check_id", "n"), GATED, ids=lambda x: str(x))
def test_a_gate_never_hides_what_its_find_finds(check_id, n, tmp_path) -> None:
    """``Precondition.needs/verbs/codes`` say what a find cannot do without: over every run
    of the check's cases in which the find finds something, the gate lets it through (a
    wrong gate would turn an exercised rule into n/a), and at least one case exercises it;
    with what the gate names taken out of the ladder, the precondition is not exercised."""
    check, cases = CHECKS[check_id], CASES[check_id]
    pre = check.requires[n]
    builds = [*cases.passing, *(b for _, b in cases.failing), *(b for _, b in cases.values)]
    found = 0
    for i, build in enumerate(builds):
        run = build(_scenarios(check, cases.role), tmp_path / f"case{i}")[pre.run]
        if pre.find(run):
            found += 1
            assert not pre.lacks(present(run.ladder)), f"case {i}: the gate hides what it finds"
            named = set(pre.needs) | set(pre.verbs) | set(pre.codes)
            kept = dataclasses.replace(
                run.ladder, steps=[s for s in run.ladder.steps if not named & _what(s)]
            )
            assert pre.lacks(present(kept)), f"case {i}"
            if n == 0 and len(check.setups) == 1:  # what ``check`` plans without the judge
                assert check.lacking(present(run.ladder)) is None, f"case {i}"
                assert check.lacking(present(kept)) is pre.unexercised, f"case {i}"
    assert found, f"no case of {check_id} exercises precondition {n}: the gate is untested"


def _what(step) -> set:
    """What a gate may name of a step: its kind, a command's verb, a reply's code."""
    return {step.kind, step.get("verb"), step.get("code")} - {None}


def test_the_registry_order_is_the_modules_order_whatever_was_imported_first() -> None:
    """``harness.replay.stored`` imports ``harness.checks.data`` early; the matrix's plan
    (and its collected items) must still follow MODULES, not the import order."""
    code = (
        "import harness.checks.data\n"
        "from harness.checks.base import MODULES, registry\n"
        "areas = [check.judge_seen.__module__.rsplit('.', 1)[1] for check in registry().values()]\n"
        "print(' '.join(dict.fromkeys(areas)))\n"
    )
    done = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == list(MODULES)
