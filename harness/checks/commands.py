"""``smtp-harness matrix``: run the conformance checks against MTAs, list them, merge results.

Rules kept here:
- Exit codes (``harness.verdict.ExitCode``): 0 when every cell matches the expected matrix,
  1 when any differs (regressions, improvements and changed observations are all listed),
  2 on bad input (an unknown MTA or role, a --check that matches nothing, a bad
  expected-matrix file or cell file: a one-line ``HarnessError``), 3 when a cell is an error
  that the expected file does not record (the harness failed: a fault, a column that cannot
  run).  ``matrix merge`` keeps the same codes over the cells it joins.
- Before the summary, "expected file written for X, ran Y" for every column whose Debian
  version is not the one the expected file was written for (visible, not a failure).
- "harness" (our scripted peers) is always a valid --mta; other names are the adapters
  that exist (``harness.mta.base.adapters``).  Without --mta: harness and every adapter.
- ``-j N`` runs the cells on pytest-xdist (``harness.checks.pytest_matrix``), N workers, one
  lab each; N may exceed the cores (cells mostly wait).  Without it, one cell at a time in
  this process.  Either way each cell is saved under OUT/cells/ and the reports are written
  from those files (``matrix.load_cells``), so the verdicts cannot depend on the engine.
- ``--list`` prints the checks that --check/--role select (id, kind, roles, title, RFC
  words) and the MTA names --mta takes; it runs nothing.
- Progress goes to stderr (``matrix.Progress``: a bar on a terminal, else a line per cell
  as it ends); the list, the summary and the differences to stdout.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from harness.checks.base import REFERENCE, ROLES, Check, registry, select
from harness.checks.expected import DEFAULT_EXPECTED, Expected, load_expected
from harness.checks.matrix import (
    Cell,
    Column,
    Matrix,
    Plan,
    Progress,
    clear_cells,
    load_cells,
    plan,
    save_cell,
)
from harness.checks.report import (
    expected_shown,
    shown,
    version_notes,
    write_html,
    write_json,
    write_junit,
)
from harness.errors import HarnessError
from harness.mta.base import adapters
from harness.verdict import ExitCode, Verdict

NOT_JUDGED = "not judged: it left no cell file (its pytest-xdist worker ended?)"
_EXPECTED = click.option(
    "--expected",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_EXPECTED,
    show_default=True,
    help="The expected-matrix file.",
)


def _out_option(default: str) -> click.Option:
    return click.option(
        "--out",
        type=click.Path(file_okay=False, path_type=Path),
        help=f"Output folder (default: runs/{default}-<UTC time>).",
    )


@click.group("matrix", invoke_without_command=True)
@click.option("--mta", "mtas", multiple=True, metavar="NAME", help="An MTA column (repeatable).")
@click.option("--check", "patterns", multiple=True, metavar="ID", help="Check id or glob.")
@click.option("--role", "roles", multiple=True, help="sender or receiver (repeatable).")
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(min=1),
    metavar="N",
    help="Run N cells at a time on pytest-xdist (N may exceed the cores: cells mostly wait).",
)
@click.option("--list", "listing", is_flag=True, help="List the checks and MTAs; run nothing.")
@_out_option("matrix")
@_EXPECTED
@click.pass_context
def matrix(
    ctx: click.Context,
    mtas: tuple[str, ...],
    patterns: tuple[str, ...],
    roles: tuple[str, ...],
    jobs: int | None,
    listing: bool,
    out: Path | None,
    expected: Path,
) -> None:
    """Run checks x MTAs x roles, or list or merge them.

    Writes matrix.html, matrix.json and junit.xml, and each cell's result under
    OUT/cells/ (what `matrix merge` joins)."""
    if ctx.invoked_subcommand is not None:
        return
    names = mtas_asked(mtas)
    checks = select(patterns, roles_asked(roles))
    if listing:
        _list(checks, roles_asked(roles))
        return
    wanted = load_expected(expected, registry())
    out = clear_cells(out or _stamped("matrix"))
    cells = plan(checks, names, roles_asked(roles))
    started = time.monotonic()
    if jobs is None:
        _serial(cells, out, wanted)
    else:
        from harness.checks.pytest_matrix import run_parallel

        run_parallel(out, names, patterns, roles, expected, jobs, len(cells))
    judged = load_cells([out], registry(), wanted)
    judged += unjudged(cells, judged, wanted)
    sys.exit(report(judged, out, wanted, time.monotonic() - started))


@matrix.command("merge")
@click.argument(
    "folders",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
@_out_option("matrix-merged")
@_EXPECTED
def merge(folders: tuple[Path, ...], out: Path | None, expected: Path) -> None:
    """Join the cells of matrix folders FOLDERS into one report.

    FOLDERS are --out folders of `matrix` (one CI job per MTA x role, say); the report in
    --out links their run folders where they are.  A cell found twice is bad input."""
    wanted = load_expected(expected, registry())
    cells = load_cells(list(folders), registry(), wanted)
    if not cells:
        raise HarnessError(f"{', '.join(map(str, folders))}: no cells (no cells/ folder)")
    out = out or _stamped("matrix-merged")
    out.mkdir(parents=True, exist_ok=True)  # its cells/, if any, are not this report's
    sys.exit(report(cells, out, wanted))


def _serial(cells: Plan, out: Path, wanted: Expected) -> None:
    engine = Matrix(out, wanted)
    with Progress(len(cells)) as progress:
        for check, role, mta in cells:
            cell = engine.cell(check, role, engine.column(mta))
            save_cell(cell, out)
            progress.ended(cell.name, shown(cell), cell.seconds)


def unjudged(cells: Plan, judged: list[Cell], wanted: Expected) -> list[Cell]:
    """An error cell for each planned cell that left no file (its worker died): the report
    is never short of a cell."""
    saved = {c.name for c in judged}
    columns = {c.column.mta: c.column for c in judged}
    missing = []
    for check, role, mta in cells:
        if f"{mta}/{role}/{check.id}" in saved:
            continue
        col = columns.get(mta) or Column(mta, "?", unavailable=NOT_JUDGED)
        entry = wanted.entry(mta, col.version, role, check.id, check.kind)
        missing.append(Cell(check, role, col, Verdict.ERROR, NOT_JUDGED, entry))
    return missing


def report(
    cells: list[Cell], out: Path, wanted: Expected, seconds: float | None = None
) -> ExitCode:
    """Write the three reports of ``cells`` in ``out``, print the summary; the exit code."""
    paths = [write_html(cells, out, wanted), write_json(cells, out, wanted)]
    paths.append(write_junit(cells, out))
    for note in version_notes(cells, wanted):
        click.echo(note)
    _summary(cells, paths, seconds)
    return _exit_code(cells)


def mtas_asked(asked: tuple[str, ...]) -> list[str]:
    """The MTA columns asked for (all, when none is), or a HarnessError naming the unknown."""
    known = [REFERENCE, *adapters()]
    for name in asked:
        if name not in known:
            raise HarnessError(f"--mta {name!r}: unknown MTA (known: {', '.join(known)})")
    return list(dict.fromkeys(asked)) or known


def roles_asked(asked: tuple[str, ...]) -> tuple[str, ...]:
    for role in asked:
        if role not in ROLES:
            raise HarnessError(f"--role {role!r}: expected one of {', '.join(ROLES)}")
    return tuple(dict.fromkeys(asked)) or ROLES


def _stamped(name: str) -> Path:
    return Path("runs") / time.strftime(f"{name}-%Y%m%dT%H%M%SZ", time.gmtime())


def _list(checks: list[Check], roles: tuple[str, ...]) -> None:
    for check in checks:
        playing = ", ".join(r for r in check.roles if r in roles)
        click.echo(f"{check.id}  [{check.kind}; MTA as {playing}]")
        click.echo(f"    {check.title}")
        click.echo(f"    {check.rfc}")
    click.echo(f"{len(checks)} checks; MTAs (--mta): {', '.join([REFERENCE, *adapters()])}")


def _exit_code(cells: list[Cell]) -> ExitCode:
    if any(c.verdict is Verdict.ERROR and c.difference != "match" for c in cells):
        return ExitCode.HARNESS_ERROR
    return ExitCode.FAIL if any(c.difference != "match" for c in cells) else ExitCode.OK


def _summary(cells: list[Cell], paths: list[Path], seconds: float | None) -> None:
    differing = [c for c in cells if c.difference != "match"]
    took = "" if seconds is None else f" in {seconds:.1f}s"
    click.echo(f"{len(cells)} cells{took}; {len(differing)} differ from expected")
    for cell in differing:
        wanted, got = expected_shown(cell), shown(cell)
        click.echo(f"  {cell.difference}: {cell.name}: expected {wanted}, got {got}")
        click.echo(f"      {cell.note}")
    for path in paths:
        click.echo(f"wrote {path}")
