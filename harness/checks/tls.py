"""STARTTLS checks (RFC 3207), judged over ladders that see inside TLS.

Rules kept here:
- A ladder that decrypted a session (a key log, ``harness.tls``) shows the handshake as one
  ``tls-handshake`` step (detail version, cipher, sni, subject, ...) and every step read
  inside TLS with detail ``tls=True``; plaintext a peer sent behind STARTTLS or behind its
  220 is a ``plaintext after STARTTLS`` anomaly step from that peer (core rule 3), never a
  command or reply.  Judges read those details, never the text.
- Exercised means seen: a check about what happens inside TLS needs steps inside TLS
  (``about_inside``): in a lab run, TLS the ladder could not read (an opaque ``tls`` step:
  the run's own key log failed) is the harness's error, whatever else was found; a passive
  capture with no key log makes such checks n/a (``harness.checks.offline``).  The
  handshake's ServerHello is read in the clear, so ``tls.version`` needs no key log.  A
  policy check needs the event its policy answers (a 454, a stripped EHLO, a 220 before a
  bad certificate).  A run that never got there is n/a, with the reason.
- Policies (``[sender] starttls``, ``harness.mta.base``): under ``opportunistic`` (RFC
  7435, "some protection most of the time": cleartext when encryption cannot be had) what
  a sender does is an observation; under ``required``/``verify`` delivering in plaintext,
  or over TLS to a certificate ``verify`` refuses, is a fail.  None of the four MTAs
  implements MTA-STS (RFC 8461): nothing here claims it.
- Grading: RFC 3207 §4 says STARTTLS "must be the last command in a group" in lowercase
  (RFC 8174 §2: not a BCP 14 keyword).  Its uppercase MUST ("After receiving a 220 response
  to a STARTTLS command, the client MUST start the TLS negotiation before giving any other
  SMTP commands") is about what the client does once the 220 came: a command pipelined
  behind STARTTLS left before it, so that MUST does not reach it.  The grade rests on RFC
  2920 §3.1 instead, which every pipelining client follows: "Additional commands added by
  other SMTP extensions may only appear as the last command in a group unless otherwise
  specified by the extensions that define the commands" (RFC 3207 specifies the same), and
  on the harm: those commands are the injection vector of CVE-2011-0411 (a server that
  buffers them answers them inside TLS, as if the client had sent them there): so it
  fails.  One defect, one fail: bytes behind a STARTTLS that was itself pipelined behind
  another command, or commands behind it read as such (no 220), are the group's
  (tls.starttls-last-in-group); plaintext behind a STARTTLS sent on its own, dropped at its
  220, is tls.nothing-after-starttls's.  Each check is n/a where the other judges.  (Bytes
  a client sends after the 220 are read as TLS records: the ladder cannot tell them apart.)
- A second STARTTLS inside TLS passes on any 5yz (RFC 3207 names no code: 503 bad
  sequence, RFC 5321 §4.2.2, 502/500 for an extension not offered, 554 as §4.1 answers
  what it will not do), is deviation-known on 4yz (a temporary refusal of what can never
  succeed) and fails on 220, any other reply, or a close without one (RFC 5321 §3.8).
- Injection, server side: the scripted sender of those setups never pipelines, so a reply
  inside TLS with no client unit since the previous reply answered the plaintext behind
  STARTTLS; counted in capture order, never through the ladder's reply pairing (one
  extra reply shifts every pairing after it).
- Setups: on the side under test only ``tls``/``certificate`` (receiver) or ``starttls``
  (sender), keys a real MTA takes; the scripted peer's probes (reply rules, injections,
  EHLO names, a script step) on the other side; ``[sender] ehlo = true`` for the scripted
  sender (the reference column when the sender is under test).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from harness.checks.base import (
    BOTH,
    QUEUE,
    RECEIVER,
    SENDER,
    Kind,
    Outcome,
    Precondition,
    Seen,
    Setup,
    Unjudged,
    check,
    cites,
    failed,
    known,
    not_applicable,
    observed,
    passed,
)
from harness.checks.esmtp import advertised
from harness.checks.queries import present
from harness.checks.steps import (
    CLIENT_UNITS,
    Exchange,
    accepted_data,
    after,
    all_exchanges,
    closes,
    code,
    commands,
    describe,
    exchanges,
    outcome,
    params,
    per_ladder,
    replies,
    reply_to,
    status,
    unlike,
    verb_of,
    where,
)
from harness.ladder.model import Ladder, Step, StepKind
from harness.outcome import OutcomeStatus
from harness.result import RunResult
from harness.smtp.events import AnomalyKind
from harness.verdict import Verdict

ONE = ["c3po@receiver.com"]
EHLO = {"sender": {"ehlo": True}}
BEFORE, AFTER = "before.sender.com", "after.sender.com"  # not the PTR name (mail.sender.com)
PLAINTEXT = AnomalyKind.PLAINTEXT_AFTER_STARTTLS.value
VARIANTS = ("wrong-name", "expired", "self-signed", "no-intermediate")
INJECTIONS = {
    "rset": "RSET\r\n",
    "mail": "MAIL FROM:<luke@sender.com>\r\n",
    "transaction": "MAIL FROM:<luke@sender.com>\r\nRCPT TO:<r2d2@receiver.com>\r\nDATA\r\n"
    "Subject: injected\r\n\r\ninjected\r\n.\r\n",
}
Finder = Callable[[RunResult], Sequence[Step]]


# --- setups ---------------------------------------------------------------------------------
def to_receiver(name: str, **sender: object) -> Setup:
    """The receiver under test offers STARTTLS; the scripted sender requires it."""
    given = {"ehlo": True, "starttls": "required", "recipients": ONE, **sender}
    return Setup(name, {"receiver": {"tls": "offer"}, "sender": given})


def to_sender(name: str, starttls: str = "opportunistic", **receiver: object) -> Setup:
    """The sender under test with policy ``starttls``; the scripted receiver as given."""
    sender = {"starttls": starttls, "recipients": ONE}
    return Setup(name, {"receiver": {"tls": "offer", **receiver}, "sender": sender}, EHLO)


TLS_RECEIVER = to_receiver("tls-receiver")
TLS_SENDER = to_sender("tls-sender")
SECOND_STARTTLS = to_receiver(
    "tls-second-starttls",
    script=[{"at": "MAIL", "position": "before", "send": "STARTTLS"}],  # MAIL: inside TLS
)
NEW_NAME = to_receiver("tls-new-ehlo-name", helo=BEFORE, ehlo_after_tls=AFTER)
INJECTED_SERVER = tuple(
    to_receiver(f"tls-inject-{name}", starttls_inject=raw) for name, raw in INJECTIONS.items()
)
INJECTED_CLIENT = to_sender("tls-inject-reply", extensions=[], starttls_inject="250 injected\r\n")
REFUSED_454 = [{"on": "STARTTLS", "code": 454, "text": "4.7.0 TLS not available"}]
BOTH_TLS = Setup(
    "tls-both",
    {"receiver": {"tls": "offer"}, "sender": {"starttls": "opportunistic", "recipients": ONE}},
    reference=EHLO,
    by_role={"receiver": EHLO},
)


# --- what the ladder shows ------------------------------------------------------------------
def in_tls(step: Step) -> bool:
    return step.get("tls") is True


def _plaintext(run: RunResult, src: str, conn: int | None = None) -> list[Step]:
    """``plaintext after STARTTLS`` anomalies from ``src`` (on ``conn``, if given)."""
    steps = where(run.ladder, StepKind.ANOMALY, src=src)
    return [s for s in steps if s.get("anomaly") == PLAINTEXT and conn in (None, s.conn)]


def _ready(run: RunResult) -> list[Step]:
    """The plaintext 220 replies to STARTTLS: TLS was about to start."""
    return [r for r in replies(run.ladder, "STARTTLS", 220) if not in_tls(r)]


def _handshakes(run: RunResult) -> list[Step]:
    return where(run.ladder, StepKind.TLS_HANDSHAKE)


def _undecrypted(run: RunResult) -> list[int | None]:
    """Connections whose TLS the ladder could not read: an opaque ``tls`` step, and no
    handshake it decrypted (one read in the clear only says ``decrypted=False``).  A
    connection whose handshake was decrypted was read; opaque records on it after that
    are a second TLS within the first (a 220 to a second STARTTLS), which is judged."""
    return _unread(run.ladder)


@per_ladder
def _unread(ladder: Ladder) -> list[int | None]:
    if StepKind.TLS not in present(ladder).kinds:  # no opaque step: nothing unread
        return []
    read = {
        h.conn for h in where(ladder, StepKind.TLS_HANDSHAKE) if h.get("decrypted") is not False
    }
    opaque = {s.conn for s in where(ladder, StepKind.TLS) if s.conn not in read}
    return sorted(opaque, key=lambda c: c or 0)


def _seen_inside(run: RunResult) -> None:
    """In a lab run the key log is ours: TLS that happened and was not decrypted leaves the
    steps inside unseen, the harness's fault (``Unjudged``), never a rule unexercised."""
    unread = _undecrypted(run)
    if unread:
        raise Unjudged(
            f"TLS on connection {unread[0]} was not decrypted: the steps inside it are unseen"
        )


