"""Issue 13, "The matrix on an existing engine" and "Progress": the cells as pytest items
(``--smtp-matrix``), run in parallel by pytest-xdist or ``matrix -j``, with the verdicts of a
serial run; per-cell files that ``matrix merge`` joins; a line per cell when piped, a bar on a
terminal; a wait on an MTA that says what it waits for."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from xml.etree import ElementTree as ET

import pytest
from conftest import CLI, ROOT

from harness import runinfo
from harness.checks.base import REFERENCE, registry, select
from harness.checks.expected import DEFAULT_EXPECTED, load_expected
from harness.checks.matrix import (
    Cell,
    Column,
    Progress,
    cell_path,
    groups,
    load_cells,
    longest_first,
    plan,
    save_cell,
)
from harness.cli import run_cli
from harness.errors import HarnessError
from harness.formats import KEY, WRITES, Format
from harness.mta.base import MtaAdapter
from harness.verdict import ExitCode, Verdict

QUICK = ["--mta", REFERENCE, "--check", "seed.exchange", "--check", "close.pattern"]
PYTEST = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]


def _pytest(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*PYTEST, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_collect_only_lists_one_item_per_cell_in_plan_order(tmp_path) -> None:
    done = _pytest(
        "--smtp-matrix", "--collect-only", "-q", "--smtp-mta", "harness", "--smtp-mta",
        "postfix", "--smtp-role", "sender", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    listed = [line for line in done.stdout.splitlines() if line.startswith("matrix/")]
    cells = plan(select([], ["sender"]), ["harness", "postfix"], ["sender"])
    assert listed == [f"matrix/{mta}/{role}::{check.id}" for check, role, mta in cells]
    assert not (tmp_path / "runs").exists()  # collecting creates no output folder


def test_without_the_option_no_cell_is_collected(tmp_path) -> None:
    (tmp_path / "test_one.py").write_text("def test_one():\n    pass\n")
    done = _pytest("--collect-only", "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [line for line in done.stdout.splitlines() if "::" in line] == ["test_one.py::test_one"]


def test_a_bad_cell_option_is_a_usage_error(tmp_path) -> None:
    done = _pytest("--smtp-matrix", "--collect-only", "--smtp-mta", "qmail", cwd=tmp_path)
    assert done.returncode == pytest.ExitCode.USAGE_ERROR
    assert "--mta 'qmail': unknown MTA" in done.stderr


def test_cells_sharing_a_run_are_one_group() -> None:
    cells = plan(select(["seed.*", "close.*"]), ["harness", "exim"], ["sender", "receiver"])
    named = {(c.id, role, mta): g for (c, role, mta), g in zip(cells, groups(cells), strict=True)}
    # close.client-waits-221 and close.pattern (as sender) both run the slow-221 setup
    assert named[("close.pattern", "sender", "exim")] == "exim/sender/close.client-waits-221"
    assert (
        named[("close.client-waits-221", "sender", "exim")]
        == named[("close.pattern", "sender", "exim")]
    )
    # the seed as receiver: seed.exchange and close.quit-221; never across MTAs or roles
    assert named[("close.quit-221", "receiver", "exim")] == "exim/receiver/seed.exchange"
    assert named[("seed.exchange", "receiver", "harness")] == "harness/receiver/seed.exchange"
    assert named[("close.pattern", "receiver", "exim")] == "exim/receiver/close.pattern"
    assert len(set(named.values())) == 8  # seed, slow-221, close.pattern's: per MTA


def _seen(out: Path) -> dict[str, tuple]:
    """Per cell of ``out``'s matrix.json: what it saw and how it compares."""
    cells = json.loads((out / "matrix.json").read_text())["cells"]
    return {
        f"{c['mta']}/{c['role']}/{c['check']}": (
            c["verdict"], c["value"], c["note"], json.dumps(c["evidence"]), c["difference"]
        )
        for c in cells
    }  # fmt: skip


