"""Session checks: greetings, EHLO/HELO, VRFY, replies by first digit, the small commands
(RFC 5321 §3.1, §3.2, §3.5.3, §4.1.1, §4.2, §4.3.2, §4.5.3.1.4, §7.3).

Rules kept here:
- As *sender* the MTA under test talks to our scripted receiver, whose ``replies`` rules
  provoke it; as *receiver* it answers our scripted sender, whose ``script`` adds the
  commands to judge.  The reference column's sender greets with EHLO where a check is
  about EHLO (``reference``), as every real MTA does.
- A reply is judged by its code; a command by whether it was sent and what came after it
  on the same connection.
"""

from __future__ import annotations

from harness.checks.base import (
    RECEIVER,
    SEED,
    SENDER,
    Outcome,
    Setup,
    check,
    failed,
    known,
    not_applicable,
    passed,
)
from harness.checks.steps import (
    accepted_data,
    all_exchanges,
    code,
    commands,
    greeting,
    params,
    reply_to,
    smtp_conns,
    status,
    statuses,
    stored_for,
    verb_of,
)
from harness.ladder.model import Step
from harness.runner import RunResult

EHLO = {"sender": {"ehlo": True}}
TWO = ["c3po@receiver.com", "r2d2@receiver.com"]
LONG_NOOP = "NOOP " + "x" * 505  # 510 octets + CRLF: exactly the 512-octet limit


def _greeting(code_: int | None, text: str | list[str], **sender: object) -> dict:
    rule: dict = {"on": "<greeting>", "text": text}
    if code_ is not None:
        rule["code"] = code_
    return {"receiver": {"replies": [rule]}, "sender": {"recipients": TWO, **sender}}


def _reply(on: str, code_: int, recipients: list[str] = TWO, **rule: object) -> dict:
    return {
        "receiver": {"replies": [{"on": on, "code": code_, **rule}]},
        "sender": {"recipients": recipients},
    }


MULTILINE = Setup(
    "greeting-multiline",
    _greeting(None, ["mail.receiver.com ESMTP smtp-harness", "a second line", "and a third"]),
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
        "sender": {"recipients": [*TWO, "bb8@receiver.com"]},
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
                {"at": "MAIL", "send": LONG_NOOP},
                {"at": "MAIL", "position": "instead", "send": "mail FROM:<luke@sender.com>"},
            ],
        }
    },
)
VRFY_ALLOWED = {"known": {250, 251, 252}, "unknown": {550, 551, 553, 252}}
VRFY_SYNTAX = 501  # any command may get it (§4.3.2), but a bare user name is valid (§3.5.3)


def _after(run: RunResult, step: Step) -> list[Step]:
    """Client commands on the step's connection after it."""
    return [c for c in commands(run.ladder) if c.conn == step.conn and c.index > step.index]


def _greetings(run: RunResult, code_: int) -> list[Step]:
    found = (greeting(run.ladder, conn) for conn in smtp_conns(run.ladder))
    return [g for g in found if g is not None and code(g) == code_]


@check(
    "session.greeting-multiline",
    "Nothing sent before the last line of a multi-line 220",
    "RFC 5321 §4.2, §4.3.1",
    SENDER,
    MULTILINE,
)
def greeting_multiline(run: RunResult) -> Outcome:
    conns = smtp_conns(run.ladder)
    hello = greeting(run.ladder, conns[0]) if conns else None
    if hello is None or int(hello.get("lines") or 1) < 2:
        return not_applicable("no multi-line greeting was seen")
    early = [c for c in commands(run.ladder) if c.conn == hello.conn and c.index < hello.index]
    if early:
        return failed("a command before the greeting's last line", early[0].index, hello.index)
    later = _after(run, hello)
    if not later or verb_of(later[0]) not in ("HELO", "EHLO"):
        return failed("no HELO/EHLO after the multi-line greeting", hello.index)
    return passed(f"{verb_of(later[0])} after the last greeting line", hello.index, later[0].index)


@check(
    "session.greeting-421",
    "421 greeting: no transaction, the message stays queued",
    "RFC 5321 §3.1, §4.2.1",
    SENDER,
    GREETING_421,
)
def greeting_421(run: RunResult) -> Outcome:
    refused = _greetings(run, 421)
    if not refused:
        return not_applicable("no 421 greeting was seen")
    for hello in refused:
        extra = [c for c in _after(run, hello) if verb_of(c) != "QUIT"]
        if extra:
            return failed("went on after a 421 greeting", hello.index, extra[0].index)
    bounced = {r: s for r, s in statuses(run).items() if s != "deferred"}
    if bounced:
        return failed(f"421 is temporary, yet {bounced}", refused[0].index)
    return passed("stopped at the 421, message deferred", *(g.index for g in refused))


