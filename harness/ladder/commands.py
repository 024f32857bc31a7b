"""``smtp-harness ladder`` and ``smtp-harness check``: a capture as a ladder, and a verdict.

Rules this module keeps:

* ``ladder FILE`` prints (or writes with ``--output``) the ladder in one format.
* Names: a pcapng's Name Resolution Blocks name its addresses (a run's capture.pcapng
  names the lab's hosts), so no ``--host`` is needed; ``--host`` overrides them.  ``check``
  names both captures with the names of both (the run's first), so a named run and an
  unnamed golden compare as equals.
* ``check RUN --expect GOLDEN`` exits 0 when the run does what the golden capture did,
  1 with the packetdrill-style diff on stdout when it does not.
* Exit codes (``ExitCode``): 0 ok / same, 1 differs, 2 bad input, 3 our own fault.
* Bad input (an unreadable or damaged capture, a bad ``--host``, an unwritable output) is a
  one-line ``HarnessError``; the top-level CLI prints it and exits 2.  ``--host`` takes an
  IP address (written as the ladder writes it) and a name of printable characters.
* Any other exception is a bug of ours, never "differs": one line on stderr naming the
  file and the fault, the traceback written to a file whose path that line gives, exit 3.
  Never a traceback on the terminal.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Callable
from typing import TypeVar

import click

from harness.capture.pcapfile import annotations
from harness.errors import HarnessError, InternalError, InternalFault
from harness.ladder.compare import compare, format_diff
from harness.ladder.dissect import dissect
from harness.ladder.model import Ladder
from harness.render import FORMATS, render
from harness.verdict import ExitCode

T = TypeVar("T")

_HOST = click.option(
    "--host",
    "hosts",
    multiple=True,
    metavar="ADDR=NAME",
    help="Show ADDR (an IP address) as NAME (repeatable); a pcapng's own names need none.",
)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)), default="text")
@click.option("--output", type=click.Path(dir_okay=False), help="Write here, not to stdout.")
@_HOST
def ladder(file: str, fmt: str, output: str | None, hosts: tuple[str, ...]) -> None:
    """Show the ladder of the capture FILE (pcap or pcapng).

    Exit 0, or 2 for bad input (an unreadable capture, a bad --host), 3 for a fault of
    the harness (its traceback is written to the file the message names)."""
    names = guarded(file, lambda: file_names([file], _hosts(hosts)))
    document = guarded(file, lambda: render(dissect(file, names), fmt))
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
@click.option(
    "--expect",
    "golden",
    required=True,
    metavar="GOLDEN",
    type=click.Path(dir_okay=False),
    help="The golden capture (pcap or pcapng) RUN should match, e.g. pcaps/seed.pcap.",
)
@click.option("--strict", is_flag=True, help="Compare every step and detail where it fell.")
@_HOST
def check(run: str, golden: str, strict: bool, hosts: tuple[str, ...]) -> None:
    """Compare the capture RUN with the golden capture GOLDEN (--expect).

    RUN is a capture (a run folder's capture.pcapng); GOLDEN is the capture it is expected
    to match, recorded from a run that was right (run --update-golden).  They are
    compared as ladders: the steps, in order, each with its kind and details (--strict:
    every detail, where it fell too).

    Exit 0 when they do the same, 1 when they differ (the diff is printed), 2 for bad
    input (an unreadable capture, a bad --host), 3 for a fault of the harness (its
    traceback goes to the file the message names)."""
    names = guarded(run, lambda: file_names([run, golden], _hosts(hosts)))
    run_ladder: Ladder = guarded(run, lambda: dissect(run, names))
    golden_ladder: Ladder = guarded(golden, lambda: dissect(golden, names))
    verdict = guarded(run, lambda: compare(run_ladder, golden_ladder, strict=strict))
    click.echo(format_diff(verdict, run, golden), nl=False)
    sys.exit(ExitCode.OK if verdict.ok else ExitCode.FAIL)


def guarded(file: str, work: Callable[[], T]) -> T:
    """``work()``; a fault of ours in it (any exception that is not a ``HarnessError``) is
    an ``InternalError`` naming ``file``: the CLI makes it one line and exit 3."""
    try:
        return work()
    except HarnessError:
        raise
    except Exception as exc:  # a bug: reported, never a traceback on the terminal
        fault = InternalFault.from_exception(f"harness fault on {file}", exc)
        raise InternalError(fault.line()) from exc


def file_names(files: list[str], given: dict[str, str]) -> dict[str, str]:
    """The names the captures' name blocks give (the first file's win), then ``given``."""
    names: dict[str, str] = {}
    for file in reversed(files):
        names |= annotations(file).names
    return names | given


def _hosts(pairs: tuple[str, ...]) -> dict[str, str]:
    """``ADDR=NAME`` pairs as address -> name, each address as the ladder writes it."""
    hosts = {}
    for pair in pairs:
        addr, eq, name = pair.partition("=")
        if not eq or not addr or not name:
            raise HarnessError(f"--host {pair!r}: expected ADDR=NAME")
        try:
            address = ipaddress.ip_address(addr)
        except ValueError:
            raise HarnessError(f"--host {pair!r}: {addr!r} is not an IP address") from None
        # bytes that are not UTF-8 reach us as surrogates, which are not printable either
        if not name.isprintable() or any(ch.isspace() for ch in name):
            raise HarnessError(f"--host {pair!a}: the name must be printable UTF-8 without spaces")
        hosts[str(address)] = name
    return hosts