def _matrix(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, "matrix", *args], capture_output=True, text=True, cwd=ROOT, timeout=600
    )


@pytest.mark.lab
def test_parallel_runs_give_the_serial_verdicts(tmp_path) -> None:
    serial = _matrix(*QUICK, "--out", str(tmp_path / "serial"))
    assert serial.returncode == 0, serial.stdout + serial.stderr
    lines = serial.stderr.splitlines()
    assert [line.split(": ")[0] for line in lines] == [
        "[1/4] harness/sender/seed.exchange",
        "[2/4] harness/receiver/seed.exchange",
        "[3/4] harness/sender/close.pattern",
        "[4/4] harness/receiver/close.pattern",
    ]  # one line per cell as it ends (stderr is a pipe here)
    assert lines[0].startswith("[1/4] harness/sender/seed.exchange: pass (")
    expected = _seen(tmp_path / "serial")
    assert len(expected) == 4

    jobs = _matrix(*QUICK, "-j", "2", "--out", str(tmp_path / "jobs"))
    assert jobs.returncode == 0, jobs.stdout + jobs.stderr
    assert len(jobs.stderr.splitlines()) == 4, jobs.stderr
    assert _seen(tmp_path / "jobs") == expected

    xdist = _pytest(
        "--smtp-matrix", "-n", "2", "--smtp-mta", "harness", "--smtp-check", "seed.exchange",
        "--smtp-check", "close.pattern", "--smtp-matrix-out", str(tmp_path / "xdist"),
        "--junitxml", str(tmp_path / "junit.xml"), cwd=tmp_path,
    )  # fmt: skip
    assert xdist.returncode == 0, xdist.stdout + xdist.stderr
    assert "2 workers [4 items]" in xdist.stdout
    assert _seen(tmp_path / "xdist") == expected
    cases = ET.parse(tmp_path / "junit.xml").getroot().iter("testcase")
    assert sorted((c.get("classname"), c.get("name")) for c in cases) == [
        ("matrix.harness.receiver", "close.pattern"),
        ("matrix.harness.receiver", "seed.exchange"),
        ("matrix.harness.sender", "close.pattern"),
        ("matrix.harness.sender", "seed.exchange"),
    ]


