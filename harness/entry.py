"""The ``smtp-harness`` entry point: signals and exit codes before anything else loads.

Rules kept here:
- This module imports nothing of the harness until its signal handling is in place, so a
  Ctrl-C while the CLI is still starting up (imports take a while) exits 130 quietly
  instead of printing a ``KeyboardInterrupt`` traceback.
- SIGTERM ends the process with 143 through ``SystemExit``, so every ``with`` unwinds and
  every lab is taken down (a running lab holds signals only while it tears down).
- The exit codes are ``harness.verdict.ExitCode``'s; ``harness.cli`` maps each error to one.
"""

from __future__ import annotations

import signal
import sys

HARNESS_ERROR, SIGINT_EXIT, SIGTERM_EXIT = 3, 130, 143  # ExitCode's (not imported yet)


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(SIGTERM_EXIT)


def main() -> None:
    signal.signal(signal.SIGTERM, _terminated)
    try:
        from harness.cli import run_cli
    except KeyboardInterrupt:
        print("smtp-harness: interrupted", file=sys.stderr)
        sys.exit(SIGINT_EXIT)
    except Exception as exc:  # a broken install or a bug at import: still one line
        print(f"smtp-harness: internal error: cannot start: {exc!r}", file=sys.stderr)
        sys.exit(HARNESS_ERROR)
    sys.exit(run_cli(sys.argv[1:]))


if __name__ == "__main__":
    main()
