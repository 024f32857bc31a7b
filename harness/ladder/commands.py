"""``smtp-harness ladder`` and ``smtp-harness check``: a capture as a ladder, and a verdict.

Rules this module keeps:

* ``ladder FILE`` prints (or writes with ``--output``) the ladder in one format.
* ``check RUN --expect GOLDEN`` exits 0 when the run does what the golden capture did,
  1 with the packetdrill-style diff on stdout when it does not.
* Bad input (unreadable capture, bad ``--host``, unwritable output) is a one-line
  ``HarnessError``; the top-level CLI prints it and exits 2.
"""

from __future__ import annotations

import sys

import click

from harness.errors import HarnessError
from harness.ladder.compare import compare, format_diff
from harness.ladder.dissect import dissect
from harness.render import FORMATS, render

_HOST = click.option(
    "--host",
    "hosts",
    multiple=True,
    metavar="ADDR=NAME",
    help="Show ADDR as NAME (repeatable).",
)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)), default="text")
@click.option("--output", type=click.Path(dir_okay=False), help="Write here, not to stdout.")
@_HOST
def ladder(file: str, fmt: str, output: str | None, hosts: tuple[str, ...]) -> None:
    """Show the ladder of the capture FILE (pcap or pcapng)."""
    document = render(dissect(file, _hosts(hosts)), fmt)
    if output is None:
        click.echo(document, nl=False)
        return
    try:
        with open(output, "w", encoding="utf-8") as f:
            f.write(document)
    except OSError as exc:
        raise HarnessError(f"{output}: cannot write: {exc.strerror}") from None


@click.command()
@click.argument("run", type=click.Path(dir_okay=False))
@click.option("--expect", "golden", required=True, type=click.Path(dir_okay=False))
@click.option("--strict", is_flag=True, help="Compare every step and detail where it fell.")
@_HOST
def check(run: str, golden: str, strict: bool, hosts: tuple[str, ...]) -> None:
    """Compare the capture RUN with the golden capture GOLDEN."""
    names = _hosts(hosts)
    verdict = compare(dissect(run, names), dissect(golden, names), strict=strict)
    click.echo(format_diff(verdict, run, golden), nl=False)
    if not verdict.ok:
        sys.exit(1)


def _hosts(pairs: tuple[str, ...]) -> dict[str, str]:
    hosts = {}
    for pair in pairs:
        addr, eq, name = pair.partition("=")
        if not eq or not addr or not name:
            raise HarnessError(f"--host {pair!r}: expected ADDR=NAME")
        hosts[addr] = name
    return hosts
