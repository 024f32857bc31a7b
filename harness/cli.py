"""The ``smtp-harness`` command.

Each subsystem owns its subcommands (``harness/<pkg>/commands.py``); this module only
assembles them and enforces the CLI contract, the same for every command:

- Exit codes (``harness.verdict.ExitCode``): 0 pass or as expected, 1 fail or a
  difference, 2 bad input, 3 harness error, 130 on SIGINT, 143 on SIGTERM.  A command
  whose normal end is Ctrl-C (``lab up``, ``dns serve``) exits 0 there itself.
- Bad input (``HarnessError``, a usage error) is one line on stderr, exit 2.  Our own
  fault (``InternalError``, or any other exception: a bug) is one line on stderr naming
  where the traceback was written, exit 3.  Never a traceback on the terminal.
- ``-h`` is ``--help`` everywhere, and every command's help ends with the exit codes.
- Start-up imports only what the command called uses: ``COMMANDS`` names each command's
  module, imported when that command runs (or shows its help); ``smtp-harness --help``
  lists them from the table's one-line summaries, importing none (a test holds each
  summary equal to its command's own).  The ending signals are blocked while a command's
  modules import (``harness.signals.imported``, as ``harness.entry`` blocks them while the
  harness starts): one that arrives then lands after the import, as the quiet 130/143,
  never inside a module's body as a half-made class (a "bug", exit 3).
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass

import click

from harness import signals
from harness.errors import HarnessError, InternalError
from harness.verdict import EXIT_CODES_HELP, ExitCode

CONTEXT = {"help_option_names": ["-h", "--help"]}
EPILOG = EXIT_CODES_HELP


@dataclass(frozen=True)
class Lazy:
    """A subcommand by where it lives, loaded only when it is called."""

    module: str
    attribute: str
    summary: str  # its help's first line, for the command list

    def load(self) -> click.Command:
        command = getattr(signals.imported(self.module), self.attribute)
        _documented(command)
        return command


COMMANDS = {
    "check": Lazy(
        "harness.ladder.commands",
        "check",
        "Judge the SMTP sessions of the capture RUN, or compare it with a golden capture.",
    ),
    "demo": Lazy(
        "harness.commands",
        "demo",
        "The main job: the seed scenario, end to end (same as `run` with no scenario).",
    ),
    "dns": Lazy("harness.dns.commands", "dns", "The fake DNS server."),
    "lab": Lazy(
        "harness.lab.commands", "lab", "Build, list and remove labs (hosts in network namespaces)."
    ),
    "ladder": Lazy(
        "harness.ladder.commands", "ladder", "Show the ladder of the capture FILE (pcap or pcapng)."
    ),
    "matrix": Lazy(
        "harness.checks.commands", "matrix", "Run checks x MTAs x roles, or list or merge them."
    ),
    "replay": Lazy(
        "harness.replay.commands",
        "replay_command",
        "Replay one side of a captured SMTP session against a live peer in a lab.",
    ),
    "run": Lazy(
        "harness.commands", "run", "Run SCENARIO (default: the seed) in a fresh lab and judge it."
    ),
}


class LazyGroup(click.Group):
    """A group whose commands are imported when called (``COMMANDS``)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        lazy = COMMANDS.get(cmd_name)
        return None if lazy is None else lazy.load()

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name].summary) for name in sorted(COMMANDS)])


@click.group(cls=LazyGroup, context_settings=CONTEXT, epilog=EPILOG)
@click.version_option(package_name="smtp-harness")
def main() -> None:
    """Packet-level SMTP conformance harness."""


def run_cli(argv: list[str]) -> int:
    """Run the command line ``argv``; return the exit code (never raise, never a traceback)."""
    try:
        main.main(argv, prog_name="smtp-harness", standalone_mode=False)
    except click.exceptions.Exit as done:
        return done.exit_code
    except SystemExit as done:  # a command's own exit code (or SIGTERM's 143)
        _say_notes(done)
        return ExitCode.OK if done.code is None else done.code  # type: ignore[return-value]
    except click.UsageError as exc:
        click.echo(f"smtp-harness: error: {exc.format_message()}", err=True)
        return ExitCode.BAD_INPUT
    except click.Abort as abort:  # click's KeyboardInterrupt
        click.echo("smtp-harness: interrupted", err=True)
        _say_notes(abort.__cause__ or abort)
        return ExitCode.SIGINT
    except click.ClickException as exc:
        click.echo(f"smtp-harness: error: {exc.format_message()}", err=True)
        return ExitCode.BAD_INPUT
    except HarnessError as exc:
        click.echo(f"smtp-harness: error: {exc}", err=True)
        return ExitCode.BAD_INPUT
    except KeyboardInterrupt as interrupt:
        click.echo("smtp-harness: interrupted", err=True)
        _say_notes(interrupt)
        return ExitCode.SIGINT
    except InternalError as exc:  # our own fault, named by where it happened
        click.echo(f"smtp-harness: error: {exc}; traceback in {_kept(exc)}", err=True)
        return ExitCode.HARNESS_ERROR
    except Exception as exc:  # a bug that nothing named
        summary = f"{type(exc).__name__}: {exc}".splitlines()[0]
        click.echo(f"smtp-harness: error: {summary} (a bug); traceback in {_kept(exc)}", err=True)
        return ExitCode.HARNESS_ERROR
    return ExitCode.OK


def _say_notes(exc: BaseException) -> None:
    """What went wrong while a signal ended the command (a teardown that failed)."""
    for note in getattr(exc, "__notes__", ()):
        click.echo(note, err=True)


def _kept(exc: BaseException) -> str:
    """The traceback of ``exc`` in a file of its own; its path."""
    import tempfile  # only for a fault: 1 MB resident (random, shutil) start-up never needs

    with tempfile.NamedTemporaryFile(
        "w", prefix="smtp-harness-traceback-", suffix=".txt", delete=False, encoding="utf-8"
    ) as f:
        f.write("".join(traceback.format_exception(exc)))
    return f.name


def _documented(command: click.Command) -> None:
    """``-h`` and the exit codes in the help of ``command`` and its subcommands."""
    command.context_settings = {**CONTEXT, **command.context_settings}
    command.epilog = command.epilog or EPILOG
    for sub in getattr(command, "commands", {}).values():
        _documented(sub)


if __name__ == "__main__":
    sys.exit(run_cli(sys.argv[1:]))
