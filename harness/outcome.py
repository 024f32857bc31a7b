"""What became of each recipient of a run: the outcome vocabulary shared by the scripted
sender, the real-MTA runner and the judges.

Rules kept here:
- A status is one of ``OutcomeStatus``.  ``delivered``: a copy was stored by the receiving
  side.  ``rejected``: refused for good (a 5yz, or a DSN with ``Action: failed``).
  ``deferred``: still owed: a 4yz to our scripted sender, or a real MTA's queue that holds
  the message (read from the MTA, never assumed).  ``lost``: a real MTA's queue was read
  and is empty, no DSN came back and nothing was stored: the message vanished (RFC 5321
  §6.1: "the SMTP server ... MUST NOT lose the message"), always a fail.
- ``stage`` names what decided it (``dns``, ``connect``, a verb, ``<end-of-data>``,
  ``dsn``, ``queue``); ``code``/``text`` the reply when a reply decided it; ``status_code``
  the enhanced status code (RFC 3463) when one was given (a reply's, a DSN's ``Status:``,
  a queue entry's); ``evidence`` where the harness read it (a reply, a DSN, a queue
  listing, a log line), one line each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class OutcomeStatus(StrEnum):
    DELIVERED = "delivered"
    REJECTED = "rejected"
    DEFERRED = "deferred"
    LOST = "lost"


@dataclass(frozen=True)
class Outcome:
    recipient: str
    status: OutcomeStatus
    stage: str  # what decided it: dns, connect, <greeting>, HELO, VRFY, MAIL, RCPT, dsn, queue
    code: int | None = None
    text: str = ""
    status_code: str | None = None  # RFC 3463 enhanced status code, e.g. "4.4.1"
    evidence: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", OutcomeStatus(self.status))


@dataclass(frozen=True)
class Dsn:
    """One per-recipient group of a delivery status notification (RFC 3464 §2.3)."""

    recipient: str  # Final-Recipient, without its address type
    action: str  # failed, delayed, delivered, relayed, expanded (§2.3.3)
    status: str  # the RFC 3463 status code (§2.3.4), e.g. "5.1.10"
    diagnostic: str = ""  # Diagnostic-Code, folded into one line


@dataclass
class SendReport:
    """Per recipient, its outcome; ``contents``: each message content the scripted sender
    put on the wire, in the form a conformant receiver stores it (dot-unstuffed, up to the
    CRLF.CRLF that ends it, its final CRLF kept), one per DATA that reached 354, script
    steps included (empty for a real MTA: its contents are read from the receiver);
    ``dsns``: the DSNs a real MTA returned to the sender."""

    outcomes: dict[str, Outcome]
    transcript: list[dict[str, object]] = field(default_factory=list)
    contents: list[bytes] = field(default_factory=list)
    dsns: list[Dsn] = field(default_factory=list)

    def status(self, recipient: str) -> OutcomeStatus:
        return self.outcomes[recipient].status


def describe(outcome: Outcome) -> str:
    """One recipient's outcome in a line: "c3po@receiver.com deferred at RCPT 450 4.2.0 ..."."""
    said = f"{outcome.code or ''} {outcome.text}".strip()
    return f"{outcome.recipient} {outcome.status} at {outcome.stage} {said}".rstrip()
