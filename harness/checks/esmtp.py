"""ESMTP extension checks, sender side: PIPELINING (RFC 2920), SIZE (RFC 1870), 8BITMIME
(RFC 6152), and parameters only when advertised (RFC 5321 §4.1.1.11).

Rules kept here:
- Our scripted receiver advertises exactly ``[receiver] extensions``; what the client may
  use follows from the EHLO reply on the wire (its keyword lines, RFC 5321 §4.1.1.1),
  which is every check's precondition: the rule is exercised once the client has read it.
- A command is pipelined when it left while a reply to an earlier one was still owed
  (``Exchange.pipelined_after``); that is all the ladder needs to judge RFC 2920.
- The reference sender greets with EHLO here (``reference``): these are ESMTP checks.
"""

from __future__ import annotations

from collections.abc import Callable

from harness.checks.base import (
    SENDER,
    Outcome,
    Precondition,
    Seen,
    Setup,
    check,
    failed,
    not_applicable,
    passed,
)
from harness.checks.steps import (
    after,
    all_exchanges,
    body,
    code,
    commands,
    contents,
    params,
    replies,
    stored_for,
    unlike,
    verb_of,
)
from harness.ladder.model import Step
from harness.outcome import OutcomeStatus
from harness.result import RunResult

EHLO = {"sender": {"ehlo": True}}
ONE = ["c3po@receiver.com"]
GROUP_END = frozenset({"EHLO", "DATA", "VRFY", "EXPN", "TURN", "QUIT", "NOOP"})
PARAMETER_EXTENSIONS = frozenset({"SIZE", "8BITMIME", "SMTPUTF8", "DSN", "BINARYMIME"})


def _esmtp(name: str, extensions: list[str], **sender: object) -> Setup:
    data = {"receiver": {"extensions": extensions}, "sender": {"recipients": ONE, **sender}}
    return Setup(name, data, reference=EHLO)


EHLO_SEED = Setup("seed-ehlo", {}, reference=EHLO)
NO_EXTENSIONS = _esmtp("no-extensions", [])
SIZE_100 = _esmtp("size-100", ["PIPELINING", "8BITMIME", "SIZE 100"])
NO_8BITMIME = _esmtp("no-8bitmime", ["PIPELINING", "SIZE 10240000"], message="8bit.eml")


def advertised(reply: Step) -> dict[str, str]:
    """The EHLO keywords of a 250 reply to EHLO, upper-cased, with their parameters (the
    lines after the first, RFC 5321 §4.1.1.1 ehlo-line)."""
    found: dict[str, str] = {}
    for line in reply.text.split("\n")[1:]:  # a loop: no list per line, no generator
        keyword, _, parameters = line[4:].partition(" ")
        if keyword:
            found[keyword.upper()] = parameters
    return found


def _ehlo_reply(
    says: str, test: Callable[[dict[str, str]], bool], then_mail: bool = True, lab: str = ""
) -> Precondition:
    """The first 250 to EHLO whose keywords pass ``test`` (and, with ``then_mail``, after
    which the client started a transaction: only then could it have broken the rule)."""

    def find(run: RunResult) -> list[Step]:
        for reply in replies(run.ladder, "EHLO", 250):
            if test(advertised(reply)) and (commands(run.ladder, "MAIL") or not then_mail):
                return [reply]
        return []

    # gated by what the find cannot do without: a 250 reply, and a MAIL if it needs one
    return Precondition(says, find, lab=lab, verbs=("MAIL",) if then_mail else (), codes=(250,))


def _pipelined(run: RunResult):
    return [x for x in all_exchanges(run.ladder) if x.pipelined_after is not None]


@check(
    "esmtp.pipelining-advertised-only",
    "No pipelining unless PIPELINING was advertised",
    "RFC 2920 §3.1: a client MUST NOT pipeline unless the server advertised PIPELINING",
    SENDER,
    NO_EXTENSIONS,
    requires=[_ehlo_reply("an EHLO reply without PIPELINING, then a transaction", lambda e: not e)],
)
def pipelining_advertised_only(seen: Seen) -> Outcome:
    run = seen.run
    early = _pipelined(run)
    if early:
        x = early[0]
        return failed("pipelined without PIPELINING", x.pipelined_after, x.unit)
    mails = commands(run.ladder, "MAIL")
    return passed("every command waited for the previous reply", *mails[:1])


def _pipelined_once(run: RunResult) -> list[Step]:
    return [x.unit for x in _pipelined(run)]


