"""Check zero: which of the seed's 33 steps (shared/seed/ladder.md) a run reproduces.

Rules kept here:
- The seed is a table, one row per seed step: who sends it to whom, the ladder kind, and
  what its text must say.  Rows are matched in order per sending host, each to the first
  fitting ladder step after that host's previous match; a row without a match is "not
  reproduced".
- Seed steps 25 and 26 (content, then ".") are one ladder step: the dissector folds the
  end-of-data marker into the content step.
- Verdict: all 33 reproduced -> pass; the transaction itself missing (connection,
  greeting, MAIL, DATA, content, its 250) -> fail; otherwise deviation-known, naming the
  rows missed and the facts that explain them (EHLO for HELO, no VRFY, who closed first).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from harness.checks.base import BOTH, Outcome, Seen, check, failed, known, passed
from harness.checks.steps import closes, commands, records, smtp_conns, verb_of
from harness.ladder.model import Ladder, Step
from harness.result import RunResult

S, D, R = "sender", "dns", "receiver"


@dataclass(frozen=True)
class Row:
    number: int
    src: str
    dst: str
    kind: str
    meaning: str
    fits: Callable[[Step], bool] = lambda step: True


def _line(prefix: str) -> Callable[[Step], bool]:
    """A command step whose line (the client's own bytes) starts with ``prefix``."""
    return lambda step: step.text.upper().startswith(prefix.upper())


def _reply(code: int, answers: str) -> Callable[[Step], bool]:
    return lambda step: step.get("code") == code and step.get("answers") == answers


def _question(qtype: str) -> Callable[[Step], bool]:
    return lambda step: step.get("qtype") == qtype


def _answer(rtype: str) -> Callable[[Step], bool]:
    return lambda step: bool(records(step, rtype=rtype))


SEED_ROWS = (
    Row(1, S, D, "dns-query", "MX query", _question("MX")),
    Row(2, D, S, "dns-answer", "MX answer", _answer("MX")),
    Row(3, S, R, "syn", "SYN"),
    Row(4, R, S, "syn-ack", "SYN-ACK"),
    Row(5, S, R, "ack", "ACK"),
    Row(6, R, S, "reply", "220 greeting", _reply(220, "<greeting>")),
    Row(7, S, R, "command", "HELO", _line("HELO ")),
    Row(8, R, D, "dns-query", "PTR query", _question("PTR")),
    Row(9, D, R, "dns-answer", "PTR answer", _answer("PTR")),
    Row(10, R, S, "reply", "250 to HELO", _reply(250, "HELO")),
    Row(11, S, R, "command", "VRFY aibo", _line("VRFY aibo")),
    Row(12, R, S, "reply", "550 to VRFY aibo", _reply(550, "VRFY")),
    Row(13, S, R, "command", "VRFY c3po", _line("VRFY c3po")),
    Row(14, R, S, "reply", "250 to VRFY c3po", _reply(250, "VRFY")),
    Row(15, S, R, "command", "VRFY r2d2", _line("VRFY r2d2")),
    Row(16, R, S, "reply", "250 to VRFY r2d2", _reply(250, "VRFY")),
    Row(17, S, R, "command", "MAIL FROM", _line("MAIL FROM:<luke@sender.com>")),
    Row(18, R, S, "reply", "250 to MAIL", _reply(250, "MAIL")),
    Row(19, S, R, "command", "RCPT c3po", _line("RCPT TO:<c3po@receiver.com>")),
    Row(20, R, S, "reply", "250 to RCPT c3po", _reply(250, "RCPT")),
    Row(21, S, R, "command", "RCPT r2d2", _line("RCPT TO:<r2d2@receiver.com>")),
    Row(22, R, S, "reply", "250 to RCPT r2d2", _reply(250, "RCPT")),
    Row(23, S, R, "command", "DATA", _line("DATA")),
    Row(24, R, S, "reply", "354", _reply(354, "DATA")),
    Row(25, S, R, "content", "the message"),
    Row(26, S, R, "content", '"." (folded into the content step)'),
    Row(27, R, S, "reply", "250 to end of data", _reply(250, "<end-of-data>")),
    Row(28, S, R, "command", "QUIT", _line("QUIT")),
    Row(29, R, S, "reply", "221", _reply(221, "QUIT")),
    Row(30, R, S, "fin", "receiver FIN first"),
    Row(31, S, R, "fin-ack", "ACK of that FIN"),
    Row(32, S, R, "fin", "sender FIN"),
    Row(33, R, S, "close-ack", "ACK of the sender's FIN"),
)
ESSENTIAL = frozenset({3, 4, 5, 6, 17, 18, 23, 24, 25, 27})


def match_seed(run: RunResult) -> dict[int, Step | None]:
    """Seed step number -> the ladder step that reproduces it (None: not reproduced).

    Rows match in order per sending host, so a pipelined client (commands ahead of their
    replies) still reproduces every row it sends."""
    names = {S: run.scenario.sender_host, R: run.scenario.receiver_host}
    names[D] = run.scenario.topology.dns_host or D
    found: dict[int, Step | None] = {}
    after = dict.fromkeys(names, 0)  # per sending host: the ladder position to search from
    steps = run.ladder.steps
    for row in SEED_ROWS:
        if row.number == 26:
            found[26] = found[25]  # the end-of-data marker lives in the content step
            continue
        start = after[row.src]
        hit = next(
            (
                i
                for i in range(start, len(steps))
                if _fits(row, steps[i], names[row.src], names[row.dst])
            ),
            None,
        )
        found[row.number] = steps[hit] if hit is not None else None
        if hit is not None:
            after[row.src] = hit + 1
    return found


def _fits(row: Row, step: Step, src: str, dst: str) -> bool:
    return step.kind == row.kind and step.src == src and step.dst == dst and row.fits(step)


def facts(run: RunResult) -> list[str]:
    """What explains most differences from the seed: hello verb, VRFY, who closed first."""
    ladder: Ladder = run.ladder
    hello = [verb_of(s) for s in commands(ladder) if verb_of(s) in ("HELO", "EHLO")]
    out = [f"greeted with {'/'.join(dict.fromkeys(hello)) or 'nothing'}"]
    out.append(f"{len(commands(ladder, 'VRFY'))} VRFY")
    for conn in smtp_conns(ladder)[-1:]:
        first = next(iter(closes(ladder, conn)), None)
        out.append(f"{first.src} sent the first {first.kind.upper()}" if first else "no close seen")
    return out


@check("seed.exchange", "Check zero: the seed's 33 steps", "seed/ladder.md; RFC 5321 §3", BOTH)
def seed_exchange(seen: Seen) -> Outcome:
    run = seen.run
    found = match_seed(run)
    hits = sorted({s.index for s in found.values() if s is not None})
    missed = [row for row in SEED_ROWS if found[row.number] is None]
    summary = f"reproduced {len(SEED_ROWS) - len(missed)}/{len(SEED_ROWS)}"
    if not missed:
        return passed(f"{summary}; " + ", ".join(facts(run)), *hits)
    missing = "; ".join(f"{row.number} {row.meaning}" for row in missed)
    note = f"{summary}; not reproduced: {missing}; " + ", ".join(facts(run))
    if ESSENTIAL & {row.number for row in missed}:
        return failed(note, *hits)
    return known(note, *hits)