@check(
    "session.greeting-554",
    "554 greeting: no transaction; QUIT, not a dropped connection",
    "RFC 5321 §3.1",
    SENDER,
    GREETING_554,
)
def greeting_554(run: RunResult) -> Outcome:
    refused = _greetings(run, 554)
    if not refused:
        return not_applicable("no 554 greeting was seen")
    hello = refused[0]
    later = _after(run, hello)
    transaction = [c for c in later if verb_of(c) in ("MAIL", "RCPT", "DATA")]
    if transaction:
        return failed(
            "started a transaction after a 554 greeting", hello.index, transaction[0].index
        )
    quits = [c for c in later if verb_of(c) == "QUIT"]
    if not quits:
        return known("closed without QUIT (the server waits for one)", hello.index)
    return passed("no transaction, QUIT sent", hello.index, quits[0].index)


@check(
    "session.ehlo-helo-fallback",
    "EHLO refused with 502: HELO on the same connection, no extensions",
    "RFC 5321 §3.2, §4.1.4",
    SENDER,
    EHLO_502,
)
def ehlo_fallback(run: RunResult) -> Outcome:
    refused = [
        x
        for x in all_exchanges(run.ladder)
        if x.unit.kind == "command" and verb_of(x.unit) == "EHLO" and code(x.reply) in (500, 502)
    ]
    if not refused:
        return not_applicable("no EHLO was refused (the client greeted with HELO)")
    ehlo = refused[0]
    assert ehlo.reply is not None  # refused means answered
    later = _after(run, ehlo.unit)
    if not later or verb_of(later[0]) != "HELO":
        return failed("no HELO on the same connection after EHLO got 502", ehlo.reply.index)
    with_params = [c for c in later if verb_of(c) in ("MAIL", "RCPT") and params(c)]
    if with_params:
        return failed("ESMTP parameters after falling back to HELO", with_params[0].index)
    return passed(
        "EHLO 502, HELO, plain commands", ehlo.unit.index, ehlo.reply.index, later[0].index
    )


def _vrfy_replies(run: RunResult) -> list[tuple[Step, Step | None]]:
    return [
        (x.unit, x.reply)
        for x in all_exchanges(run.ladder)
        if x.unit.kind == "command" and verb_of(x.unit) == "VRFY"
    ]


@check(
    "session.vrfy-codes",
    "VRFY answers 250/251/252 or 550/551/553, never seeming to verify a non-user",
    "RFC 5321 §3.5.3, §4.3.2, §4.5.1",
    RECEIVER,
    SEED,
)
def vrfy_codes(run: RunResult) -> Outcome:
    pairs = _vrfy_replies(run)
    if not pairs:
        return not_applicable("no VRFY was sent")
    users = {u.lower() for u in run.scenario.receiver.users}
    complaints = []
    for cmd, reply in pairs:
        user = cmd.text.partition(" ")[2].strip("<> ").partition("@")[0].lower()
        allowed = VRFY_ALLOWED["known" if user in users else "unknown"]
        if code(reply) == VRFY_SYNTAX:
            complaints += [cmd.index, *_index(reply)]
        elif code(reply) not in allowed:
            what = "existing user" if user in users else "unknown user"
            return failed(f"VRFY of an {what} answered {code(reply)}", cmd.index, *_index(reply))
    if complaints:
        return known("501 to VRFY of a bare user name (§3.5.3 allows one)", *complaints)
    return passed("VRFY codes as §3.5.3 lists them", *(r.index for _, r in pairs if r))


def _index(step: Step | None) -> tuple[int, ...]:
    return () if step is None else (step.index,)


@check(
    "session.vrfy-disabled-252",
    "VRFY disabled: 252, never a code that looks like (non-)verification",
    "RFC 5321 §7.3",
    RECEIVER,
    VRFY_DISABLED,
)
def vrfy_disabled(run: RunResult) -> Outcome:
    pairs = _vrfy_replies(run)
    if not pairs:
        return not_applicable("no VRFY was sent")
    complaints = []
    for cmd, reply in pairs:
        if code(reply) == VRFY_SYNTAX and "@" not in cmd.text:
            complaints += [cmd.index, *_index(reply)]
        elif code(reply) != 252:
            return failed(
                f"disabled VRFY answered {code(reply)}, not 252", cmd.index, *_index(reply)
            )
    if complaints:
        return known("501 to VRFY of a bare user name, 252 to a mailbox", *complaints)
    return passed("252 to every VRFY", *(r.index for _, r in pairs if r))