@pytest.mark.lab
def test_merging_two_halves_gives_the_whole(tmp_path) -> None:
    whole = _matrix(*QUICK, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stdout + whole.stderr
    for role in ("sender", "receiver"):
        half = _matrix(*QUICK, "--role", role, "--out", str(tmp_path / role))
        assert half.returncode == 0, half.stdout + half.stderr
    merged = _matrix("merge", str(tmp_path / "sender"), str(tmp_path / "receiver"),
                     "--out", str(tmp_path / "merged"))  # fmt: skip
    assert merged.returncode == 0, merged.stdout + merged.stderr
    assert merged.stdout.startswith("4 cells; 0 differ from expected\n")
    assert _seen(tmp_path / "merged") == _seen(tmp_path / "whole")
    assert list(_seen(tmp_path / "merged")) == list(_seen(tmp_path / "whole"))  # plan order
    runs = json.loads((tmp_path / "merged" / "matrix.json").read_text())["cells"][0]["runs"]
    assert runs[0]["pcap"] == "../sender/harness/sender/seed/capture.pcapng"
    assert (tmp_path / "merged" / runs[0]["pcap"]).is_file()


def _saved(folder: Path, check_id: str = "seed.exchange") -> Path:
    """A cell file as ``matrix`` saves it, with its run folder (no lab: a synthetic cell)."""
    run = folder / REFERENCE / "sender" / "seed"
    run.mkdir(parents=True)
    (run / "capture.pcapng").write_text("x")
    record = {KEY: WRITES[Format.RUN], "harness": {"name": runinfo.HARNESS}}
    (run / runinfo.RECORD).write_text(json.dumps(record))  # so a later run may replace it
    check = registry()[check_id]
    col = Column(REFERENCE, "0.1.0", package_version="0.1.0")
    entry = load_expected(DEFAULT_EXPECTED, registry()).entry(REFERENCE, "0.1.0", "sender", "x")
    cell = Cell(check, "sender", col, Verdict.PASS, "kept", entry, ((0, 1),), (run,), None, 0.5)
    return save_cell(cell, folder)


def _merge(*args: str | Path) -> SimpleNamespace:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_cli(["matrix", "merge", *map(str, args)])
    return SimpleNamespace(code=code, stdout=out.getvalue(), stderr=err.getvalue())


def test_a_saved_cell_loads_back_as_it_was(tmp_path) -> None:
    path = _saved(tmp_path / "a")
    assert path == cell_path(tmp_path / "a", REFERENCE, "sender", "seed.exchange")
    expected = load_expected(DEFAULT_EXPECTED, registry())
    (cell,) = load_cells([tmp_path / "a"], registry(), expected)
    assert (cell.name, cell.verdict, cell.note, cell.evidence) == (
        "harness/sender/seed.exchange", Verdict.PASS, "kept", ((0, 1),)
    )  # fmt: skip
    assert cell.folders == (tmp_path / "a" / REFERENCE / "sender" / "seed",)
    done = _merge(tmp_path / "a", "--out", tmp_path / "m")
    assert done.code == ExitCode.OK, done.stderr
    (data,) = json.loads((tmp_path / "m" / "matrix.json").read_text())["cells"]
    assert data["runs"][0]["pcap"] == "../a/harness/sender/seed/capture.pcapng"


def _damaged(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p, d: p.write_text('{"schema_version": 1,'), "not JSON: Expecting property"),
        (lambda p, d: _damaged(p, {**d, "schema_version": 99}), "schema_version 99: this re"),
        (lambda p, d: _damaged(p, {**d, "check": "nope.x"}), "check: no such check 'nope.x'"),
        (lambda p, d: _damaged(p, {**d, "folders": ["../../etc"]}), "'../../etc' is not inside"),
        (lambda p, d: _damaged(p, {**d, "verdict": "great"}), "not a cell file: ValueError"),
        (lambda p, d: _damaged(p, {k: v for k, v in d.items() if k != "note"}), "KeyError"),
    ],
)
def test_a_damaged_cell_file_is_one_line_exit_2(tmp_path, damage, message) -> None:
    path = _saved(tmp_path / "a")
    damage(path, json.loads(path.read_text()))
    done = _merge(tmp_path / "a", "--out", tmp_path / "m")
    assert done.code == ExitCode.BAD_INPUT
    assert done.stderr.startswith(f"smtp-harness: error: {path}: ")
    assert message in done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "m" / "matrix.json").exists()


def test_a_cell_in_two_folders_is_refused(tmp_path) -> None:
    _saved(tmp_path / "a")
    _saved(tmp_path / "b")
    done = _merge(tmp_path / "a", tmp_path / "b", "--out", tmp_path / "m")
    assert done.code == ExitCode.BAD_INPUT
    assert "cell harness/sender/seed.exchange is also in" in done.stderr
    (tmp_path / "empty").mkdir()
    empty = _merge(tmp_path / "empty", "--out", tmp_path / "n")
    assert empty.code == ExitCode.BAD_INPUT
    assert (
        empty.stderr == f"smtp-harness: error: {tmp_path / 'empty'}: no cells (no cells/ folder)\n"
    )


def test_progress_on_a_terminal_is_a_bar_not_lines() -> None:
    master, slave = os.openpty()
    written = []
    reader = threading.Thread(target=lambda: written.append(_drain(master)), daemon=True)
    reader.start()
    with open(slave, "w", encoding="utf-8") as tty:
        assert tty.isatty()
        with Progress(2, tty) as progress:
            progress.ended("harness/sender/seed.exchange", "pass", 0.3)
            progress.ended("harness/receiver/seed.exchange", "pass", 0.4)
    reader.join(10)
    text = written[0]
    assert "matrix" in text and "100%" in text
    assert "[1/2]" not in text


