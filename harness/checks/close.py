"""Ending a session: QUIT, 221 and who closes the TCP connection (RFC 5321 §4.1.1.10, §3.8).

Rules kept here:
- All three read the seed run's last SMTP connection: QUIT, the 221, and the FIN/RST
  steps of that connection in the order they were captured.
- The server MUST reply 221 before it closes; the client MUST send QUIT before it closes
  and SHOULD wait for the 221 (not waiting is a known deviation: Postfix's
  ``smtp_skip_quit_response``).  The close pattern itself is a fact: the seed's
  receiver-first close passes, any other is reported as a known deviation.
"""

from __future__ import annotations

from harness.checks.base import (
    BOTH,
    RECEIVER,
    SENDER,
    Outcome,
    check,
    failed,
    known,
    not_applicable,
    passed,
)
from harness.checks.steps import closes, commands, reply_to, smtp_conns
from harness.ladder.model import Step
from harness.runner import RunResult


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
)
def client_waits(run: RunResult) -> Outcome:
    quit_, reply, ends = _last(run)
    client = [s for s in ends if s.src == run.scenario.sender_host]
    if quit_ is None:
        if client:
            return failed("closed without QUIT", client[0].index)
        return not_applicable("no QUIT and no client close seen")
    before = [s for s in client if reply is None or s.index < reply.index]
    if before:
        return known("closed before the 221 arrived (SHOULD wait)", quit_.index, before[0].index)
    return passed(
        "QUIT, 221, then the client's close",
        quit_.index,
        *(s.index for s in [reply, *client[:1]] if s),
    )


@check(
    "close.pattern", "Who closes first: the seed's receiver-first close", "RFC 5321 §4.1.1.10", BOTH
)
def close_pattern(run: RunResult) -> Outcome:
    quit_, reply, ends = _last(run)
    if not ends:
        return not_applicable("no FIN or RST seen")
    first = ends[0]
    who = "receiver" if first.src == run.scenario.receiver_host else "sender"
    resets = [s for s in ends if s.kind == "rst"]
    pattern = f"{who} {first.kind.upper()} first" + (f", {len(resets)} RST" if resets else "")
    evidence = [s.index for s in (quit_, reply) if s] + [s.index for s in ends]
    if who == "receiver" and not resets:
        return passed(f"{pattern} (the seed's pattern)", *evidence)
    return known(pattern, *evidence)
