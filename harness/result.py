"""What one run of a scenario gave: its ladder, outcomes, stored mail, problems, verdict.

Rules kept here:
- Data and what is read from it, nothing that runs a lab: the judges
  (``harness.checks``) and a passive capture's judgement import this without the
  runner, the lab, the DNS server or the MTA adapters.
- The verdict: ``error`` when the harness itself failed (``faults``), else ``fail`` when
  the run differs from what the scenario expects (``problems``), else ``pass``.
- ``assert_ok()`` fails with the verdict, every recipient's outcome, every problem and
  fault, and where the files are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import InternalFault
from harness.ladder.model import Ladder
from harness.outcome import SendReport, describe
from harness.verdict import Verdict

if TYPE_CHECKING:
    from harness.scenario import Scenario
    from harness.smtp.receiver import StoredMessage

CAPTURE = "capture.pcapng"


@dataclass
class RunResult:
    scenario: Scenario
    folder: Path
    report: SendReport
    stored: list[StoredMessage]
    receiver_log: list[dict]
    dns_log: list
    ladder: Ladder
    problems: list[str] = field(default_factory=list)
    faults: list[InternalFault] = field(default_factory=list)
    mta: dict | None = None  # the real MTA of the run: name, role, versions, .debs
    # where a failing ``assert_ok`` keeps the run's files, returning their folder (the pytest
    # plugin's runs/pytest-artefacts/<test>); None: they stay in ``folder``
    keep: Callable[[RunResult], Path] | None = field(default=None, repr=False, compare=False)

    def assert_ok(self) -> None:
        """``AssertionError`` unless the verdict is pass, saying why: the verdict, each
        recipient's outcome, each problem (the ladder diff against the golden among them)
        and fault, and the folder holding the run's files."""
        __tracebackhide__ = True  # pytest shows the message, not this frame
        if self.ok:
            return
        kept = self.keep(self) if self.keep is not None else self.folder
        raise AssertionError(self.explained(kept.resolve()))

    def explained(self, files: Path) -> str:
        """What ``assert_ok`` says, the run's files being in ``files``."""
        lines = [f"scenario {self.scenario.name}: {self.verdict}", "outcomes:"]
        lines += [f"  {describe(o)}" for o in self.report.outcomes.values()] or ["  (none)"]
        for title, entries in (("problems", self.problems), ("faults", self.faults)):
            texts = [e if isinstance(e, str) else e.line() for e in entries]
            lines += [f"{title}:"] * bool(texts)
            lines += [f"  {t}".replace("\n", "\n    ") for t in texts]
        return "\n".join([*lines, f"artefacts: {files}"])

    network: dict | None = None  # the link faults that ran: engine, seed, faults (impair.py)
    warnings: list[str] = field(default_factory=list)  # e.g. connections open at capture end

    @property
    def verdict(self) -> Verdict:
        if self.faults:
            return Verdict.ERROR
        return Verdict.FAIL if self.problems else Verdict.PASS

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.PASS

    @property
    def pcap(self) -> Path:
        return self.folder / CAPTURE
