"""What every renderer shares: a step's family and tone (for colour), its label, its time,
its packets, and how steps group (one packet, a pipelined group).

Rules kept here:

- Families: ``dns`` (questions, answers), ``tcp`` (SYN ... RST, the ACKs of a close),
  ``smtp`` (commands, replies, content, chunks, TLS) and ``damage`` (gaps, anomalies).
- A tone refines the family for colour: a reply whose code (``detail["code"]``, never the
  text) is 4yz is ``transient``, 5yz ``permanent`` (RFC 5321 §4.2.1: "4yz Transient Negative
  Completion reply", "5yz Permanent Negative Completion reply").
- A label is the step text's first line, ``(+n lines)`` when there are more; a step read
  inside TLS (``detail["tls"]``) starts with ``[in TLS] `` in every renderer (a marker, never
  a renumbering).
- Grouping never renumbers: a group is a run of the ladder's own steps.  Steps the same
  packet completed (same sender, receiver and last evidence packet, consecutive in the
  ladder) are one *packet group*; two or more commands (or BDAT chunks) one side sent on a
  connection before the peer's next reply are one *pipelined group* (RFC 2920 §3.1).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import PurePath

from harness.ladder.model import DAMAGE_KINDS, DNS_KINDS, TCP_KINDS, Ladder, Step, StepKind

RESPONSES = frozenset({"dns-answer", "syn-ack", "reply", "fin-ack", "close-ack"})
_PIPELINED = (StepKind.COMMAND, StepKind.BDAT)
_ENDS_PIPELINE = (StepKind.REPLY, StepKind.FIN, StepKind.RST)


class Tone(StrEnum):
    """What colour a step is drawn in; in order of precedence (an arrow carrying several
    steps takes the first tone among them)."""

    DAMAGE = "damage"
    PERMANENT = "permanent"  # 5yz reply
    TRANSIENT = "transient"  # 4yz reply
    SMTP = "smtp"
    DNS = "dns"
    TCP = "tcp"


def family(step: Step) -> str:
    if step.kind in DNS_KINDS:
        return "dns"
    if step.kind in TCP_KINDS:
        return "tcp"
    return "damage" if step.kind in DAMAGE_KINDS else "smtp"


_REPLY_TONES = {4: Tone.TRANSIENT, 5: Tone.PERMANENT}


def tone(step: Step) -> Tone:
    """The step's colour class: its family, or the class of a 4yz / 5yz reply."""
    code = step.get("code") if step.kind == StepKind.REPLY else None
    if isinstance(code, int) and code // 100 in _REPLY_TONES:
        return _REPLY_TONES[code // 100]
    return Tone(family(step))


def strongest(steps: list[Step]) -> Tone:
    """The tone of an arrow that carries *steps*."""
    return min((tone(s) for s in steps), key=list(Tone).index)


IN_TLS = "[in TLS] "  # marks a step read inside TLS (detail tls=True), numbered as any


def tls_mark(step: Step) -> str:
    return IN_TLS if step.get("tls") else ""


def label(step: Step) -> str:
    first, *more = step.text.split("\n")
    if step.kind == "content":
        first = f"content: {first}"
    first = tls_mark(step) + first
    return f"{first} (+{len(more)} lines)" if more else first


def seconds(ladder: Ladder, step: Step) -> float:
    """The step's time in seconds since the first step."""
    return (step.time - ladder.steps[0].time) / 1e9 if ladder.steps else 0.0


def clip(text: str, width: int) -> str:
    """*text* cut to *width* characters, ending in … when cut."""
    if width <= 0:
        return ""
    return text if len(text) <= width else text[: width - 1] + "…"


def frames(step: Step) -> str:
    """The packets that carried *step*, runs of consecutive numbers as ``a-b``: ``9,12-14``."""
    runs: list[list[int]] = []
    for n in step.evidence:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def packet_groups(ladder: Ladder) -> list[list[Step]]:
    """The steps in order, those one packet completed together in one list (rule 4)."""
    groups: list[list[Step]] = []
    for step in ladder.steps:
        last = groups[-1][-1] if groups else None
        if last is not None and step.evidence and _same_packet(last, step):
            groups[-1].append(step)
        else:
            groups.append([step])
    return groups


def _same_packet(a: Step, b: Step) -> bool:
    return (a.src, a.dst, a.conn) == (b.src, b.dst, b.conn) and a.evidence[-1:] == b.evidence[-1:]


def pipelined_groups(ladder: Ladder) -> list[list[Step]]:
    """Runs of two or more commands (or chunks) a side sent before its peer's next reply."""
    open_runs: dict[tuple[int | None, str], list[Step]] = {}
    done: list[list[Step]] = []
    for step in ladder.steps:
        if step.conn is None:
            continue
        if step.kind in _PIPELINED:
            open_runs.setdefault((step.conn, step.src), []).append(step)
        elif step.kind in _ENDS_PIPELINE:
            done.append(open_runs.pop((step.conn, step.dst), []))
    done += open_runs.values()
    return sorted((run for run in done if len(run) > 1), key=lambda run: run[0].index)


def heading(ladder: Ladder, title: str | None = None) -> str:
    """What a document shows: ``Ladder of seed`` (the caller's name for it, e.g. the
    scenario), else the capture's file name (with its folder when the file is a run's
    ``capture.*``), never a whole path."""
    if title:
        return f"Ladder of {title}"
    if not ladder.source:
        return "Ladder"
    path = PurePath(ladder.source)
    name = f"{path.parent.name}/{path.name}" if path.stem == "capture" else path.name
    return f"Ladder of {name}"
