"""The matrix: checks x MTAs x roles, each cell judged from its own run(s).

Rules kept here:
- A column is one MTA at one version; "harness" is the reference column, our scripted
  peers in the role under test.  An MTA column whose adapter cannot run here
  (``MtaUnavailable``, or any ``HarnessError`` while preparing it) still has every cell:
  an error cell with the reason, never a skipped one.
- A run folder is ``OUT/<mta>/<role>/<setup>``: capture.pcapng, ladder.svg, the peers' and
  the MTA's logs.  Setups that give the same scenario data run once per column and role;
  their cells share the folder.
- A cell whose setup the column's MTA cannot play (``Unsupported``, refused at scenario
  load: nothing ran) is n/a with the reason.
- A cell is an error when a run raised a ``HarnessError``, recorded one of our faults
  (``RunResult.faults``: its verdict is error, whatever the wire shows), or its judge gave
  an error (``Check.judge``); any other exception is a bug and is not hidden.
- Each cell carries its expectation (``expected.Expected``) and how it differs from it;
  a column carries the MTA's upstream and Debian versions and the .debs it ran from.
- Each judged cell is saved as ``OUT/cells/<mta>/<role>/<check>.json`` (``save_cell``):
  what was seen (verdict, value, note, evidence, run folders relative to OUT, the column,
  seconds), not the expectation, which ``load_cells`` applies again.  The reports are
  written from those files, whoever judged the cells (one process, pytest-xdist workers,
  CI jobs whose folders ``matrix merge`` joins), in plan order: checks as the registry
  orders them, then roles, then columns (harness first, then the adapters' order).
- A cell file is untrusted input: one of another ``schema_version``, damaged, naming an
  unknown check or role, a folder outside its own folder, or a cell found twice, is a
  one-line ``HarnessError`` naming the file.
- Progress (``Progress``) is one line per cell as it ends, or a bar on a terminal, on
  stderr: ``ended(label, verdict, seconds)`` is all a caller gives it.
- An output folder used before has its cells/ emptied first (``clear_cells``): the report
  is of this run's cells only, never an earlier run's beside them.
- Cells that share a run (``groups``) must be judged in one process, one after another:
  their runs happen once and write one folder.  Run in parallel, the groups start longest
  first (``longest_first``, from the seconds each cell took in the last full serial run,
  fixtures/matrix-seconds.json; a cell not in it counts 0): the slowest (OpenSMTPD's 75 s
  resolver wait) is not left for the end.  The order of the report never changes.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import TextIO

from harness import __version__, progress
from harness.checks.base import REFERENCE, ROLES, Check, Cite, Outcome, Setup
from harness.checks.expected import Entry, Expected, difference
from harness.errors import HarnessError, Unsupported
from harness.mta.debs import Deb
from harness.runner import RunResult, run_scenario
from harness.scenario import FIXTURES
from harness.verdict import Verdict

CELLS = "cells"  # OUT/cells/<mta>/<role>/<check id>.json
SECONDS = FIXTURES / "matrix-seconds.json"  # per cell, the last full serial run's
CELL_SCHEMA = 1  # the schema_version of a cell file
Plan = list[tuple[Check, str, str]]  # (check, role, mta), in report order


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
    unsupported: str = ""  # why the column's MTA cannot play the setup (``Unsupported``)


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
    seconds: float = 0.0  # how long judging it took here (its runs, when it ran them)

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
        self._columns: dict[str, Column] = {}

    def column(self, mta: str) -> Column:
        """The column of ``mta``, prepared once in this process."""
        if mta not in self._columns:
            from harness.mta.base import adapters

            self._columns[mta] = column(mta, adapters())
        return self._columns[mta]

    def cell(self, check: Check, role: str, col: Column) -> Cell:
        """The cell, judged from its runs (run here unless an earlier cell ran them)."""
        started = time.monotonic()
        judged = self._judged(check, role, col)
        return dataclasses.replace(judged, seconds=time.monotonic() - started)

    def _judged(self, check: Check, role: str, col: Column) -> Cell:
        expected = self.expected.entry(col.mta, col.version, role, check.id, check.kind)
        if col.unavailable:
            return Cell(check, role, col, Verdict.ERROR, col.unavailable, expected)
        runs = [self._run(setup, col, role) for setup in check.setups]
        folders = tuple(r.folder for r in runs)
        refused = next((r for r in runs if r.unsupported), None)
        if refused is not None:
            note = f"not exercised: {refused.unsupported}"
            return Cell(check, role, col, Verdict.NA, note, expected)
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
            except Unsupported as exc:
                self._runs[key] = Run(folder, unsupported=exc.reason)
            except HarnessError as exc:
                self._runs[key] = Run(folder, error=str(exc))
        return self._runs[key]


def plan(checks: Iterable[Check], mtas: Sequence[str], roles: Iterable[str]) -> Plan:
    """The cells of ``checks`` x ``roles`` x ``mtas``, in report order."""
    wanted = set(roles)
    return [
        (check, role, mta)
        for check in checks
        for role in check.roles
        if role in wanted
        for mta in mtas
    ]


def groups(cells: Plan) -> list[str]:
    """Per cell, the name of its group: cells sharing a run (a setup's data, or its folder,
    for one MTA and role) are in one group, named after its first cell."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    firsts = []
    for check, role, mta in cells:
        keys = [k for s in check.setups for k in (s.key(mta, role), f"{mta}/{role}/{s.name}")]
        first = root(keys[0])
        for key in keys[1:]:
            parent[root(key)] = first
        firsts.append(keys[0])
    names: dict[str, str] = {}
    for (check, role, mta), key in zip(cells, firsts, strict=True):
        names.setdefault(root(key), f"{mta}/{role}/{check.id}")
    return [names[root(key)] for key in firsts]


