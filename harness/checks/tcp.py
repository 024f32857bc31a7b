"""TCP faults tied to protocol state: a connection reset after RCPT, after 354, around the
end of data, a client that half-closes after QUIT (RFC 5321 §3.8, §6.1, §4.1.1.10; RFC 1047).

Rules kept here:
- The faults come from the scripted peers (``harness/smtp``): the receiver's reply rule
  ``reset`` sends an RST (SO_LINGER 0) once its reply is acknowledged, or instead of it
  (``raw = ""``); the sender's ``half_close`` sends its FIN right after QUIT.
- A connection reset before the message was accepted is, for the sender, a transient
  failure (§3.8: "SMTP clients that experience a connection close, reset, or other
  communications failure ... SHOULD ... treat the mail transaction as if a 451 response
  had been received"): after the 250 to RCPT, after the 354, each accepted recipient is
  deferred (to retry), never delivered (nothing was sent: the message would be lost) nor
  bounced at once.
- A connection reset after the final "." and before its reply leaves the outcome unknown
  to the sender: §6.1 gives it responsibility for the message until a 250 comes, so each
  accepted recipient is deferred (to retry), never delivered (the message might be
  lost: RFC 1047 "a lost message is not acceptable") nor bounced.  After the 250 the
  receiver has the message: each accepted recipient is delivered (deferring it sends
  the message again: a duplicate).
- The recipients judged are those the receiver accepted at RCPT on the connection before
  its RST; the preconditions find the RST (from the receiver, on that connection) right
  after the reply it follows (a 250 to RCPT, the 354, the 250 to the message: no other
  reply of the receiver between them), or after the message and before any reply to it.
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

C3PO = "c3po@receiver.com"  # a user of the seed's receiver, the second recipient

RESET_AFTER_RCPT = Setup(
    "reset-after-rcpt",
    by_role={
        "sender": {"receiver": {"replies": [{"on": "RCPT", "argument": C3PO, "reset": True}]}}
    },
)
RESET_AFTER_354 = Setup(
    "reset-after-354",
    by_role={"sender": {"receiver": {"replies": [{"on": "DATA", "reset": True}]}}},
)
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


def _receiver_reset(run: RunResult, after: Step) -> Step | None:
    """The receiver's RST on the connection of ``after``, later than it."""
    server = run.scenario.receiver_host
    ends = closes(run.ladder, after.conn)
    return next((s for s in ends if s.index > after.index and _reset_by(s, server)), None)


def _reset_by(step: Step, host: str) -> bool:
    return step.kind == StepKind.RST and step.src == host


def _reset_right_after(run: RunResult, sent: list[Step], wanted: int) -> list[Step]:
    """[the step, its reply, the receiver's RST] for the first of ``sent`` answered
    ``wanted`` and then reset with no other reply of the receiver between; [] if none."""
    server = run.scenario.receiver_host
    for step in sent:
        reply = reply_to(run.ladder, step)
        if code(reply) != wanted:
            continue
        rst = _receiver_reset(run, reply)
        between = where(run.ladder, StepKind.REPLY, conn=step.conn, src=server)
        if rst is not None and not [r for r in between if reply.index < r.index < rst.index]:
            return [step, reply, rst]
    return []


def _reset_after_rcpt(run: RunResult) -> list[Step]:
    return _reset_right_after(run, commands(run.ladder, "RCPT"), 250)


def _reset_after_354(run: RunResult) -> list[Step]:
    return _reset_right_after(run, commands(run.ladder, "DATA"), 354)


def _reset_before_reply(run: RunResult) -> list[Step]:
    """[the content, the receiver's RST] of the first message reset before any reply."""
    for content in contents(run.ladder):
        reply = reply_to(run.ladder, content)
        rst = _receiver_reset(run, content)
        if rst is not None and (reply is None or reply.index > rst.index):
            return [content, rst]
    return []


def _reset_after_250(run: RunResult) -> list[Step]:
    return _reset_right_after(run, contents(run.ladder), 250)


def _accepted(run: RunResult, rst: Step) -> list[str]:
    """The recipients the receiver accepted at RCPT on the connection of ``rst``, before it."""
    out = []
    for rcpt in commands(run.ladder, "RCPT"):
        reply = reply_to(run.ladder, rcpt)
        answered = code(reply) or 0  # None: a pipelined RCPT the reset left unanswered
        if rcpt.conn == rst.conn and rcpt.index < rst.index and answered // 100 == 2:
            out.append(parse_command(rcpt.text.encode("utf-8", "surrogateescape")).address)
    return [a for a in out if a]


def _deferred_after_reset(seen: Seen, when: str) -> Outcome:
    """§3.8: each recipient accepted before the receiver's RST (the last step found) is
    deferred, as after a 451; the outcome cites every step found."""
    found = seen.found[0]
    accepted = _accepted(seen.run, found[-1])
    if not accepted:
        return failed("no recipient was accepted at RCPT before the reset", *found)
    wrong = unlike(seen.run, dict.fromkeys(accepted, OutcomeStatus.DEFERRED))
    if wrong:
        return failed(f"after a reset {when}: {wrong}; want deferred", *found)
    return passed(f"{', '.join(accepted)} deferred after the reset {when}", *found)


SECTION_3_8 = (
    'RFC 5321 §3.8: a client that meets a connection close or reset "SHOULD ... treat the '
    'mail transaction as if a 451 response had been received"; RFC 1047: a lost message is '
    "not acceptable"
)


@check(
    "tcp.reset-after-rcpt",
    "A reset after the 250 to RCPT defers; it neither delivers nor bounces",
    SECTION_3_8,
    SENDER,
    RESET_AFTER_RCPT,
    requires=[Precondition("a 250 to RCPT, then the receiver's RST", _reset_after_rcpt)],
)
def reset_after_rcpt(seen: Seen) -> Outcome:
    return _deferred_after_reset(seen, "after the 250 to RCPT")


@check(
    "tcp.reset-after-354",
    "A reset after the 354 to DATA defers; it neither delivers nor bounces",
    SECTION_3_8,
    SENDER,
    RESET_AFTER_354,
    requires=[Precondition("a 354 to DATA, then the receiver's RST", _reset_after_354)],
)
def reset_after_354(seen: Seen) -> Outcome:
    return _deferred_after_reset(seen, "after the 354")


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
    return _deferred_after_reset(seen, "before the 250")


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
    accepted = _accepted(run, rst)
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