_HANDSHAKE = (StepKind.TLS_HANDSHAKE,)  # what the version checks need in a ladder
_TLS_AT_ALL = (StepKind.TLS_HANDSHAKE, StepKind.TLS)  # what a step inside TLS needs
_STARTTLS = ("STARTTLS",)  # the verb every STARTTLS exchange needs


def about_inside(
    says: str, find: Finder, lab: str = "", needs: tuple[StepKind, ...] = ()
) -> Precondition:
    """A precondition about steps inside TLS (``inside_tls``: judging a passive capture
    whose TLS was not decrypted makes its check n/a, ``harness.checks.offline``).  A find of
    steps read inside TLS needs ``_TLS_AT_ALL``: the dissector marks them after a decrypted
    handshake's step, and TLS not decrypted is a ``tls`` step, which ``_seen_inside`` must
    still see."""

    def found(run: RunResult) -> Sequence[Step]:
        _seen_inside(run)
        return find(run)

    return Precondition(says, found, lab=lab, inside_tls=True, needs=needs)


def _inside(
    run: RunResult, conn: int | None, kind: str | tuple[str, ...] = StepKind.COMMAND
) -> list[Step]:
    return [s for s in where(run.ladder, kind, conn=conn) if in_tls(s)]


def _secured(run: RunResult) -> list[Step]:
    """Handshakes followed by a client command inside TLS on their connection."""
    return [h for h in _handshakes(run) if _inside(run, h.conn)]


