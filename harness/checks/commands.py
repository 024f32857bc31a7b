"""``smtp-harness matrix``: run the conformance checks against MTAs and report.

Rules kept here:
- Exit codes (``harness.verdict.ExitCode``): 0 when every cell matches the expected matrix,
  1 when any differs (regressions, improvements and changed observations are all listed),
  2 on bad input (an unknown MTA or role, a --check that matches nothing, a bad
  expected-matrix file: a one-line ``HarnessError``), 3 when a cell is an error that the
  expected file does not record (the harness failed: a fault, a column that cannot run).
- Before the summary, "expected file written for X, ran Y" for every column whose Debian
  version is not the one the expected file was written for (visible, not a failure).
- "harness" (our scripted peers) is always a valid --mta; other names are the adapters
  that exist (``harness.mta.base.adapters``).  Without --mta: harness and every adapter.
- Progress goes to stderr; the summary and the differences to stdout.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from harness.checks.base import REFERENCE, ROLES, registry, select
from harness.checks.expected import DEFAULT_EXPECTED, load_expected
from harness.checks.matrix import Cell, Matrix, column
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


@click.command("matrix")
@click.option("--mta", "mtas", multiple=True, metavar="NAME", help="An MTA column (repeatable).")
@click.option("--check", "patterns", multiple=True, metavar="ID", help="Check id or glob.")
@click.option("--role", "roles", multiple=True, help="sender or receiver (repeatable).")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder (default: runs/matrix-<UTC time>).",
)
@click.option(
    "--expected",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_EXPECTED,
    show_default=True,
    help="The expected-matrix file.",
)
def matrix(
    mtas: tuple[str, ...],
    patterns: tuple[str, ...],
    roles: tuple[str, ...],
    out: Path | None,
    expected: Path,
) -> None:
    """Run checks x MTAs x roles; write matrix.html, matrix.json and junit.xml."""
    found = adapters()
    names = _mtas(mtas, found)
    for role in roles:
        if role not in ROLES:
            raise HarnessError(f"--role {role!r}: expected one of {', '.join(ROLES)}")
    checks = select(patterns, roles or ROLES)
    wanted = load_expected(expected, registry())
    out = out or Path("runs") / time.strftime("matrix-%Y%m%dT%H%M%SZ", time.gmtime())
    out.mkdir(parents=True, exist_ok=True)
    runner = Matrix(out, wanted)
    plan = runner.plan(checks, [column(name, found) for name in names], roles or ROLES)
    started = time.monotonic()
    with click.progressbar(
        plan,
        label="conformance",
        file=sys.stderr,
        item_show_func=lambda item: f"{item[2].mta} {item[1]} {item[0].id}" if item else "",
    ) as bar:
        cells = [runner.cell(check, role, col) for check, role, col in bar]
    paths = [write_html(cells, out, wanted), write_json(cells, out, wanted)]
    paths.append(write_junit(cells, out))
    for note in version_notes(cells, wanted):
        click.echo(note)
    _report(cells, paths, time.monotonic() - started)
    sys.exit(_exit_code(cells))


def _exit_code(cells: list[Cell]) -> ExitCode:
    if any(c.verdict is Verdict.ERROR and c.difference != "match" for c in cells):
        return ExitCode.HARNESS_ERROR
    return ExitCode.FAIL if any(c.difference != "match" for c in cells) else ExitCode.OK


def _mtas(asked: tuple[str, ...], found: dict) -> list[str]:
    known = [REFERENCE, *found]
    for name in asked:
        if name not in known:
            raise HarnessError(f"--mta {name!r}: unknown MTA (known: {', '.join(known)})")
    return list(dict.fromkeys(asked)) or known


def _report(cells: list[Cell], paths: list[Path], seconds: float) -> None:
    differing = [c for c in cells if c.difference != "match"]
    click.echo(f"{len(cells)} cells in {seconds:.1f}s; {len(differing)} differ from expected")
    for cell in differing:
        wanted, got = expected_shown(cell), shown(cell)
        click.echo(f"  {cell.difference}: {cell.name}: expected {wanted}, got {got}")
        click.echo(f"      {cell.note}")
    for path in paths:
        click.echo(f"wrote {path}")
