"""The ``smtp-harness`` command.

Each subsystem owns its subcommands (``harness/<pkg>/commands.py``); this module only
assembles them and enforces the CLI contract: a ``HarnessError`` is one line on stderr and
exit code 2, never a traceback; a Ctrl-C that reaches here is exit 130, never a traceback
(commands that Ctrl-C stops normally, ``lab up`` and ``dns serve``, exit 0 themselves).
The subsystems are imported on first use, inside ``invoke``, so a Ctrl-C while they load
(most of a command's start-up) is handled like any other.
"""

from __future__ import annotations

import functools
import sys

import click

from harness.errors import HarnessError
from harness.verdict import ExitCode


class _Main(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except HarnessError as exc:
            click.echo(f"smtp-harness: error: {exc}", err=True)
            sys.exit(ExitCode.BAD_INPUT)
        except KeyboardInterrupt:
            click.echo("smtp-harness: interrupted", err=True)
            sys.exit(ExitCode.SIGINT)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if self is main:
            _register()
        return super().get_command(ctx, name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        if self is main:
            _register()
        return super().list_commands(ctx)


@click.group(cls=_Main)
@click.version_option(package_name="smtp-harness")
def main() -> None:
    """Packet-level SMTP conformance harness."""


@functools.cache
def _register() -> None:
    from harness.checks.commands import matrix
    from harness.commands import demo, run
    from harness.dns.commands import dns
    from harness.lab.commands import lab
    from harness.ladder.commands import check, ladder

    for command in (lab, dns, run, demo, ladder, check, matrix):
        main.add_command(command)
