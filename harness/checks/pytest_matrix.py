"""The matrix's cells as pytest items: ``pytest --smtp-matrix [-n N]``.

Rules kept here:
- Opt-in: without ``--smtp-matrix`` this plugin adds nothing (``make test`` never runs the
  matrix).  With it, the items are the cells of the plan (check x role x MTA, as
  ``--smtp-mta``, ``--smtp-check``, ``--smtp-role`` choose, like ``matrix``'s options) and
  nothing else is collected: no test file is even imported.
- Node ids are ``matrix/<mta>/<role>::<check id>``, so a JUnit file (``--junitxml``) has one
  testcase per cell, classname ``matrix.<mta>.<role>``; the ``@group`` xdist appends to an
  id is taken off each report.
- An item passes when its cell matches the expected matrix (``--smtp-expected``), fails with
  the difference and the cell's note otherwise; a cell expected n/a that is n/a is skipped
  with its note.  Each item saves its cell (``matrix.save_cell``) under ``--smtp-matrix-out``,
  and the controlling process writes matrix.html/json and junit.xml from the saved cells at
  the end, as ``smtp-harness matrix`` does; not when ``smtp-harness matrix -j`` runs it
  (``--smtp-matrix-no-reports``): that command writes them, once, with every planned cell.
- pytest-xdist (``-n N``): cells sharing a run are one ``xdist_group`` and the distribution
  is ``loadgroup`` whatever ``--dist`` says, so each run happens once, in one worker, which
  writes its folder; a worker judges one cell at a time: one lab per worker.  Every
  process uses the same output folder (the controller's, passed to its workers).  The
  items are then in ``matrix.longest_first`` order (the same in every process, as xdist
  requires); without -n, in plan order.
- The controller empties the output folder's cells/ before any cell runs
  (``matrix.clear_cells``): the report is of this session's cells only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.checks.base import ROLES, Check, registry, select
from harness.checks.expected import DEFAULT_EXPECTED, load_expected
from harness.checks.matrix import (
    Matrix,
    Progress,
    clear_cells,
    groups,
    longest_first,
    plan,
    save_cell,
)
from harness.errors import HarnessError, InternalError
from harness.verdict import Verdict

OUT_KEY = "smtp_matrix_out"
ENGINE = pytest.StashKey[Matrix]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("smtp-harness matrix")
    group.addoption("--smtp-matrix", action="store_true", help="Run the matrix's cells (only).")
    group.addoption("--smtp-mta", action="append", default=[], metavar="NAME", help="A column.")
    group.addoption("--smtp-check", action="append", default=[], metavar="ID", help="Id or glob.")
    group.addoption("--smtp-role", action="append", default=[], metavar="ROLE", help=str(ROLES))
    group.addoption("--smtp-matrix-out", metavar="DIR", help="Default: runs/pytest-matrix-<time>.")
    group.addoption("--smtp-expected", metavar="FILE", default=str(DEFAULT_EXPECTED))
    group.addoption(
        "--smtp-matrix-no-reports",
        action="store_true",
        help="Save the cells only; the caller writes the reports (smtp-harness matrix -j).",
    )


def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("smtp_matrix"):
        return
    worker = getattr(config, "workerinput", None)
    if getattr(config.option, "dist", "no") != "no":  # the controller: runs kept together
        config.option.dist = "loadgroup"
    if worker is not None:
        config.option.loadgroup = True  # a worker parses the bare command line: "no"
        out = Path(worker[OUT_KEY])
    else:
        config.pluginmanager.register(ShortIds(), "smtp-matrix-short-ids")
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        out = Path(config.getoption("smtp_matrix_out") or f"runs/pytest-matrix-{stamp}")
        if not config.getoption("collectonly"):
            clear_cells(out)
    try:
        expected = load_expected(Path(config.getoption("smtp_expected")), registry())
    except HarnessError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[ENGINE] = Matrix(out.resolve(), expected)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:  # pytest-xdist's hook: the controller's folder
    engine = node.config.stash.get(ENGINE, None)
    if engine is not None:
        node.workerinput[OUT_KEY] = str(engine.out)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    return True if config.getoption("smtp_matrix") else None


@pytest.hookimpl(tryfirst=True)  # before xdist's, which names each item's group in its id
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    if not config.getoption("smtp_matrix"):
        return
    from harness.checks.commands import mtas_asked, roles_asked

    try:
        roles = roles_asked(tuple(config.getoption("smtp_role")))
        checks = select(config.getoption("smtp_check"), roles)
        cells = plan(checks, mtas_asked(tuple(config.getoption("smtp_mta"))), roles)
    except HarnessError as exc:
        raise pytest.UsageError(str(exc)) from None
    names = groups(cells)
    parallel = getattr(config.option, "dist", "no") != "no" or hasattr(config, "workerinput")
    order = longest_first(cells, names) if parallel else range(len(cells))
    for i in order:
        check, role, mta = cells[i]
        item = CellItem.from_parent(
            session, name=check.id, nodeid=f"matrix/{mta}/{role}::{check.id}", cell=(check, role)
        )
        item.mta = mta
        item.add_marker(pytest.mark.xdist_group(names[i]))
        items.append(item)


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    engine = config.stash.get(ENGINE, None)
    worker = hasattr(config, "workerinput")
    if engine is None or worker or config.getoption("smtp_matrix_no_reports"):
        return
    from harness.checks.matrix import load_cells
    from harness.checks.report import write_html, write_json, write_junit

    cells = load_cells([engine.out], registry(), engine.expected)
    if cells:
        write_html(cells, engine.out, engine.expected)
        write_json(cells, engine.out, engine.expected)
        write_junit(cells, engine.out)


class ShortIds:
    """In the controller: reporters (JUnit, the terminal) see a cell's id without the group
    xdist appended to it; xdist, after them, the id it knows."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> Iterator[None]:
        full = report.nodeid
        if full.startswith("matrix/"):
            report.nodeid = full.partition("@")[0]
        try:
            return (yield)
        finally:
            report.nodeid = full