def _exchanges_inside(run: RunResult, conn: int | None) -> list[Exchange]:
    assert conn is not None
    return [x for x in exchanges(run.ladder, conn) if in_tls(x.unit)]


def _sent_in_plaintext(run: RunResult) -> list[Step]:
    """Message contents the receiver accepted outside TLS."""
    return [x.unit for x in accepted_data(run.ladder) if not in_tls(x.unit)]


def _delivered(run: RunResult) -> list[str]:
    """Recipients reported delivered (none may be, for the policy rules)."""
    return [r for r in run.scenario.sender.recipients if status(run, r) is OutcomeStatus.DELIVERED]


# --- the receiver side ----------------------------------------------------------------------
def _ehlo_inside(run: RunResult) -> list[Step]:
    return [r for r in replies(run.ladder, "EHLO", 250) if in_tls(r)][:1]


@check(
    "tls.no-starttls-after-tls",
    "STARTTLS is not offered again inside TLS",
    'RFC 3207 §4.2: "A server MUST NOT return the STARTTLS extension in response to an EHLO '
    'command received after a TLS handshake has completed."',
    RECEIVER,
    TLS_RECEIVER,
    requires=[about_inside("a 250 reply to EHLO inside TLS", _ehlo_inside, needs=_TLS_AT_ALL)],
)
def no_starttls_after_tls(seen: Seen) -> Outcome:
    for reply in [r for r in replies(seen.run.ladder, "EHLO", 250) if in_tls(r)]:
        if "STARTTLS" in advertised(reply):
            return failed("STARTTLS advertised again inside TLS", reply)
    return passed("the EHLO reply inside TLS offers no STARTTLS", *seen.found[0])


def _second_starttls(run: RunResult) -> list[Step]:
    return [c for c in commands(run.ladder, "STARTTLS") if in_tls(c)][:1]


@check(
    "tls.second-starttls-refused",
    "A STARTTLS inside TLS is refused (5yz)",
    'RFC 3207 §4: "A client MUST NOT attempt to start a TLS session if a TLS session is '
    'already active"; §4.2: STARTTLS is not offered inside TLS; RFC 5321 §4.2.2: 503 (bad '
    "sequence), §4.2.4: 502 for what is not offered; §3.8: no close without a reply",
    RECEIVER,
    SECOND_STARTTLS,
    requires=[
        about_inside("a STARTTLS from the client inside TLS", _second_starttls, needs=_TLS_AT_ALL)
    ],
)
def second_starttls(seen: Seen) -> Outcome:
    command = seen.found[0][0]
    reply = reply_to(seen.run.ladder, command)
    if reply is None:
        ends = [s for s in closes(seen.run.ladder, command.conn or 0) if s.index > command.index]
        return failed("no reply to the second STARTTLS (RFC 5321 §3.8)", command, *ends[:1])
    got = code(reply) or 0
    if got // 100 == 5:
        return passed(f"refused with {got}", command, reply)
    if got // 100 == 4:
        return known(f"refused with {got}: temporary, yet it can never succeed", command, reply)
    return failed(f"a second STARTTLS answered {got}", command, reply)


