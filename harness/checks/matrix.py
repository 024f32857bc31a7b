"""The matrix: checks x MTAs x roles, each cell judged from its own run(s).

Rules kept here:
- A column is one MTA at one version; "harness" is the reference column, our scripted
  peers in the role under test.  An MTA column whose adapter cannot run here
  (``MtaUnavailable``, or any ``HarnessError`` while preparing it) still has every cell:
  an error cell with the reason, never a skipped one.
- A run folder is ``OUT/<mta>/<role>/<setup>``: capture.pcap, ladder.svg, the peers' and
  the MTA's logs.  Setups that give the same scenario data run once per column and role;
  their cells share the folder.
- A cell is an error when a run raised a ``HarnessError`` or its judge could not judge
  (``Unjudged``); any other exception is a bug and is not hidden.
- Each cell carries its expectation (``expected.Expected``) and how it differs from it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from harness import __version__
from harness.checks.base import REFERENCE, Check, Outcome, Setup
from harness.checks.expected import Entry, Expected, difference
from harness.errors import HarnessError
from harness.runner import RunResult, run_scenario


@dataclass(frozen=True)
class Column:
    mta: str
    version: str
    unavailable: str = ""  # why this MTA cannot run here ("" when it can)

    @property
    def label(self) -> str:
        return f"{self.mta} {self.version}"


@dataclass(frozen=True)
class Run:
    folder: Path
    result: RunResult | None = None
    error: str = ""


@dataclass(frozen=True)
class Cell:
    check: Check
    role: str
    column: Column
    verdict: str  # a check verdict, or "error"
    note: str
    expected: Entry
    evidence: tuple[int, ...] = ()
    evidence_run: int = 0
    folders: tuple[Path, ...] = field(default_factory=tuple)

    @property
    def difference(self) -> str:
        return difference(self.expected.verdict, self.verdict)

    @property
    def name(self) -> str:
        return f"{self.column.mta}/{self.role}/{self.check.id}"


def column(mta: str, adapters: dict) -> Column:
    """The column of ``mta``: its version, or why it cannot run here."""
    if mta == REFERENCE:
        return Column(REFERENCE, __version__)
    adapter = adapters[mta]
    try:
        adapter.prepare()
        return Column(mta, adapter.version())
    except HarnessError as exc:
        return Column(mta, "?", unavailable=str(exc))


class Matrix:
    """Runs the cells of ``checks`` x ``columns`` x ``roles`` under ``out``."""

    def __init__(self, out: Path, expected: Expected) -> None:
        self.out = out
        self.expected = expected
        self._runs: dict[str, Run] = {}

    def plan(
        self, checks: Iterable[Check], columns: Iterable[Column], roles: Iterable[str]
    ) -> list[tuple[Check, str, Column]]:
        wanted = set(roles)
        return [
            (check, role, col)
            for check in checks
            for role in check.roles
            if role in wanted
            for col in columns
        ]

    def cell(self, check: Check, role: str, col: Column) -> Cell:
        expected = self.expected.entry(col.mta, col.version, role, check.id)
        if col.unavailable:
            return Cell(check, role, col, "error", col.unavailable, expected)
        runs = [self._run(setup, col, role) for setup in check.setups]
        folders = tuple(r.folder for r in runs)
        failed = next((r for r in runs if r.result is None), None)
        if failed is not None:
            return Cell(check, role, col, "error", failed.error, expected, folders=folders)
        try:
            outcome: Outcome = check.judge([r.result for r in runs if r.result])
        except HarnessError as exc:  # Unjudged: the run lacks what the verdict needs
            return Cell(check, role, col, "error", str(exc), expected, folders=folders)
        return Cell(
            check,
            role,
            col,
            outcome.verdict,
            outcome.note,
            expected,
            outcome.evidence,
            outcome.run,
            folders,
        )

    def _run(self, setup: Setup, col: Column, role: str) -> Run:
        key = setup.key(col.mta, role)
        if key not in self._runs:
            folder = self.out / col.mta / role / setup.name
            try:
                result = run_scenario(setup.scenario(col.mta, role), folder)
                self._runs[key] = Run(folder, result)
            except HarnessError as exc:
                self._runs[key] = Run(folder, error=str(exc))
        return self._runs[key]
