"""The ladder: the one data model between a capture and every judgement (design rule 2).

Rules this module keeps:

- A ladder is an ordered list of ``Step`` records, numbered from 1 in the order of the
  packet that completed them, plus metadata: the source file, the address -> name map, the
  decoder's warning counts and, per TCP connection, its ACK ``Coverage``.  Its ``queries``
  are a cache of the judges' questions, not data.
- A step is small and immutable: who sent it (``src``) to whom (``dst``), as host names
  where known, else ``addr`` (or ``addr:port`` for the server when both ends share an
  address); its ``kind`` (a ``StepKind``); a one-line ``text`` (multi-line for a
  multi-line reply); the packet numbers that carried it (``evidence``); its connection id;
  and ``detail``, a tuple of (key, value) pairs, a value being a scalar or a tuple of
  values: reply code, content size/lines/digest, DNS qname/qtype/rcode/records, the stream
  offset an ACK covers, an anomaly's kind, ...  Judges read ``detail``, never the
  rendered ``text``.
- Pure data ACKs are not steps: whether every command, reply and content was acknowledged
  is the per-connection ``Coverage``, answerable however the ACKs were placed.
- JSON is the interchange form: ``Ladder.from_json(ladder.to_json()) == ladder``; it
  carries a ``schema_version`` (``harness.formats``), and one this release does not read
  is an error, not a misreading.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from harness.formats import WRITES, Format, version_of


class StepKind(StrEnum):
    """What a step is.  A ``StrEnum``: ``step.kind == "syn"`` holds, and JSON keeps the
    string; new kinds may be added where the wire has them, never renamed."""

    DNS_QUERY = "dns-query"
    DNS_ANSWER = "dns-answer"
    SYN = "syn"
    SYN_ACK = "syn-ack"
    ACK = "ack"  # the handshake's third packet
    FIN = "fin"
    RST = "rst"
    FIN_ACK = "fin-ack"  # the ACK of the first FIN of a connection
    CLOSE_ACK = "close-ack"  # the ACK of the second FIN
    COMMAND = "command"
    REPLY = "reply"
    CONTENT = "content"
    BDAT = "bdat"
    TLS = "tls"  # TLS records not decrypted (no key log): counted, not read
    # a TLS handshake: detail version, cipher, sni, subject, issuer, not_before, not_after;
    # every step read inside TLS carries detail tls=True.  The same step with no key log (or
    # a suite not decrypted): read in the clear, with decrypted=False, version, cipher and
    # sni, and the certificate's details only before TLS 1.3 (1.3 encrypts it); the records
    # after it are then a ``tls`` step per direction
    TLS_HANDSHAKE = "tls-handshake"
    GAP = "gap"
    ANOMALY = "anomaly"
    AUTH_RESPONSE = "auth-response"  # a client line answering a 334 (RFC 4954 §4)


DNS_KINDS = (StepKind.DNS_QUERY, StepKind.DNS_ANSWER)
TCP_KINDS = (
    StepKind.SYN,
    StepKind.SYN_ACK,
    StepKind.ACK,
    StepKind.FIN,
    StepKind.RST,
    StepKind.FIN_ACK,
    StepKind.CLOSE_ACK,
)
SMTP_KINDS = (
    StepKind.COMMAND,
    StepKind.REPLY,
    StepKind.CONTENT,
    StepKind.BDAT,
    StepKind.TLS,
    StepKind.TLS_HANDSHAKE,
    StepKind.AUTH_RESPONSE,
)
DAMAGE_KINDS = (StepKind.GAP, StepKind.ANOMALY)
KINDS = frozenset(StepKind)

Scalar = str | int | bool | None
# a detail value: a scalar, or a tuple of values (DNS records: (section, name, type, rdata))
Value = Scalar | tuple["Value", ...]
Detail = tuple[tuple[str, Value], ...]


def detail(**items: Value) -> Detail:
    """A step's detail from keyword arguments (None values left out)."""
    return tuple([(k, v) for k, v in items.items() if v is not None])  # a list: no generator


def _frozen(value: Any) -> Value:
    """A JSON value back in detail form: lists become tuples, all the way down."""
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


@dataclass(frozen=True, slots=True)
class Step:
    index: int
    time: int  # nanoseconds since the Unix epoch, of the packet that completed the step
    src: str
    dst: str
    kind: StepKind
    text: str
    evidence: tuple[int, ...] = ()
    conn: int | None = None
    detail: Detail = ()

    def __post_init__(self) -> None:
        if self.kind.__class__ is not StepKind:
            object.__setattr__(self, "kind", StepKind(self.kind))

    def get(self, key: str, default: Value = None) -> Value:
        """One value of ``detail`` (a scan: a detail has a handful of keys, and building a
        dict for each look-up cost judges a third of their time)."""
        for name, value in self.detail:
            if name == key:
                return value
        return default

    def to_dict(self) -> dict[str, Any]:
        """The step as JSON data (field by field: ``asdict`` deep-copies, 5x slower)."""
        return {
            "index": self.index,
            "time": self.time,
            "src": self.src,
            "dst": self.dst,
            "kind": self.kind.value,
            "text": self.text,
            "evidence": list(self.evidence),
            "conn": self.conn,
            "detail": dict(self.detail),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Step:
        return cls(
            **{
                **data,
                "evidence": tuple(data["evidence"]),
                "detail": tuple((k, _frozen(v)) for k, v in data["detail"].items()),
            }
        )


def new_step(
    index: int,
    time: int,
    src: str,
    dst: str,
    kind: StepKind,
    text: str,
    evidence: tuple[int, ...],
    conn: int | None,
    detail: Detail,
) -> Step:
    """``Step(...)`` of values already in form (``kind`` a ``StepKind``), at half the cost:
    each slot set by its descriptor, where the frozen ``__init__`` calls
    ``object.__setattr__`` by name for each and then ``__post_init__`` (the dissector makes
    a step per command, reply and TCP control packet)."""
    step = _blank(Step)
    _index(step, index)
    _time(step, time)
    _src(step, src)
    _dst(step, dst)
    _kind(step, kind)
    _text(step, text)
    _evidence(step, evidence)
    _conn(step, conn)
    _detail(step, detail)
    return step


_blank = object.__new__
_index, _time, _src, _dst, _kind, _text, _evidence, _conn, _detail = (
    getattr(Step, name).__set__ for name in Step.__slots__
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
    # what the judges asked of the ladder, kept by ``harness.checks.steps``: not data (no
    # JSON, no part of equality, not carried over by ``dataclasses.replace``)
    queries: dict[object, object] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def participants(self) -> list[str]:
        """Every src/dst, in order of first appearance (the columns of a diagram)."""
        return list(dict.fromkeys(name for s in self.steps for name in (s.src, s.dst)))

    def to_json(self, indent: int | None = 1) -> str:
        data = {
            "schema_version": WRITES[Format.LADDER],
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
        version_of(data, Format.LADDER, "JSON ladder")
        coverage = (Coverage(c["conn"], c["units"], tuple(c["unacked"])) for c in data["coverage"])
        return cls(
            steps=[Step.from_dict(s) for s in data["steps"]],
            source=data["source"],
            hosts=data["hosts"],
            warnings=data["warnings"],
            coverage={c.conn: c for c in coverage},
        )
