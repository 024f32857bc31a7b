"""Normalise a ladder: take out what varies between runs, keep what the protocol fixes.

Rules this module keeps (design rule 6), applied in this order:

| what varies          | rule                                                                   |
|----------------------|------------------------------------------------------------------------|
| duplicate datagrams  | a DNS step over UDP equal to an earlier one in everything decoded (id, |
|                      | flags, question, records; src, dst) within ``DUPLICATE_WINDOW_NS`` of  |
|                      | it is folded into it: gone, counted in its ``duplicates`` detail (the  |
|                      | network copied it; TCP's own duplicates are already folded by the      |
|                      | dissector).  The ladder keeps no port, so "the same bytes" is judged   |
|                      | on what was decoded                                                    |
| RST after the close  | an RST from the side that sent the second FIN, once that FIN was       |
|                      | acknowledged (its ``close-ack`` step came first), answers a stray      |
|                      | segment: an ACK that jitter put behind the FIN, a copy, a retransmit,  |
|                      | reaching a socket already CLOSED (RFC 9293 §3.10.7.1; the other side   |
|                      | is in TIME-WAIT and answers with an ACK).  It is folded into the       |
|                      | ``close-ack`` (``stray_rsts`` detail); any other RST is compared       |
| DNS retries          | a UDP question the same client already asked the same server (name,    |
|                      | type, class), and any later UDP answer to a question already answered, |
|                      | is a retry: `` (retry)`` ends its text, ``retry_of`` (detail) is the   |
|                      | step it repeats.  A retry may repeat the very datagram (our stub and   |
|                      | glibc resend the same id): later than the window it is a retry, not a  |
|                      | duplicate, since every resolver here waits at least 1 s before asking  |
|                      | again (the lab's resolv.conf ``timeout:1``, the stub 2 s).  A client   |
|                      | that asks twice on purpose (Exim) shows its second question as a retry |
|                      | in the golden capture too.  ``compare`` accepts a retry the golden     |
|                      | ladder does not have                                                   |
| addresses            | ``hosts`` (address -> name) renames ``src``/``dst``; ``addr:port`` keeps |
|                      | only the address's name when the port is ephemeral (>= 1024, not SMTP) |
| ports, ISNs          | already gone: the dissector shows no client port and relative offsets  |
| times                | kept on each step for display; ``compare`` never looks at them         |
| connection ids       | renumbered 1, 2, ... in order of first appearance                      |
| variable text        | ``MASKS``: each (regex, label) replaces what it matches in step text   |
|                      | and string details with a stand-in ``<LABEL-n>``; ``n`` counts distinct |
|                      | values per label in this ladder, so the same value twice gets the same |
|                      | stand-in (Exim's test suite does this with queue ids)                  |
| content digest       | replaced by ``<DIGEST>`` unless ``digest=True`` (Received headers and  |
|                      | dates inside the message differ between runs; size and lines stay)     |

A mask with a group named ``value`` replaces only that group (``queued as (?P<value>\\w+)``).
Masks run in list order, so a date inside a banner is a DATE before the banner is masked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import replace

from harness.ladder.dissect import SMTP_PORTS
from harness.ladder.model import DNS_KINDS, Ladder, Step, StepKind

Mask = tuple[str, str]  # (regular expression, label)
DUPLICATE_WINDOW_NS = 500_000_000  # copies of one datagram arrive within this of each other
RETRY = " (retry)"

_MONTH = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_ZONE = r"(?:[+-]\d{4}|UT|GMT|[ECMP][SD]T|Z)"

MASKS: tuple[Mask, ...] = (
    # RFC 5322 date-time, with optional day name, seconds, zone and comment
    (
        rf"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun),\s*)?\d{{1,2}}\s+{_MONTH}\s+\d{{2,4}}\s+"
        rf"\d{{1,2}}:\d{{2}}(?::\d{{2}})?(?:\s*{_ZONE})?(?:\s*\([A-Za-z ]+\))?",
        "DATE",
    ),
    (r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?", "DATE"),
    (r"(?i)message-id:\s*(?P<value><[^>\s]+>)", "MSGID"),
    # queue ids: Exim (old 6-6-2 and 4.97+ 6-11-4), then those named by context
    (r"\b[0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4}\b", "QUEUEID"),
    (r"(?i)\bqueued as (?P<value>[0-9A-Za-z]+)", "QUEUEID"),  # Postfix, short or long
    (r"(?i)\bwith [a-z]+ id (?P<value>[0-9A-Za-z.]+)", "QUEUEID"),  # Received: ... id X
    (r"(?i)^250 (?:\d\.\d\.\d )?(?P<value>[0-9A-Za-z]{8,14}) Message accepted", "QUEUEID"),
    (r"(?i)\[InternalId=(?P<value>\d+)\]", "QUEUEID"),
    (r"\b1[5-9]\d{8}(?:\.\d+)?\b", "TIMESTAMP"),  # Unix time, 2017 to 2033
    (r"(?i)\bpid[= ](?P<value>\d+)", "PID"),
    (r"\b[a-z]+(?:/[a-z]+)*\[(?P<value>\d+)\]", "PID"),  # postfix/smtpd[1234]
    # what a greeting says after the host name (version, date, mood)
    (r"\A220[ -]\S+ (?P<value>.+)", "BANNER"),
)
_DIGEST = re.compile(r"sha256:[0-9a-f]+")


class Normaliser:
    """Applies the rules above; one instance per ladder (stand-ins count per ladder)."""

    def __init__(
        self,
        masks: Iterable[Mask] = MASKS,
        hosts: dict[str, str] | None = None,
        *,
        digest: bool = False,
    ) -> None:
        self._masks = [(re.compile(pattern, re.MULTILINE), label) for pattern, label in masks]
        self._hosts = hosts or {}
        self._digest = digest
        self._seen: dict[str, dict[str, int]] = {}
        self._conns: dict[int, int] = {}

    def ladder(self, ladder: Ladder) -> Ladder:
        steps = [self.step(s) for s in fold_datagrams(fold_stray_rsts(ladder.steps))]
        coverage = {
            self._conn(c): replace(cov, conn=self._conn(c)) for c, cov in ladder.coverage.items()
        }
        return replace(ladder, steps=steps, coverage=coverage)

    def step(self, step: Step) -> Step:
        return replace(
            step,
            src=self._name(step.src),
            dst=self._name(step.dst),
            text=self.text(step.text),
            conn=None if step.conn is None else self._conn(step.conn),
            detail=tuple(
                (k, self._value(k, v) if isinstance(v, str) else v) for k, v in step.detail
            ),
        )

    def text(self, text: str) -> str:
        for pattern, label in self._masks:
            text = pattern.sub(lambda m, label=label: self._stand_in(m, label), text)
        return text if self._digest else _DIGEST.sub("sha256:<DIGEST>", text)

    def _value(self, key: str, value: str) -> str:
        if key == "sha256" and not self._digest:
            return "<DIGEST>"
        return self.text(value)

    def _stand_in(self, match: re.Match[str], label: str) -> str:
        group = "value" if "value" in match.re.groupindex else 0
        seen = self._seen.setdefault(label, {})
        stand_in = f"<{label}-{seen.setdefault(match.group(group), len(seen) + 1)}>"
        if group == 0:
            return stand_in
        start, end = match.span(group)
        whole = match.group(0)
        offset = match.start(0)
        return whole[: start - offset] + stand_in + whole[end - offset :]

    def _name(self, name: str) -> str:
        addr, port = _split_port(name)
        addr = self._hosts.get(addr, addr)
        if port is None or (port >= 1024 and port not in SMTP_PORTS):
            return addr
        return f"{addr}:{port}"

    def _conn(self, conn: int) -> int:
        return self._conns.setdefault(conn, len(self._conns) + 1)


def normalise(
    ladder: Ladder,
    masks: Sequence[Mask] = MASKS,
    hosts: dict[str, str] | None = None,
    *,
    digest: bool = False,
) -> Ladder:
    """*ladder* with the rules of this module applied."""
    return Normaliser(masks, hosts, digest=digest).ladder(ladder)


def fold_stray_rsts(steps: Sequence[Step]) -> list[Step]:
    """*steps* with the rule "RST after the close" applied."""
    out: list[Step] = []
    closed: dict[int, tuple[int, str]] = {}  # conn -> (close-ack's place, last FIN's sender)
    strays: dict[int, int] = {}  # place -> RSTs folded into it
    for step in steps:
        place, last = closed.get(step.conn, (None, None))
        if step.kind == StepKind.RST and place is not None and step.src == last:
            strays[place] = strays.get(place, 0) + 1
            continue
        if step.kind == StepKind.CLOSE_ACK and step.conn is not None:
            closed[step.conn] = (len(out), step.dst)
        out.append(step)
    for place, n in strays.items():
        out[place] = replace(out[place], detail=(*out[place].detail, ("stray_rsts", n)))
    return out


def fold_datagrams(steps: Sequence[Step]) -> list[Step]:
    """*steps* with the rules "duplicate datagrams" and "DNS retries" applied."""
    out: list[Step] = []
    first: dict[tuple, int] = {}  # a datagram as decoded -> its place in out
    copies: dict[int, int] = {}  # place in out -> copies folded into it
    seen: dict[tuple, int] = {}  # (kind, client, server, question) -> first step's index
    for step in steps:
        if step.kind not in DNS_KINDS or step.get("transport") != "udp":
            out.append(step)
            continue
        same = (step.kind, step.src, step.dst, step.text, step.detail)
        place = first.get(same)
        if place is not None and step.time - out[place].time <= DUPLICATE_WINDOW_NS:
            copies[place] = copies.get(place, 0) + 1
            continue
        first.setdefault(same, len(out))
        question = (
            step.kind,
            *_ends(step),
            step.get("qname"),
            step.get("qtype"),
            step.get("qclass"),
        )
        earlier = seen.setdefault(question, step.index)
        out.append(step if earlier == step.index else _retry(step, earlier))
    for place, n in copies.items():
        out[place] = replace(out[place], detail=(*out[place].detail, ("duplicates", n)))
    return out


def _ends(step: Step) -> tuple[str, str]:
    """(client, server) of a DNS step."""
    return (step.src, step.dst) if step.kind == StepKind.DNS_QUERY else (step.dst, step.src)


def _retry(step: Step, of: int) -> Step:
    return replace(step, text=step.text + RETRY, detail=(*step.detail, ("retry_of", of)))


def _split_port(name: str) -> tuple[str, int | None]:
    """``addr:port`` or ``[v6]:port`` -> (addr, port); anything else -> (name, None)."""
    m = re.fullmatch(r"\[(.+)\]:(\d+)|([^:]+):(\d+)", name)
    if m is None:
        return name, None
    return (m.group(1) or m.group(3)), int(m.group(2) or m.group(4))
