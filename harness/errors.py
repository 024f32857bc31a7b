"""Errors, split by whose fault they are (h11's Local- vs RemoteProtocolError).

Rules:
- ``HarnessError``: bad input (a file, a key, a value, an offset) or an unusable machine
  (missing privilege, a tool not installed): a one-line message that names the culprit.
  The CLI prints it as ``smtp-harness: error: ...`` and exits 2; never a traceback.
- ``Unsupported`` (a ``HarnessError``): a setting an MTA's adapter refuses because the MTA
  cannot keep it here (its TLS policy, ``MtaAdapter.tls_refusal``): exit 2 for ``run``; in
  the matrix a cell nothing could exercise, n/a with the reason, never an error.
- ``InternalError``: the harness's own fault (a bug, a scripted peer or the DNS server that
  raised, a capture that lost packets).  A run that meets one has the verdict ``error``,
  never pass or fail; the CLI exits 3 and writes the traceback into the run folder.
- What the implementation under test does wrong is neither: it is a verdict (``fail``),
  reported by a check, and never raised.
- ``InternalFault`` is the record of one of our faults that a long-lived component (a
  receiver session, the DNS server, the capture) caught so that the rest could go on:
  the component keeps a list of them, and the runner turns any into the ``error`` verdict.
"""

from __future__ import annotations

import traceback as _traceback
from dataclasses import dataclass


class HarnessError(Exception):
    """A one-line, user-facing error (bad input or an unusable machine)."""


class Unsupported(HarnessError):
    """A scenario setting an MTA cannot keep (refused at scenario load): ``reason`` says
    why, the message also where it was found."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or reason)
        self.reason = reason

    def within(self, where: str) -> Unsupported:
        """The same refusal, its message prefixed by ``where``."""
        return Unsupported(self.reason, f"{where}: {self}")


class LabError(HarnessError):
    """The lab could not be built, entered or removed."""


class InternalError(Exception):
    """The harness's own fault; the verdict is ``error`` (exit 3)."""


@dataclass(frozen=True)
class InternalFault:
    """One of our faults, caught and kept by the component it happened in."""

    where: str  # the component: "receiver session 3", "dns server (udp)", "capture"
    summary: str  # one line: "KeyError: 'x'"
    traceback: str = ""

    @classmethod
    def from_exception(cls, where: str, exc: BaseException) -> InternalFault:
        text = "".join(_traceback.format_exception(exc))
        return cls(where, f"{type(exc).__name__}: {exc}".splitlines()[0], text)

    def line(self) -> str:
        return f"{self.where}: {self.summary}"
