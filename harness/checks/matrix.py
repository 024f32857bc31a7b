"""The matrix: checks x MTAs x roles, each cell judged from its own run(s).

Rules kept here:
- A column is one MTA at one version; "harness" is the reference column, our scripted
  peers in the role under test.  An MTA column whose adapter cannot run here
  (``MtaUnavailable``, or any ``HarnessError`` while preparing it) still has every cell:
  an error cell with the reason, never a skipped one.
- A run folder is ``OUT/<mta>/<role>/<setup>``: capture.pcapng, ladder.svg, the peers' and
  the MTA's logs.  Setups that give the same scenario data run once per column and role;
  their cells share the folder.
- A cell is an error when a run raised a ``HarnessError``, recorded one of our faults
  (``RunResult.faults``: its verdict is error, whatever the wire shows), or its judge gave
  an error (``Check.judge``); any other exception is a bug and is not hidden.
- Each cell carries its expectation (``expected.Expected``) and how it differs from it;
  a column carries the MTA's upstream and Debian versions and the .debs it ran from.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from harness import __version__
from harness.checks.base import REFERENCE, Check, Cite, Outcome, Setup
from harness.checks.expected import Entry, Expected, difference
from harness.errors import HarnessError
from harness.mta.debs import Deb
from harness.runner import RunResult, run_scenario
from harness.verdict import Verdict


@dataclass(frozen=True)
class Column:
    mta: str
    version: str  # upstream, e.g. "4.96"
    unavailable: str = ""  # why this MTA cannot run here ("" when it can)
    package_version: str = ""  # Debian's, e.g. "4.96-15+deb12u11"
    debs: tuple[Deb, ...] = ()  # the .debs it ran from: package, version, file, sha256

    @property
    def label(self) -> str:
        return f"{self.mta} {self.package_version or self.version}"


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
    verdict: Verdict
    note: str
    expected: Entry
    evidence: tuple[Cite, ...] = ()
    folders: tuple[Path, ...] = field(default_factory=tuple)
    value: str | None = None  # an observation's value

    @property
    def difference(self) -> str:
        return difference(self.expected, self.verdict, self.value)

    @property
    def name(self) -> str:
        return f"{self.column.mta}/{self.role}/{self.check.id}"


def column(mta: str, adapters: dict) -> Column:
    """The column of ``mta``: its version, or why it cannot run here."""
    if mta == REFERENCE:
        return Column(REFERENCE, __version__, package_version=__version__)
    adapter = adapters[mta]
    try:
        adapter.prepare()
        return Column(mta, adapter.version(), "", adapter.package_version(), adapter.debs())
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
        expected = self.expected.entry(col.mta, col.version, role, check.id, check.kind)
        if col.unavailable:
            return Cell(check, role, col, Verdict.ERROR, col.unavailable, expected)
        runs = [self._run(setup, col, role) for setup in check.setups]
        folders = tuple(r.folder for r in runs)
        broken = next((r for r in runs if r.result is None), None)
        if broken is not None:
            return Cell(check, role, col, Verdict.ERROR, broken.error, expected, folders=folders)
        results = [r.result for r in runs if r.result]
        faults = [f.line() for r in results for f in r.faults]
        if faults:
            note = "harness fault: " + "; ".join(faults)
            return Cell(check, role, col, Verdict.ERROR, note, expected, folders=folders)
        outcome: Outcome = check.judge(results)
        return Cell(
            check,
            role,
            col,
            outcome.verdict,
            outcome.note,
            expected,
            outcome.evidence,
            folders,
            outcome.value,
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