def longest_first(cells: Plan, names: list[str], path: Path = SECONDS) -> list[int]:
    """The indexes of ``cells`` (``names``: their groups), the longest group first, each
    group's cells together in plan order."""
    seconds = _seconds(path)
    total: dict[str, float] = {}
    for (check, role, mta), name in zip(cells, names, strict=True):
        total[name] = total.get(name, 0.0) + seconds.get(f"{mta}/{role}/{check.id}", 0.0)
    first = {name: i for i, name in reversed(list(enumerate(names)))}
    return sorted(range(len(cells)), key=lambda i: (-total[names[i]], first[names[i]], i))


def _seconds(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {str(k): float(v) for k, v in data["seconds"].items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise HarnessError(f"{path}: not a seconds-per-cell file: {exc}") from None


def clear_cells(out: Path) -> Path:
    """``out``, created, without the cells of an earlier matrix."""
    shutil.rmtree(out / CELLS, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def cell_path(out: Path, mta: str, role: str, check_id: str) -> Path:
    return out / CELLS / mta / role / f"{check_id}.json"


def save_cell(cell: Cell, out: Path) -> Path:
    """Write what ``cell`` saw to its file under ``out``; its path."""
    data = {
        "schema_version": CELL_SCHEMA,
        "check": cell.check.id,
        "role": cell.role,
        "column": asdict(cell.column),
        "verdict": str(cell.verdict),
        "value": cell.value,
        "note": cell.note,
        "evidence": [list(cite) for cite in cell.evidence],
        "folders": [PurePosixPath(f.relative_to(out)).as_posix() for f in cell.folders],
        "seconds": round(cell.seconds, 3),
    }
    path = cell_path(out, cell.column.mta, cell.role, cell.check.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def load_cells(folders: Sequence[Path], checks: dict[str, Check], expected: Expected) -> list[Cell]:
    """Every cell saved under ``folders``, judged against ``expected``, in report order."""
    found: dict[str, tuple[Path, Cell]] = {}
    for folder in folders:
        for path in sorted((folder / CELLS).glob("*/*/*.json")):
            cell = _loaded(path, folder, checks, expected)
            if cell.name in found:
                raise HarnessError(f"{path}: cell {cell.name} is also in {found[cell.name][0]}")
            found[cell.name] = (path, cell)
    ids = list(checks)
    return sorted((c for _, c in found.values()), key=lambda c: _order(c, ids))


def _order(cell: Cell, ids: list[str]) -> tuple:
    from harness.mta.base import adapters

    known = [REFERENCE, *adapters()]
    mta = cell.column.mta
    where = (known.index(mta), "") if mta in known else (len(known), mta)
    return (ids.index(cell.check.id), cell.check.roles.index(cell.role), *where)


def _loaded(path: Path, folder: Path, checks: dict[str, Check], expected: Expected) -> Cell:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise HarnessError(f"{path}: not JSON: {exc.msg} at offset {exc.pos}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HarnessError(f"{path}: cannot read: {exc}") from None
    try:
        return _cell_from(data, folder, checks, expected)
    except (KeyError, TypeError, ValueError) as exc:
        raise HarnessError(f"{path}: not a cell file: {type(exc).__name__} {exc}") from None
    except HarnessError as exc:
        raise HarnessError(f"{path}: {exc}") from None


def _cell_from(data: dict, folder: Path, checks: dict[str, Check], expected: Expected) -> Cell:
    version = data.get("schema_version")
    if version != CELL_SCHEMA:
        raise HarnessError(f"schema_version {version!r}: this release reads {CELL_SCHEMA}")
    check = checks.get(data["check"])
    if check is None:
        raise HarnessError(f"check: no such check {data['check']!r}")
    role = data["role"]
    if role not in ROLES or role not in check.roles:
        raise HarnessError(f"role: {check.id} does not run with the MTA as {role!r}")
    col = data["column"]
    column = Column(**{**col, "debs": tuple(Deb(**deb) for deb in col["debs"])})
    verdict = Verdict(data["verdict"])
    value = data["value"]
    return Cell(
        check,
        role,
        column,
        verdict,
        str(data["note"]),
        expected.entry(column.mta, column.version, role, check.id, check.kind),
        tuple((int(run), int(step)) for run, step in data["evidence"]),
        tuple(_inside(folder, rel) for rel in data["folders"]),
        None if value is None else str(value),
        float(data["seconds"]),
    )


def _inside(folder: Path, relative: str) -> Path:
    rel = PurePosixPath(relative)
    if rel.is_absolute() or ".." in rel.parts:
        raise HarnessError(f"folders: {relative!r} is not inside the cell's folder")
    return folder / rel


class Progress:
    """Cells as they end, on ``stream``: a bar on a terminal (``harness.progress``, which
    also prints an MTA's "waiting for" notices above it), else one line per cell."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total, self.done = total, 0
        self.stream = stream or sys.stderr
        self._bar = None
        if self.stream.isatty():
            self._bar = progress.Progress(
                total, "cells", stream=self.stream, every=0, label="matrix", rate=False
            )
            self._bar.advance(0)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()

    def ended(self, label: str, verdict: str, seconds: float) -> None:
        self.done += 1
        line = f"{label}: {verdict} ({seconds:.1f}s)"
        if self._bar is not None:
            self._bar.advance(1, line)
            return
        width = len(str(self.total))
        progress.notice(f"[{self.done:>{width}}/{self.total}] {line}", self.stream)