@check(
    "esmtp.pipelining-group-end",
    "EHLO, DATA, VRFY, EXPN, TURN, QUIT, NOOP end a pipelined group",
    "RFC 2920 §3.1: these commands MUST be the last of a pipelined group",
    SENDER,
    EHLO_SEED,
    requires=[Precondition("the client pipelined a command", _pipelined_once)],
)
def pipelining_group_end(seen: Seen) -> Outcome:
    for x in _pipelined(seen.run):
        assert x.pipelined_after is not None
        ender = verb_of(x.pipelined_after)
        if ender in GROUP_END:
            return failed(f"sent on after {ender} without its reply", x.pipelined_after, x.unit)
    return passed("pipelined groups end where RFC 2920 says")


def _no_parameter_extension(keywords: dict[str, str]) -> bool:
    return not PARAMETER_EXTENSIONS & set(keywords)


@check(
    "esmtp.params-only-if-advertised",
    "No MAIL/RCPT parameters the server did not advertise",
    "RFC 5321 §4.1.1.11: parameters only for extensions the server advertised; RFC 1870 "
    "§6; RFC 6152 §3",
    SENDER,
    NO_EXTENSIONS,
    requires=[
        _ehlo_reply("an EHLO reply advertising no extension, then MAIL", _no_parameter_extension)
    ],
)
def params_only_if_advertised(seen: Seen) -> Outcome:
    run = seen.run
    used = [c for c in commands(run.ladder) if verb_of(c) in ("MAIL", "RCPT") and params(c)]
    if used:
        return failed(f"parameters {sorted(params(used[0]))} without the extension", used[0])
    return passed("plain MAIL and RCPT", *commands(run.ladder, "MAIL")[:1])


def _size(limit: int) -> Callable[[dict[str, str]], bool]:
    return lambda keywords: keywords.get("SIZE", "").strip() == str(limit)


@check(
    "esmtp.size-exceeded",
    "SIZE 100 and a bigger message: 552 bounces, no content after a 552 to MAIL",
    "RFC 1870 §6: a message over the advertised SIZE is refused with 552, permanently",
    SENDER,
    SIZE_100,
    requires=[
        _ehlo_reply(
            "an EHLO reply advertising SIZE 100",
            _size(100),
            False,
            "the sender's queue and DSNs (what became of each recipient)",
        )
    ],
)
def size_exceeded(seen: Seen) -> Outcome:
    run = seen.run
    refused = [x for x in all_exchanges(run.ladder) if code(x.reply) == 552]
    if not refused:
        if contents(run.ladder):
            return not_applicable("the message went on the wire without a 552")
        wrong = unlike(run, OutcomeStatus.REJECTED)
        if wrong:
            return failed(f"never offered the message, yet {wrong}")
        return passed("never offered the message over the advertised SIZE; bounced")
    x = refused[0]
    content = [u for u in after(run.ladder, x.reply, "content")]
    if x.unit.kind == "command" and content:
        return failed("sent the message after MAIL got 552", x.reply, content[0])
    wrong = unlike(run, OutcomeStatus.REJECTED)
    if wrong:
        return failed(f"552 is permanent, yet {wrong}", x.reply)
    declared = x.unit.kind == "command" and "SIZE" in params(x.unit)
    how = "declared SIZE" if declared else "sent the message"
    return passed(f"{how}, got 552, bounced", x.unit, x.reply)


@check(
    "esmtp.8bitmime",
    "8-bit body to a server without 8BITMIME: converted or bounced, never sent as is",
    "RFC 6152 §3: without 8BITMIME the client MUST NOT send 8-bit data: it converts the "
    "message or returns it as undeliverable",
    SENDER,
    NO_8BITMIME,
    requires=[
        _ehlo_reply(
            "an EHLO reply without 8BITMIME",
            lambda e: "8BITMIME" not in e,
            False,
            "the copies the receiving side stored",
        )
    ],
)
def eight_bit(seen: Seen) -> Outcome:
    run = seen.run
    mails = commands(run.ladder, "MAIL")
    declared = [m for m in mails if "BODY" in params(m)]
    if declared:
        return failed("BODY= without 8BITMIME advertised", declared[0])
    sent = contents(run.ladder)
    copies = stored_for(run, ONE[0])
    if any(byte >= 0x80 for copy in copies for byte in body(copy)):
        return failed("8-bit body sent to a server without 8BITMIME", *sent)
    if copies:
        return passed("converted to 7 bit before sending", *sent)
    wrong = unlike(run, OutcomeStatus.REJECTED)
    if wrong:
        return failed(f"neither converted nor bounced: {wrong}")
    return passed("bounced: the server cannot take 8-bit data", *mails[:1])
