"""Start-up as whole processes (issue 13, "Start-up"): ``smtp-harness --help`` and the seed
run, median of several, against ``python -c pass`` measured in the same run.

Prints each median, its ratio to Python's own start (how many Pythons it costs) and the
issue's aim (0.15 s for --help, 0.3 s for the seed run); a run over its aim says so.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LAUNCHER = HERE.parent / "bin" / "smtp-harness"
PYTHON = Path(sys.executable)
HELP_RUNS, SEED_RUNS = 11, 5
AIMS = {"--help": 0.15, "seed run": 0.3}  # seconds, issue 13


def _seconds(argv: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def _median(argv: list[str], runs: int, cwd: Path) -> float:
    return statistics.median(_seconds(argv, cwd) for _ in range(runs))


def _launcher() -> list[str]:
    """The command as a user types it: the launcher, with the venv's Python beside it."""
    return (
        [str(PYTHON.parent / "smtp-harness")]
        if (PYTHON.parent / "smtp-harness").exists()
        else [str(LAUNCHER)]
    )


def main() -> None:
    command = _launcher()
    with tempfile.TemporaryDirectory(prefix="smtp-harness-bench-") as tmp:
        cwd = Path(tmp)
        python = _median([str(PYTHON), "-c", "pass"], HELP_RUNS, cwd)
        measured = {
            "--help": (_median([*command, "--help"], HELP_RUNS, cwd), HELP_RUNS),
            "seed run": (_median([*command, "run", "--out", "seed"], SEED_RUNS, cwd), SEED_RUNS),
        }
    print(f"start-up as processes, median (python -c pass: {python * 1000:.0f} ms):")
    for name, (seconds, runs) in measured.items():
        aim = AIMS[name]
        verdict = "within" if seconds <= aim else "OVER"
        print(
            f"  smtp-harness {name:<9} {seconds * 1000:6.0f} ms of {runs}  "
            f"{seconds / python:5.1f} x python  ({verdict} the aim of {aim * 1000:.0f} ms)"
        )


if __name__ == "__main__":
    main()