def _forgets_find(run: RunResult) -> list[Step]:
    outside = [c for c in commands(run.ladder, "EHLO") if not in_tls(c)]
    inside = [c for c in commands(run.ladder, "EHLO") if in_tls(c)]
    names = {_argument(c).lower() for c in outside}
    changed = [c for c in inside if _argument(c).lower() not in names]
    return [*outside[:1], *changed[:1]] if outside and changed else []


def _argument(step: Step) -> str:
    return step.text.partition(" ")[2].strip()  # a command's argument (steps.py's exception)


def _stored_copies(run: RunResult, recipient: str) -> list[bytes]:
    """Each copy as its mailbox holds it: the scripted receiver keeps its own ``Received:``
    field apart (``StoredMessage.trace``), a real MTA's copy has it in the data."""
    mine = recipient.lower()
    return [m.trace + m.data for m in run.stored if m.recipient.lower() == mine]


def _received(message: bytes) -> str | None:
    """The topmost Received: field, unfolded (the receiving side's own, RFC 5321 §4.4)."""
    head = message.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].decode("utf-8", "replace")
    for field in re.split(r"\n(?![ \t])", head):
        if field.lower().startswith("received:"):
            return " ".join(field.split())
    return None


def _names(field: str, name: str) -> bool:
    return re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w-])", field, re.IGNORECASE) is not None


@check(
    "tls.forgets-ehlo",
    "The server forgets the pre-TLS EHLO: Received: names the one given inside TLS",
    'RFC 3207 §4.2: "The server MUST discard any knowledge obtained from the client, such as '
    'the argument to the EHLO command, which was not obtained from the TLS negotiation itself"',
    RECEIVER,
    NEW_NAME,
    requires=[
        about_inside(
            "an EHLO inside TLS naming another host than the EHLO before it",
            _forgets_find,
            lab="the copies the receiving side stored",
        )
    ],
)
def forgets_ehlo(seen: Seen) -> Outcome:
    before, inside = seen.found[0]
    old, new = _argument(before), _argument(inside)
    copies = _stored_copies(seen.run, ONE[0])
    if not copies:
        return not_applicable("nothing was stored: no Received: field to read")
    field = _received(copies[0])
    if field is None:
        return not_applicable("the stored copy has no Received: field")
    if _names(field, old):
        return failed(f"Received: names {old}, the EHLO before TLS", before, inside)
    if _names(field, new):
        return passed(f"Received: names {new}, the EHLO inside TLS", inside)
    return not_applicable("the Received: field names neither EHLO name")


def _injected(run: RunResult) -> list[Step]:
    """Client plaintext behind STARTTLS on a connection that then went on inside TLS."""
    _seen_inside(run)
    found = _plaintext(run, run.scenario.sender_host)
    return [a for a in found if _inside(run, a.conn)]


def _unasked(run: RunResult, conn: int | None) -> list[Step]:
    """Replies inside TLS with no client unit sent inside TLS since the reply before: the
    client of these setups is the scripted sender, which never pipelines, so each reply
    it gets follows a unit of its own (an unsolicited 421 aside, RFC 5321 §3.8).  Counted
    in capture order, not by the ladder's pairing: one extra reply shifts every pairing
    after it (a 250 read as DATA's reply makes the message's lines commands)."""
    owed, extra = False, []
    for step in _inside(run, conn, (*CLIENT_UNITS, StepKind.REPLY)):
        if step.kind != StepKind.REPLY:
            owed = True
        elif not owed and code(step) != 421:
            extra.append(step)
        else:
            owed = False
    return extra


def _strangers(run: RunResult) -> list[str]:
    """Recipients with a stored copy the scenario never sent to (an injected transaction)."""
    asked = {r.lower() for r in run.scenario.sender.recipients}
    return sorted({m.recipient for m in run.stored if m.recipient.lower() not in asked})


