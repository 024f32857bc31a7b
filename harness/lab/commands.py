"""``smtp-harness lab …`` and ``smtp-harness demo``."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import click

from harness.errors import HarnessError
from harness.lab.lab import Lab, clean_stale, teardown
from harness.lab.registry import all_records

DOWN_TIMEOUT_S = 10.0


@click.group()
def lab() -> None:
    """Build, list and remove labs (hosts in network namespaces)."""


@lab.command("up")
@click.argument("scenario", required=False, type=click.Path(dir_okay=False, path_type=Path))
def lab_up(scenario: Path | None) -> None:
    """Bring a lab up with its DNS server and keep it until `lab down` or Ctrl-C."""
    from harness.runner import lab_dns
    from harness.scenario import load_scenario

    scen = load_scenario(scenario)
    with Lab(scen.topology, purpose="up") as running, lab_dns(running, scen):
        click.echo(f"lab {running.id} is up (owner pid {os.getpid()})")
        for host in running.topology.hosts:
            addrs = ", ".join(host.addresses)
            click.echo(f"  {host.name:<10} {addrs:<28} {host.fqdn or ''}")
        first = running.topology.hosts[0].name
        click.echo(f"enter a host:  ip netns exec {running.ns(first)} bash")
        click.echo("stop:          smtp-harness lab down   (or Ctrl-C here)")
        try:
            while True:
                signal.pause()
        except KeyboardInterrupt:
            click.echo("lab down")


@lab.command("down")
@click.argument("lab_id", required=False)
def lab_down(lab_id: str | None) -> None:
    """Stop labs started with `lab up` (all of them, or LAB_ID)."""
    targets = [r for r in all_records() if r.purpose == "up" and lab_id in (None, r.lab_id)]
    if lab_id and not targets:
        raise HarnessError(f"lab down: no lab {lab_id!r} started by `lab up`")
    for rec in targets:
        if rec.owner_alive():
            os.kill(rec.owner_pid, signal.SIGTERM)
            _wait_gone(rec.path)
        if rec.path.exists():
            teardown(rec)
        click.echo(f"lab {rec.lab_id} is down")


def _wait_gone(path: Path) -> None:
    deadline = time.monotonic() + DOWN_TIMEOUT_S
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


@lab.command("clean")
def lab_clean() -> None:
    """Remove what labs killed with SIGKILL left behind (their owner is gone)."""
    cleaned = clean_stale()
    for lab_id in cleaned:
        click.echo(f"removed lab {lab_id}")
    if not cleaned:
        click.echo("nothing to clean")


@lab.command("list")
def lab_list() -> None:
    """List labs on this machine: id, owner, state, hosts."""
    records = all_records()
    if not records:
        click.echo("no labs")
    for rec in records:
        state = "running" if rec.owner_alive() else "stale (run `smtp-harness lab clean`)"
        hosts = ", ".join(rec.hosts)
        click.echo(f"{rec.lab_id}  pid {rec.owner_pid}  {rec.purpose:<4} {state}  [{hosts}]")
