"""The ``smtp-harness`` command.

Each subsystem owns its subcommands (``harness/<pkg>/commands.py``); this module only
assembles them and enforces the CLI contract: a ``HarnessError`` is one line on stderr and
exit code 2, never a traceback.
"""

from __future__ import annotations

import sys

import click

from harness.errors import HarnessError


class _Main(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except HarnessError as exc:
            click.echo(f"smtp-harness: error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Main)
@click.version_option(package_name="smtp-harness")
def main() -> None:
    """Packet-level SMTP conformance harness."""


def _register() -> None:
    from harness.checks.commands import matrix
    from harness.commands import demo, run
    from harness.dns.commands import dns
    from harness.lab.commands import lab
    from harness.ladder.commands import check, ladder

    for command in (lab, dns, run, demo, ladder, check, matrix):
        main.add_command(command)


_register()
