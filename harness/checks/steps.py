"""What judges ask of a run: ladder queries, command/reply pairing, outcomes, stored bodies.

Rules kept here:
- Only reads: nothing here changes a ladder or a run.  Hosts are the scenario's own names
  (``run.scenario.sender_host`` / ``receiver_host``), never addresses.
- A ladder's answers are computed once (``per_ladder``, kept as ``harness.checks.queries``
  says): every judge of a session asks the same few questions (its commands, the pairing
  of its replies, its closes), so the first asks and the others read the answer kept.
- Judges read a step's ``detail`` (DNS qname, qtype, rcode, records; a reply's code and
  what it answers; a command's verb), never its rendered ``text``; a command's argument
  is the one exception, read back into the core's own parser (``params``).
- Commands and replies pair in order per connection (RFC 2920 §3: replies come in the
  order of the commands); message content is answered by the ``<end-of-data>`` reply, a
  BDAT command and its chunk by one reply, the greeting by nothing the client sent.  A
  reply marked ``incomplete`` (its last line never came) answers nothing.
- A per-recipient outcome the run does not report raises ``Unjudged``: a real MTA's
  bounce or deferral comes from its queue and its DSNs (``harness.mta.roles``), never
  from a guess.
"""

from __future__ import annotations

from typing import NamedTuple

from harness.checks.base import Unjudged
from harness.checks.queries import index, per_ladder, where
from harness.ladder.model import Ladder, Step, StepKind
from harness.outcome import Outcome, OutcomeStatus
from harness.result import RunResult
from harness.smtp.commands import parse_command

CLIENT_UNITS = (StepKind.COMMAND, StepKind.CONTENT, StepKind.BDAT)
# kinds read once here: an enum member read off its class costs ~70 ns, in a loop per step
_REPLY, _BDAT = StepKind.REPLY, StepKind.BDAT
_PAIRED = (*CLIENT_UNITS, StepKind.REPLY)  # what ``exchanges`` pairs
_MESSAGES = (StepKind.CONTENT, StepKind.BDAT)  # message content, whole or by chunk
Record = tuple[str, str, str]  # (name, type, rdata) of one DNS resource record


def syns(run: RunResult, dst: str | None = None) -> list[Step]:
    """SYNs the sender host sent (to ``dst`` if given)."""
    steps = where(run.ladder, StepKind.SYN, src=run.scenario.sender_host)
    return [s for s in steps if dst is None or s.dst == dst]


def commands(ladder: Ladder, verb: str | None = None) -> list[Step]:
    """The commands (with ``verb``, if given), in order."""
    if verb is None:
        return where(ladder, StepKind.COMMAND)
    return list(index(ladder).by_verb.get(verb, ()))


def verb_of(step: Step) -> str:
    return str(step.get("verb") or "")


def params(step: Step) -> dict[str, str | None]:
    """The ESMTP parameters of a MAIL/RCPT command step."""
    return parse_command(step.text.encode("utf-8", "surrogateescape")).params


# --- DNS ------------------------------------------------------------------------------------
def _name(name: str) -> str:
    return name.rstrip(".").lower() or "."


def dns_questions(
    ladder: Ladder, qname: str | None = None, qtype: str | None = None, src: str | None = None
) -> list[Step]:
    """DNS queries (any transport) for ``qname`` and ``qtype``, from ``src``, if given."""
    wanted = None if qname is None else _name(qname)
    return [
        s
        for s in where(ladder, StepKind.DNS_QUERY)
        if (wanted is None or s.get("qname") == wanted)
        and (qtype is None or s.get("qtype") == qtype)
        and (src is None or s.src == src)
    ]


def address_questions(run: RunResult, qname: str, since: Step | None = None) -> list[Step]:
    """The sender's A and AAAA questions for ``qname`` (after ``since``, if given)."""
    host = run.scenario.sender_host
    found = [q for t in ("A", "AAAA") for q in dns_questions(run.ladder, qname, t, host)]
    later = [q for q in found if since is None or q.index > since.index]
    return sorted(later, key=lambda q: q.index)


