"""Session checks: greetings, EHLO/HELO, VRFY, replies by first digit, the small commands
(RFC 5321 §3.1, §3.2, §3.5, §4.1.1, §4.2, §4.3.2, §4.5.3.1.4, §7.3).

Rules kept here:
- As *sender* the MTA under test talks to our scripted receiver, whose ``replies`` rules
  provoke it; as *receiver* it answers our scripted sender, whose ``script`` adds the
  commands to judge.  The reference column's sender greets with EHLO where a check is
  about EHLO (``reference``), as every real MTA does.
- The provocation is each check's precondition: the 421 greeting was sent, the EHLO was
  refused, the VRFY was asked.  A reply is judged by its code; a command by whether it
  was sent and what came after it on the same connection.
- A VRFY argument is a ``String`` (§4.1.1.6: ``vrfy = "VRFY" SP String CRLF``): a bare user
  name is valid syntax, so a 501 ("syntax error in parameters or arguments") to it is a
  wrong answer, not a tolerated one.
"""

from __future__ import annotations

from harness.checks.base import (
    RECEIVER,
    SENDER,
    Outcome,
    Precondition,
    Seen,
    Setup,
    check,
    failed,
    known,
    passed,
)
from harness.checks.steps import (
    accepted_data,
    after,
    all_exchanges,
    code,
    commands,
    greetings,
    params,
    replies,
    reply_to,
    stored_for,
    unlike,
    verb_of,
)
from harness.ladder.model import Step
from harness.outcome import OutcomeStatus
from harness.result import RunResult

EHLO = {"sender": {"ehlo": True}}
TWO = ["c3po@receiver.com", "r2d2@receiver.com"]
LONG_NOOP = "NOOP " + "x" * 505  # 510 octets + CRLF: exactly the 512-octet limit
SHORT_NOOP = "NOOP x"  # the control: NOOP's argument alone is accepted (§4.1.1.9)
LINE_PAUSE_MS = 1500  # between the lines of the multi-line greeting


def _greeting(code_: int | None, text: str | list[str], **rule: object) -> dict:
    reply: dict = {"on": "<greeting>", "text": text, **rule}
    if code_ is not None:
        reply["code"] = code_
    return {"receiver": {"replies": [reply]}, "sender": {"recipients": TWO}}


def _reply(on: str, code_: int, recipients: list[str] = TWO, **rule: object) -> dict:
    return {
        "receiver": {"replies": [{"on": on, "code": code_, **rule}]},
        "sender": {"recipients": recipients},
    }


GREETING_LINES = ["mail.receiver.com ESMTP smtp-harness", "a second line", "and a third"]
MULTILINE = Setup(
    "greeting-multiline", _greeting(None, GREETING_LINES, line_pause_ms=LINE_PAUSE_MS)
)
GREETING_421 = Setup("greeting-421", _greeting(421, "mail.receiver.com Service not available"))
GREETING_554 = Setup("greeting-554", _greeting(554, "mail.receiver.com No SMTP service here"))
EHLO_502 = Setup("ehlo-502", _reply("EHLO", 502), reference=EHLO)
VRFY_QUALIFIED = "VRFY c3po@receiver.com"  # besides the seed's bare user names
VRFY_DISABLED = Setup(
    "vrfy-disabled",
    {
        "receiver": {"vrfy": "disabled"},
        "sender": {"script": [{"at": "MAIL", "send": VRFY_QUALIFIED}]},
    },
)
MAIL_451 = Setup("mail-451", _reply("MAIL", 451))
MAIL_550 = Setup("mail-550", _reply("MAIL", 550))
PARTIAL = {"c3po@receiver.com": 550, "r2d2@receiver.com": 451, "bb8@receiver.com": 250}
RCPT_MIXED = Setup(
    "rcpt-mixed",
    {
        "receiver": {
            "users": ["c3po", "r2d2", "bb8"],
            "replies": [
                {"on": "RCPT", "argument": "c3po@receiver.com", "code": 550},
                {"on": "RCPT", "argument": "r2d2@receiver.com", "code": 451},
            ],
        },
        "sender": {"recipients": list(PARTIAL)},
    },
)
EXTRA_COMMANDS = Setup(
    "extra-commands",
    {
        "sender": {
            "recipients": ["c3po@receiver.com"],
            "script": [
                {"at": "MAIL", "send": "NOOP"},
                {"at": "MAIL", "send": "RSET"},
                {"at": "MAIL", "send": "XYZZY"},
                {"at": "MAIL", "send": SHORT_NOOP},
                {"at": "MAIL", "send": LONG_NOOP},
                {"at": "MAIL", "position": "instead", "send": "mail FROM:<luke@sender.com>"},
            ],
        }
    },
)
NEXT = "our scripted sender's next command (it shows whether the session went on)"
VRFY_ALLOWED = {True: {250, 251, 252}, False: {550, 551, 553, 252}}  # by "is a user"