@check(
    "tls.injection-server",
    "Commands pipelined behind STARTTLS are not answered inside TLS",
    'RFC 3207 §4.2: "The server MUST discard any knowledge obtained from the client ... which '
    'was not obtained from the TLS negotiation itself" (CVE-2011-0411)',
    RECEIVER,
    *INJECTED_SERVER,
)
def injection_server(seen: Seen) -> Outcome:
    exercised = []
    for n, run in enumerate(seen.runs):
        for anomaly in _injected(run):
            extra = _unasked(run, anomaly.conn)
            if extra:
                first = _inside(run, anomaly.conn, StepKind.REPLY)[0]
                note = f"answered injected plaintext inside TLS ({len(extra)} replies unasked)"
                cited = [first, *(r for r in extra if r.index != first.index)]
                return failed(note, anomaly, *cited, run=n)
            strangers = _strangers(run)
            if strangers:
                return failed(f"stored the injected mail for {strangers[0]}", anomaly, run=n)
            first = _inside(run, anomaly.conn)[0]
            exercised.append((n, anomaly, first))
    if not exercised:
        got = sorted({code(r) or 0 for run in seen.runs for r in replies(run.ladder, "STARTTLS")})
        answers = f" (STARTTLS answered {', '.join(map(str, got))})" if got else ""
        return not_applicable(f"no session went on inside TLS after an injection{answers}")
    cited = tuple(c for n, a, f in exercised for c in cites((a, f), n))
    note = f"nothing answered inside TLS before the client spoke ({len(exercised)} probes)"
    return Outcome(Verdict.PASS, cited, note)


# --- the sender side ------------------------------------------------------------------------
def _starttls_ready(run: RunResult) -> list[Step]:
    return _ready(run)[:1]


def _starttls_exchanges(run: RunResult) -> list[Exchange]:
    return [
        x for x in all_exchanges(run.ladder) if verb_of(x.unit) == "STARTTLS" and not in_tls(x.unit)
    ]


def _alone(run: RunResult) -> list[Step]:
    """220 replies to a STARTTLS sent on its own (not behind another command: a group
    ending in STARTTLS is tls.starttls-last-in-group's)."""
    ready = {r.index for r in _ready(run)}
    found = _starttls_exchanges(run)
    return [x.reply for x in found if x.reply and x.reply.index in ready and not x.pipelined_after]


@check(
    "tls.nothing-after-starttls",
    "The client sends nothing after STARTTLS until the 220",
    'RFC 3207 §4: "the STARTTLS command must be the last command in a group" and "After '
    "receiving a 220 response to a STARTTLS command, the client MUST start the TLS "
    'negotiation before giving any other SMTP commands": bytes behind STARTTLS reach the '
    "server ahead of the negotiation (CVE-2011-0411); RFC 2920 §3.1",
    SENDER,
    TLS_SENDER,
    requires=[
        Precondition("a 220 to a STARTTLS the client sent on its own", _alone, verbs=_STARTTLS)
    ],
)
def nothing_after_starttls(seen: Seen) -> Outcome:
    run = seen.run
    for ready in seen.found[0]:
        early = _plaintext(run, run.scenario.sender_host, ready.conn)
        if early:
            return failed("the client sent plaintext behind STARTTLS", ready, early[0])
    return passed("STARTTLS, then nothing until the 220", *seen.found[0])


def _grouped(run: RunResult) -> list[Step]:
    """STARTTLS commands sent in a pipelined group: behind another command, or with
    commands behind them that the core read as such (their reply was not a 220)."""
    return [
        x.unit
        for x in _starttls_exchanges(run)
        if x.pipelined_after is not None or _behind(run, x.unit)
    ]


def _behind(run: RunResult, starttls: Step) -> list[Step]:
    """Commands that left before the reply to ``starttls`` came (their first packet is an
    earlier one): the core reads them only once that reply says they are commands."""
    reply = reply_to(run.ladder, starttls)
    if reply is None or not reply.evidence:
        return []
    later = [c for c in after(run.ladder, starttls) if not in_tls(c) and c.evidence]
    return [c for c in later if c.evidence[0] < reply.evidence[0]]


@check(
    "tls.starttls-last-in-group",
    "STARTTLS ends a pipelined group",
    'RFC 2920 §3.1: "Additional commands added by other SMTP extensions may only appear as '
    'the last command in a group"; RFC 3207 §4: "the STARTTLS command must be the last '
    'command in a group" (lowercase; graded fail: CVE-2011-0411, the commands behind it are '
    "what a server injects into the TLS session)",
    SENDER,
    TLS_SENDER,
    requires=[
        Precondition("the client pipelined STARTTLS with other commands", _grouped, verbs=_STARTTLS)
    ],
)
def starttls_last(seen: Seen) -> Outcome:
    run = seen.run
    for command in seen.found[0]:
        behind = _behind(run, command) or _plaintext(run, run.scenario.sender_host, command.conn)
        if behind:
            return failed("commands pipelined behind STARTTLS", command, behind[0])
    return passed("STARTTLS was the last command of its group", *seen.found[0])