def answer_to(ladder: Ladder, query: Step) -> Step | None:
    """The DNS answer with the query's id and question, after it, to its sender."""
    return next(
        (
            s
            for s in where(ladder, StepKind.DNS_ANSWER, dst=query.src)
            if s.index > query.index
            and s.get("id") == query.get("id")
            and s.get("qname") == query.get("qname")
            and s.get("qtype") == query.get("qtype")
        ),
        None,
    )


def dns_answers(ladder: Ladder, qname: str, qtype: str, dst: str | None = None) -> list[Step]:
    """Answers to the questions for ``qname``/``qtype`` (asked by ``dst``, if given)."""
    found = (answer_to(ladder, q) for q in dns_questions(ladder, qname, qtype, dst))
    return [a for a in found if a is not None]


def records(step: Step, section: str = "answer", rtype: str | None = None) -> list[Record]:
    """The (name, type, rdata) records of one section of a DNS answer step."""
    found = step.get("records") or ()
    assert isinstance(found, tuple)
    return [
        (name, kind, data)
        for sect, name, kind, data in found
        if sect == section and (rtype is None or kind == rtype)
    ]


def mx_records(step: Step) -> list[tuple[int, str]]:
    """(preference, exchange) of the MX records in an answer; the root is "."."""
    out = []
    for record in records(step, rtype="MX"):
        preference, _, exchange = record[2].partition(" ")
        out.append((int(preference), _name(exchange)))
    return out


def is_null_mx(step: Step) -> bool:
    """A null MX answer (RFC 7505 §3): one MX record, preference 0, exchange "."."""
    return mx_records(step) == [(0, ".")]


def rcode(step: Step) -> str:
    return str(step.get("rcode") or "")


# --- SMTP -----------------------------------------------------------------------------------
class Exchange(NamedTuple):
    """A client unit (command or content) and the reply it got, and what was owed before
    (a named tuple: made at a third of a frozen dataclass's cost, one per client unit)."""

    unit: Step
    reply: Step | None
    pipelined_after: Step | None  # the unit whose reply was still owed when this one left


def complete(step: Step) -> bool:
    """False for a command or reply whose last line never came (``incomplete``)."""
    return not step.get("incomplete")


@per_ladder
def exchanges(ladder: Ladder, conn: int) -> list[Exchange]:
    """The client units of one SMTP connection, each paired with its reply (in order)."""
    owed: list[Step] = []
    units: list[Step] = []
    before: dict[int, Step | None] = {}
    replies: dict[int, Step] = {}
    shares: dict[int, int] = {}  # a BDAT chunk -> its command, whose reply answers both
    for step in where(ladder, _PAIRED, conn=conn):
        if step.kind == _REPLY:
            if step.get("answers") != "<greeting>" and owed and complete(step):
                replies[owed.pop(0).index] = step
            continue
        units.append(step)
        if step.kind == _BDAT and _owed_bdat(units[-2:-1], owed):
            shares[step.index] = units[-2].index
            before[step.index] = before[units[-2].index]
            continue
        before[step.index] = owed[-1] if owed else None
        owed.append(step)
    return [Exchange(u, replies.get(shares.get(u.index, u.index)), before[u.index]) for u in units]


def _owed_bdat(previous: list[Step], owed: list[Step]) -> bool:
    """Whether the unit before a BDAT chunk is its BDAT command, still owed a reply: then
    one reply answers the command and its chunk (RFC 3030 §2: the reply follows the
    chunk)."""
    return bool(previous) and verb_of(previous[0]) == "BDAT" and previous[0] in owed


def smtp_conns(ladder: Ladder) -> list[int]:
    """Connections that carried SMTP, in order of first appearance."""
    return list(index(ladder).smtp_conns)


@per_ladder
def all_exchanges(ladder: Ladder) -> list[Exchange]:
    return [x for conn in smtp_conns(ladder) for x in exchanges(ladder, conn)]