def _hello(run: RunResult, step: Step) -> Step | None:
    """The first command after ``step`` on its connection, if it is HELO or EHLO."""
    later = after(run.ladder, step)
    return later[0] if later and verb_of(later[0]) in ("HELO", "EHLO") else None


def _greeted(wanted: int, says: str, lines: int = 1, lab: str = "") -> Precondition:
    def find(run: RunResult) -> list[Step]:
        found = greetings(run.ladder, wanted)
        return [g for g in found if int(g.get("lines") or 1) >= lines]

    return Precondition(says, find, lab=lab, codes=(wanted,))


@check(
    "session.greeting-multiline",
    "Nothing sent before the last line of a multi-line 220",
    "RFC 5321 §4.2: the client waits for the reply's last line; §4.3.1: the greeting may be "
    "multi-line",
    SENDER,
    MULTILINE,
    requires=[_greeted(220, "a multi-line 220 greeting, sent line by line", lines=2)],
)
def greeting_multiline(seen: Seen) -> Outcome:
    run, hello = seen.run, seen.found[0][0]
    early = [c for c in commands(run.ladder) if c.conn == hello.conn and c.index < hello.index]
    if early:
        return failed("a command before the greeting's last line", early[0], hello)
    first = _hello(run, hello)
    if first is None:
        return failed("no HELO/EHLO after the multi-line greeting")
    return passed(f"{verb_of(first)} after the last greeting line", first)


@check(
    "session.greeting-421",
    "421 greeting: no transaction, the message stays queued",
    "RFC 5321 §3.1, §4.2.1: 421 is temporary; the client tries later",
    SENDER,
    GREETING_421,
    requires=[
        _greeted(
            421, "a 421 greeting", lab="the sender's queue and DSNs (what became of each recipient)"
        )
    ],
)
def greeting_421(seen: Seen) -> Outcome:
    run = seen.run
    for hello in seen.found[0]:
        extra = [c for c in after(run.ladder, hello) if verb_of(c) != "QUIT"]
        if extra:
            return failed("went on after a 421 greeting", extra[0])
    wrong = unlike(run, OutcomeStatus.DEFERRED)
    if wrong:
        return failed(f"421 is temporary, yet {wrong}")
    return passed("stopped at the 421, message deferred")


@check(
    "session.greeting-554",
    "554 greeting: no transaction; QUIT, not a dropped connection",
    "RFC 5321 §3.1: after a 554 greeting the server waits for QUIT; no mail transaction",
    SENDER,
    GREETING_554,
    requires=[_greeted(554, "a 554 greeting")],
)
def greeting_554(seen: Seen) -> Outcome:
    run, hello = seen.run, seen.found[0][0]
    later = after(run.ladder, hello)
    transaction = [c for c in later if verb_of(c) in ("MAIL", "RCPT", "DATA")]
    if transaction:
        return failed("started a transaction after a 554 greeting", transaction[0])
    quits = [c for c in later if verb_of(c) == "QUIT"]
    if not quits:
        return known("closed without QUIT (the server waits for one)")
    return passed("no transaction, QUIT sent", quits[0])


def _refused_ehlo(run: RunResult) -> list[Step]:
    refused = [
        x
        for x in all_exchanges(run.ladder)
        if verb_of(x.unit) == "EHLO" and code(x.reply) in (500, 502)
    ]
    return [step for x in refused[:1] for step in (x.unit, x.reply) if step]


@check(
    "session.ehlo-helo-fallback",
    "EHLO refused with 502: HELO on the same connection, no extensions",
    "RFC 5321 §3.2: a client refused EHLO falls back to HELO; §4.1.4",
    SENDER,
    EHLO_502,
    requires=[Precondition("an EHLO answered 500 or 502", _refused_ehlo, codes=(500, 502))],
)
def ehlo_fallback(seen: Seen) -> Outcome:
    run, (_ehlo, refusal) = seen.run, seen.found[0]
    first = _hello(run, refusal)
    if first is None or verb_of(first) != "HELO":
        return failed("no HELO on the same connection after EHLO got 502")
    later = after(run.ladder, first)
    with_params = [c for c in later if verb_of(c) in ("MAIL", "RCPT") and params(c)]
    if with_params:
        return failed("ESMTP parameters after falling back to HELO", with_params[0])
    return passed("EHLO 502, HELO, plain commands", first)


def _vrfy_sent(run: RunResult) -> list[Step]:
    return commands(run.ladder, "VRFY")


