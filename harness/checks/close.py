"""Ending a session: QUIT, 221 and who closes the TCP connection (RFC 5321 §4.1.1.10, §3.8).

Rules kept here:
- All three read the last SMTP connection: QUIT, the 221, and the FIN/RST steps of that
  connection in the order they were captured.  With the sender under test, the scripted
  receiver answers QUIT ``QUIT_DELAY_MS`` late: a client that does not wait has closed by
  then, whatever its timing.
- The server MUST reply 221 before it closes (precondition: a QUIT was sent); the client
  MUST send QUIT before it closes and SHOULD wait for the 221 (precondition: the client
  sent QUIT or closed).  Not waiting is a known deviation (Postfix's
  ``smtp_skip_quit_response``): a client that did not wait closes before the 221 arrives
  (FIN or RST), or resets the connection when it arrives or when it closes with the 221
  unread (RST): all the same deviation, whatever the timing.
- Who closes first is a fact, not a rule: once the client has read the 221 both sides
  close, and whose FIN the capture shows first is a race.  ``close.pattern`` is an
  observation whose value names the order seen.
"""

from __future__ import annotations

from harness.checks.base import (
    BOTH,
    RECEIVER,
    SENDER,
    Kind,
    Outcome,
    Precondition,
    Seen,
    Setup,
    check,
    failed,
    known,
    observed,
    passed,
)
from harness.checks.steps import closes, code, commands, per_ladder, reply_to, smtp_conns
from harness.ladder.model import Ladder, Step
from harness.result import RunResult

QUIT_DELAY_MS = 300  # far beyond a client's close after QUIT, far below its QUIT timeout
SLOW_221 = Setup(
    "slow-221",
    by_role={"sender": {"receiver": {"replies": [{"on": "QUIT", "delay_ms": QUIT_DELAY_MS}]}}},
)


def _last(run: RunResult) -> tuple[Step | None, Step | None, list[Step]]:
    """(QUIT, its reply, FIN/RST steps) of the last SMTP connection."""
    quit_, reply, ends = _last_end(run.ladder)
    return quit_, reply, list(ends)


@per_ladder
def _last_end(ladder: Ladder) -> tuple[Step | None, Step | None, list[Step]]:
    conns = smtp_conns(ladder)
    if not conns:
        return None, None, []
    conn = conns[-1]
    quit_ = next((c for c in commands(ladder, "QUIT") if c.conn == conn), None)
    reply = reply_to(ladder, quit_) if quit_ else None
    return quit_, reply, closes(ladder, conn)


def _quit_sent(run: RunResult) -> list[Step]:
    quit_, _reply, _ends = _last(run)
    return [quit_] if quit_ else []


def _client_ended(run: RunResult) -> list[Step]:
    quit_, _reply, ends = _last(run)
    client = [s for s in ends if s.src == run.scenario.sender_host]
    return [quit_] if quit_ else client[:1]


def _closed(run: RunResult) -> list[Step]:
    return _last(run)[2][:1]


@check(
    "close.quit-221",
    "221 to QUIT before the server closes",
    "RFC 5321 §4.1.1.10: the receiver MUST send a 221 reply to QUIT; §3.8: and only then close",
    RECEIVER,
    requires=[Precondition("a QUIT command", _quit_sent)],
)
def quit_221(seen: Seen) -> Outcome:
    run = seen.run
    _quit, reply, ends = _last(run)
    server = run.scenario.receiver_host
    early = [s for s in ends if s.src == server and (reply is None or s.index < reply.index)]
    if early:
        return failed(f"server {early[0].kind.upper()} before any 221", early[0])
    if reply is None or code(reply) != 221:
        return failed(f"QUIT was answered {code(reply)}, not 221", reply)
    return passed("221, then the close", reply)


@check(
    "close.client-waits-221",
    "QUIT before closing, then wait for the 221",
    "RFC 5321 §4.1.1.10: the sender MUST NOT close before sending QUIT and SHOULD wait for the 221",
    SENDER,
    SLOW_221,
    requires=[Precondition("the client sent QUIT or closed", _client_ended)],
)
def client_waits(seen: Seen) -> Outcome:
    run = seen.run
    quit_, reply, ends = _last(run)
    client = [s for s in ends if s.src == run.scenario.sender_host]
    if quit_ is None:
        return failed("closed without QUIT", *client[:1])
    early = _unwaited(client, reply)
    if early:
        return known("closed without waiting for the 221 (SHOULD wait)", *early)
    return passed("QUIT, 221, then the client's close", reply, *client[:1])


@check(
    "close.pattern",
    "Who closes the connection first after QUIT",
    "RFC 5321 §4.1.1.10, §3.8: either side may close once the 221 is read",
    BOTH,
    SLOW_221,
    requires=[Precondition("a FIN or RST ending the last SMTP connection", _closed)],
    kind=Kind.OBSERVATION,
)
def close_pattern(seen: Seen) -> Outcome:
    run = seen.run
    quit_, reply, ends = _last(run)
    names = {run.scenario.sender_host: "sender", run.scenario.receiver_host: "receiver"}
    order = ", ".join(f"{names.get(s.src, s.src)} {s.kind.upper()}" for s in ends)
    value = _pattern(quit_, reply, ends, names)
    return observed(value, f"as captured: {order}", quit_, reply, *ends)


def _pattern(
    quit_: Step | None, reply: Step | None, ends: list[Step], names: dict[str, str]
) -> str:
    """The close in words that do not depend on a race: once both sides have the 221, whose
    FIN the capture shows first is timing, so it is not part of the value."""
    first = ends[0]
    who = names.get(first.src, first.src)
    if quit_ is None:
        return f"no QUIT; {who} {first.kind.upper()} first"
    if reply is None or code(reply) != 221:
        return f"no 221; {who} {first.kind.upper()} first"
    client = [s for s in ends if names.get(s.src) == "sender"]
    early = [s for s in client if s.index < reply.index]
    if early:
        return f"sender {early[0].kind.upper()} before the 221"
    if any(s.kind == "rst" for s in client):
        return "sender RST after the 221"
    return "both closed after the 221"


def _unwaited(client: list[Step], reply: Step | None) -> tuple[Step, ...]:
    """The client's closing steps that show it did not wait for (or read) the 221: any
    FIN or RST before it, and any RST at all."""
    return tuple(s for s in client if s.kind == "rst" or reply is None or s.index < reply.index)