class CellDiffers(AssertionError):
    """The cell differs from the expected matrix."""


class CellItem(pytest.Item):
    """One cell: ``check`` with ``mta`` playing ``role``."""

    def __init__(self, *, cell: tuple[Check, str], **kwargs) -> None:
        super().__init__(**kwargs)
        self.check, self.role = cell
        self.mta = ""

    def runtest(self) -> None:
        from harness.checks.report import expected_shown, shown

        engine = self.config.stash[ENGINE]
        cell = engine.cell(self.check, self.role, engine.column(self.mta))
        save_cell(cell, engine.out)
        self.user_properties += [
            ("cell", cell.name),
            ("verdict", shown(cell)),
            ("seconds", round(cell.seconds, 1)),
        ]
        if cell.difference != "match":
            wanted = f"expected {expected_shown(cell)}, got {shown(cell)}"
            raise CellDiffers(f"{cell.difference}: {wanted}: {cell.note}")
        if cell.verdict is Verdict.NA:
            pytest.skip(f"n/a as expected: {cell.note}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style=None) -> str:
        if isinstance(excinfo.value, CellDiffers):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, None, str]:
        return self.path, None, self.nodeid


class ProgressLines:
    """A pytest plugin for ``smtp-harness matrix -j``: the cells as they end (``Progress``)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or (report.when == "setup" and not report.passed):
            found = dict(report.user_properties)
            verdict = found.get("verdict", report.outcome)
            label = found.get("cell", report.nodeid)  # "harness/sender/seed.exchange"
            self.progress.ended(label, verdict, found.get("seconds", 0.0))


def run_parallel(
    out: Path,
    mtas: list[str],
    patterns: tuple[str, ...],
    roles: tuple[str, ...],
    expected: Path,
    jobs: int,
    total: int,
) -> None:
    """Judge the cells on pytest-xdist with ``jobs`` workers; each cell is saved in ``out``
    (the reports are the caller's to write)."""
    args = ["-p", "no:cacheprovider", "-p", "no:terminal", "--noconftest", "-n", str(jobs)]
    args += ["--smtp-matrix", "--smtp-matrix-out", str(out), "--smtp-expected", str(expected)]
    args += ["--smtp-matrix-no-reports"]  # the matrix command writes them
    args += [f"--smtp-mta={m}" for m in mtas] + [f"--smtp-check={p}" for p in patterns]
    args += [f"--smtp-role={r}" for r in roles]
    args += ["--rootdir", str(out), "-c", os.devnull]  # no project's ini or addopts
    with Progress(total) as progress:
        code = pytest.main(args, plugins=[ProgressLines(progress)])
    if code == pytest.ExitCode.INTERRUPTED:  # Ctrl-C: pytest took it; the CLI's exit 130
        raise KeyboardInterrupt
    if code not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        raise InternalError(f"the cells did not run on pytest-xdist (pytest exit code {code})")