def _vrfy_pairs(run: RunResult) -> list[tuple[Step, Step | None]]:
    return [(x.unit, x.reply) for x in all_exchanges(run.ladder) if verb_of(x.unit) == "VRFY"]


def _argument(step: Step) -> str:
    return step.text.partition(" ")[2].strip()


@check(
    "session.vrfy-codes",
    "VRFY answers 250/251/252 or 550/551/553, never seeming to verify a non-user",
    "RFC 5321 §3.5.1, §3.5.3, §4.3.2 (VRFY replies); §4.1.1.6 (a user name is a valid "
    "argument); §4.5.1 (VRFY MUST be implemented)",
    RECEIVER,
    requires=[Precondition("a VRFY command", _vrfy_sent, lab="the receiver's list of users")],
)
def vrfy_codes(seen: Seen) -> Outcome:
    run = seen.run
    users = {u.lower() for u in run.scenario.receiver.users}
    answered = []
    for cmd, reply in _vrfy_pairs(run):
        user = _argument(cmd).strip("<>").partition("@")[0].lower()
        allowed = VRFY_ALLOWED[user in users]
        if code(reply) not in allowed:
            what = "an existing user" if user in users else "an unknown user"
            return failed(f"VRFY of {what} answered {code(reply)}", cmd, reply)
        answered.append(reply)
    return passed("VRFY codes as §3.5.3 lists them", *answered)


@check(
    "session.vrfy-disabled-252",
    "VRFY disabled: 252, never a code that looks like (non-)verification",
    "RFC 5321 §7.3: a server that disables VRFY MUST answer 252",
    RECEIVER,
    VRFY_DISABLED,
    requires=[Precondition("a VRFY command", _vrfy_sent, lab="a receiver with VRFY disabled")],
)
def vrfy_disabled(seen: Seen) -> Outcome:
    answered = []
    for cmd, reply in _vrfy_pairs(seen.run):
        if code(reply) != 252:
            return failed(f"disabled VRFY answered {code(reply)}, not 252", cmd, reply)
        answered.append(reply)
    return passed("252 to every VRFY", *answered)


def _mail_refused(wanted: int, run_no: int) -> Precondition:
    def find(run: RunResult) -> list[Step]:
        return replies(run.ladder, "MAIL", wanted)[:1]

    return Precondition(f"a MAIL answered {wanted}", find, run_no)


@check(
    "session.reply-first-digit",
    "4yz at MAIL defers, 5yz bounces; no RCPT after either",
    "RFC 5321 §4.2.1: 4yz is transient, 5yz permanent; §4.3.2",
    SENDER,
    MAIL_451,
    MAIL_550,
    requires=[_mail_refused(451, 0), _mail_refused(550, 1)],
)
def reply_first_digit(seen: Seen) -> Outcome:
    wanted = (OutcomeStatus.DEFERRED, OutcomeStatus.REJECTED)
    for run_no, (run, refusals) in enumerate(zip(seen.runs, seen.found, strict=True)):
        refusal = refusals[0]
        later = [c for c in after(run.ladder, refusal) if verb_of(c) in ("RCPT", "DATA")]
        if later:  # pipelined ones left before the refusal arrived: RFC 2920 allows that
            return failed("went on after MAIL was refused", later[0], run=run_no)
        wrong = unlike(run, wanted[run_no])
        if wrong:
            return failed(f"MAIL refused {code(refusal)}, yet {wrong}", run=run_no)
    return passed("451 -> deferred, 550 -> rejected")


def _mixed_rcpts(run: RunResult) -> list[Step]:
    found = [r for c in sorted(set(PARTIAL.values())) for r in replies(run.ladder, "RCPT", c)]
    codes = {code(r) for r in found}
    return found if codes == set(PARTIAL.values()) else []


@check(
    "session.partial-rcpt",
    "One RCPT 550, one 451, one 250: DATA goes on, one delivery",
    "RFC 5321 §3.3: the transaction goes on for the accepted recipients; §4.2.5",
    SENDER,
    RCPT_MIXED,
    requires=[
        Precondition(
            "RCPTs answered 550, 451 and 250",
            _mixed_rcpts,
            lab="the sender's queue and DSNs (what became of each recipient)",
        )
    ],
)
def partial_rcpt(seen: Seen) -> Outcome:
    run = seen.run
    done = accepted_data(run.ladder)
    if not commands(run.ladder, "DATA") or not done:
        return failed("DATA did not follow although one recipient was accepted")
    want = {
        "c3po@receiver.com": OutcomeStatus.REJECTED,
        "r2d2@receiver.com": OutcomeStatus.DEFERRED,
        "bb8@receiver.com": OutcomeStatus.DELIVERED,
    }
    wrong = unlike(run, want)
    if wrong:
        return failed(f"outcomes {wrong}, want {dict(want)}")
    copies = {r: len(stored_for(run, r)) for r in want}
    if copies != {"c3po@receiver.com": 0, "r2d2@receiver.com": 0, "bb8@receiver.com": 1}:
        return failed(f"stored copies {copies}")
    return passed("DATA after a partial rejection; one copy, for bb8", done[0].reply)


