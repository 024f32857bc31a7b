"""Ending a session: QUIT, 221 and who closes the TCP connection (RFC 5321 §4.1.1.10, §3.8).

Rules kept here:
- All three read the last SMTP connection of the seed exchange: QUIT, the 221, and the
  FIN/RST steps of that connection in the order they were captured.  With the sender
  under test, the scripted receiver answers QUIT ``QUIT_DELAY_MS`` late: a client that
  does not wait has closed by then, whatever its timing (with a prompt 221 Postfix
  sometimes reads it along with the 250 to the message, and then closes like a client
  that waited).
- The server MUST reply 221 before it closes; the client MUST send QUIT before it closes
  and SHOULD wait for the 221 (not waiting is a known deviation: Postfix's
  ``smtp_skip_quit_response``).  A client that did not wait closes before the 221
  arrives (FIN or RST), or resets the connection when it arrives or when it closes with
  the 221 unread (RST): all three are the same deviation, whatever the timing.
- The close pattern is a fact.  Once the client has read the 221, both sides close and
  whose FIN the capture shows first is a race (the seed's receiver closes right after
  its 221; a client such as Sendmail closes right after reading it): either order is
  the seed's pattern and passes.  A client that did not wait is reported as a known
  deviation.
"""

from __future__ import annotations

from harness.checks.base import (
    BOTH,
    RECEIVER,
    SENDER,
    Outcome,
    Setup,
    check,
    failed,
    known,
    not_applicable,
    passed,
)
from harness.checks.steps import closes, commands, reply_to, smtp_conns
from harness.ladder.model import Step
from harness.runner import RunResult

QUIT_DELAY_MS = 300  # far beyond a client's close after QUIT, far below its QUIT timeout
SLOW_221 = Setup(
    "slow-221",
    by_role={"sender": {"receiver": {"replies": [{"on": "QUIT", "delay_ms": QUIT_DELAY_MS}]}}},
)


def _last(run: RunResult) -> tuple[Step | None, Step | None, list[Step]]:
    """(QUIT, its reply, FIN/RST steps) of the last SMTP connection."""
    conns = smtp_conns(run.ladder)
    if not conns:
        return None, None, []
    conn = conns[-1]
    quit_ = next((c for c in commands(run.ladder, "QUIT") if c.conn == conn), None)
    reply = reply_to(run.ladder, quit_) if quit_ else None
    return quit_, reply, closes(run.ladder, conn)


@check(
    "close.quit-221", "221 to QUIT before the server closes", "RFC 5321 §4.1.1.10, §3.8", RECEIVER
)
def quit_221(run: RunResult) -> Outcome:
    quit_, reply, ends = _last(run)
    if quit_ is None:
        return not_applicable("no QUIT was sent")
    server = run.scenario.receiver_host
    early = [s for s in ends if s.src == server and (reply is None or s.index < reply.index)]
    if early:
        return failed(f"server {early[0].kind.upper()} before any 221", quit_.index, early[0].index)
    if reply is None or reply.get("code") != 221:
        return failed("QUIT was not answered 221", quit_.index)
    return passed("221, then the close", quit_.index, reply.index)


@check(
    "close.client-waits-221",
    "QUIT before closing, then wait for the 221",
    "RFC 5321 §4.1.1.10",
    SENDER,
    SLOW_221,
)
def client_waits(run: RunResult) -> Outcome:
    quit_, reply, ends = _last(run)
    client = [s for s in ends if s.src == run.scenario.sender_host]
    if quit_ is None:
        if client:
            return failed("closed without QUIT", client[0].index)
        return not_applicable("no QUIT and no client close seen")
    early = _unwaited(client, reply)
    if early:
        return known("closed without waiting for the 221 (SHOULD wait)", quit_.index, *early)
    return passed(
        "QUIT, 221, then the client's close",
        quit_.index,
        *(s.index for s in [reply, *client[:1]] if s),
    )


@check(
    "close.pattern",
    "Who closes first: the seed's receiver-first close",
    "RFC 5321 §4.1.1.10",
    BOTH,
    SLOW_221,
)
def close_pattern(run: RunResult) -> Outcome:
    quit_, reply, ends = _last(run)
    if not ends:
        return not_applicable("no FIN or RST seen")
    client = [s for s in ends if s.src == run.scenario.sender_host]
    evidence = [s.index for s in (quit_, reply) if s] + [s.index for s in ends]
    if _unwaited(client, reply):
        kinds = "+".join(sorted({s.kind.upper() for s in client}))
        return known(f"sender closed without waiting for the 221 ({kinds})", *evidence)
    if reply is not None and reply.get("code") == 221:
        return passed("221, then both sides closed (the seed's pattern)", *evidence)
    who = "receiver" if ends[0].src == run.scenario.receiver_host else "sender"
    return known(f"{who} {ends[0].kind.upper()} first, without a 221", *evidence)


def _unwaited(client: list[Step], reply: Step | None) -> tuple[int, ...]:
    """The client's closing steps that show it did not wait for (or read) the 221: any
    FIN or RST before it, and any RST at all."""
    return tuple(
        s.index for s in client if s.kind == "rst" or reply is None or s.index < reply.index
    )
