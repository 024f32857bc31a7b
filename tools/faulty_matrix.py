"""Issue 14's proof that verdicts hold: one MTA's matrix column under a link impairment
(default: loss 5% + delay 50 ms ± 20 ms, ``tools/impairment_table.py``'s row), compared cell
by cell with the committed observed matrix (``fixtures/observed-matrix.json``).

Rules kept here:
- The overlay is data: every setup's scenario gets ``[[network.faults]]`` on the link of
  each host of its topology that has no fault of its own (a check's own fault, such as
  the silent MX's loss of every packet, stays as it is), direction ``in`` (each packet is
  impaired once, as it reaches its receiver; duplication ``out``, as the table does), and
  ``[network] seed`` (``--seed``: a differing cell is repeated packet for packet).
  Nothing else of the setup changes; the scenario is validated as any other.
- A cell is compared by verdict, and an observation by its value too, with the observed
  matrix's cell of the same check, role and MTA; a cell the observed matrix lacks is
  reported as such, never as a match.  Every cell is listed; the exit status is 0 only
  when every cell matches (1 otherwise; 2 for bad arguments).
- Cells sharing a run are one group (``matrix.groups``), run in one worker process
  (``--jobs``), so each run happens once; each worker has its own labs.

    .venv/bin/python tools/faulty_matrix.py [--mta postfix] [--row loss5-jitter]
        [--check ID ...] [--jobs 4] [--seed 1] [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import tempfile
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from impairment_table import ROWS  # beside this script (its folder is sys.path[0])

from harness.checks.base import REFERENCE, ROLES, Check, Setup, registry, select
from harness.checks.expected import DEFAULT_EXPECTED, load_expected
from harness.checks.matrix import Column, Matrix, Run, groups, plan
from harness.scenario import FIXTURES

OBSERVED = FIXTURES / "observed-matrix.json"


def overlaid(setup: Setup, role: str, knobs: dict, seed: int) -> Setup:
    """``setup`` with ``knobs`` on every host's link that has no fault yet (rules)."""
    hosts = [h.name for h in setup.scenario(REFERENCE, role).topology.hosts]
    data = copy.deepcopy(setup.data)
    network = data.setdefault("network", {})
    own = network.get("faults", [])
    direction = "out" if "duplicate" in knobs else "in"
    taken = {f["host"] for f in own}
    added = [{"host": h, "direction": direction, **knobs} for h in hosts if h not in taken]
    network["faults"] = [*own, *added]
    network["seed"] = seed
    return dataclasses.replace(setup, data=data)


class FaultyMatrix(Matrix):
    """A matrix whose every run has the overlay."""

    def __init__(self, out: Path, knobs: dict, seed: int) -> None:
        super().__init__(out, load_expected(DEFAULT_EXPECTED, registry()))
        self.knobs, self.seed = knobs, seed

    def _run(self, setup: Setup, col: Column, role: str) -> Run:
        return super()._run(overlaid(setup, role, self.knobs, self.seed), col, role)


def run_group(cells: list[tuple[str, str, str]], out: str, knobs: dict, seed: int) -> list[dict]:
    """One group's cells (check id, role, mta), run in this process: what each gave."""
    checks = registry()
    matrix = FaultyMatrix(Path(out), knobs, seed)
    found = []
    for check_id, role, mta in cells:
        cell = matrix.cell(checks[check_id], role, matrix.column(mta))
        found.append(
            {
                "check": check_id,
                "role": role,
                "mta": mta,
                "verdict": str(cell.verdict),
                "value": cell.value,
                "note": cell.note,
                "folders": [str(f) for f in cell.folders],
            }
        )
    return found


def observed_cells(path: Path = OBSERVED) -> dict[tuple[str, str, str], dict]:
    cells = json.loads(path.read_text())["cells"]
    return {(c["check"], c["role"], c["mta"]): c for c in cells}


def compared(got: dict, observed: dict[tuple[str, str, str], dict]) -> str:
    """ "match", or how the cell differs from the observed matrix's."""
    before = observed.get((got["check"], got["role"], got["mta"]))
    if before is None:
        return "not in the observed matrix"
    if before["verdict"] != got["verdict"] or before.get("value") != got["value"]:
        was = before["verdict"] + (f" {before['value']!r}" if before.get("value") else "")
        return f"was {was}"
    return "match"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mta", default="postfix")
    parser.add_argument("--row", choices=ROWS, default="loss5-jitter")
    parser.add_argument("--check", action="append", default=[], help="id or glob")
    parser.add_argument("--role", action="append", choices=ROLES, default=[])
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="faulty-matrix-"))
    roles = args.role or list(ROLES)
    cells: list[tuple[Check, str, str]] = plan(select(args.check, roles), [args.mta], roles)
    by_group: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for (check, role, mta), group in zip(cells, groups(cells), strict=True):
        by_group[group].append((check.id, role, mta))
    knobs = ROWS[args.row][1]
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [
            pool.submit(run_group, group, str(out), knobs, args.seed) for group in by_group.values()
        ]
        results = [cell for future in futures for cell in future.result()]
    observed = observed_cells()
    differing = 0
    for got in results:
        how = compared(got, observed)
        differing += how != "match"
        shown = got["verdict"] + (f" {got['value']!r}" if got["value"] else "")
        print(f"{got['mta']}/{got['role']}/{got['check']}: {shown}: {how}")
        if how != "match":
            print(f"    {got['note']}  ({', '.join(got['folders'])})")
    print(
        f"{len(results)} cells of {args.mta} under {ROWS[args.row][0]} (seed {args.seed}): "
        f"{len(results) - differing} as in {OBSERVED.name}, {differing} differ; runs in {out}"
    )
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
