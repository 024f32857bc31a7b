"""``smtp-harness lab …``: bring a lab up by hand, list, stop and clean labs.

Rules kept here:
- ``lab up`` starts the receiver (and with ``--capture`` the capture) of ``harness.lab.up``,
  prints the exact commands that send it a mail (swaks) and that stop its own lab (``lab
  down <id>``), and runs until Ctrl-C, SIGTERM or that command.  Ctrl-C is the normal way
  to stop it: exit 0, at any point (start-up included), with the teardown done and no
  traceback; SIGTERM (what ``lab down`` sends): the teardown, then exit 143.
- ``lab down`` acts only on labs made by ``lab up``, and never on more than it was asked:
  ``lab down ID`` that lab; ``lab down`` alone only when exactly one exists (otherwise it
  lists them and asks for an id or ``--all``, exit 2); ``--all`` every one on the machine.
  An id that names no such lab is one line, exit 2.
- ``lab clean`` removes only labs whose owner is gone (dead, recycled pid, or a zombie).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import click

from harness.errors import HarnessError
from harness.lab.lab import Lab, clean_stale, teardown
from harness.lab.registry import Record, all_records
from harness.verdict import UNTIL_CTRL_C_HELP

DOWN_TIMEOUT_S = 30.0  # the owner stops its MTA and writes its capture (lab up --capture) first


@click.group()
def lab() -> None:
    """Build, list and remove labs (hosts in network namespaces)."""


@lab.command("up", epilog=UNTIL_CTRL_C_HELP)
@click.argument("scenario", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--receiver",
    metavar="scripted|NAME|none",
    help="The SMTP receiver, on every address of its host: the scripted one, a real MTA "
    "(postfix, exim, opensmtpd, sendmail) or none (default: the scenario's).",
)
@click.option(
    "--capture",
    is_flag=True,
    help="Capture the bridge while the lab is up; the capture and its ladder are written "
    "(and the ladder printed) when it goes down.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="The lab's folder: mail, logs, capture (default: runs/lab-<lab id>).",
)
def lab_up(scenario: Path | None, receiver: str | None, capture: bool, out: Path | None) -> None:
    """Bring a lab up with its DNS server and an SMTP receiver; Ctrl-C (exit 0) or `lab down
    ID` stops it."""
    lab_id = None
    # Ctrl-C ends the body quietly, its teardowns run as the interrupt unwinds (a second one
    # waits for the lab to be gone: harness.signals); an ignored SIGINT (`lab up &` in a
    # script) stays ignored.
    with contextlib.suppress(KeyboardInterrupt):
        from harness import signals

        up = signals.imported("harness.lab.up")  # a Ctrl-C meanwhile lands after the import
        lab_dns = signals.imported("harness.runner").lab_dns

        scen = up.up_scenario(scenario, receiver)
        with Lab(scen.topology, purpose="up") as running, contextlib.ExitStack() as stack:
            lab_id = running.id
            folder = out or Path("runs") / f"lab-{lab_id}"
            folder.mkdir(parents=True, exist_ok=True)
            stack.enter_context(lab_dns(running, scen, folder / "dns.jsonl"))
            if capture:
                stack.enter_context(up.captured(running, scen, folder))

            def ready() -> None:
                _announce(running, scen, folder, receiver, capture)

            signals.run_async(up.serve(running, scen, folder, receiver, ready))
    click.echo(f"lab {lab_id} is down" if lab_id else "interrupted before the lab was up")


def _announce(running: Lab, scen, folder: Path, receiver: str | None, capture: bool) -> None:
    from harness.lab import up

    click.echo(f"lab {running.id} is up (owner pid {os.getpid()})")
    for host in running.topology.hosts:
        addrs = ", ".join(host.addresses)
        click.echo(f"  {host.name:<10} {addrs:<28} {host.fqdn or ''}")
    click.echo(f"receiver:      {up.describe_receiver(running, scen, folder, receiver)}")
    if capture:
        click.echo(f"capture:       {folder / up.CAPTURE_FILE} (with its ladder, at lab down)")
    first = running.topology.hosts[0].name
    click.echo(f"enter a host:  ip netns exec {running.ns(first)} bash")
    if receiver != up.NO_RECEIVER:
        click.echo(f"send a mail:   {up.swaks_command(running, scen)}")
    click.echo(f"stop:          smtp-harness lab down {running.id}   (or Ctrl-C here)")


@lab.command("down")
@click.argument("lab_id", required=False)
@click.option("--all", "every", is_flag=True, help="Stop every lab `lab up` made on this machine.")
def lab_down(lab_id: str | None, every: bool) -> None:
    """Stop the lab LAB_ID started with `lab up` (alone: the only one; --all: every one)."""
    chosen = _chosen(lab_id, every)
    if not chosen:
        click.echo("no lab started by `lab up` to stop")
    for rec in chosen:
        if rec.owner_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.owner_pid, signal.SIGTERM)
            _wait_gone(rec.path)
        if rec.path.exists():
            teardown(rec)
        click.echo(f"lab {rec.lab_id} is down")


def _chosen(lab_id: str | None, every: bool) -> list[Record]:
    """The labs `lab down` was asked to stop, or a HarnessError saying why none."""
    ups = [r for r in all_records() if r.purpose == "up"]
    if lab_id and every:
        raise HarnessError("lab down: give a LAB_ID or --all, not both")
    if lab_id:
        chosen = [r for r in ups if r.lab_id == lab_id]
        if not chosen:
            raise HarnessError(f"lab down: no lab {lab_id!r} started by `lab up` (see `lab list`)")
        return chosen
    if every or len(ups) == 1:
        return ups
    if not ups:
        raise HarnessError("lab down: no lab started by `lab up` on this machine")
    for rec in ups:
        click.echo(_describe(rec), err=True)
    raise HarnessError(
        f"lab down: {len(ups)} labs started by `lab up` (above); give a LAB_ID or --all"
    )


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
        click.echo(_describe(rec))


def _describe(rec: Record) -> str:
    state = "running" if rec.owner_alive() else "stale (run `smtp-harness lab clean`)"
    hosts = ", ".join(rec.hosts)
    return f"{rec.lab_id}  pid {rec.owner_pid}  {rec.purpose:<4} {state}  [{hosts}]"
