"""Issue 14's proof: the seed scenario under each link impairment, N seeds a row, PASS counts.

Every row puts one fault on every host's link, in the direction that meets each packet
once (``in``: a packet is impaired as it reaches its receiver; duplication ``out``: as it
leaves its sender), so a row's fraction is the chance for each packet on the wire.  Runs
number their seeds 1..N, so a row's failing run is repeated with its seed
(``--rows NAME --first SEED --runs 1 --keep``).  Every row must be N/N.

    .venv/bin/python tools/impairment_table.py [--runs 30] [--rows NAME ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from harness.lab.impair import Direction, LinkFault
from harness.runner import run_scenario
from harness.scenario import load_scenario

ROWS: dict[str, tuple[str, dict]] = {  # name -> (the words, the fault on each link)
    "delay": ("delay 20 ms", {"delay_ms": 20}),
    "jitter": ("delay 50 ms ± 20 ms", {"delay_ms": 50, "jitter_ms": 20}),
    "loss2": ("loss 2%", {"loss": 0.02}),
    "loss5": ("loss 5%", {"loss": 0.05}),
    "loss5-jitter": (
        "loss 5% + delay 50 ms ± 20 ms", {"loss": 0.05, "delay_ms": 50, "jitter_ms": 20}
    ),
    "reorder": ("25% reordered by 10 ms", {"reorder": 0.25, "delay_ms": 10}),
    "duplicate": ("5% duplicated", {"duplicate": 0.05}),
}  # fmt: skip


def faults(scenario, knobs: dict) -> list[LinkFault]:
    direction = Direction.OUT if "duplicate" in knobs else Direction.IN
    return [LinkFault(h.name, direction, **knobs) for h in scenario.topology.hosts]


def run_row(name: str, seeds: range, out: Path, keep: bool) -> tuple[int, list[str]]:
    """(passes, one line per run that did not pass)."""
    seed_scenario = load_scenario(None)
    passes, failures = 0, []
    for seed in seeds:
        scenario = dataclasses.replace(
            seed_scenario, link_faults=faults(seed_scenario, ROWS[name][1]), network_seed=seed
        )
        folder = out / f"{name}-{seed}"
        result = run_scenario(scenario, folder)
        if result.ok:
            passes += 1
            if not keep:
                shutil.rmtree(folder)
            continue
        why = [*result.problems, *(f.line() for f in result.faults)]
        first = why[0].splitlines()[:8] if why else ["(no problem recorded)"]
        failures.append(f"{name} seed {seed}: {result.verdict}: " + " | ".join(first))
    return passes, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--first", type=int, default=1, help="the first seed")
    parser.add_argument("--rows", nargs="*", choices=ROWS, default=list(ROWS))
    parser.add_argument("--out", type=Path, default=None, help="where failing runs stay")
    parser.add_argument("--keep", action="store_true", help="keep passing runs too")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="impairment-table-"))
    seeds = range(args.first, args.first + args.runs)
    lines = [f"| impairment | PASS of {args.runs} | seconds |", "|---|---|---|"]
    failures, every = [], True
    for name in args.rows:
        start = time.monotonic()
        passes, failed = run_row(name, seeds, out, args.keep)
        lines.append(f"| {ROWS[name][0]} | {passes} | {time.monotonic() - start:.0f} |")
        print(lines[-1], flush=True)
        failures += failed
        every &= passes == args.runs
    print("\n".join(["", *lines, "", *failures, f"runs kept in {out}"]))
    (out / "table.json").write_text(json.dumps({"table": lines, "failures": failures}, indent=1))
    return 0 if every else 1


if __name__ == "__main__":
    sys.exit(main())
