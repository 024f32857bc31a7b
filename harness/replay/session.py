"""One captured SMTP session, read for replay: its steps, its bytes, its turns.

Rules kept here:

- The capture is untrusted: everything here is validated before a lab exists, and a
  capture that cannot be replayed is a ``HarnessError`` (one line: file, session, packet).
  Nothing from it goes anywhere but into the data returned (never to a shell).
- A session is a TCP connection whose ladder has SMTP steps; sessions are numbered from 1
  in the order of their first step (``session_steps``: the one place that picks them, so
  the captures issue's session splitting can replace it).
- Its bytes are read by the core's ``Observer`` fed each direction in packet order, as the
  dissector does: every client unit (command, content up to its end marker, BDAT chunk,
  an unfinished tail) is a ``Unit``, a slice of the client stream, so the units together
  are the client's bytes exactly (look-alike endings and all); each server reply is a
  ``CapturedReply``.
- Each captured reply carries the number of its ladder step, for the output and diff.
- Who closed first is kept (``client_closes_first``), and whether the client's FIN came
  before the server's last reply (``half_closed``: a FIN sent with QUIT, before its 221),
  and whether the server reset the connection (``server_reset``).
- A ``Turn`` is what the client sent before it waited (its units, cut where the capture's
  segments were cut) and the replies that came before it sent again: a pipelined group is
  one turn.  The first turn sends nothing and waits for the greeting.
- Not replayable, refused: no SMTP session, ``number`` out of range, bytes missing from
  either direction (a gap), TLS after STARTTLS, a server that does not open with one of
  the greetings RFC 5321 allows (``GREETINGS``: 220, or 554 "no SMTP service here",
  §3.1, §4.3.2; 421 "service not available", §3.8), more than ``MAX_CLIENT_BYTES`` from
  the client or ``MAX_TURNS`` turns.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from harness.capture.pcapfile import read
from harness.errors import HarnessError
from harness.ladder.dissect import dissect
from harness.ladder.model import Ladder, Step, StepKind
from harness.ladder.packets import Decoder
from harness.ladder.tcpstream import CLIENT, Event, Reassembler
from harness.smtp import events as smtp
from harness.smtp.events import Direction
from harness.smtp.protocol import Observer

MAX_CLIENT_BYTES = 32 * 2**20  # as a scenario's message (scenario.MAX_MESSAGE)
MAX_TURNS = 10_000
GREETINGS = (220, 421, 554)  # the codes a connection may open with (rules above)
SMTP_STEP_KINDS = (StepKind.COMMAND, StepKind.REPLY, StepKind.CONTENT, StepKind.BDAT)
_DIRECTIONS = (Direction.CLIENT, Direction.SERVER)


@dataclass(frozen=True)
class Unit:
    """One client unit: its bytes as captured, where they start in the client stream, and
    (for a command) its verb and argument or address, which a mapping may rewrite."""

    raw: bytes
    start: int
    verb: str = ""  # "" for content, a chunk or an unfinished tail
    argument: str | None = None  # HELO/EHLO: the name; MAIL/RCPT: the address

    @property
    def end(self) -> int:
        return self.start + len(self.raw)


@dataclass(frozen=True)
class CapturedReply:
    code: int | None
    lines: tuple[str, ...]
    time: int  # ns, the packet that completed it
    step: int = 0  # its step in the capture's ladder
    answers: str | None = None  # the command key it answers ("RCPT", "<greeting>")

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass
class Turn:
    units: list[Unit] = field(default_factory=list)
    cuts: list[tuple[int, int]] = field(default_factory=list)  # (stream offset, time) ends
    replies: list[CapturedReply] = field(default_factory=list)


@dataclass
class Session:
    path: str
    number: int
    conn: int
    client: str  # address
    server: tuple[str, int]
    steps: list[Step]  # the session's steps in the capture's ladder (names: addresses)
    turns: list[Turn]
    client_closes_first: bool
    half_closed: bool = False  # the client's FIN came before the server's last reply
    server_reset: bool = False  # the server ended the connection with an RST

    @property
    def commands(self) -> list[Unit]:
        return [u for t in self.turns for u in t.units if u.verb]


def smtp_connections(ladder: Ladder) -> list[int]:
    """The connection ids that carry SMTP, in order of their first step."""
    conns = (s.conn for s in ladder.steps if s.kind in SMTP_STEP_KINDS and s.conn is not None)
    return list(dict.fromkeys(conns))


def session_steps(ladder: Ladder, number: int) -> list[Step]:
    """The steps of session ``number`` (from 1): one TCP connection with SMTP steps.
    (The captures issue's session splitting, harness/ladder/sessions.py, may replace this.)"""
    conns = smtp_connections(ladder)
    if not conns:
        raise HarnessError(f"{ladder.source}: no SMTP session in the capture")
    if not 1 <= number <= len(conns):
        raise HarnessError(
            f"{ladder.source}: --session {number}: the capture has {len(conns)} SMTP "
            f"session(s), numbered 1 to {len(conns)}"
        )
    return [s for s in ladder.steps if s.conn == conns[number - 1]]


def read_session(path: str, number: int = 1) -> Session:
    """Session ``number`` of the capture at ``path``, validated for replay."""
    ladder = dissect(path)
    steps = session_steps(ladder, number)
    conn = steps[0].conn
    assert conn is not None
    events = [e for e in _tcp_events(path) if e.conn.id == conn]
    where = f"{path}: session {number}"
    for e in events:
        if e.kind == "gap":
            raise HarnessError(
                f"{where}: {e.length} bytes missing from the capture at packet {e.first}: "
                "a session is replayed byte for byte"
            )
    first = events[0].conn
    turns = _numbered(_Turns(where).build(events), steps)
    fins = [e.direction for e in events if e.kind == "fin"]
    client_fin = next((e.time for e in events if e.kind == "fin" and e.direction == CLIENT), None)
    last_reply = max((r.time for t in turns for r in t.replies), default=0)
    return Session(
        path=path,
        number=number,
        conn=conn,
        client=first.client[0],
        server=first.server,
        steps=steps,
        turns=turns,
        client_closes_first=not fins or fins[0] == CLIENT,
        half_closed=client_fin is not None and client_fin < last_reply,
        server_reset=any(e.kind == "rst" and e.direction != CLIENT for e in events),
    )


def _numbered(turns: list[Turn], steps: list[Step]) -> list[Turn]:
    """Each captured reply with the number of its ladder step (the same core read both)."""
    numbers = iter([s.index for s in steps if s.kind == StepKind.REPLY])
    for turn in turns:
        turn.replies = [replace(r, step=next(numbers, 0)) for r in turn.replies]
    return turns


def _tcp_events(path: str) -> list[Event]:
    reassembler, out = Reassembler(), []
    for packet in Decoder().decode_all(read(path)):
        out += reassembler.feed(packet)
    return out + reassembler.flush()


class _Turns:
    """The turns of one connection's events (rules above)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.observer = Observer()
        self.stream = bytearray()  # the client's bytes
        self.turns: list[Turn] = [Turn()]
        self.unit_end = 0
        self.cuts: list[tuple[int, int]] = []  # where each client segment ended, and when

    def build(self, events: list[Event]) -> list[Turn]:
        for event in events:
            if event.kind == "data":
                self._data(event)
            elif event.kind in ("fin", "close"):
                directions = _DIRECTIONS if event.kind == "close" else (_side(event),)
                for d in directions:
                    self._parsed(self.observer.feed(d, b""), event)
        self._check()
        return self.turns

    def _data(self, event: Event) -> None:
        d = _side(event)
        if d is Direction.CLIENT:
            self.stream += event.data
            if len(self.stream) > MAX_CLIENT_BYTES:
                raise HarnessError(
                    f"{self.where}: the client sent more than {MAX_CLIENT_BYTES} octets"
                )
            self.cuts.append((len(self.stream), event.time))
        self._parsed(self.observer.feed(d, event.data), event)

    def _parsed(self, parsed: list[smtp.Event], event: Event) -> None:
        for e in parsed:
            match e:
                case smtp.TlsStarted() | smtp.Opaque():
                    raise HarnessError(
                        f"{self.where}: TLS after STARTTLS (packet {event.first}): "
                        "not replayable in clear"
                    )
                case smtp.Reply() if e.direction is Direction.SERVER:
                    reply = CapturedReply(e.code, e.lines, event.time, answers=e.answers)
                    self.turns[-1].replies.append(reply)
                case smtp.Unfinished() if e.direction is Direction.SERVER and e.code:
                    reply = CapturedReply(e.code, (e.raw.decode("utf-8", "replace"),), event.time)
                    self.turns[-1].replies.append(reply)
                case smtp.Command() if e.direction is Direction.CLIENT:
                    self._unit(e.offset + len(e.raw), e.verb, _argument(e))
                case smtp.EndOfData() if e.direction is Direction.CLIENT:
                    self._unit(e.offset + 3)
                case smtp.EndOfChunk() | smtp.Unfinished() if e.direction is Direction.CLIENT:
                    self._unit(e.offset + len(getattr(e, "raw", b"")))

    def _unit(self, end: int, verb: str = "", argument: str | None = None) -> None:
        if self.turns[-1].replies:
            if len(self.turns) >= MAX_TURNS:
                raise HarnessError(f"{self.where}: more than {MAX_TURNS} turns")
            self.turns.append(Turn())
        raw = bytes(self.stream[self.unit_end : end])
        self.turns[-1].units.append(Unit(raw, self.unit_end, verb, argument))
        self.unit_end = end

    def _check(self) -> None:
        greeting = self.turns[0].replies[:1]
        if not greeting or greeting[0].code not in GREETINGS:
            raise HarnessError(
                f"{self.where}: the server does not open with a greeting (220, 421 or 554)"
            )
        if self.unit_end < len(self.stream):  # bytes no unit ended: send them as they are
            self._unit(len(self.stream))
        for turn in (t for t in self.turns if t.units):
            start, end = turn.units[0].start, turn.units[-1].end
            turn.cuts = [(offset, time) for offset, time in self.cuts if start < offset <= end]


def _side(event: Event) -> Direction:
    return Direction.CLIENT if event.direction == CLIENT else Direction.SERVER


def _argument(command: smtp.Command) -> str | None:
    if command.verb in ("HELO", "EHLO"):
        return (command.argument or "").strip() or None
    if command.verb in ("MAIL", "RCPT"):
        return command.address
    return None
