"""A capture split into flows as they end: SMTP sessions, TLS sessions, DNS, other TCP.

Rules this module keeps:

- One pass, streaming (``Splitter.flows``): the steps of a TCP connection are held until
  it is finished (closed and lingered, idle for ``idle`` seconds of capture time, reused
  by a new SYN, or the end of the capture), then given out as one ``Flow`` and forgotten.
  A DNS message over UDP is a flow of its own, given out at once.  Memory is bounded by
  the connections open at once, never by the packets or the flows of the file.
- What a connection is, the dissector decides (``harness.ladder.dissect``): SMTP on ports
  25, 465, 587, 2525 and the ``ports`` given, on any port whose server opens with a 220
  greeting, and behind an HTTP CONNECT tunnel.  A connection on an SMTP port whose client
  opens with a TLS record is a TLS session (port 465 is implicit TLS, RFC 8314 §3): its
  SMTP is not readable without keys; with the ``keylog`` holding its secrets it is an SMTP
  session read inside TLS.
- SMTP and TLS flows are sessions, numbered from 1 in the order they end (the order they
  are given out).  Step numbers stay those of the whole capture, in capture order, so a
  session shown alone cites the same steps as it does among the rest.
- A flow's ladder holds only its own steps, with its connection's ACK coverage.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import count
from typing import NamedTuple

from harness.ladder.dissect import SMTP_PORTS, Dissector, _clean
from harness.ladder.model import Coverage, Ladder, Step
from harness.ladder.tcpstream import Event
from harness.tls.keylog import KeyLog

DEFAULT_IDLE = 600.0  # seconds of capture time: RFC 5321 §4.5.3.2.7's 5-minute server
# timeout, twice over


class FlowKind(StrEnum):
    SMTP = "smtp"
    TLS = "tls"  # implicit TLS (RFC 8314 §3), or TLS on an SMTP port without STARTTLS
    DNS = "dns"  # a DNS message over UDP, or a DNS connection over TCP
    OTHER = "other"  # TCP that is neither: its control steps only


SESSION_KINDS = frozenset({FlowKind.SMTP, FlowKind.TLS})
_KIND_OF_MODE = {"smtp": FlowKind.SMTP, "tls": FlowKind.TLS, "dns": FlowKind.DNS}


@dataclass(slots=True)
class Flow:
    """The steps of one connection (or one UDP DNS message), in capture order."""

    kind: FlowKind
    steps: list[Step]
    conn: int | None = None
    client: tuple[str, int] | None = None  # (address, port) of the connection's client
    server: tuple[str, int] | None = None
    session: int | None = None  # for SMTP and TLS flows: 1, 2, ... in the order they end
    end: str = ""  # why the connection was finished: closed, rst, idle, reused, end
    coverage: dict[int, Coverage] = field(default_factory=dict)

    def ladder(self, source: str = "", hosts: dict[str, str] | None = None) -> Ladder:
        return Ladder(
            steps=self.steps, source=source, hosts=dict(hosts or {}), coverage=self.coverage
        )


class _Ended(NamedTuple):
    """Marker the splitter slips into the dissector's step stream when a connection ends."""

    conn: int
    mode: str
    client: tuple[str, int]
    server: tuple[str, int]
    end: str


class Splitter(Dissector):
    """One pass over a capture, flow by flow; ``warnings`` is complete after it."""

    def __init__(
        self,
        hosts: dict[str, str] | None = None,
        *,
        ports: Iterable[int] = (),
        idle: float = DEFAULT_IDLE,
        keylog: KeyLog | None = None,
        file_names: bool = False,
    ) -> None:
        smtp_ports = SMTP_PORTS | frozenset(ports)
        super().__init__(
            hosts, smtp_ports=smtp_ports, idle=idle, keylog=keylog, file_names=file_names
        )
        self._held: dict[int, list[Step]] = {}
        self._sessions = count(1)
        self.packets = 0  # the highest packet number a step has cited so far (progress)

    @property
    def open_flows(self) -> int:
        """Connections whose steps are held (open, or waiting to be finished)."""
        return len(self._held)

    def oldest_held(self) -> int | None:
        """The number of the oldest step held (None when none is)."""
        return min((steps[0].index for steps in self._held.values() if steps), default=None)

    @staticmethod
    def source(path: str) -> str:
        """The capture's name as a ladder gives it."""
        return _clean(str(path)) or ""

    def flows(self, path: str) -> Iterator[Flow]:
        """Every flow of the capture at *path*, each as it ends."""
        held = self._held
        for item in self.steps(str(path)):
            if item.__class__ is _Ended:
                yield self._flow(item)  # type: ignore[arg-type]
                continue
            if item.evidence and item.evidence[-1] > self.packets:
                self.packets = item.evidence[-1]
            if item.conn is None:
                yield Flow(FlowKind.DNS, [item])
            elif (steps := held.get(item.conn)) is not None:
                steps.append(item)
            else:
                held[item.conn] = [item]

    def sessions(self, path: str) -> Iterator[Flow]:
        """The SMTP and TLS sessions of the capture at *path*, each as it ends."""
        return (flow for flow in self.flows(path) if flow.session is not None)

    def _closed(self, event: Event, mode: str, out: list[Step]) -> None:
        c = event.conn
        out.append(_Ended(c.id, mode, c.client, c.server, c.end or ""))  # type: ignore[arg-type]

    def _flow(self, ended: _Ended) -> Flow:
        steps = self._held.pop(ended.conn, [])
        kind = _KIND_OF_MODE.get(ended.mode, FlowKind.OTHER)
        coverage = self.coverage.pop(ended.conn, None)
        return Flow(
            kind,
            steps,
            ended.conn,
            ended.client,
            ended.server,
            next(self._sessions) if kind in SESSION_KINDS else None,
            ended.end,
            {} if coverage is None else {ended.conn: coverage},
        )