def greeting(ladder: Ladder, conn: int) -> Step | None:
    """The greeting of one connection (complete or not): its first reply answering
    ``<greeting>``."""
    return index(ladder).greetings.get(conn)


@per_ladder
def greetings(ladder: Ladder, wanted: int | None = None) -> list[Step]:
    """Complete greetings of every connection (with code ``wanted``, if given)."""
    found = (greeting(ladder, conn) for conn in smtp_conns(ladder))
    return [g for g in found if g and complete(g) and wanted in (None, code(g))]


def reply_to(ladder: Ladder, unit: Step) -> Step | None:
    """The reply to one command or content step."""
    assert unit.conn is not None  # SMTP steps always belong to a connection
    found = _by_unit(ladder, unit.conn).get(unit.index)
    if found is None or (found.unit is not unit and found.unit != unit):  # `is`: no field compare
        return None
    return found.reply


@per_ladder
def _by_unit(ladder: Ladder, conn: int) -> dict[int, Exchange]:
    """The exchanges of one connection by their unit's step number."""
    return {x.unit.index: x for x in exchanges(ladder, conn)}


@per_ladder
def replies(ladder: Ladder, answers: str, wanted: int | None = None) -> list[Step]:
    """Complete replies answering ``answers`` (a verb, "<end-of-data>"), with code ``wanted``."""
    found = index(ladder).by_answer.get(answers, ())
    return [s for s in found if complete(s) and wanted in (None, code(s))]


def code(step: Step | None) -> int | None:
    return None if step is None else int(step.get("code") or 0) or None


@per_ladder
def accepted_data(ladder: Ladder) -> list[Exchange]:
    """Message contents the receiver answered with 2yz."""
    return [
        x
        for x in all_exchanges(ladder)
        if x.unit.kind in _MESSAGES and (code(x.reply) or 0) // 100 == 2
    ]


def contents(ladder: Ladder) -> list[Step]:
    """Every message content (DATA) or BDAT chunk the client sent."""
    return where(ladder, _MESSAGES)


def closes(ladder: Ladder, conn: int) -> list[Step]:
    """FIN and RST steps of one connection, in order."""
    return where(ladder, (StepKind.FIN, StepKind.RST), conn=conn)


def after(ladder: Ladder, step: Step, kind: str = StepKind.COMMAND) -> list[Step]:
    """Steps of ``kind`` on the step's connection after it."""
    return [s for s in where(ladder, kind, conn=step.conn) if s.index > step.index]


# --- outcomes and stored mail ---------------------------------------------------------------
def outcome(run: RunResult, recipient: str) -> Outcome:
    """What became of ``recipient``, as the run read it."""
    found = run.report.outcomes.get(recipient)
    if found is None:
        raise Unjudged(f"the run reports no outcome for {recipient}")
    return found


def status(run: RunResult, recipient: str) -> OutcomeStatus:
    return outcome(run, recipient).status


def statuses(run: RunResult) -> dict[str, OutcomeStatus]:
    return {r: status(run, r) for r in run.scenario.sender.recipients}


def unlike(run: RunResult, wanted: OutcomeStatus | dict[str, OutcomeStatus]) -> dict[str, str]:
    """Recipients whose outcome is not the one ``wanted`` (for all of them, or per
    recipient): recipient -> "status (how it was read)"."""
    recipients = run.scenario.sender.recipients
    want = wanted if isinstance(wanted, dict) else dict.fromkeys(recipients, wanted)
    found = (outcome(run, r) for r in want)
    return {o.recipient: describe(o) for o in found if o.status != want[o.recipient]}


def describe(found: Outcome) -> str:
    """One outcome in a few words, with where it was read."""
    how = "; ".join(found.evidence) or found.text or found.stage
    return f"{found.status} ({how})"


def body(message: bytes) -> bytes:
    """What follows the header section (MTAs add trace headers; bodies must survive)."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        _head, found, rest = message.partition(separator)
        if found:
            return rest
    return b""


def stored_for(run: RunResult, recipient: str) -> list[bytes]:
    return [m.data for m in run.stored if m.recipient.lower() == recipient.lower()]
