"""What the replay's target stored: its copies as outcomes, and the smuggling verdict.

Rules kept here:

- The copies are read as a run reads them, never assumed: a real MTA's mailboxes by
  ``harness.mta.roles.to_mta`` (every message in every mailbox, once each accepted
  recipient has its copy and the MTA is idle: a smuggled message is in a mailbox too), the
  scripted receiver's from its own records (``Receiver.stored``).
- Each recipient with a stored copy is an ``Outcome`` (delivered, at ``<end-of-data>``),
  its evidence the number of copies and their sizes: two copies where the capture had one
  transaction show up here.
- Smuggling is judged by the matrix's own rule (``harness.checks.data``: its look-alike
  precondition and its judge, RFC 5321 §4.1.1.4), over a run made of the replay's live
  ladder and the stored copies, with the verdict earned as a check's is
  (``Check.judge``).  No look-alike ending after a 354 in the live session: ``n/a``.
  The judge reads the matrix's probe addresses (c3po; a copy for r2d2 is the smuggled
  one), so it judges only a session whose content carries the probe's smuggled
  transaction (``data.SMUGGLED``), its recipient kept; any other session is ``n/a``,
  saying so (a look-alike in other mail would be judged against the probe's addresses).
"""

from __future__ import annotations

from pathlib import Path

from harness.checks.base import RECEIVER, Check, Outcome, Precondition, Setup, not_applicable
from harness.checks.data import SMUGGLED, STORED, look_alike_sent, smuggling
from harness.ladder.model import Ladder
from harness.outcome import Outcome as Delivery
from harness.outcome import OutcomeStatus, SendReport
from harness.replay.session import Session
from harness.result import RunResult
from harness.scenario import Scenario
from harness.smtp.receiver import StoredMessage

LOOK_ALIKE = "a look-alike end of data"
PROBE = SMUGGLED.encode()  # the probe's smuggled transaction, as its content carries it
NOT_THE_PROBE = "not the matrix's smuggling probe: the content carries no smuggled transaction"
SMUGGLING = Check(
    "replay.smuggling",
    "The replayed look-alike end of data stays content: only <CRLF>.<CRLF> ends DATA",
    "RFC 5321 §4.1.1.4: the mail data ends only with <CRLF>.<CRLF>; §2.3.8: bare CR and LF",
    RECEIVER,
    (Setup("replay"),),
    lambda seen: smuggling(seen, LOOK_ALIKE),
    (Precondition(f"{LOOK_ALIKE} on the wire after a 354", look_alike_sent, lab=STORED),),
)


def stored_outcomes(stored: list[StoredMessage]) -> list[Delivery]:
    """One delivered outcome per recipient with a stored copy (rules above)."""
    sizes: dict[str, list[int]] = {}
    for message in stored:
        sizes.setdefault(message.recipient, []).append(len(message.data))
    return [
        Delivery(
            recipient,
            OutcomeStatus.DELIVERED,
            "<end-of-data>",
            evidence=(f"{len(s)} stored: {', '.join(map(str, s))} octets",),
        )
        for recipient, s in sizes.items()
    ]


def carries_probe(session: Session) -> bool:
    """Whether the captured client sent the probe's smuggled transaction as content."""
    content = (unit.raw for turn in session.turns for unit in turn.units if not unit.verb)
    return any(PROBE in raw for raw in content)


def judge_smuggling(
    session: Session, scenario: Scenario, folder: Path, ladder: Ladder, stored: list[StoredMessage]
) -> Outcome:
    """The smuggling verdict of the live session and what its target stored."""
    if not carries_probe(session):
        return not_applicable(NOT_THE_PROBE)
    run = RunResult(scenario, folder, SendReport({}), stored, [], [], ladder)
    return SMUGGLING.judge([run])
