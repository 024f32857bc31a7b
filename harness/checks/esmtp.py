"""ESMTP extension checks, sender side: PIPELINING (RFC 2920), SIZE (RFC 1870), 8BITMIME
(RFC 6152), and parameters only when advertised (RFC 5321 §4.1.1.11).

Rules kept here:
- Our scripted receiver advertises exactly ``[receiver] extensions``; what the client may
  use follows from that list alone.
- A command is pipelined when it left while a reply to an earlier one was still owed
  (``Exchange.pipelined_after``); that is all the ladder needs to judge RFC 2920.
- The reference sender greets with EHLO here (``reference``): these are ESMTP checks.
"""

from __future__ import annotations

from harness.checks.base import SENDER, Outcome, Setup, check, failed, not_applicable, passed
from harness.checks.steps import (
    all_exchanges,
    body,
    code,
    commands,
    params,
    statuses,
    stored_for,
    verb_of,
)
from harness.runner import RunResult

EHLO = {"sender": {"ehlo": True}}
ONE = ["c3po@receiver.com"]
GROUP_END = frozenset({"EHLO", "DATA", "VRFY", "EXPN", "TURN", "QUIT", "NOOP"})


def _esmtp(name: str, extensions: list[str], **sender: object) -> Setup:
    data = {"receiver": {"extensions": extensions}, "sender": {"recipients": ONE, **sender}}
    return Setup(name, data, reference=EHLO)


EHLO_SEED = Setup("seed-ehlo", {}, reference=EHLO)
NO_EXTENSIONS = _esmtp("no-extensions", [])
SIZE_100 = _esmtp("size-100", ["PIPELINING", "8BITMIME", "SIZE 100"])
NO_8BITMIME = _esmtp("no-8bitmime", ["PIPELINING", "SIZE 10240000"], message="8bit.eml")


def _pipelined(run: RunResult):
    return [x for x in all_exchanges(run.ladder) if x.pipelined_after is not None]


@check(
    "esmtp.pipelining-advertised-only",
    "No pipelining unless PIPELINING was advertised",
    "RFC 2920 §3.1",
    SENDER,
    NO_EXTENSIONS,
)
def pipelining_advertised_only(run: RunResult) -> Outcome:
    early = _pipelined(run)
    if early:
        x = early[0]
        assert x.pipelined_after is not None
        return failed("pipelined without PIPELINING", x.pipelined_after.index, x.unit.index)
    return passed(
        "every command waited for the previous reply", *(c.index for c in commands(run.ladder)[:1])
    )


@check(
    "esmtp.pipelining-group-end",
    "EHLO, DATA, VRFY, EXPN, TURN, QUIT, NOOP end a pipelined group",
    "RFC 2920 §3.1",
    SENDER,
    EHLO_SEED,
)
def pipelining_group_end(run: RunResult) -> Outcome:
    early = _pipelined(run)
    if not early:
        return not_applicable("the client never pipelined")
    for x in early:
        assert x.pipelined_after is not None
        if verb_of(x.pipelined_after) in GROUP_END:
            ender = verb_of(x.pipelined_after)
            return failed(
                f"sent on after {ender} without its reply", x.pipelined_after.index, x.unit.index
            )
    return passed("pipelined groups end where RFC 2920 says", *(x.unit.index for x in early))


@check(
    "esmtp.params-only-if-advertised",
    "No MAIL/RCPT parameters the server did not advertise",
    "RFC 5321 §4.1.1.11; RFC 1870 §6; RFC 6152 §3",
    SENDER,
    NO_EXTENSIONS,
)
def params_only_if_advertised(run: RunResult) -> Outcome:
    used = [c for c in commands(run.ladder) if verb_of(c) in ("MAIL", "RCPT") and params(c)]
    if used:
        return failed(f"parameters {sorted(params(used[0]))} without the extension", used[0].index)
    return passed("plain MAIL and RCPT", *(c.index for c in commands(run.ladder, "MAIL")[:1]))


@check(
    "esmtp.size-exceeded",
    "SIZE 100 and a bigger message: 552 bounces, no content after a 552 to MAIL",
    "RFC 1870 §6",
    SENDER,
    SIZE_100,
)
def size_exceeded(run: RunResult) -> Outcome:
    refused = [x for x in all_exchanges(run.ladder) if code(x.reply) == 552]
    sent = [x.unit.index for x in all_exchanges(run.ladder) if x.unit.kind in ("content", "bdat")]
    if not refused and not sent:
        return passed("never offered the message over the advertised SIZE")
    if not refused:
        return not_applicable("the server never answered 552", *sent)
    x = refused[0]
    assert x.reply is not None
    later = [y.unit for y in all_exchanges(run.ladder) if y.unit.index > x.reply.index]
    content = [u for u in later if u.kind in ("content", "bdat") and u.conn == x.unit.conn]
    if x.unit.kind == "command" and content:
        return failed("sent the message after MAIL got 552", x.reply.index, content[0].index)
    deferred = {r: s for r, s in statuses(run).items() if s != "rejected"}
    if deferred:
        return failed(f"552 is permanent, yet {deferred}", x.reply.index)
    declared = x.unit.kind == "command" and "SIZE" in params(x.unit)
    how = "declared SIZE" if declared else "sent the message"
    return passed(f"{how}, got 552, bounced", x.unit.index, x.reply.index)


@check(
    "esmtp.8bitmime",
    "8-bit body to a server without 8BITMIME: converted or bounced, never sent as is",
    "RFC 6152 §3",
    SENDER,
    NO_8BITMIME,
)
def eight_bit(run: RunResult) -> Outcome:
    mails = commands(run.ladder, "MAIL")
    declared = [m for m in mails if "BODY" in params(m)]
    if declared:
        return failed("BODY= without 8BITMIME advertised", declared[0].index)
    copies = stored_for(run, ONE[0])
    content = [x.unit.index for x in all_exchanges(run.ladder) if x.unit.kind == "content"]
    if any(byte >= 0x80 for copy in copies for byte in body(copy)):
        return failed("8-bit body sent to a server without 8BITMIME", *content)
    if copies:
        return passed("converted to 7 bit before sending", *content)
    if statuses(run)[ONE[0]] == "rejected":
        return passed("bounced: the server cannot take 8-bit data", *(m.index for m in mails[:1]))
    return not_applicable("the message was neither stored nor bounced")
