"""``smtp-harness run SCENARIO`` and ``smtp-harness demo``: a scenario, end to end.

Rules kept here:
- The exit code is the run's verdict (``harness.verdict.exit_code``): 0 pass, 1 fail, 3
  error (our fault: the faults are printed, their tracebacks are in the run folder);
  bad input never gets as far as a run (2, from the CLI).
- ``--out`` names a folder that is new, empty or an earlier run folder of ours (then
  replaced whole); any other is refused, one line, exit 2, before the run
  (``harness.runinfo``).
- What is printed: the ladder, the outcome per recipient with where it was read, the run
  folder, the verdict, and each problem (a message that differs with its diff) or fault.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from harness.render import render
from harness.runinfo import check_folder
from harness.runner import RunResult, lifelines, run_scenario
from harness.scenario import load_scenario
from harness.verdict import exit_code


@click.command("run")
@click.argument("scenario", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Run folder (default: runs/<scenario>-<UTC time>): new, empty, or an earlier run "
    "folder, which is replaced whole.",
)
@click.option(
    "--capture",
    "backend",
    type=click.Choice(["afpacket", "scapy"]),
    default="afpacket",
    show_default=True,
    help="Capture backend on the lab bridge.",
)
@click.option(
    "--update-golden", is_flag=True, help="Re-record the scenario's golden capture from this run."
)
def run(scenario: Path | None, out: Path | None, backend: str, update_golden: bool) -> None:
    """Run SCENARIO (default: the seed) in a fresh lab and judge it.

    Exit codes: 0 pass, 1 fail, 2 bad input (nothing was run), 3 harness error."""
    scen = load_scenario(scenario)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    folder = out or Path("runs") / f"{scen.name}-{stamp}"
    check_folder(folder)  # refused before anything is printed or run
    click.echo(f"scenario {scen.name}: {scen.description}\n")
    result = run_scenario(scen, folder, backend, update_golden)
    print_result(result, update_golden)
    sys.exit(exit_code(result.verdict))


@click.command("demo")
@click.pass_context
def demo(ctx: click.Context) -> None:
    """The main job: the seed scenario, end to end (same as `run` with no scenario)."""
    ctx.invoke(run, scenario=None, out=None, backend="afpacket", update_golden=False)


def print_result(result: RunResult, updated_golden: bool = False) -> None:
    click.echo(
        render(result.ladder, "text", lifelines=lifelines(result.scenario, result.mta)), nl=False
    )
    click.echo("\nper recipient:")
    for rcpt, o in result.report.outcomes.items():
        reply = f"{o.code} {o.text}" if o.code else o.text
        status = f" [{o.status_code}]" if o.status_code and o.status_code not in reply else ""
        click.echo(f"  {rcpt:<28} {o.status:<10} at {o.stage:<14} {reply}{status}")
    click.echo(
        f"\nrun folder: {result.folder}  (run.json, capture.pcapng, ladder.svg/.html/.txt/.json,"
        " scenario.toml, logs)"
    )
    golden = result.scenario.expect.golden
    if golden is not None:
        action = "re-recorded" if updated_golden else "compared with"
        click.echo(f"golden: {action} {golden}")
    click.echo(f"verdict: {str(result.verdict).upper()}")
    for fault in result.faults:
        click.echo(f"  - harness fault: {fault.line()} (traceback.txt in the run folder)")
    for problem in result.problems:
        first, *rest = problem.splitlines()
        click.echo(f"  - {first}")
        for line in rest:
            click.echo(f"    {line}")
