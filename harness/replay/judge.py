"""Judging a replay: each live reply against its captured one, and the two ladders.

Rules kept here:

- A reply is compared as the issue says: the code exactly, the enhanced status code
  (RFC 3463, at the start of the first line's text, RFC 2034 §3) exactly, the text after
  the normalisation masks (``harness.ladder.normalise.MASKS``), the captured text with the
  mapping's rewrites applied first when it answers a command the mapping rewrites.
  Another code (or no reply) *diverges*: the session's state may differ from there on
  (RFC 5321 §4.2.1: the code is what a client acts on); a status code or text difference
  is a difference, and the session goes on the same.
- The ladders compared are the session's own steps (its TCP and SMTP steps, not DNS,
  which depends on the peer), the captured ones renamed onto the lab's hosts and
  rewritten by the mapping, in ``harness.ladder.compare``'s way, contents by their digests
  too (the replay sends them byte for byte); a replay that stopped is compared up to the
  reply it stopped at, one that could not connect up to the greeting (its SYN answered
  by a reset, or by nothing, differs there).  The diff is ``compare.format_diff``'s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from harness.ladder.compare import Verdict, _quoted, compare
from harness.ladder.model import Ladder, Step, StepKind
from harness.ladder.normalise import Normaliser
from harness.replay.script import MAPPED_VERBS, Mapping
from harness.replay.session import CapturedReply, Session
from harness.smtp.events import Reply

_STATUS = re.compile(r"([245]\.\d{1,3}\.\d{1,3})(?=\s|$)")
_SYN_PORT = re.compile(r"SYN to port \d+")


@dataclass(frozen=True)
class Judged:
    captured: CapturedReply
    live: Reply | None  # None: no reply came
    differences: list[str]

    @property
    def diverges(self) -> bool:
        return self.live is None or self.live.code != self.captured.code


def status_code(lines: tuple[str, ...] | list[str]) -> str | None:
    found = _STATUS.match(lines[0]) if lines else None
    return found.group(1) if found else None


def masked(code: int | None, lines: tuple[str, ...] | list[str]) -> str:
    """The reply as the ladder shows it (``250-...`` lines), after the masks: a mask may
    need the code (the greeting's ``BANNER``)."""
    prefix = "" if code is None else str(code)
    last = len(lines) - 1
    shown = [f"{prefix}{'-' if i < last else ' '}{line}" for i, line in enumerate(lines)]
    text = Normaliser().text("\n".join(shown))
    return "\n".join(line[len(prefix) + 1 :] for line in text.split("\n"))


def reply_differences(captured: CapturedReply, live: Reply, mapping: Mapping) -> list[str]:
    """What differs, each as ``what old -> new`` (rules above)."""
    out = []
    if captured.code != live.code:
        out.append(f"code {captured.code} -> {live.code}")
    statuses = status_code(captured.lines), status_code(live.lines)
    if statuses[0] != statuses[1]:
        out.append(f"enhanced status code {statuses[0]} -> {statuses[1]}")
    mapped = captured.answers in MAPPED_VERBS
    rewritten = [mapping.rewritten(line) if mapped else line for line in captured.lines]
    texts = masked(captured.code, rewritten), masked(live.code, live.lines)
    if texts[0] != texts[1]:
        out.append(f"text {_quoted(texts[0], 72)} -> {_quoted(texts[1], 72)}")
    return out


def captured_ladder(
    session: Session, full: Ladder, mapping: Mapping, names: tuple[str, str], port: int
) -> Ladder:
    """The session's captured steps on the lab's host names (rules above)."""
    client, server = names
    steps = []
    for s in session.steps:  # one connection: each end is its client or its server
        verb = s.get("verb") if s.kind == StepKind.COMMAND else s.get("answers")
        text = mapping.rewritten(s.text) if verb in MAPPED_VERBS else s.text
        if s.kind == StepKind.SYN:
            text = _SYN_PORT.sub(f"SYN to port {port}", text)
        src, dst = (client, server) if s.src == session.client else (server, client)
        steps.append(replace(s, src=src, dst=dst, text=text))
    return _only(full, steps, session.conn)


def live_ladder(full: Ladder, names: tuple[str, str]) -> Ladder:
    """The live connection's steps: the first SYN from the client's host to the target's."""
    syns = [s for s in full.steps if s.kind == StepKind.SYN and (s.src, s.dst) == names]
    if not syns:
        return Ladder([], full.source)
    conn = syns[0].conn
    return _only(full, [s for s in full.steps if s.conn == conn], conn)


def _only(full: Ladder, steps: list[Step], conn: int | None) -> Ladder:
    coverage = {c: v for c, v in full.coverage.items() if c == conn}
    return Ladder(steps, full.source, full.hosts, full.warnings, coverage)


def cut_after_reply(ladder: Ladder, replies: int | None) -> Ladder:
    """The ladder up to its ``replies``-th reply step (all of it when None; 0: up to the
    first reply, the greeting, excluded: a replay that could not connect)."""
    if replies is None:
        return ladder
    at = [i for i, step in enumerate(ladder.steps) if step.kind == StepKind.REPLY]
    if replies == 0:
        end = at[0] if at else len(ladder.steps)
    else:
        end = at[replies - 1] + 1 if replies <= len(at) else len(ladder.steps)
    return replace(ladder, steps=ladder.steps[:end], coverage={})


def compare_session(live: Ladder, captured: Ladder, stopped_after: int | None) -> Verdict:
    """The live session against the captured one; contents by their digests too: the replay
    sent them byte for byte."""
    live, captured = cut_after_reply(live, stopped_after), cut_after_reply(captured, stopped_after)
    return compare(live, captured, digest=True)
