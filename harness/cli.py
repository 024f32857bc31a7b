"""The ``smtp-harness`` command.

Each subsystem owns its subcommands (``harness/<pkg>/commands.py``); this module only
assembles them and enforces the CLI contract, the same for every command:

- Exit codes (``harness.verdict.ExitCode``): 0 pass or as expected, 1 fail or a
  difference, 2 bad input, 3 harness error, 130 on SIGINT, 143 on SIGTERM.  A command
  whose normal end is Ctrl-C (``lab up``, ``dns serve``) exits 0 there itself.
- Bad input (``HarnessError``, a usage error) is one line on stderr, exit 2.  Our own
  fault (``InternalError``, or any other exception: a bug) is one line on stderr naming
  where the traceback was written, exit 3.  Never a traceback on the terminal.
- ``-h`` is ``--help`` everywhere.
"""

from __future__ import annotations

import sys
import tempfile
import traceback

import click

from harness.errors import HarnessError, InternalError
from harness.verdict import EXIT_CODES_HELP, ExitCode

CONTEXT = {"help_option_names": ["-h", "--help"]}
EPILOG = EXIT_CODES_HELP


@click.group(context_settings=CONTEXT, epilog=EPILOG)
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
    with tempfile.NamedTemporaryFile(
        "w", prefix="smtp-harness-traceback-", suffix=".txt", delete=False, encoding="utf-8"
    ) as f:
        f.write("".join(traceback.format_exception(exc)))
    return f.name


def _register() -> None:
    from harness.checks.commands import matrix
    from harness.commands import demo, run
    from harness.dns.commands import dns
    from harness.lab.commands import lab
    from harness.ladder.commands import check, ladder
    from harness.replay.commands import replay_command

    for command in (lab, dns, run, demo, ladder, check, matrix, replay_command):
        _documented(command)
        main.add_command(command)


def _documented(command: click.Command) -> None:
    """``-h`` and the exit codes in the help of ``command`` and its subcommands."""
    command.context_settings = {**CONTEXT, **command.context_settings}
    command.epilog = command.epilog or EPILOG
    for sub in getattr(command, "commands", {}).values():
        _documented(sub)


_register()

if __name__ == "__main__":
    sys.exit(run_cli(sys.argv[1:]))
