"""What ``lab up`` runs in its lab: an SMTP receiver on every address of its host, and a
capture of the bridge for the lab's whole life.

Rules kept here:
- The receiver is the one ``--receiver`` names (``scripted``, an MTA adapter's name, or
  ``none``), else the scenario's own (its ``[receiver] mta``, or the scripted receiver).  It
  listens on every address of its host, IPv4 and IPv6 (``family = "any"``): the lab's AAAA
  records send a client such as swaks to IPv6 first.  The choice is laid over the scenario's
  data (an MTA named by ``--receiver`` gets the ``[receiver]`` keys an MTA reads,
  ``MTA_KEYS``: the seed's scripted-only keys are left out) and validated by the scenario
  loader, as if the file had said it, so a receiver that cannot take the scenario's names is
  one line, exit 2, before any lab exists.
- It serves until the lab goes down (Ctrl-C, SIGTERM, ``lab down``): the scripted receiver on
  the main thread's event loop (``signals.run_async``: an ending signal cancels it, the
  ``with`` blocks then unwind), a real MTA started and stopped in an executor thread, stopped
  whatever ends the wait.  Its mail and log stay in the lab's folder.
- The capture starts before the receiver and stops after it, before the lab is torn down, so
  when ``lab down`` returns the capture and its ladders (text, SVG, HTML, JSON) are in the
  folder; the text ladder is printed however the lab went down.  A capture that lost packets
  says how many on stderr: its ladder is then incomplete.
- What ``lab up`` prints to try the lab is a command that works as printed: swaks in the
  scenario's sender host, to the receiver's first user and domain, from the scenario's
  envelope sender (swaks' default, root@ the kernel's host name, is a local address to a
  real MTA: Sendmail refuses it), to the receiver host's FQDN.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from harness.capture.live import Capture
from harness.errors import HarnessError
from harness.lab.lab import Lab
from harness.ladder.dissect import dissect
from harness.mta.base import adapters
from harness.mta.roles import mta_site
from harness.render import render
from harness.runner import (
    CAPTURE,
    final_capture,
    host_names,
    receiver_addresses,
    scripted_receiver,
    write_ladder,
)
from harness.scenario import (
    MTA_KEYS,
    SEED_SCENARIO,
    Scenario,
    scenario_data,
    scenario_from_data,
)

SCRIPTED, NO_RECEIVER = "scripted", "none"
CAPTURE_FILE = CAPTURE


def receiver_choices() -> tuple[str, ...]:
    """What ``--receiver`` takes: the scripted receiver, every MTA adapter, or none."""
    return (SCRIPTED, *adapters(), NO_RECEIVER)


def up_scenario(path: Path | None, receiver: str | None) -> Scenario:
    """The scenario at ``path`` (None: the seed) with the receiver ``lab up`` runs laid
    over its ``[receiver]`` section (rules above), validated."""
    if receiver is not None and receiver not in receiver_choices():
        raise HarnessError(
            f"--receiver: {receiver!r}: expected one of {', '.join(receiver_choices())}"
        )
    path = path if path is not None else SEED_SCENARIO
    data = scenario_data(path)
    section = data.get("receiver", {})  # tomllib gives a table; the loader checks the rest
    if isinstance(section, dict) and receiver != NO_RECEIVER:
        section = {**section, "family": "any"}
        if receiver == SCRIPTED:
            section.pop("mta", None)
        elif receiver is not None:  # the keys only the scripted receiver reads are left out
            section = {k: v for k, v in section.items() if k in MTA_KEYS["receiver"]}
            section["mta"] = receiver
        data = {**data, "receiver": section}
    return scenario_from_data(data, path)


async def serve(
    lab: Lab, scenario: Scenario, folder: Path, receiver: str | None, ready: Callable[[], None]
) -> None:
    """Run the receiver (none, the scripted one, or the scenario's MTA) until cancelled;
    ``ready()`` once it listens."""
    if receiver == NO_RECEIVER:
        ready()
        await asyncio.Event().wait()
    elif scenario.receiver_mta:
        await _serve_mta(lab, scenario, folder, ready)
    else:
        peer = scripted_receiver(lab, scenario, folder)
        async with peer:
            for address in receiver_addresses(lab, scenario):
                await peer.start(address, scenario.receiver_port)
            ready()
            await asyncio.Event().wait()


async def _serve_mta(lab: Lab, scenario: Scenario, folder: Path, ready: Callable[[], None]):
    site = mta_site(lab, scenario, folder, "receiver")
    mta = adapters()[scenario.receiver_mta](site, "receiver")
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, mta.start)  # a failed start stops what it began
    try:
        ready()
        await asyncio.Event().wait()
    finally:
        await loop.run_in_executor(None, mta.stop)


def describe_receiver(lab: Lab, scenario: Scenario, folder: Path, receiver: str | None) -> str:
    """One line: which receiver listens where, and where its mail goes."""
    if receiver == NO_RECEIVER:
        return "none (--receiver none)"
    where = ", ".join(lab.host(scenario.receiver_host).addresses)
    if scenario.receiver_mta:
        name = scenario.receiver_mta
        version = adapters()[name].version()
        home = folder / f"receiver-{name}"
        return f"{name} {version}, port {scenario.receiver_port} of {where} (files: {home})"
    mail = folder / "maildir"
    return f"scripted, port {scenario.receiver_port} of {where} (mail: {mail})"


def swaks_command(lab: Lab, scenario: Scenario) -> str:
    """The swaks command that sends a mail from the sender host to the lab's receiver."""
    conf = scenario.receiver
    user = conf.users[0] if conf.users else "postmaster"
    receiver = lab.host(scenario.receiver_host)
    server = receiver.fqdn or receiver.ipv4
    argv = ["ip", "netns", "exec", lab.ns(scenario.sender_host), "swaks"]
    argv += ["--to", f"{user}@{conf.domains[0]}"]
    if scenario.sender.mail_from:  # swaks' own (root@<kernel host name>) is local to an MTA
        argv += ["--from", scenario.sender.mail_from]
    argv += ["--server", server]
    if scenario.receiver_port != 25:
        argv += ["--port", str(scenario.receiver_port)]
    return shlex.join(argv)


@contextmanager
def captured(lab: Lab, scenario: Scenario, folder: Path) -> Iterator[Capture]:
    """The bridge captured into ``<folder>/capture.pcapng`` for the block; afterwards its
    ladders written beside it, the capture rewritten with the lab's names and a comment
    per frame naming its steps (as a run's), and the text ladder printed."""
    capture = Capture(lab, folder / CAPTURE_FILE)
    capture.start()
    try:
        yield capture
    finally:
        capture.stop(check=False)  # a signal ends the block: its loss is reported below
        _report(capture, scenario, folder)


def _report(capture: Capture, scenario: Scenario, folder: Path) -> None:
    ladder = dissect(str(capture.path), host_names(scenario.topology))
    write_ladder(ladder, folder)
    final_capture(capture.path, scenario, ladder, [f"lab up: scenario {scenario.name}"])
    click.echo(f"capture {capture.path}: {capture.packets} packets, {len(ladder.steps)} steps")
    click.echo(render(ladder, "text"), nl=False)
    lost = capture.dropped + abs(capture.delivered - capture.packets)
    if lost or capture.cut:
        click.echo(
            f"smtp-harness: warning: capture {capture.path}: {lost} packets lost, "
            f"{capture.cut} cut: its ladder is incomplete",
            err=True,
        )
