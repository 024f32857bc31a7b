"""The ladder: the one data model between a capture and every judgement (design rule 2).

Rules this module keeps:

- A ladder is an ordered list of ``Step`` records, numbered from 1 in the order of the
  packet that completed them, plus metadata: the source file, the address -> name map, the
  decoder's warning counts and, per TCP connection, its ACK ``Coverage``.
- A step is small and immutable: who sent it (``src``) to whom (``dst``), as host names
  where known, else ``addr`` (or ``addr:port`` for the server when both ends share an
  address); its ``kind`` (one of ``KINDS``); a one-line ``text`` (multi-line for a
  multi-line reply); the packet numbers that carried it (``evidence``); its connection id;
  and ``detail``, a tuple of (key, scalar) pairs: reply code, content size/lines/digest,
  DNS rcode/flags, the stream offset an ACK covers, ...
- Pure data ACKs are not steps: whether every command, reply and content was acknowledged
  is the per-connection ``Coverage``, answerable however the ACKs were placed.
- JSON is the interchange form: ``Ladder.from_json(ladder.to_json()) == ladder``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

DNS_KINDS = ("dns-query", "dns-answer")
TCP_KINDS = ("syn", "syn-ack", "ack", "fin", "rst", "fin-ack", "close-ack")
SMTP_KINDS = ("command", "reply", "content", "bdat", "tls")
DAMAGE_KINDS = ("gap", "anomaly")
KINDS = frozenset(DNS_KINDS + TCP_KINDS + SMTP_KINDS + DAMAGE_KINDS)

Scalar = str | int | bool | None
Detail = tuple[tuple[str, Scalar], ...]


def detail(**items: Scalar) -> Detail:
    """A step's detail from keyword arguments (None values left out)."""
    return tuple((k, v) for k, v in items.items() if v is not None)


@dataclass(frozen=True, slots=True)
class Step:
    index: int
    time: int  # nanoseconds since the Unix epoch, of the packet that completed the step
    src: str
    dst: str
    kind: str
    text: str
    evidence: tuple[int, ...] = ()
    conn: int | None = None
    detail: Detail = ()

    def get(self, key: str, default: Scalar = None) -> Scalar:
        """One value of ``detail``."""
        return dict(self.detail).get(key, default)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "evidence": list(self.evidence), "detail": dict(self.detail)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Step:
        return cls(
            **{
                **data,
                "evidence": tuple(data["evidence"]),
                "detail": tuple(data["detail"].items()),
            }
        )


@dataclass(frozen=True, slots=True)
class Coverage:
    """How many SMTP units (commands, replies, content, chunks) the peer acknowledged."""

    conn: int
    units: int
    unacked: tuple[int, ...] = ()  # step indexes never acknowledged

    @property
    def complete(self) -> bool:
        return not self.unacked


@dataclass(slots=True)
class Ladder:
    steps: list[Step]
    source: str = ""
    hosts: dict[str, str] = field(default_factory=dict)  # address -> host name
    warnings: dict[str, int] = field(default_factory=dict)
    coverage: dict[int, Coverage] = field(default_factory=dict)  # by connection id

    @property
    def participants(self) -> list[str]:
        """Every src/dst, in order of first appearance (the columns of a diagram)."""
        return list(dict.fromkeys(name for s in self.steps for name in (s.src, s.dst)))

    def to_json(self, indent: int | None = 1) -> str:
        data = {
            "source": self.source,
            "hosts": self.hosts,
            "warnings": self.warnings,
            "coverage": [asdict(c) for c in self.coverage.values()],
            "steps": [s.to_dict() for s in self.steps],
        }
        return json.dumps(data, indent=indent, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Ladder:
        data = json.loads(text)
        coverage = (Coverage(c["conn"], c["units"], tuple(c["unacked"])) for c in data["coverage"])
        return cls(
            steps=[Step.from_dict(s) for s in data["steps"]],
            source=data["source"],
            hosts=data["hosts"],
            warnings=data["warnings"],
            coverage={c.conn: c for c in coverage},
        )