def _fed_reply(run: RunResult) -> list[Step]:
    """The server's plaintext behind its 220 to STARTTLS (the client read it, or could)."""
    return _plaintext(run, run.scenario.receiver_host)[:1]


@check(
    "tls.injection-client",
    "A reply injected behind the 220 is not taken as a reply inside TLS",
    'RFC 3207 §4.2: "The client MUST discard any knowledge obtained from the server ... which '
    'was not obtained from the TLS negotiation itself"',
    SENDER,
    INJECTED_CLIENT,
    requires=[about_inside("a reply injected behind the 220", _fed_reply, lab=QUEUE)],
)
def injection_client(seen: Seen) -> Outcome:
    run = seen.run
    anomaly = seen.found[0][0]
    inside = _exchanges_inside(run, anomaly.conn)
    if not inside:
        return _dropped_after_injection(run, anomaly)
    early = [x for x in inside[1:2] if x.pipelined_after == inside[0].unit]
    if early:  # the first command's reply was still owed: the injected one stood for it
        x = early[0]
        return failed(
            f"{verb_of(x.unit)} left before {verb_of(x.pipelined_after)} was answered: the "
            "injected reply was taken as a reply inside TLS",
            x.pipelined_after,
            x.unit,
        )
    wrong = unlike(run, OutcomeStatus.DELIVERED)
    if wrong:
        return failed(f"the injected reply derailed the delivery: {wrong}", inside[0].unit)
    sent = [x.unit for x in inside if x.unit.kind == StepKind.CONTENT]
    return passed("waited for each reply inside TLS; delivered", inside[0].unit, *sent[:1])


def _dropped_after_injection(run: RunResult, anomaly: Step) -> Outcome:
    """The client left that connection instead of going on inside TLS: it took no reply
    inside TLS, which passes unless the message was lost (RFC 5321 §6.1: "the SMTP client
    ... is responsible for the message" until a 250; RFC 1047)."""
    fates = {r: outcome(run, r) for r in run.scenario.sender.recipients}
    lost = {r: describe(o) for r, o in fates.items() if o.status is OutcomeStatus.LOST}
    if lost:
        return failed(f"the client left the connection after the injected reply: {lost}", anomaly)
    fates = sorted({o.status.value for o in fates.values()})
    return passed(
        f"the client left the connection after the injected reply, took none inside TLS; "
        f"then {' and '.join(fates)}",
        anomaly,
    )


def _knowledge_used(run: RunResult, conn: int | None) -> Step | None:
    """A command inside TLS that relies on what the pre-TLS EHLO reply said: parameters,
    or pipelining, with no EHLO inside TLS to say so."""
    for x in _exchanges_inside(run, conn):
        if verb_of(x.unit) in ("MAIL", "RCPT") and params(x.unit):
            return x.unit
        if x.pipelined_after is not None:
            return x.unit
    return None


@check(
    "tls.re-ehlo",
    "The client greets with EHLO again inside TLS",
    'RFC 3207 §4.2: "The client SHOULD send an EHLO command as the first command after a '
    'successful TLS negotiation" and "MUST discard any knowledge obtained from the server, '
    'such as the list of SMTP service extensions"',
    SENDER,
    TLS_SENDER,
    requires=[about_inside("a client command inside TLS", _secured, needs=_TLS_AT_ALL)],
)
def re_ehlo(seen: Seen) -> Outcome:
    run = seen.run
    for handshake in seen.found[0]:
        first = _inside(run, handshake.conn)[0]
        if verb_of(first) == "EHLO":
            continue
        used = _knowledge_used(run, handshake.conn)
        if used is not None:
            return failed("no EHLO inside TLS, yet pre-TLS extensions used", first, used)
        return known(f"first command inside TLS is {verb_of(first)}, not EHLO", first)
    firsts = [_inside(run, h.conn)[0] for h in seen.found[0]]
    return passed("EHLO first inside TLS", *firsts)


# --- policies -------------------------------------------------------------------------------
def _refused_454(run: RunResult) -> list[Step]:
    return [r for r in replies(run.ladder, "STARTTLS", 454) if not in_tls(r)][:1]


def _after_454(run: RunResult, refusal: Step) -> str:
    plain = [c for c in after(run.ladder, refusal) if verb_of(c) == "MAIL"]
    if plain:
        return "carried on in plaintext"
    later = [s for s in where(run.ladder, StepKind.SYN) if s.index > refusal.index]
    if later:
        return "tried a new connection"
    return "gave up on the connection"