@check(
    "session.reply-first-digit",
    "4yz at MAIL defers, 5yz bounces; no RCPT after either",
    "RFC 5321 §4.2.1, §4.3.2",
    SENDER,
    MAIL_451,
    MAIL_550,
)
def reply_first_digit(temporary: RunResult, permanent: RunResult) -> Outcome:
    for run_no, (run, wanted) in enumerate(((temporary, "deferred"), (permanent, "rejected"))):
        mails = commands(run.ladder, "MAIL")
        refusal = reply_to(run.ladder, mails[0]) if mails else None
        if refusal is None:
            return failed("no MAIL was sent and answered", run=run_no)
        rcpts = [c for c in _after(run, refusal) if verb_of(c) in ("RCPT", "DATA")]
        if rcpts:  # pipelined ones left before the refusal arrived: RFC 2920 allows that
            return failed(
                "went on after MAIL was refused", refusal.index, rcpts[0].index, run=run_no
            )
        wrong = {r: s for r, s in statuses(run).items() if s != wanted}
        if wrong:
            return failed(f"MAIL refused, yet {wrong} (want {wanted})", mails[0].index, run=run_no)
    return passed("451 -> deferred, 550 -> rejected", commands(temporary.ladder, "MAIL")[0].index)


@check(
    "session.partial-rcpt",
    "One RCPT 550, one 451, one 250: DATA goes on, one delivery",
    "RFC 5321 §3.3, §4.2.5",
    SENDER,
    RCPT_MIXED,
)
def partial_rcpt(run: RunResult) -> Outcome:
    want = {"c3po@receiver.com": "rejected", "r2d2@receiver.com": "deferred"}
    want["bb8@receiver.com"] = "delivered"
    data = commands(run.ladder, "DATA")
    done = accepted_data(run.ladder)
    rcpts = [c.index for c in commands(run.ladder, "RCPT")]
    if not data or not done:
        return failed("DATA did not follow although one recipient was accepted", *rcpts)
    got = {r: status(run, r) for r in want}
    if got != want:
        return failed(f"outcomes {got}, want {want}", *rcpts)
    copies = {r: len(stored_for(run, r)) for r in want}
    if copies != {"c3po@receiver.com": 0, "r2d2@receiver.com": 0, "bb8@receiver.com": 1}:
        return failed(f"stored copies {copies}", *rcpts)
    assert done[0].reply is not None
    return passed(
        "DATA after a partial rejection; one copy, for bb8",
        *rcpts,
        data[0].index,
        done[0].reply.index,
    )


def _answered(run: RunResult, prefix: str, wanted: set[int], what: str) -> Outcome:
    """The first command starting with ``prefix`` got a code in ``wanted``, and the server
    answered the next command too (it did not close on it)."""
    xs = [x for x in all_exchanges(run.ladder) if x.unit.kind == "command"]
    hit = next((i for i, x in enumerate(xs) if x.unit.text.startswith(prefix)), None)
    if hit is None:
        return not_applicable(f"no {what} was sent")
    x = xs[hit]
    evidence = (x.unit.index, *_index(x.reply))
    if code(x.reply) not in wanted:
        return failed(f"{what} answered {code(x.reply)}, want {sorted(wanted)}", *evidence)
    following = xs[hit + 1 : hit + 2]
    if not following or following[0].reply is None:
        return failed(f"the session did not go on after {what}", *evidence)
    return passed(f"{what}: {code(x.reply)}, session went on", *evidence, following[0].reply.index)


SMALL_COMMANDS = (
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
        "RFC 5321 §4.2.4, §3.8",
        "XYZZY",
        {500},
        "an unknown verb",
    ),
    (
        "session.verb-case",
        "Verbs are case-insensitive",
        "RFC 5321 §2.4",
        "mail FROM:",
        {250},
        "a lower-case MAIL",
    ),
    (
        "session.command-line-512",
        "A 512-octet command line is accepted",
        "RFC 5321 §4.5.3.1.4",
        LONG_NOOP[:16],
        {250},
        "a 512-octet NOOP",
    ),
)

for _id, _title, _rfc, _prefix, _codes, _what in SMALL_COMMANDS:
    check(_id, _title, _rfc, RECEIVER, EXTRA_COMMANDS)(
        lambda run, p=_prefix, c=_codes, w=_what: _answered(run, p, c, w)
    )
