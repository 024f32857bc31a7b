"""What every renderer shares: a step's family (for colour), its label, its time.

Families: ``dns`` (questions, answers), ``tcp`` (SYN ... RST, the ACKs of a close),
``smtp`` (commands, replies, content, chunks, TLS) and ``damage`` (gaps, anomalies).
A label is the step text's first line, ``(+n lines)`` when there are more.
"""

from __future__ import annotations

from harness.ladder.model import DAMAGE_KINDS, DNS_KINDS, TCP_KINDS, Ladder, Step

RESPONSES = frozenset({"dns-answer", "syn-ack", "reply", "fin-ack", "close-ack"})


def family(step: Step) -> str:
    if step.kind in DNS_KINDS:
        return "dns"
    if step.kind in TCP_KINDS:
        return "tcp"
    return "damage" if step.kind in DAMAGE_KINDS else "smtp"


def label(step: Step) -> str:
    first, *more = step.text.split("\n")
    if step.kind == "content":
        first = f"content: {first}"
    return f"{first} (+{len(more)} lines)" if more else first


def seconds(ladder: Ladder, step: Step) -> float:
    """The step's time in seconds since the first step."""
    return (step.time - ladder.steps[0].time) / 1e9 if ladder.steps else 0.0


def clip(text: str, width: int) -> str:
    """*text* cut to *width* characters, ending in … when cut."""
    if width <= 0:
        return ""
    return text if len(text) <= width else text[: width - 1] + "…"
