"""The matrix as files: matrix.html (for people), matrix.json (for tools), junit.xml (for CI).

Rules kept here:
- All three are written from the same cells, in plan order; links are relative to the
  output folder, so the folder can be moved or published as it is.
- HTML: one row per (check, role), one column per MTA; a cell shows its verdict, links to
  each run's ladder.svg, capture.pcap and the log of the side under test, and marks a
  difference from the expected matrix (regression or improvement) with its expectation.
  Everything is escaped; the page needs no script and no network.
- JUnit: one testcase per cell.  A difference from the expected matrix is a <failure>, an
  error cell an <error>, an expected n/a a <skipped>; known results pass with their reason.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from html import escape
from pathlib import Path
from xml.etree import ElementTree as ET

from harness.checks.base import REFERENCE
from harness.checks.matrix import Cell, Column

VERDICT_CLASS = {
    "pass": "pass",
    "fail": "fail",
    "n/a": "na",
    "deviation-known": "known",
    "error": "error",
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
            "svg": folder / "ladder.svg",
            "pcap": folder / "capture.pcap",
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
        "verdict": cell.verdict,
        "note": cell.note,
        "evidence": {"run": cell.evidence_run, "steps": list(cell.evidence)},
        "expected": {"verdict": cell.expected.verdict, "reason": cell.expected.reason},
        "difference": cell.difference,
        "runs": artefacts(cell, out),
    }


def summary(cells: list[Cell]) -> dict[str, dict[str, int]]:
    return {
        "verdicts": dict(Counter(c.verdict for c in cells)),
        "differences": dict(Counter(c.difference for c in cells)),
    }


def write_json(cells: list[Cell], out: Path, expected_source: str) -> Path:
    data = {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "expected": expected_source,
        "columns": [{"mta": c.mta, "version": c.version} for c in _columns(cells)],
        "summary": summary(cells),
        "cells": [cell_data(c, out) for c in cells],
    }
    path = out / "matrix.json"
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def write_junit(cells: list[Cell], out: Path) -> Path:
    suite = ET.Element("testsuite", name="smtp-harness conformance", tests=str(len(cells)))
    counts = Counter()
    for cell in cells:
        case = ET.SubElement(
            suite, "testcase", classname=f"{cell.column.mta}.{cell.role}", name=cell.check.id
        )
        message = f"{cell.verdict}: {cell.note}"
        if cell.difference != "match":
            counts["failures"] += 1
            wanted = f"expected {cell.expected.verdict}, got {cell.verdict}"
            ET.SubElement(case, "failure", message=f"{cell.difference}: {wanted}").text = message
        elif cell.verdict == "error":
            counts["errors"] += 1
            ET.SubElement(case, "error", message=cell.note)
        elif cell.verdict == "n/a":
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


STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; text-align: left; }
th { background: #f3f3f3; }
td.check { max-width: 26em; } td.check small { color: #555; }
td.cell { min-width: 14em; max-width: 22em; }
.verdict { font-weight: bold; padding: 1px 6px; border-radius: 3px; }
.pass { background: #d6f5d6; } .fail { background: #f8d0d0; } .na { background: #e8e8e8; }
.known { background: #fbecc0; } .error { background: #555; color: #fff; }
.diff { color: #b00; font-weight: bold; } .note { font-size: 12px; color: #444; }
.links a { font-size: 12px; margin-right: 0.5em; }
"""


def write_html(cells: list[Cell], out: Path, expected_source: str) -> Path:
    columns = _columns(cells)
    rows: dict[tuple[str, str], dict[Column, Cell]] = {}
    for cell in cells:
        rows.setdefault((cell.check.id, cell.role), {})[cell.column] = cell
    head = "".join(f"<th>{escape(c.label)}</th>" for c in columns)
    body = "\n".join(_row(by_column, columns, out) for by_column in rows.values())
    counts = summary(cells)
    totals = ", ".join(f"{n} {escape(v)}" for v, n in sorted(counts["verdicts"].items()))
    changed = ", ".join(f"{n} {d}" for d, n in sorted(counts["differences"].items()))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>SMTP conformance matrix</title>
<style>{STYLE}</style></head><body>
<h1>SMTP conformance matrix</h1>
<p>{len(cells)} cells: {totals}. Against {escape(expected_source)}: {changed}.</p>
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


def _cell(cell: Cell | None, out: Path) -> str:
    if cell is None:
        return "<td></td>"
    verdict = f"<span class='verdict {VERDICT_CLASS[cell.verdict]}'>{escape(cell.verdict)}</span>"
    diff = ""
    if cell.difference != "match":
        diff = (
            f" <span class=diff>{cell.difference}: expected {escape(cell.expected.verdict)}</span>"
        )
    reason = f"<br><i>known: {escape(cell.expected.reason)}</i>" if cell.expected.reason else ""
    steps = ", ".join(map(str, cell.evidence))
    evidence = f"<br>steps {steps}" if steps else ""
    links = "".join(_links(run, i, len(cell.folders)) for i, run in enumerate(artefacts(cell, out)))
    note = f"<div class=note>{escape(cell.note)}{evidence}{reason}</div>"
    return f"<td class=cell>{verdict}{diff}{note}<div class=links>{links}</div></td>"


def _links(run: dict[str, str], number: int, runs: int) -> str:
    prefix = f"run {number + 1}: " if runs > 1 else ""
    names = {"svg": "ladder", "pcap": "pcap", "log": "log"}
    return prefix + "".join(
        f"<a href='{escape(run[k])}'>{name}</a>" for k, name in names.items() if k in run
    )
