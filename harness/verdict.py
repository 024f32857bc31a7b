"""The closed vocabularies of judgement: what a check or a run concludes, and the exit code
every command turns it into.

Rules kept here:
- A verdict is one of ``Verdict``; nothing else spells one.  ``pass``, ``fail`` and
  ``deviation-known`` (a SHOULD broken, or a documented departure) judge a rule that the
  run exercised; ``n/a`` says it was not exercised (and why); ``observed`` reports a fact
  with several allowed answers, with the value seen; ``error`` is the harness's own fault
  (a scripted peer or the DNS server raised, a capture lost packets, a judge lacked what
  it needs): never the implementation's.
- Exit codes are the same for every command (``run``, ``check``, ``replay``, ``matrix``,
  ``ladder``, ``lab``, ``dns``): 0 pass or as expected, 1 fail or a difference, 2 bad
  input, 3 harness error, 130 / 143 when SIGINT / SIGTERM ended it.  ``n/a`` and
  ``observed`` do not change the code.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    KNOWN = "deviation-known"
    NA = "n/a"
    OBSERVED = "observed"
    ERROR = "error"

    @property
    def judges(self) -> bool:
        """A verdict about a rule the run exercised (pass, fail, deviation-known)."""
        return self in (Verdict.PASS, Verdict.FAIL, Verdict.KNOWN)


class ExitCode(IntEnum):
    OK = 0  # pass, or everything as expected
    FAIL = 1  # a fail, or a difference from what was expected
    BAD_INPUT = 2  # a file, key, value or argument the user gave is wrong
    HARNESS_ERROR = 3  # our own fault: a bug, a crashed peer, a capture that lost packets
    SIGINT = 130
    SIGTERM = 143


EXIT_CODES_HELP = (
    "Exit codes: 0 pass (or as expected), 1 fail (or a difference), 2 bad input, "
    "3 harness error, 130 interrupted (SIGINT), 143 terminated (SIGTERM)."
)
UNTIL_CTRL_C_HELP = (  # commands that run until stopped: Ctrl-C is their normal end
    "Exit codes: 0 stopped with Ctrl-C, 2 bad input, 3 harness error, 143 terminated (SIGTERM)."
)


def exit_code(verdict: Verdict) -> ExitCode:
    """The exit code of a run whose overall verdict is ``verdict``."""
    if verdict is Verdict.ERROR:
        return ExitCode.HARNESS_ERROR
    return ExitCode.FAIL if verdict is Verdict.FAIL else ExitCode.OK