@check(
    "tls.454-policy",
    "Opportunistic STARTTLS answered 454: what the sender does",
    'RFC 3207 §4: "If the client receives the 454 response, the client must decide whether or '
    'not to continue the SMTP session"; RFC 7435: cleartext is allowed',
    SENDER,
    to_sender("tls-454", replies=REFUSED_454),
    requires=[Precondition("a 454 to STARTTLS", _refused_454, codes=(454,))],
    kind=Kind.OBSERVATION,
)
def policy_454(seen: Seen) -> Outcome:
    refusal = seen.found[0][0]
    value = _after_454(seen.run, refusal)
    return observed(value, f"after the 454: {value}", refusal)


def _never_in_plaintext(run: RunResult, event: Step) -> Outcome:
    """A required/verify policy's rule: no message left in plaintext, none delivered, and
    each one deferred - not lost (RFC 5321 §6.1), nor bounced for a condition that may pass
    (a 454 is temporary, §4.2.1)."""
    sent = _sent_in_plaintext(run)
    if sent:
        return failed("delivered in plaintext", event, sent[0])
    delivered = _delivered(run)
    if delivered:
        return failed(f"reported delivered: {delivered}", event)
    wrong = unlike(run, OutcomeStatus.DEFERRED)
    if wrong:
        return failed(f"not deferred: {wrong}", event)
    return passed("no message left without TLS; each one deferred", event)


@check(
    "tls.454-required",
    "Required STARTTLS answered 454: the sender defers, never sends in plaintext",
    'RFC 3207 §4: "the client must decide whether or not to continue"; a required TLS policy '
    "(RFC 3207 §4.1: the client decides the privacy is not high enough) leaves nothing in "
    "plaintext",
    SENDER,
    to_sender("tls-454-required", "required", replies=REFUSED_454),
    requires=[Precondition("a 454 to STARTTLS", _refused_454, lab=QUEUE, codes=(454,))],
)
def required_454(seen: Seen) -> Outcome:
    return _never_in_plaintext(seen.run, seen.found[0][0])


def _stripped(run: RunResult) -> list[Step]:
    """A 250 to EHLO or HELO in plaintext offering no STARTTLS (the downgrade the sender
    read; inside TLS, STARTTLS must not be offered: that is no downgrade)."""
    found = [*replies(run.ladder, "EHLO", 250), *replies(run.ladder, "HELO", 250)]
    stripped = (r for r in found if not in_tls(r) and "STARTTLS" not in advertised(r))
    return sorted(stripped, key=lambda r: r.index)[:1]


def _stripped_setup(name: str, starttls: str) -> Setup:
    return to_sender(name, starttls, tls="off")


def _delivery(run: RunResult) -> str:
    if _sent_in_plaintext(run):
        return "delivered in plaintext"
    if [x for x in accepted_data(run.ladder) if in_tls(x.unit)]:
        return "delivered over TLS"
    if _undecrypted(run) and _delivered(run):
        raise Unjudged("delivered, and TLS was not decrypted: how is unseen")
    return "not delivered"


@check(
    "tls.downgrade",
    "No STARTTLS offered, default (opportunistic) policy: what the sender does",
    "RFC 7435: opportunistic security allows cleartext when TLS is not offered; RFC 3207 "
    "§6: \"A man-in-the-middle attack can be launched by deleting the '250 STARTTLS' "
    'response from the server"',
    SENDER,
    _stripped_setup("tls-stripped", "opportunistic"),
    requires=[Precondition("an EHLO reply without STARTTLS", _stripped)],
    kind=Kind.OBSERVATION,
)
def downgrade(seen: Seen) -> Outcome:
    value = _delivery(seen.run)
    return observed(value, f"STARTTLS not offered: {value}", *seen.found[0])


@check(
    "tls.downgrade-required",
    "No STARTTLS offered, required or verify policy: the sender defers",
    'RFC 3207 §6: "both clients and servers MUST be able to be configured to require '
    'successful TLS negotiation ... before messages can be successfully transferred": '
    "configured so (required, verify), nothing leaves in plaintext",
    SENDER,
    _stripped_setup("tls-stripped-required", "required"),
    _stripped_setup("tls-stripped-verify", "verify"),
    requires=[
        Precondition("an EHLO reply without STARTTLS (required)", _stripped, 0, QUEUE),
        Precondition("an EHLO reply without STARTTLS (verify)", _stripped, 1, QUEUE),
    ],
)
def downgrade_required(seen: Seen) -> Outcome:
    outcomes = [
        _never_in_plaintext(run, found[0]) for run, found in zip(seen.runs, seen.found, strict=True)
    ]
    for n, result in enumerate(outcomes):
        if result.verdict is not Verdict.PASS:
            return failed(f"run {n + 1}: {result.note}", *result.steps(), run=n)
    cited = tuple(c for n, result in enumerate(outcomes) for c in cites(result.steps(), n))
    return Outcome(Verdict.PASS, cited, "deferred under required and verify")


