"""The ``smtp-harness`` entry point: signals and exit codes before anything else loads.

Rules kept here:
- The ending signals (SIGINT, SIGTERM, SIGHUP) are blocked until the harness has imported
  and ``harness.signals`` handles them: one that arrives while Python or the harness starts
  up stays pending, then ends the process quietly, 130, 143 or 129.  The ``smtp-harness``
  launcher (``bin/smtp-harness``) starts Python with them blocked already, for the moments
  before this module runs.
- SIGTERM ends the process with 143 through ``SystemExit``, so every ``with`` unwinds and
  every lab is taken down (``harness.signals`` says where a signal may raise).
- Once the command has its exit code, signals are settled, then blocked: the process exits
  with the code its verdict earned (not dying of one as Python finalises), printing nothing
  more.
- The exit codes are ``harness.verdict.ExitCode``'s; ``harness.cli`` maps each error to one.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from types import ModuleType

HARNESS_ERROR, SIGINT_EXIT = 3, 130  # ExitCode's (not imported yet)
ENDING = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
INTERRUPTED = object()  # a Ctrl-C ended the command before run_cli could say so


def main() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, ENDING)
    try:
        from harness import signals
        from harness.cli import run_cli
    except Exception as exc:  # a broken install or a bug at import: still one line
        print(f"smtp-harness: internal error: cannot start: {exc!r}", file=sys.stderr)
        sys.exit(HARNESS_ERROR)
    signals.install()
    code = _command(run_cli, signals)
    signal.pthread_sigmask(signal.SIG_BLOCK, ENDING)  # none ends the process as Python exits
    if code is INTERRUPTED:
        print("smtp-harness: interrupted", file=sys.stderr)
        code = SIGINT_EXIT
    sys.exit(code)


def _command(run_cli: Callable[[list[str]], int], signals: ModuleType) -> object:
    """The command's exit code, or INTERRUPTED; signals are settled when it returns."""
    try:
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, ENDING)  # one held since start-up: here
            code = run_cli(sys.argv[1:])
            signals.release()  # one a holding function took in after its release
            return code
        finally:
            signals.settle(True)  # one C call: no signal can land before it
    except KeyboardInterrupt:
        return INTERRUPTED
    except SystemExit as done:  # SIGTERM's 143 (SIGHUP's 129)
        return done.code


if __name__ == "__main__":
    main()
