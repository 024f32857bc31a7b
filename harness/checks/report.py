"""The matrix as files: matrix.html (for people), matrix.json (for tools), junit.xml (for CI).

Rules kept here:
- All three are written from the same cells, in plan order; links are relative to the
  output folder, so the folder can be moved or published as it is.
- HTML: one row per (check, role), one column per MTA (its Debian version); a cell shows
  its verdict (an observation its value), the steps it cites, each a link to that step in
  its run's ladder (``ladder.html#step-N``), links to each run's ladder (at the first step
  cited), ladder.svg, capture.pcapng and the log of the side under test, and marks a
  difference from the expected matrix (regression, improvement, changed) with its
  expectation.  A fail the expected matrix foresaw reads "fail (expected)", pale and
  dashed; one it did not (a surprise) is solid red, and every cell that differs from the
  expected matrix is outlined.
  Above the table: for each column whose Debian version is not the one the expected file
  was written for, "expected file written for X, ran Y".  Everything is escaped; the page
  needs no script and no network.
- JSON also records each column's .debs (package, version, file, sha256), and its
  ``schema_version`` (``harness.formats``); ``read_json`` refuses a version this release
  does not read.
- JUnit: one testcase per cell.  A difference from the expected matrix is a <failure>, an
  error cell an <error>, an expected n/a a <skipped>; known results pass with their reason.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import asdict
from html import escape
from pathlib import Path
from xml.etree import ElementTree as ET

from harness import formats
from harness.checks.base import REFERENCE
from harness.checks.expected import Expected
from harness.checks.matrix import Cell, Column
from harness.formats import WRITES, Format
from harness.result import CAPTURE
from harness.verdict import Verdict

VERDICT_CLASS = {
    Verdict.PASS: "pass",
    Verdict.FAIL: "fail",
    Verdict.NA: "na",
    Verdict.KNOWN: "known",
    Verdict.OBSERVED: "observed",
    Verdict.ERROR: "error",
}


def log_of(cell: Cell, folder: Path) -> Path | None:
    """The log of the side under test: the MTA's own log, or our scripted peer's."""
    if cell.column.mta == REFERENCE:
        path = folder / f"{cell.role}.jsonl"
        return path if path.exists() else None
    return next(iter(sorted(folder.rglob(f"{cell.column.mta}*.log"))), None)


def artefacts(cell: Cell, out: Path) -> list[dict[str, str]]:
    """Per run: the links that exist, relative to ``out``."""
    runs = []
    for folder in cell.folders:
        files = {
            "html": folder / "ladder.html",
            "svg": folder / "ladder.svg",
            "pcap": folder / CAPTURE,
            "log": log_of(cell, folder),
        }
        links = {k: os.path.relpath(p, out) for k, p in files.items() if p and p.exists()}
        runs.append({**links, "folder": os.path.relpath(folder, out)})
    return runs


def cell_data(cell: Cell, out: Path) -> dict:
    return {
        "check": cell.check.id,
        "title": cell.check.title,
        "rfc": cell.check.rfc,
        "role": cell.role,
        "mta": cell.column.mta,
        "version": cell.column.version,
        "verdict": str(cell.verdict),
        "value": cell.value,
        "note": cell.note,
        "evidence": [{"run": run, "step": step} for run, step in cell.evidence],
        "expected": {
            "verdict": str(cell.expected.verdict),
            "value": cell.expected.value,
            "reason": cell.expected.reason,
        },
        "difference": cell.difference,
        "runs": artefacts(cell, out),
    }


def summary(cells: list[Cell]) -> dict[str, dict[str, int]]:
    return {
        "verdicts": {str(v): n for v, n in Counter(c.verdict for c in cells).items()},
        "differences": dict(Counter(c.difference for c in cells)),
    }


def version_notes(cells: list[Cell], expected: Expected) -> list[str]:
    """ "expected file written for X, ran Y" for each column whose Debian version differs."""
    notes = []
    for col in _columns(cells):
        written = expected.written_for(col.mta, col.version)
        if written and col.package_version and written != col.package_version:
            notes.append(
                f"{col.mta}: expected file written for {written}, ran {col.package_version}"
            )
    return notes


def write_json(cells: list[Cell], out: Path, expected: Expected) -> Path:
    data = {
        "schema_version": WRITES[Format.MATRIX],
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "expected": expected.source,
        "version_notes": version_notes(cells, expected),
        "columns": [
            {
                "mta": c.mta,
                "version": c.version,
                "package_version": c.package_version,
                "debs": [asdict(deb) for deb in c.debs],
            }
            for c in _columns(cells)
        ],
        "summary": summary(cells),
        "cells": [cell_data(c, out) for c in cells],
    }
    path = out / "matrix.json"
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_json(path: Path) -> dict:
    """A ``matrix.json`` as written by ``write_json``, if this release reads its version."""
    return formats.read_json(path, Format.MATRIX)


def write_junit(cells: list[Cell], out: Path) -> Path:
    suite = ET.Element("testsuite", name="smtp-harness conformance", tests=str(len(cells)))
    counts = Counter()
    for cell in cells:
        case = ET.SubElement(
            suite, "testcase", classname=f"{cell.column.mta}.{cell.role}", name=cell.check.id
        )
        message = f"{shown(cell)}: {cell.note}"
        if cell.difference != "match":
            counts["failures"] += 1
            wanted = f"expected {expected_shown(cell)}, got {shown(cell)}"
            ET.SubElement(case, "failure", message=f"{cell.difference}: {wanted}").text = message
        elif cell.verdict is Verdict.ERROR:
            counts["errors"] += 1
            ET.SubElement(case, "error", message=cell.note)
        elif cell.verdict is Verdict.NA:
            counts["skipped"] += 1
            ET.SubElement(case, "skipped", message=cell.note)
        else:
            reason = f" (known: {cell.expected.reason})" if cell.expected.reason else ""
            ET.SubElement(case, "system-out").text = message + reason
    for key in ("failures", "errors", "skipped"):
        suite.set(key, str(counts[key]))
    path = out / "junit.xml"
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
    return path


def _columns(cells: list[Cell]) -> list[Column]:
    return list(dict.fromkeys(c.column for c in cells))


def shown(cell: Cell) -> str:
    """A cell's verdict as shown: an observation with its value."""
    return f"observed {cell.value!r}" if cell.verdict is Verdict.OBSERVED else str(cell.verdict)