def _sent(prefix: str, *, exact: bool = False, lab: str = "") -> Precondition:
    def find(run: RunResult) -> list[Step]:
        sent = commands(run.ladder)
        return [c for c in sent if c.text == prefix or (not exact and c.text.startswith(prefix))]

    verb = prefix.partition(" ")[0].upper()  # the verb of every command the prefix starts
    verbs = (verb,) if exact or " " in prefix else ()
    return Precondition(f"the command {prefix!r}", find, lab=lab, verbs=verbs)


def _answered(seen: Seen, wanted: set[int], what: str) -> Outcome:
    """The command the precondition found got a code in ``wanted``, and the server answered
    the next command too (it did not close on it)."""
    run, cmd = seen.run, seen.found[0][0]
    xs = [x for x in all_exchanges(run.ladder) if x.unit.kind == "command"]
    hit = next(i for i, x in enumerate(xs) if x.unit == cmd)
    reply = xs[hit].reply
    if code(reply) not in wanted:
        return failed(f"{what} answered {code(reply)}, want {sorted(wanted)}", reply)
    following = xs[hit + 1 : hit + 2]
    if not following or following[0].reply is None:
        return failed(f"the session did not go on after {what}", reply)
    return passed(f"{what}: {code(reply)}, session went on", reply, following[0].reply)


SMALL_COMMANDS = (  # id, title, rfc, the command (a prefix), the codes wanted, its name
    ("session.noop", "NOOP answers 250", "RFC 5321 §4.1.1.9", "NOOP", {250}, "NOOP"),
    (
        "session.rset",
        "RSET answers 250 and never closes",
        "RFC 5321 §4.1.1.5",
        "RSET",
        {250},
        "RSET",
    ),
    (
        "session.unknown-command",
        "An unknown verb gets 500; the session goes on",
        "RFC 5321 §4.2.4: 500 for an unrecognised command; §3.8: no close for it",
        "XYZZY",
        {500},
        "an unknown verb",
    ),
    (
        "session.verb-case",
        "Verbs are case-insensitive",
        "RFC 5321 §2.4: verbs are case-insensitive",
        "mail FROM:",
        {250},
        "a lower-case MAIL",
    ),
)

for _id, _title, _rfc, _prefix, _codes, _what in SMALL_COMMANDS:
    check(_id, _title, _rfc, RECEIVER, EXTRA_COMMANDS, requires=[_sent(_prefix, lab=NEXT)])(
        lambda seen, c=_codes, w=_what: _answered(seen, c, w)
    )


@check(
    "session.noop-argument",
    "NOOP with an argument: the argument is ignored",
    "RFC 5321 §4.1.1.9: NOOP [ SP String ]; a server SHOULD ignore the parameter string",
    RECEIVER,
    EXTRA_COMMANDS,
    requires=[_sent(SHORT_NOOP, exact=True)],
)
def noop_argument(seen: Seen) -> Outcome:
    reply = reply_to(seen.run.ladder, seen.found[0][0])
    if reply is None:
        return failed(f"{SHORT_NOOP!r} was not answered")
    if code(reply) != 250:
        return known(f"{SHORT_NOOP!r} answered {code(reply)} (SHOULD ignore the argument)", reply)
    return passed(f"{SHORT_NOOP!r} answered 250", reply)


def _control_accepted(run: RunResult) -> list[Step]:
    sent = _sent(SHORT_NOOP, exact=True).find(run)
    return [r for c in sent if code(r := reply_to(run.ladder, c)) == 250 and r is not None]


@check(
    "session.command-line-512",
    "A 512-octet command line is accepted",
    "RFC 5321 §4.5.3.1.4: a command line is up to 512 octets, CRLF included",
    RECEIVER,
    EXTRA_COMMANDS,
    requires=[
        _sent(LONG_NOOP[:16], lab=NEXT),
        Precondition(
            f"the control {SHORT_NOOP!r} answered 250 (else a refusal may be about NOOP's "
            "argument, not the length)",
            _control_accepted,
        ),
    ],
)
def command_line_512(seen: Seen) -> Outcome:
    return _answered(seen, {250}, "a 512-octet NOOP")