def _drain(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the terminal closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def test_progress_piped_is_one_line_per_cell() -> None:
    stream = io.StringIO()
    with Progress(12, stream) as progress:
        progress.ended("exim/sender/dns.null-mx", "fail", 1.25)
    assert stream.getvalue() == "[ 1/12] exim/sender/dns.null-mx: fail (1.2s)\n"


def test_a_wait_on_an_mta_says_what_it_waits_for(monkeypatch) -> None:
    """The line goes to sys.stderr as the notice fires (read from a StringIO put there, not
    through pytest's capture, whose reads raced the notice's thread once in CI)."""
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    mta = SimpleNamespace(name="exim", role="receiver")
    with MtaAdapter.waiting(mta, "to listen on 192.0.2.25:25", after_s=0.01):
        deadline = time.monotonic() + 30
        while not err.getvalue().endswith("\n") and time.monotonic() < deadline:
            time.sleep(0.01)
    assert err.getvalue() == "waiting for exim (receiver): to listen on 192.0.2.25:25\n"
    with MtaAdapter.waiting(mta, "to deliver", after_s=60):
        pass
    assert err.getvalue().count("waiting") == 1


@pytest.mark.lab
def test_an_out_folder_used_before_reports_only_the_new_cells(tmp_path) -> None:
    _saved(tmp_path / "a", "close.pattern")  # an earlier matrix's cell
    done = _matrix("--mta", REFERENCE, "--check", "seed.exchange", "--role", "sender",
                   "--out", str(tmp_path / "a"))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert list(_seen(tmp_path / "a")) == ["harness/sender/seed.exchange"]
    assert done.stdout.startswith("1 cells in ")


def test_merging_into_one_of_its_folders_keeps_its_cells(tmp_path) -> None:
    path = _saved(tmp_path / "a")
    done = _merge(tmp_path / "a", "--out", tmp_path / "a")
    assert done.code == ExitCode.OK, done.stderr
    assert path.is_file()
    assert (tmp_path / "a" / "matrix.json").is_file()


def test_a_cell_that_left_no_file_is_an_error_not_a_gap(tmp_path) -> None:
    """A worker that died leaves no cell file (provoked here by saving one cell of two)."""
    from harness.checks.commands import NOT_JUDGED, unjudged

    _saved(tmp_path / "a")
    expected = load_expected(DEFAULT_EXPECTED, registry())
    judged = load_cells([tmp_path / "a"], registry(), expected)
    cells = plan([registry()["seed.exchange"]], [REFERENCE], ["sender", "receiver"])
    (missing,) = unjudged(cells, judged, expected)
    assert (missing.name, missing.verdict, missing.note) == (
        "harness/receiver/seed.exchange", Verdict.ERROR, NOT_JUDGED
    )  # fmt: skip
    assert missing.column == judged[0].column  # the same column in the report
    assert missing.difference == "regression"


def test_in_parallel_the_longest_groups_start_first(tmp_path) -> None:
    cells = plan(select(["seed.*", "close.*"]), ["harness", "exim"], ["sender"])
    names = groups(cells)
    seconds = tmp_path / "seconds.json"
    seconds.write_text(json.dumps({"seconds": {
        "exim/sender/close.pattern": 30.0,  # its group: close.client-waits-221 with it
        "harness/sender/seed.exchange": 5.0,
    }}))  # fmt: skip
    order = [cells[i] for i in longest_first(cells, names, seconds)]
    shown = [f"{mta}/{check.id}" for check, _, mta in order]
    assert shown == [
        "exim/close.client-waits-221", "exim/close.pattern",  # 30 s, in plan order
        "harness/seed.exchange",  # 5 s
        "exim/seed.exchange", "harness/close.client-waits-221", "harness/close.pattern",
    ]  # fmt: skip
    unknown = [cells[i] for i in longest_first(cells, names, tmp_path / "none.json")]
    assert [f"{mta}/{check.id}" for check, _, mta in unknown] == [  # plan order, groups whole
        "harness/seed.exchange", "exim/seed.exchange",
        "harness/close.client-waits-221", "harness/close.pattern",
        "exim/close.client-waits-221", "exim/close.pattern",
    ]  # fmt: skip
    seconds.write_text('{"seconds": [1, 2]}')
    with pytest.raises(HarnessError, match="not a seconds-per-cell file"):
        longest_first(cells, names, seconds)


@pytest.mark.lab
def test_matrix_in_parallel_writes_each_report_once(tmp_path, monkeypatch) -> None:
    """``matrix -j`` writes matrix.html, matrix.json and junit.xml once: its pytest session
    saves the cells and leaves the reports to the command (they were written by both)."""
    from harness.checks import commands, report

    written: list[str] = []
    for name in ("write_html", "write_json", "write_junit"):
        original = getattr(report, name)

        def counted(*args, _original=original, **kwargs):
            path = _original(*args, **kwargs)
            written.append(path.name)
            return path

        monkeypatch.setattr(report, name, counted)  # the pytest session's, imported late
        monkeypatch.setattr(commands, name, counted)  # the command's
    out = tmp_path / "jobs"
    args = ["matrix", "--mta", REFERENCE, "--check", "seed.exchange", "--role", "sender"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = run_cli([*args, "-j", "1", "--out", str(out)])
    assert code == ExitCode.OK
    assert sorted(written) == ["junit.xml", "matrix.html", "matrix.json"]
    assert list(_seen(out)) == ["harness/sender/seed.exchange"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _screen(written: str) -> list[str]:
    """What a terminal shows after ``written``: ``\\r`` returns to the line's start, and
    what follows overwrites it."""
    rows = []
    for line in written.split("\n"):
        row: list[str] = []
        column = 0
        for ch in line:
            if ch == "\r":
                column = 0
                continue
            row[column : column + 1] = ch
            column += 1
        rows.append("".join(row).rstrip())
    return rows


def test_a_wait_on_an_mta_is_a_line_above_the_bar_not_inside_it(monkeypatch) -> None:
    """The notice fires from its timer thread while the matrix's bar is drawn on the same
    terminal: the bar's line is erased, the notice gets a line, the bar is drawn under it."""
    tty = _Terminal()
    monkeypatch.setattr(sys, "stderr", tty)
    mta = SimpleNamespace(name="exim", role="receiver")
    with Progress(3, tty) as progress:
        progress.ended("harness/sender/seed.exchange", "pass", 0.3)
        with MtaAdapter.waiting(mta, "to listen on 192.0.2.25:25", after_s=0.01):
            deadline = time.monotonic() + 30
            while "waiting" not in tty.getvalue() and time.monotonic() < deadline:
                time.sleep(0.01)
        progress.ended("exim/receiver/seed.exchange", "fail", 1.5)
        shown = _screen(tty.getvalue())
    assert shown[0] == "waiting for exim (receiver): to listen on 192.0.2.25:25"
    assert shown[1].startswith("matrix:  66% 2/3 cells  exim/receiver/seed.exchange: fail")
    assert len(shown) == 2
    assert _screen(tty.getvalue())[1] == ""  # the bar erased at the end


def test_the_bar_is_cut_to_the_terminal_so_it_never_wraps(monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "40")  # a StringIO has no terminal size: $COLUMNS
    tty = _Terminal()
    with Progress(3, tty) as progress:
        progress.ended("opensmtpd/receiver/dns.a-check-with-a-long-name", "fail", 75.3)
        shown = _screen(tty.getvalue())
    assert shown == ["matrix:  33% 1/3 cells  opensmtpd/recei"]
    assert len(shown[0]) == 39