def expected_shown(cell: Cell) -> str:
    entry = cell.expected
    if entry.verdict is Verdict.OBSERVED:
        return f"observed {entry.value!r}" if entry.value else "an observation not recorded yet"
    return str(entry.verdict)


STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; text-align: left; }
th { background: #f3f3f3; }
td.check { max-width: 26em; } td.check small { color: #555; }
td.cell { min-width: 14em; max-width: 22em; }
.verdict { font-weight: bold; padding: 1px 6px; border-radius: 3px; }
.pass { background: #d6f5d6; } .na { background: #e8e8e8; }
.fail { background: #c62828; color: #fff; }
.fail.expected { background: #fbe9e9; color: #8a3a3a; border: 1px dashed #c98a8a; }
td.surprise { outline: 3px solid #c62828; outline-offset: -3px; }
.known { background: #fbecc0; } .error { background: #555; color: #fff; }
.observed { background: #dde8f8; } .versions { color: #a60; font-weight: bold; }
.diff { color: #b00; font-weight: bold; } .note { font-size: 12px; color: #444; }
.links a { font-size: 12px; margin-right: 0.5em; }
"""


def write_html(cells: list[Cell], out: Path, expected: Expected) -> Path:
    columns = _columns(cells)
    rows: dict[tuple[str, str], dict[Column, Cell]] = {}
    for cell in cells:
        rows.setdefault((cell.check.id, cell.role), {})[cell.column] = cell
    head = "".join(f"<th>{escape(c.label)}</th>" for c in columns)
    body = "\n".join(_row(by_column, columns, out) for by_column in rows.values())
    counts = summary(cells)
    totals = ", ".join(f"{n} {escape(v)}" for v, n in sorted(counts["verdicts"].items()))
    changed = ", ".join(f"{n} {d}" for d, n in sorted(counts["differences"].items()))
    notes = "".join(f"<p class=versions>{escape(n)}</p>" for n in version_notes(cells, expected))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>SMTP conformance matrix</title>
<style>{STYLE}</style></head><body>
<h1>SMTP conformance matrix</h1>
{notes}<p class=note>{_KEY}</p>
<p>{len(cells)} cells: {totals}. Against {escape(expected.source)}: {changed}.</p>
<table><thead><tr><th>check</th><th>role</th>{head}</tr></thead>
<tbody>
{body}
</tbody></table></body></html>
"""
    path = out / "matrix.html"
    path.write_text(page, encoding="utf-8")
    return path


def _row(by_column: dict[Column, Cell], columns: list[Column], out: Path) -> str:
    any_cell = next(iter(by_column.values()))
    check = any_cell.check
    title = (
        f"<td class=check><b>{escape(check.id)}</b><br>{escape(check.title)}"
        f"<br><small>{escape(check.rfc)}</small></td><td>{escape(any_cell.role)}</td>"
    )
    return f"<tr>{title}{''.join(_cell(by_column.get(c), out) for c in columns)}</tr>"


_KEY = (
    "<span class='verdict fail'>fail</span> a fail the expected matrix did not foresee; "
    "<span class='verdict fail expected'>fail (expected)</span> one it did; "
    "<span class='verdict known'>deviation-known</span> a known deviation; "
    "an outlined cell differs from the expected matrix."
)


def _cell(cell: Cell | None, out: Path) -> str:
    if cell is None:
        return "<td></td>"
    surprise = cell.difference != "match"
    foreseen = cell.verdict is Verdict.FAIL and not surprise
    name = f"{VERDICT_CLASS[cell.verdict]}{' expected' if foreseen else ''}"
    shown_as = f"{shown(cell)} (expected)" if foreseen else shown(cell)
    verdict = f"<span class='verdict {name}'>{escape(shown_as)}</span>"
    diff = ""
    if surprise:
        wanted = escape(expected_shown(cell))
        diff = f" <span class=diff>{cell.difference}: expected {wanted}</span>"
    reason = f"<br><i>known: {escape(cell.expected.reason)}</i>" if cell.expected.reason else ""
    runs = artefacts(cell, out)
    evidence = f"<br>{_cited(cell, runs)}" if cell.evidence else ""
    links = "".join(_links(cell, run, i, len(runs)) for i, run in enumerate(runs))
    note = f"<div class=note>{escape(cell.note)}{evidence}{reason}</div>"
    td = "cell surprise" if surprise else "cell"
    return f"<td class='{td}'>{verdict}{diff}{note}<div class=links>{links}</div></td>"


def _step_link(runs: list[dict[str, str]], run: int, step: int) -> str:
    """Step *step* of run *run*, linked to its row in that run's ladder.html if there is one."""
    page = runs[run].get("html") if run < len(runs) else None
    return f"<a href='{escape(page)}#step-{step}'>{step}</a>" if page else str(step)


def _cited(cell: Cell, runs: list[dict[str, str]]) -> str:
    """The cited steps, per run when the check has several, each a link."""
    parts = []
    for run in sorted({run for run, _ in cell.evidence}):
        steps = ", ".join(_step_link(runs, run, step) for r, step in cell.evidence if r == run)
        parts.append(f"run {run + 1} steps {steps}" if len(cell.folders) > 1 else f"steps {steps}")
    return "; ".join(parts)


def _links(cell: Cell, run: dict[str, str], number: int, runs: int) -> str:
    prefix = f"run {number + 1}: " if runs > 1 else ""
    cited = [step for r, step in cell.evidence if r == number]
    hrefs = dict(run)
    if "html" in hrefs and cited:
        hrefs["html"] += f"#step-{min(cited)}"
    names = {"html": "ladder", "svg": "svg", "pcap": "pcap", "log": "log"}
    return prefix + "".join(
        f"<a href='{escape(hrefs[k])}'>{name}</a>" for k, name in names.items() if k in hrefs
    )
