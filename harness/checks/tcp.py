"""TCP faults tied to protocol state: a connection reset around the end of data, a
client that half-closes after QUIT (RFC 5321 §6.1, §4.1.1.10, §3.8; RFC 1047).

Rules kept here:
- The faults come from the scripted peers (``harness/smtp``): the receiver's reply rule
  ``reset`` sends an RST (SO_LINGER 0) once its reply is acknowledged, or instead of it
  (``raw = ""``); the sender's ``half_close`` sends its FIN right after QUIT.
- A connection reset after the final "." and before its reply leaves the outcome unknown
  to the sender: §6.1 gives it responsibility for the message until a 250 comes, so each
  accepted recipient is deferred (to retry), never delivered (the message might be
  lost: RFC 1047 "a lost message is not acceptable") nor bounced.  After the 250 the
  receiver has the message: each accepted recipient is delivered (deferring it sends
  the message again: a duplicate).
- The recipients judged are those the receiver accepted at RCPT on the connection that
  carried the message; the preconditions find the message and the RST (from the
  receiver, on that connection, before any reply to the message / after its 250).
- A half-close is the client's FIN after QUIT and before any reply to it; the server
  still MUST send 221 (§4.1.1.10), and only then close.
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
    passed,
)
from harness.checks.steps import closes, code, commands, contents, reply_to, unlike, where
from harness.ladder.model import Step, StepKind
from harness.outcome import OutcomeStatus
from harness.runner import RunResult
from harness.smtp.commands import parse_command

RESET_BEFORE_250 = Setup(
    "reset-instead-of-250",
    by_role={
        "sender": {"receiver": {"replies": [{"on": "<end-of-data>", "raw": "", "reset": True}]}}
    },
)
RESET_AFTER_250 = Setup(
    "reset-after-250",
    by_role={"sender": {"receiver": {"replies": [{"on": "<end-of-data>", "reset": True}]}}},
)
HALF_CLOSE = Setup("half-close", by_role={"receiver": {"sender": {"half_close": True}}})


def _reset_after_content(run: RunResult, answered: bool) -> list[Step]:
    """[the content, the receiver's RST] of the first message followed by an RST: before any
    reply to it (``answered`` False) or after a 250 to it (True); [] if there is none."""
    server = run.scenario.receiver_host
    for content in contents(run.ladder):
        reply = reply_to(run.ladder, content)
        ends = closes(run.ladder, content.conn)
        rst = next((s for s in ends if s.index > content.index and _reset_by(s, server)), None)
        if rst is None:
            continue
        if not answered and (reply is None or reply.index > rst.index):
            return [content, rst]
        if answered and code(reply) == 250 and reply.index < rst.index:
            return [content, reply, rst]
    return []


def _reset_by(step: Step, host: str) -> bool:
    return step.kind == StepKind.RST and step.src == host


def _reset_before_reply(run: RunResult) -> list[Step]:
    return _reset_after_content(run, answered=False)


def _reset_after_250(run: RunResult) -> list[Step]:
    return _reset_after_content(run, answered=True)


def _accepted(run: RunResult, content: Step) -> list[str]:
    """The recipients the receiver accepted at RCPT on the connection of ``content``."""
    out = []
    for rcpt in commands(run.ladder, "RCPT"):
        reply = reply_to(run.ladder, rcpt)
        if rcpt.conn == content.conn and rcpt.index < content.index and code(reply) // 100 == 2:
            out.append(parse_command(rcpt.text.encode("utf-8", "surrogateescape")).address)
    return [a for a in out if a]


@check(
    "tcp.reset-before-250",
    "A reset after the final '.' and before its reply defers; it neither delivers nor bounces",
    "RFC 5321 §6.1: the sender keeps the message until the 250; RFC 1047: a duplicate is "
    "possible, a lost message is not acceptable",
    SENDER,
    RESET_BEFORE_250,
    requires=[
        Precondition("the message, then the receiver's RST before any reply", _reset_before_reply)
    ],
)
def reset_before_250(seen: Seen) -> Outcome:
    run = seen.run
    content, rst = seen.found[0]
    accepted = _accepted(run, content)
    if not accepted:
        return failed("no recipient was accepted at RCPT before the message", content)
    wrong = unlike(run, dict.fromkeys(accepted, OutcomeStatus.DEFERRED))
    if wrong:
        return failed(f"after a reset before the 250: {wrong}; want deferred", content, rst)
    return passed(f"{', '.join(accepted)} deferred after the reset", content, rst)


@check(
    "tcp.reset-after-250",
    "A reset after the 250 to the message: delivered, never sent again",
    "RFC 5321 §6.1: with the 250 the receiver has accepted responsibility for the message",
    SENDER,
    RESET_AFTER_250,
    requires=[Precondition("a 250 to the message, then the receiver's RST", _reset_after_250)],
)
def reset_after_250(seen: Seen) -> Outcome:
    run = seen.run
    content, reply, rst = seen.found[0]
    accepted = _accepted(run, content)
    if not accepted:
        return failed("no recipient was accepted at RCPT before the message", content)
    wrong = unlike(run, dict.fromkeys(accepted, OutcomeStatus.DELIVERED))
    if wrong:
        return failed(f"after the 250 and a reset: {wrong}; want delivered", reply, rst)
    return passed(f"{', '.join(accepted)} delivered; the reset came after the 250", reply, rst)


def _half_closed(run: RunResult) -> list[Step]:
    """[QUIT, the client's FIN] when the FIN came before any reply to QUIT."""
    client = run.scenario.sender_host
    for quit_ in commands(run.ladder, "QUIT"):
        reply = reply_to(run.ladder, quit_)
        fin = next(
            (s for s in where(run.ladder, StepKind.FIN, conn=quit_.conn) if s.src == client), None
        )
        if (
            fin is not None
            and fin.index > quit_.index
            and (reply is None or reply.index > fin.index)
        ):
            return [quit_, fin]
    return []


@check(
    "tcp.half-close-221",
    "After QUIT and the client's FIN (a half-close), still a 221",
    "RFC 5321 §4.1.1.10: the receiver MUST send a 221 reply to QUIT; §3.8",
    RECEIVER,
    HALF_CLOSE,
    requires=[Precondition("QUIT, then the client's FIN before any reply", _half_closed)],
)
def half_close_221(seen: Seen) -> Outcome:
    run = seen.run
    quit_, fin = seen.found[0]
    reply = reply_to(run.ladder, quit_)
    if code(reply) != 221:
        return failed(f"QUIT after a half-close was answered {code(reply)}, not 221", quit_, fin)
    return passed("221 after the half-close", quit_, fin, reply)
