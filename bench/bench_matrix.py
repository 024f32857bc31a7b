"""The full matrix's wall time, one cell at a time and on pytest-xdist (issue 13, "Scale").

Opt-in, as it takes about ten minutes: it runs only with ``SMTP_HARNESS_BENCH_MATRIX=1``
(``make bench`` otherwise prints how to ask for it).  ``SMTP_HARNESS_BENCH_JOBS`` sets the
``-j`` of the parallel run (default 16: cells mostly wait, so more workers than cores).

Both runs are the real command (``smtp-harness matrix``, then ``matrix -j N``) into
runs/bench-matrix-<UTC time>/{serial,parallel}, kept for a look.  Prints each wall time,
the slowest cell (from the serial run's cell files: the cell that ran its runs), the
parallel time over that cell (aim: at most 2), whether the verdicts (and observed values)
are the same in both runs and as in fixtures/observed-matrix.json (the last full serial
run), and the load average before and after (the machine may be shared).  The serial run's
seconds per cell are written beside the runs, in the form of fixtures/matrix-seconds.json
(the order in which xdist starts the groups of cells: longest first).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / ".venv" / "bin" / "smtp-harness"
OBSERVED = ROOT / "fixtures" / "observed-matrix.json"
OPT_IN, JOBS = "SMTP_HARNESS_BENCH_MATRIX", "SMTP_HARNESS_BENCH_JOBS"
AIM = 2.0  # the whole matrix within twice its slowest cell


def _run(out: Path, *args: str) -> float:
    """Wall seconds of ``smtp-harness matrix --out OUT ARGS``; its output goes to out/."""
    out.mkdir(parents=True)
    started = time.perf_counter()
    with open(out.with_suffix(".log"), "w", encoding="utf-8") as log:
        done = subprocess.run(
            [str(CLI), "matrix", "--out", str(out), *args], stdout=log, stderr=log
        )
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1):  # 1: cells differ from expected, still a matrix
        raise SystemExit(f"matrix {' '.join(args)}: exit {done.returncode}, see {log.name}")
    return seconds


def verdicts(matrix_json: Path) -> dict[str, tuple[str, str | None]]:
    cells = json.loads(matrix_json.read_text(encoding="utf-8"))["cells"]
    return {f"{c['mta']}/{c['role']}/{c['check']}": (c["verdict"], c["value"]) for c in cells}


def cell_seconds(out: Path) -> dict[str, float]:
    seconds = {}
    for path in sorted((out / "cells").glob("*/*/*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        seconds[f"{data['column']['mta']}/{data['role']}/{data['check']}"] = data["seconds"]
    return seconds


def _kept_seconds(out: Path, base: Path) -> Path:
    """The serial run's seconds per cell, as fixtures/matrix-seconds.json holds them."""
    about = (
        f"seconds per cell of the full serial matrix {base.name}: xdist starts the longest first"
    )
    path = base / "matrix-seconds.json"
    data = {"schema_version": 1, "about": about, "seconds": cell_seconds(out)}
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return path


def _differences(a: dict, b: dict) -> list[str]:
    return [
        f"{k}: {a.get(k)} vs {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
    ]


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    if os.environ.get(OPT_IN) != "1":
        print(f"skipped (about 10 minutes): {OPT_IN}=1 make bench  (-j: {JOBS}, default 16)")
        return
    jobs = int(os.environ.get(JOBS, "16"))
    base = ROOT / "runs" / time.strftime("bench-matrix-%Y%m%dT%H%M%SZ", time.gmtime())
    before = _load()
    serial = _run(base / "serial")
    parallel = _run(base / "parallel", "-j", str(jobs))
    after = _load()
    seconds = cell_seconds(base / "serial")
    slow_name = max(seconds, key=seconds.get)
    slow = seconds[slow_name]
    one, many = (
        verdicts(base / "serial" / "matrix.json"),
        verdicts(base / "parallel" / "matrix.json"),
    )
    print(
        f"full matrix ({len(one)} cells), wall time; load average {before} before, {after} after:"
    )
    print(f"  one cell at a time  {serial:6.1f} s")
    print(f"  -j {jobs:<3}             {parallel:6.1f} s  ({serial / parallel:.1f} x faster)")
    print(f"  slowest cell        {slow:6.1f} s  ({slow_name})")
    verdict = "within" if parallel <= AIM * slow else "OVER"
    print(f"  -j {jobs} / slowest   {parallel / slow:6.2f}    ({verdict} the aim of {AIM:.0f})")
    for label, other in (("parallel", many), (OBSERVED.name, verdicts(OBSERVED))):
        differ = _differences(one, other)
        print(f"  verdicts serial vs {label}: {'identical' if not differ else len(differ)}")
        for line in differ[:10]:
            print(f"    {line}")
    print(f"  runs kept in {base}")
    print(f"  cell seconds for longest-first: {_kept_seconds(base / 'serial', base)}")
    print("    (copy it to fixtures/matrix-seconds.json to refresh the order)")


if __name__ == "__main__":
    main()
