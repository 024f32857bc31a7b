"""``smtp-harness run SCENARIO`` and ``smtp-harness demo``: a scenario, end to end."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

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
def run(scenario: Path | None, out: Path | None, backend: str) -> None:
    """Run SCENARIO (default: the seed) in a fresh lab; exit 0 pass, 1 fail, 2 bad input."""
    scen = load_scenario(scenario)
    folder = out or Path("runs") / f"{scen.name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    click.echo(f"scenario {scen.name}: {scen.description}")
    result = run_scenario(scen, folder, backend)
    print_result(result)
    sys.exit(0 if result.ok else 1)


@click.command("demo")
@click.pass_context
def demo(ctx: click.Context) -> None:
    """The main job: the seed scenario, end to end (same as `run` with no scenario)."""
    ctx.invoke(run, scenario=None, out=None, backend="afpacket")


def print_result(result: RunResult) -> None:
    hosts = {
        "sender": result.scenario.sender_host,
        "receiver": result.scenario.receiver_host,
        "dns": result.scenario.topology.dns_host or "dns",
    }
    click.echo(f"\n  {'#':>3}  {'from':<9} {'to':<9} on the wire")
    for n, (src, dst, text) in enumerate(_steps(result.timeline(), hosts), 1):
        click.echo(f"  {n:>3}  {src:<9} {dst:<9} {text}")
    click.echo("\nper recipient:")
    for rcpt, o in result.report.outcomes.items():
        reply = f"{o.code} {o.text}" if o.code else o.text
        click.echo(f"  {rcpt:<28} {o.status:<10} at {o.stage:<14} {reply}")
    click.echo(f"\nrun folder: {result.folder}  (capture.pcap, *.jsonl, maildir/)")
    if result.ok:
        click.echo("verdict: PASS")
    else:
        click.echo("verdict: FAIL")
        for problem in result.problems:
            click.echo(f"  - {problem}")


def _steps(timeline: list[dict], hosts: dict[str, str]):
    """(from, to, text) for each logged event a person reads as a step on the wire."""
    for e in timeline:
        me = hosts[e["side"]]
        peer = hosts["receiver" if e["side"] == "sender" else "sender"]
        kind = e["kind"]
        if kind == "dns-query":
            yield me, hosts["dns"], f"DNS query {e['qname']} {e['qtype']}"
        elif kind == "dns-answer":
            got = e.get("answers") or e.get("ptr") or []
            yield hosts["dns"], me, f"DNS answer {e['rcode']} {', '.join(map(str, got))}"
        elif kind == "dns-error":
            yield hosts["dns"], me, f"DNS failure: {e['error']}"
        elif kind == "connect":
            yield peer, me, f"TCP connect from {e['peer'][0]} (SYN, SYN-ACK, ACK)"
        elif kind == "message":
            yield me, peer, f"<message: {e['size']} bytes> then ."
        elif kind == "command":
            yield peer, me, e["line"]
        elif kind == "reply":
            for line in e["lines"]:
                yield me, peer, line
        elif kind == "stored":
            yield me, me, f"(stored {e['size']} bytes for {e['recipient']})"
        elif kind == "close":
            yield me, peer, "TCP FIN (receiver closes first)"
        elif kind in ("anomaly", "error", "aborted", "ptr-mismatch"):
            detail = {k: v for k, v in e.items() if k not in ("t", "wall", "kind", "side")}
            yield me, me, f"({kind}: {detail})"
