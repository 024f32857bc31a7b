"""What judges ask of a run: ladder queries, command/reply pairing, outcomes, stored bodies.

Rules kept here:
- Only reads: nothing here changes a ladder or a run.  Hosts are the scenario's own names
  (``run.scenario.sender_host`` / ``receiver_host``), never addresses.
- Commands and replies pair in order per connection (RFC 2920 §3: replies come in the
  order of the commands); message content is answered by the ``<end-of-data>`` reply, the
  greeting by nothing the client sent.
- A per-recipient outcome the run does not report raises ``Unjudged``: a real MTA's
  bounce or deferral must come from the run, never be assumed.  For an MTA sender the run
  tells them apart by its DSNs (``harness.mta.roles``): "queue" is a real deferral.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from harness.checks.base import Unjudged
from harness.ladder.model import Ladder, Step
from harness.runner import RunResult
from harness.smtp.commands import parse_command

CLIENT_UNITS = ("command", "content", "bdat")


def where(ladder: Ladder, kind: str | Iterable[str], **match: object) -> list[Step]:
    """Steps of ``kind`` whose attributes (src, dst, conn) equal ``match``."""
    kinds = {kind} if isinstance(kind, str) else set(kind)
    return [
        s
        for s in ladder.steps
        if s.kind in kinds and all(getattr(s, k) == v for k, v in match.items())
    ]


def syns(run: RunResult, dst: str | None = None) -> list[Step]:
    """SYNs the sender host sent (to ``dst`` if given)."""
    steps = where(run.ladder, "syn", src=run.scenario.sender_host)
    return [s for s in steps if dst is None or s.dst == dst]


def commands(ladder: Ladder, verb: str | None = None) -> list[Step]:
    steps = where(ladder, "command")
    return [s for s in steps if verb is None or s.get("verb") == verb]


def verb_of(step: Step) -> str:
    return str(step.get("verb") or step.text.partition(" ")[0].upper())


def params(step: Step) -> dict[str, str | None]:
    """The ESMTP parameters of a MAIL/RCPT command step."""
    return parse_command(step.text.encode("utf-8", "surrogateescape")).params


def dns_questions(ladder: Ladder, qname: str, qtype: str | None = None) -> list[Step]:
    """DNS queries for ``qname`` (and ``qtype``), any transport."""
    wanted = qname.rstrip(".").lower()
    found = []
    for step in where(ladder, "dns-query"):
        name, _, rest = step.text.partition(" IN ")
        if name.rstrip(".").lower() == wanted and qtype in (None, rest.strip()):
            found.append(step)
    return found


def answer_to(ladder: Ladder, query: Step) -> Step | None:
    """The DNS answer with the query's id, after it."""
    return next(
        (
            s
            for s in where(ladder, "dns-answer")
            if s.index > query.index and s.get("id") == query.get("id")
        ),
        None,
    )


@dataclass(frozen=True)
class Exchange:
    """A client unit (command or content) and the reply it got, and what was owed before."""

    unit: Step
    reply: Step | None
    pipelined_after: Step | None  # the unit whose reply was still owed when this one left


def exchanges(ladder: Ladder, conn: int) -> list[Exchange]:
    """The client units of one SMTP connection, each paired with its reply (in order)."""
    owed: list[Step] = []
    units: list[Step] = []
    before: dict[int, Step | None] = {}
    replies: dict[int, Step] = {}
    for step in where(ladder, (*CLIENT_UNITS, "reply"), conn=conn):
        if step.kind == "reply":
            if step.get("answers") != "<greeting>" and owed:
                replies[owed.pop(0).index] = step
            continue
        before[step.index] = owed[-1] if owed else None
        owed.append(step)
        units.append(step)
    return [Exchange(u, replies.get(u.index), before[u.index]) for u in units]


def smtp_conns(ladder: Ladder) -> list[int]:
    """Connections that carried SMTP, in order of first appearance."""
    conns = (s.conn for s in where(ladder, ("command", "reply")) if s.conn is not None)
    return list(dict.fromkeys(conns))


def all_exchanges(ladder: Ladder) -> list[Exchange]:
    return [x for conn in smtp_conns(ladder) for x in exchanges(ladder, conn)]


def greeting(ladder: Ladder, conn: int) -> Step | None:
    replies = where(ladder, "reply", conn=conn)
    return next((s for s in replies if s.get("answers") == "<greeting>"), None)


def reply_to(ladder: Ladder, unit: Step) -> Step | None:
    """The reply to one command or content step."""
    assert unit.conn is not None  # SMTP steps always belong to a connection
    return next((x.reply for x in exchanges(ladder, unit.conn) if x.unit == unit), None)


def code(step: Step | None) -> int | None:
    return None if step is None else int(step.get("code") or 0) or None


def accepted_data(ladder: Ladder) -> list[Exchange]:
    """Message contents the receiver answered with 2yz."""
    return [
        x
        for x in all_exchanges(ladder)
        if x.unit.kind in ("content", "bdat") and (code(x.reply) or 0) // 100 == 2
    ]


def closes(ladder: Ladder, conn: int) -> list[Step]:
    """FIN and RST steps of one connection, in order."""
    return where(ladder, ("fin", "rst"), conn=conn)


def status(run: RunResult, recipient: str) -> str:
    """delivered / rejected / deferred, as the run reports it for ``recipient``."""
    outcome = run.report.outcomes.get(recipient)
    if outcome is None:
        raise Unjudged(f"the run reports no outcome for {recipient}")
    return outcome.status


def statuses(run: RunResult) -> dict[str, str]:
    return {r: status(run, r) for r in run.scenario.sender.recipients}


def body(message: bytes) -> bytes:
    """What follows the header section (MTAs add trace headers; bodies must survive)."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        _head, found, rest = message.partition(separator)
        if found:
            return rest
    return b""


def stored_for(run: RunResult, recipient: str) -> list[bytes]:
    return [m.data for m in run.stored if m.recipient.lower() == recipient.lower()]
