"""The ``smtp-harness`` entry point: signals and exit codes before anything else loads.

Rules kept here:
- The ending signals (SIGINT, SIGTERM, SIGHUP) are blocked until the harness has imported
  and ``harness.signals`` handles them: one that arrives while Python or the harness starts
  up stays pending, then ends the process quietly, 130 or 143.  The ``smtp-harness``
  launcher (``bin/smtp-harness``) starts Python with them blocked already, for the moments
  before this module runs.
- SIGTERM ends the process with 143 through ``SystemExit``, so every ``with`` unwinds and
  every lab is taken down (``harness.signals`` says where a signal may raise).
- Once the command has its exit code the signals are blocked again: the process exits with
  the code its verdict earned, never with a traceback from interpreter shutdown.
- The exit codes are ``harness.verdict.ExitCode``'s; ``harness.cli`` maps each error to one.
"""

from __future__ import annotations

import signal
import sys

HARNESS_ERROR, SIGINT_EXIT = 3, 130  # ExitCode's (not imported yet)
ENDING = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def main() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, ENDING)
    try:
        from harness import signals
        from harness.cli import run_cli
    except Exception as exc:  # a broken install or a bug at import: still one line
        print(f"smtp-harness: internal error: cannot start: {exc!r}", file=sys.stderr)
        sys.exit(HARNESS_ERROR)
    signals.install()
    code = _command(run_cli)
    signal.pthread_sigmask(signal.SIG_BLOCK, ENDING)
    if code is None:
        print("smtp-harness: interrupted", file=sys.stderr)
    sys.exit(SIGINT_EXIT if code is None else code)


def _command(run_cli) -> int | None:
    """The command's exit code; None when a Ctrl-C ended it before ``run_cli`` could say."""
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, ENDING)  # one held since start-up: here
        return run_cli(sys.argv[1:])
    except KeyboardInterrupt:
        return None
    except SystemExit as done:  # SIGTERM's 143 (SIGHUP's 129)
        return done.code  # type: ignore[return-value]


if __name__ == "__main__":
    main()