def _certificate_observation(variant: str) -> Callable[[Seen], Outcome]:
    def judge(seen: Seen) -> Outcome:
        value = _delivery(seen.run)
        return observed(value, f"{variant} certificate: {value}", seen.found[0][0])

    return judge


def _certificate_rule(variant: str) -> Callable[[Seen], Outcome]:
    def judge(seen: Seen) -> Outcome:
        run, ready = seen.run, seen.found[0][0]
        inside = [x.unit for x in accepted_data(run.ladder) if in_tls(x.unit)]
        if inside:
            return failed(f"delivered over TLS despite the {variant} certificate", ready, inside[0])
        return _never_in_plaintext(run, ready)

    return judge


for _variant in VARIANTS:
    check(
        f"tls.certificate-{_variant}",
        f"A {_variant} certificate, opportunistic policy: what the sender does",
        "RFC 7435 and RFC 3207 §4.1: an opportunistic client may go on with an "
        "unauthenticated certificate (no MTA-STS, RFC 8461, in any of the four MTAs)",
        SENDER,
        to_sender(f"tls-cert-{_variant}", certificate=_variant),
        requires=[
            Precondition(
                "a 220 to STARTTLS before the certificate",
                _starttls_ready,
                lab=f"which certificate the lab served ({_variant})",
            )
        ],
        kind=Kind.OBSERVATION,
    )(_certificate_observation(_variant))
    check(
        f"tls.certificate-{_variant}-verify",
        f"A {_variant} certificate, verify policy: the sender defers",
        'RFC 3207 §4.1: "If the SMTP client decides that the level of authentication or '
        'privacy is not high enough for it to continue, it SHOULD issue an SMTP QUIT"; a '
        "verify policy must not deliver to a certificate that fails RFC 6125 name checks or "
        "the chain to the lab CA",
        SENDER,
        to_sender(f"tls-cert-{_variant}-verify", "verify", certificate=_variant),
        requires=[
            Precondition("a 220 to STARTTLS before the certificate", _starttls_ready, lab=QUEUE)
        ],
    )(_certificate_rule(_variant))


def _negotiated(run: RunResult) -> list[Step]:
    """The first handshake's facts: its ServerHello is in the clear, so a ladder shows them
    with or without a key log."""
    return [h for h in _handshakes(run) if h.get("version") and h.get("cipher")][:1]


ALLOWED = frozenset({"TLSv1.2", "TLSv1.3"})
DEPRECATED = {  # each MUST NOT be used
    "SSLv3": "RFC 7568 §3",
    "TLSv1.0": "RFC 8996 §2",
    "TLSv1.1": "RFC 8996 §3",
}


@check(
    "tls.version",
    "TLS 1.2 or 1.3 is negotiated, never TLS 1.1 or older",
    'RFC 8996 §2: "TLS 1.0 MUST NOT be used"; §3: "TLS 1.1 MUST NOT be used"; RFC 7568 §3: '
    '"SSLv3 MUST NOT be used"',
    BOTH,
    BOTH_TLS,
    requires=[Precondition("a TLS handshake's ServerHello", _negotiated, needs=_HANDSHAKE)],
)
def negotiated_version(seen: Seen) -> Outcome:
    shake = seen.found[0][0]
    got = str(shake.get("version"))
    if got in DEPRECATED:
        return failed(f"negotiated {got}: {DEPRECATED[got]} says it MUST NOT be used", shake)
    if got in ALLOWED:
        return passed(f"negotiated {got}", shake)
    raise Unjudged(f"negotiated {got}: a version this check does not know")


@check(
    "tls.version-cipher",
    "The TLS version and cipher negotiated",
    "RFC 3207 §4.1: the parties decide on the privacy achieved (the version's rule is tls.version)",
    BOTH,
    BOTH_TLS,
    requires=[Precondition("a TLS handshake's ServerHello", _negotiated, needs=_HANDSHAKE)],
    kind=Kind.OBSERVATION,
)
def version_cipher(seen: Seen) -> Outcome:
    shake = seen.found[0][0]
    value = f"{shake.get('version')} {shake.get('cipher')}"
    return observed(value, f"negotiated {value}", shake)
