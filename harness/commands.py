"""``smtp-harness run SCENARIO`` and ``smtp-harness demo``: a scenario, end to end."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from harness.render import render
from harness.runner import RunResult, run_scenario
from harness.scenario import load_scenario


@click.command("run")
@click.argument("scenario", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Run folder (default: runs/<scenario>-<UTC time>).",
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
    """Run SCENARIO (default: the seed) in a fresh lab; exit 0 pass, 1 fail, 2 bad input."""
    scen = load_scenario(scenario)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    folder = out or Path("runs") / f"{scen.name}-{stamp}"
    click.echo(f"scenario {scen.name}: {scen.description}\n")
    result = run_scenario(scen, folder, backend, update_golden)
    print_result(result, update_golden)
    sys.exit(0 if result.ok else 1)


@click.command("demo")
@click.pass_context
def demo(ctx: click.Context) -> None:
    """The main job: the seed scenario, end to end (same as `run` with no scenario)."""
    ctx.invoke(run, scenario=None, out=None, backend="afpacket", update_golden=False)


def print_result(result: RunResult, updated_golden: bool = False) -> None:
    click.echo(render(result.ladder, "text"), nl=False)
    click.echo("\nper recipient:")
    for rcpt, o in result.report.outcomes.items():
        reply = f"{o.code} {o.text}" if o.code else o.text
        click.echo(f"  {rcpt:<28} {o.status:<10} at {o.stage:<14} {reply}")
    click.echo(f"\nrun folder: {result.folder}  (capture.pcap, ladder.svg/.html/.txt/.json, logs)")
    golden = result.scenario.expect.golden
    if golden is not None:
        action = "re-recorded" if updated_golden else "compared with"
        click.echo(f"golden: {action} {golden}")
    click.echo("verdict: PASS" if result.ok else "verdict: FAIL")
    for problem in result.problems:
        click.echo(f"  - {problem}")
