"""TCP reassembly: decoded packets in, ordered per-connection events out.

Rules this module keeps:

- A connection is keyed by its 4-tuple, both directions.  Its client is the SYN's sender
  (or the SYN-ACK's receiver); with no handshake captured, the side on port 25, 587 or 465,
  else the side on the lower port, is the server.  ``Connection.roles`` says which rule
  decided.  A direction is CLIENT (client to server) or SERVER (server to client).
- Offsets are per direction and relative: offset 0 is the byte after the SYN (ISN + 1).
  With no SYN captured it is the first sequence number seen from that side, or the first
  acknowledgement of it from the peer.  A FIN takes one offset, like a byte.  Sequence
  numbers wrap; offsets do not.
- Payload is delivered in order, each byte once.  Retransmissions and overlaps are dropped:
  the first copy wins and a later copy that differs is reported ("overlap").  Out-of-order
  segments wait until the hole before them is filled.
- Except where the receiver's ACKs tell otherwise: RFC 9293 §3.10.7.4 has the receiver
  acknowledge exactly the data it took (RCV.NXT).  A segment next in order and longer than
  any the peer has acknowledged whole (at least TRUSTED, a 1500-byte MTU's MSS) is held,
  when the peer's direction is captured, until the peer's ACKs judge it: an ACK inside it
  that other bytes delivered meanwhile already cover says the receiver took those and not
  it (it is dropped, and reported whole as "overlap" if its bytes differ); any other ACK
  into or past it, or a wait of LATE_PACKETS / LATE_TIME, delivers it.  (An unacknowledged
  5,002-byte segment no longer wins over the replies the client did acknowledge.)
- A hole the peer acknowledged past is not given up on at once: a capture point between
  the two hosts (a mirror port, a multi-queue NIC) may write the ACK before the data it
  covers.  The hole waits for late data LATE_PACKETS more packets of the connection, or
  LATE_TIME of capture time, or until the acknowledging side sends data, a FIN or a RST
  (its answer to what it acknowledged must not come before it), whichever ends first; the
  "ack" event waits with it and comes after the bytes it covers.  Then what is still
  missing is a "gap" and skipped (the peer got bytes the capture missed).  A hole is also
  given up on when more than ``max_ahead`` bytes wait behind it, at a RST (what waited
  comes before the "rst"), or when the connection finishes.  A direction never seen gets no gaps.
- A FIN ends its direction (RFC 9293 §3.10.7.4: nothing after it is accepted): no byte
  and no gap of a direction comes after its "fin" event.  Bytes a segment carries past
  the FIN (a broken stack, a damaged capture) are dropped, each run reported once as
  "after-fin" with its offset and length, whether they came before or after the FIN.
- A segment with RST and SYN together (a "christmas tree" has every flag) is no SYN, FIN or
  data: RFC 9293 §3.10.7 checks the RST bit before the SYN bit, the text and the FIN bit in
  every state (LISTEN: "an incoming RST should be ignored"; otherwise the segment is either
  dropped or resets the connection, and "return").  It is a "bad-flags" event (length: the
  flag byte) and changes nothing; whether it reset the connection, the packets after it
  show.
- A retransmitted SYN, SYN-ACK or FIN (same sequence number) is folded into the first and
  counted in ``Reassembler.warnings`` ("retransmitted-syn-ack", ...).
- Events of one connection come out in stream order (a FIN after the data before it, an
  ACK after the bytes it covers); each names the packets that carried it and has the time
  of the packet being fed.  Control events: "syn", "syn-ack", "handshake-ack", "ack"
  (only when the acknowledged offset grows), "fin", "rst", "bad-flags".
- Memory is flat: a connection is finished (a "close" event, then forgotten) ``linger``
  seconds of capture time after it closed (FIN both ways and the last FIN acknowledged, or
  RST), after ``idle`` seconds without a packet, when a new SYN reuses its 4-tuple, or at
  ``flush()``.  Held bytes are bounded by ``max_ahead`` plus HISTORY plus one segment
  (held for its ACK) per direction.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import count
from typing import NamedTuple

from harness.fifo import Fifo
from harness.ladder.packets import ACK, FIN, RST, SYN, TCP, Packet, format_addr

CLIENT, SERVER = 0, 1
SMTP_PORTS = frozenset({25, 465, 587})
HISTORY = 64 * 1024  # delivered bytes kept per direction to compare retransmissions with
LATE_PACKETS = 8  # packets of the connection a hole the peer acknowledged waits for its data
LATE_TIME = 0.5  # seconds of capture time it waits at most
TRUSTED = 1460  # segments up to this size are delivered without waiting for their ACK

_SECOND = 1_000_000_000
_LATE_NS = int(LATE_TIME * _SECOND)
_MASK, _HALF = 0xFFFF_FFFF, 0x8000_0000
_new = tuple.__new__  # builds a NamedTuple without its Python-level __new__ (2x faster)


class Event(NamedTuple):
    """Something that happened on a connection.

    ``direction`` is the sender's (CLIENT or SERVER; -1 for "close").  ``offset`` is in
    the sender's stream, except for "ack" and "handshake-ack", where it is the offset of
    the other direction that is acknowledged (everything before it was received).
    ``first``/``last`` are the numbers of the first and last packets involved.
    """

    kind: str  # syn syn-ack handshake-ack ack data gap overlap after-fin fin rst bad-flags close
    conn: Connection
    direction: int
    time: int  # nanoseconds since the Unix epoch
    first: int
    last: int
    offset: int
    length: int
    data: bytes  # "data": the bytes; "overlap": the differing copy that was dropped


class _Half:
    """One direction of a connection: what its sender sent, and how far the peer acked."""

    __slots__ = (
        "acked",
        "base",
        "fin",
        "fin_done",
        "fin_number",
        "history",
        "history_bytes",
        "isn",
        "next",
        "owed",
        "owed_left",
        "owed_number",
        "owed_until",
        "pending",
        "pending_bytes",
        "seen",
        "suspect",
        "suspect_left",
        "suspect_until",
        "trusted",
    )

    def __init__(self) -> None:
        self.seen = False
        self.isn: int | None = None  # sequence number of the SYN, if captured
        self.base: int | None = None  # sequence number of offset 0
        self.next = 0  # first offset not yet delivered
        self.acked = -1  # highest offset the peer acknowledged (0: the SYN)
        self.pending: list[tuple[int, bytes, int]] = []  # (offset, data, packet), sorted
        self.pending_bytes = 0
        self.history: Fifo[tuple[int, bytes]] = Fifo()  # recently delivered (offset, data)
        self.history_bytes = 0
        self.fin: int | None = None  # offset of the FIN, once seen
        self.fin_number = 0
        self.fin_done = False
        self.owed = 0  # an acknowledged offset past a hole, its "ack" waiting for late data
        self.owed_number = 0  # the packet that acknowledged it
        self.owed_left = 0  # packets of the connection it still waits
        self.owed_until = 0  # capture time it waits until
        self.suspect: tuple[int, bytes, int] | None = None  # (offset, data, packet) held
        self.suspect_left = 0  # packets of the connection it waits for its judgement
        self.suspect_until = 0
        self.trusted = TRUSTED  # the longest segment known to be taken whole

    def offset(self, seq: int) -> int:
        """The offset of *seq*, unwrapped to the one nearest to ``next``."""
        low = (seq - self.base) & _MASK
        return self.next + ((low - self.next + _HALF) & _MASK) - _HALF

    def remember(self, offset: int, data: bytes) -> None:
        self.history.append((offset, data))
        self.history_bytes += len(data)
        while self.history_bytes > HISTORY:
            self.history_bytes -= len(self.history.popleft()[1])


class Connection:
    """A TCP connection seen in a capture; ``end`` tells why it was finished."""

    __slots__ = (
        "_closed_at",
        "_closing",
        "_halves",
        "_handshake",
        "_keys",
        "_late",
        "_max_ahead",
        "_number",
        "_out",
        "_warnings",
        "client",
        "end",
        "id",
        "last_time",
        "roles",
        "server",
    )

    def __init__(
        self,
        id: int,
        client: tuple[str, int],
        server: tuple[str, int],
        roles: str,
        max_ahead: int,
        warnings: Counter[str] | None = None,
    ) -> None:
        self.id = id
        self.client = client
        self.server = server
        self.roles = roles  # "syn", "syn-ack" or "port"
        self.end = ""  # once finished: "fin", "rst", "idle", "reused" or "end"
        self.last_time = 0  # time and number of the packet being (or last) fed
        self._number = 0
        self._out: list[Event] | None = None  # the event list while a packet is being fed
        self._halves = (_Half(), _Half())
        self._handshake = False  # a SYN or SYN-ACK was captured; its ACK is awaited
        self._closing = ""  # "fin" or "rst" once closed
        self._closed_at = 0
        self._max_ahead = max_ahead
        self._keys: tuple[tuple, ...] = ()
        self._late = 0  # "ack" events waiting for late data, and segments held for their ACK
        self._warnings = Counter() if warnings is None else warnings

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.client} -> {self.server}>"

    def _event(
        self, kind: str, d: int, first: int, offset: int, length: int = 0, data: bytes = b""
    ) -> None:
        event = (kind, self, d, self.last_time, first, first, offset, length, data)
        self._out.append(_new(Event, event))

    def _is_new_syn(self, d: int, seq: int, flags: int) -> bool:
        """Does this SYN open a new connection on the same 4-tuple?"""
        if flags & (SYN | ACK | RST) != SYN:
            return False
        return bool(self._closing) or self._halves[d].isn != seq

    def _segment(self, d: int, packet: Packet, out: list[Event]) -> None:
        number, time, _, _, _, _, _, seq, ack, flags, _, payload = packet
        me, peer = self._halves[d], self._halves[1 - d]
        me.seen = True
        self.last_time, self._number, self._out = time, number, out
        if flags & SYN:
            if flags & RST:
                self._bad_flags(d, me, seq, flags)
                return
            seq = self._syn(d, me, seq, flags)
        elif me.base is None:
            me.base = seq
        if flags & ACK:
            self._ack(d, peer, ack, flags)
        if self._late and peer.owed and (payload or flags & (FIN | RST)):
            self._pay(1 - d, peer)  # its answer to the bytes it acknowledged: no more waiting
        offset = me.offset(seq)
        if payload and (len(payload) <= TRUSTED or not self._suspect(d, me, offset, payload)):
            self._data(d, me, offset, payload)
        if flags & FIN:
            self._fin(d, me, offset + len(payload), number)
        if self._late:
            self._late_acks()
        if flags & RST:
            if self._late:
                self._settle()  # what waited came before the reset
            self._event("rst", d, number, offset)
            self._close("rst")
        elif me.fin_done and peer.fin_done and me.acked > me.fin and peer.acked > peer.fin:
            self._close("fin")
        self._out = None  # events refer to their connection: no cycle back to them

    def _syn(self, d: int, me: _Half, seq: int, flags: int) -> int:
        """A SYN or SYN-ACK: the first sets the ISN, one with the same ISN is counted."""
        if me.isn is None:
            me.isn, me.base = seq, (seq + 1) & _MASK
            self._handshake = True
            self._event("syn-ack" if flags & ACK else "syn", d, self._number, -1)
        elif seq == me.isn:
            self._warnings["retransmitted-syn-ack" if flags & ACK else "retransmitted-syn"] += 1
        return (seq + 1) & _MASK

    def _fin(self, d: int, me: _Half, offset: int, number: int) -> None:
        """A FIN at stream *offset*: the first ends the direction, the same again is counted."""
        if me.fin is None:
            me.fin, me.fin_number = offset, number
            self._drop_after_fin(d, me)
            self._check_fin(d, me)
        elif offset == me.fin:
            self._warnings["retransmitted-fin"] += 1

    def _bad_flags(self, d: int, me: _Half, seq: int, flags: int) -> None:
        """RST with SYN: shown, and taken for nothing (see the module's rules)."""
        offset = -1 if me.base is None else me.offset(seq)
        self._event("bad-flags", d, self._number, offset, flags)
        self._out = None

    def _ack(self, d: int, peer: _Half, ack: int, flags: int) -> None:
        """Record how far the sender acknowledged the peer; past a hole, wait for late data."""
        if peer.base is None:
            peer.base = ack
        acked = peer.offset(ack)
        if acked <= peer.acked:
            return
        peer.acked = acked
        if peer.suspect is not None and acked > peer.suspect[0]:
            self._judge(1 - d, peer, acked)
        if acked > peer.next and peer.seen and self._past_next(peer, acked):
            return
        if flags & SYN:
            return  # the SYN-ACK's acknowledgement is part of "syn-ack"
        if acked > 0:
            self._handshake = False
            n = self._number  # inline _event: this and "data" are most of the events
            self._out.append(_new(Event, ("ack", self, d, self.last_time, n, n, acked, 0, b"")))
        elif d == CLIENT and self._handshake:
            self._handshake = False
            self._event("handshake-ack", d, self._number, 0)

    def _past_next(self, peer: _Half, acked: int) -> bool:
        """The sender acknowledged bytes of the peer not delivered yet: wait for late data
        (True: the "ack" event waits too)."""
        if acked <= peer.next + peer.fin_done:  # the FIN's own sequence number
            return False
        if not peer.owed:
            self._late += 1
            peer.owed_number, peer.owed_left = self._number, LATE_PACKETS + 1
            peer.owed_until = self.last_time + _LATE_NS
        peer.owed = acked
        return True

    def _suspect(self, d: int, h: _Half, offset: int, payload: bytes) -> bool:
        """Hold a long segment next in order until the peer's ACKs judge it, if they can."""
        peer = self._halves[1 - d]
        if len(payload) <= h.trusted or h.suspect or offset != h.next or h.pending:
            return False
        if not peer.seen or h.acked > offset:  # no ACK can judge it, or one already did
            return False
        h.suspect = (offset, payload, self._number)
        h.suspect_left, h.suspect_until = LATE_PACKETS + 1, self.last_time + _LATE_NS
        self._late += 1
        return True

    def _judge(self, d: int, h: _Half, acked: int) -> None:
        """The peer acknowledged *acked*, inside or past the held segment: take it or not."""
        offset, payload, number = h.suspect
        end = offset + len(payload)
        h.suspect = None
        self._late -= 1
        if acked < end and h.next >= acked:  # it took the bytes delivered meanwhile instead
            lo, hi = self._difference(h, offset, payload)
            if lo < hi:
                self._event("overlap", d, number, offset, len(payload), payload)
            return
        if acked >= end:
            h.trusted = max(h.trusted, len(payload))
        self._take(d, h, offset, payload, number)

    def _release(self, d: int, h: _Half) -> None:
        """No judgement came: the held segment is delivered, as the first copy."""
        suspect, h.suspect = h.suspect, None
        self._late -= 1
        self._take(d, h, *suspect)

    def _take(self, d: int, h: _Half, offset: int, payload: bytes, number: int) -> None:
        """Deliver a held segment as if it came now from its own packet *number*."""
        current, self._number = self._number, number
        self._data(d, h, offset, payload)
        self._number = current

    def _late_acks(self) -> None:
        """Emit each waiting "ack" once its bytes came or its wait is over; deliver each
        held segment whose wait is over."""
        for d, h in enumerate(self._halves):
            if h.suspect is not None:
                h.suspect_left -= 1
                if h.suspect_left <= 0 or self.last_time > h.suspect_until:
                    self._release(d, h)
            if h.owed:
                h.owed_left -= 1
                late = h.owed_left <= 0 or self.last_time > h.owed_until
                if late or h.next + h.fin_done >= h.owed:
                    self._pay(d, h)

    def _settle(self) -> None:
        """No more waiting: deliver the held segments, emit the waiting "ack" events."""
        for d, h in enumerate(self._halves):
            if h.suspect is not None:
                self._release(d, h)
            if h.owed:
                self._pay(d, h)

    def _pay(self, d: int, h: _Half) -> None:
        """Emit the "ack" waiting on direction *d*, after a gap for what is still missing."""
        if h.next + h.fin_done < h.owed:
            self._skip(d, h, h.owed if h.fin is None else min(h.owed, h.fin), h.owed_number)
        self._late -= 1
        acked, n, h.owed = h.owed, h.owed_number, 0
        self._handshake = False
        self._out.append(_new(Event, ("ack", self, 1 - d, self.last_time, n, n, acked, 0, b"")))

    def _data(self, d: int, h: _Half, offset: int, payload: bytes) -> None:
        end = offset + len(payload)
        if h.fin is not None and end > h.fin:
            start = max(offset, h.fin)
            self._event("after-fin", d, self._number, start, end - start)
            payload, end = payload[: start - offset], start
            if not payload:
                return
        if offset == h.next and not h.pending:  # the common case: next in order
            h.next = end
            n = self._number
            event = ("data", self, d, self.last_time, n, n, offset, end - offset, payload)
            self._out.append(_new(Event, event))
            h.remember(offset, payload)
            if h.fin is not None:
                self._check_fin(d, h)
            return
        if offset < h.next:
            self._compare(d, h, offset, payload)
            if end <= h.next:
                return  # a retransmission
            payload, offset = payload[h.next - offset :], h.next
        self._hold(d, h, offset, payload)
        if h.pending[0][0] == h.next:
            self._drain(d, h)
        while h.pending_bytes > self._max_ahead:
            if h.suspect is not None:  # too much waits behind it: no time to judge it
                self._release(d, h)
            else:
                self._skip(d, h, h.pending[0][0])

    def _compare(self, d: int, h: _Half, offset: int, payload: bytes) -> None:
        """Report a retransmitted copy that differs from the delivered one it overlaps."""
        lo, hi = self._difference(h, offset, payload)
        if lo < hi:
            self._event("overlap", d, self._number, lo, hi - lo, payload[lo - offset : hi - offset])

    @staticmethod
    def _difference(h: _Half, offset: int, payload: bytes) -> tuple[int, int]:
        """The first range [lo, hi) where *payload* overlaps delivered bytes and differs."""
        for old_offset, old in h.history:
            lo, hi = _overlap(offset, payload, old_offset, old)
            if (
                lo < hi
                and payload[lo - offset : hi - offset] != old[lo - old_offset : hi - old_offset]
            ):
                return lo, hi
        return 0, 0

    def _hold(self, d: int, h: _Half, offset: int, payload: bytes) -> None:
        """Queue the parts of a segment that no held segment covers (first copy wins)."""
        pieces, end, pending = [(offset, payload)], offset + len(payload), h.pending
        # held pieces are sorted and never overlap: only the one before *offset* and those
        # starting before *end* can overlap it (a scan of all of them made holding quadratic)
        i = max(bisect.bisect_left(pending, (offset,)) - 1, 0)
        while i < len(pending) and pending[i][0] < end:
            held_offset, held, _ = pending[i]
            i += 1
            lo, hi = _overlap(offset, payload, held_offset, held)
            if lo < hi:
                mine = payload[lo - offset : hi - offset]
                if mine != held[lo - held_offset : hi - held_offset]:
                    self._event("overlap", d, self._number, lo, hi - lo, mine)
                pieces = [part for piece in pieces for part in _cut(piece, lo, hi)]
        for piece_offset, piece in pieces:
            bisect.insort(h.pending, (piece_offset, piece, self._number))
            h.pending_bytes += len(piece)

    def _drop_after_fin(self, d: int, h: _Half) -> None:
        """A FIN was just seen: drop what is held past it (``_data`` drops what comes later)."""
        while h.pending and h.pending[-1][0] + len(h.pending[-1][1]) > h.fin:
            offset, data, number = h.pending.pop()
            h.pending_bytes -= len(data)
            start = max(offset, h.fin)
            self._event("after-fin", d, number, start, offset + len(data) - start)
            if offset < h.fin:  # held pieces never overlap: the ones before end before it
                h.pending.append((offset, data[: h.fin - offset], number))
                h.pending_bytes += h.fin - offset
                return

    def _drain(self, d: int, h: _Half) -> None:
        """Deliver the held segments that now continue the stream, as one chunk."""
        start, parts, numbers = h.next, [], []
        while h.pending and h.pending[0][0] == h.next:
            _, data, number = h.pending.pop(0)
            h.pending_bytes -= len(data)
            h.next += len(data)
            parts.append(data)
            numbers.append(number)
        if parts:
            data = b"".join(parts)
            event = ("data", self, d, self.last_time, min(numbers), max(numbers), start)
            self._out.append(_new(Event, (*event, len(data), data)))
            h.remember(start, data)
        self._check_fin(d, h)

    def _skip(self, d: int, h: _Half, target: int, number: int = 0) -> None:
        """Give up on the bytes before *target* (the loss shown by packet *number*, else the
        one being fed): report gaps, deliver what follows them."""
        while h.next < target:
            hole_end = min(target, h.pending[0][0]) if h.pending else target
            if hole_end > h.next:
                self._event("gap", d, number or self._number, h.next, hole_end - h.next)
                h.next = hole_end
            self._drain(d, h)

    def _check_fin(self, d: int, h: _Half) -> None:
        if h.fin is not None and not h.fin_done and h.next >= h.fin:
            h.fin_done = True
            self._event("fin", d, h.fin_number, h.fin)

    def _close(self, how: str) -> None:
        if not self._closing:
            self._closing, self._closed_at = how, self.last_time

    def _finish(self, reason: str, out: list[Event]) -> None:
        """Skip every hole left, then emit "close"."""
        self._out = out
        if self._late:
            self._settle()
        for d, h in enumerate(self._halves):
            if h.seen:
                while h.pending:
                    self._skip(d, h, h.pending[0][0])
                if h.fin is not None:
                    self._skip(d, h, h.fin)
        self.end = self._closing or reason
        self._event("close", -1, self._number, 0)
        self._out, self._halves = None, ()  # held and recent bytes go now, not with the events


def _overlap(offset: int, data: bytes, other_offset: int, other: bytes) -> tuple[int, int]:
    """The range [lo, hi) two segments share (empty when lo >= hi)."""
    return max(offset, other_offset), min(offset + len(data), other_offset + len(other))


def _cut(piece: tuple[int, bytes], lo: int, hi: int) -> list[tuple[int, bytes]]:
    """The parts of *piece* outside [lo, hi)."""
    offset, data = piece
    end = offset + len(data)
    parts = []
    if offset < lo:
        parts.append((offset, data[: min(end, lo) - offset]))
    if end > hi:
        start = max(offset, hi)
        parts.append((start, data[start - offset :]))
    return parts


class Reassembler:
    """Feeds packets to their connections and finishes connections as they end.

    *idle* and *linger* are seconds of capture time; *max_ahead* is the number of bytes a
    direction may hold behind a hole before the hole is skipped.
    """

    def __init__(self, *, idle: float = 600.0, linger: float = 1.0, max_ahead: int = 1 << 20):
        self._idle = int(idle * _SECOND)
        self._linger = int(linger * _SECOND)
        self._max_ahead = max_ahead
        self._table: dict[tuple, tuple[Connection, int]] = {}  # 4-tuple -> (conn, direction)
        self._live: dict[int, Connection] = {}
        self._ids = count(1)
        self.sweep_at = 0  # capture time before which a packet finishes no connection
        self.warnings: Counter[str] = Counter()  # retransmitted SYN, SYN-ACK and FIN
        self.born: list[int] | None = None  # a list: each connection's first packet, by id

    def tick(self, time: int) -> list[Event]:
        """Events of the connections finished by capture time *time* (closed for *linger*,
        silent for *idle*): what feeding a TCP packet of that time would finish first, for
        a reader given the packet of a connection it does not follow."""
        out: list[Event] = []
        if time >= self.sweep_at:
            self._sweep(time, out)
        return out

    def feed(self, packet: Packet) -> list[Event]:
        """Events caused by *packet* (any connection's); non-TCP packets cause none."""
        out: list[Event] = []
        if packet[4] != TCP:
            return out
        if packet[1] >= self.sweep_at:
            self._sweep(packet[1], out)
        key = (packet[2], packet[5], packet[3], packet[6])
        found = self._table.get(key)
        if found is None:
            found = self._connect(packet)
        elif packet[9] & SYN and found[0]._is_new_syn(found[1], packet[7], packet[9]):
            self._finish(found[0], "reused", out)
            found = self._connect(packet)
        found[0]._segment(found[1], packet, out)
        return out

    def flush(self) -> list[Event]:
        """Finish every connection still open (end of input)."""
        out: list[Event] = []
        for conn in list(self._live.values()):
            self._finish(conn, "end", out)
        return out

    def _connect(self, packet: Packet) -> tuple[Connection, int]:
        _, _, src, dst, _, sport, dport, _, _, flags, _, _ = packet
        if flags & (SYN | RST) == SYN:
            roles, d = ("syn-ack", SERVER) if flags & ACK else ("syn", CLIENT)
        else:
            roles, d = "port", _direction_by_port(sport, dport)
        ends = [(format_addr(src), sport), (format_addr(dst), dport)]
        if d == SERVER:
            ends.reverse()
        conn = Connection(next(self._ids), *ends, roles, self._max_ahead, self.warnings)
        if self.born is not None:
            self.born.append(packet[0])
        conn._keys = ((src, sport, dst, dport), (dst, dport, src, sport))
        self._table[conn._keys[0]] = (conn, d)
        self._table[conn._keys[1]] = (conn, 1 - d)
        self._live[conn.id] = conn
        return conn, d

    def _sweep(self, now: int, out: list[Event]) -> None:
        """Finish the connections closed for *linger* or silent for *idle*."""
        self.sweep_at = now + _SECOND
        for conn in list(self._live.values()):
            if conn._closing and now - conn._closed_at > self._linger:
                self._finish(conn, conn._closing, out)
            elif now - conn.last_time > self._idle:
                self._finish(conn, "idle", out)

    def _finish(self, conn: Connection, reason: str, out: list[Event]) -> None:
        conn._finish(reason, out)
        del self._live[conn.id]
        for key in conn._keys:
            del self._table[key]


def _direction_by_port(sport: int, dport: int) -> int:
    """The sender's direction when no handshake tells: SMTP ports, else the lower port."""
    if dport in SMTP_PORTS:
        return CLIENT
    if sport in SMTP_PORTS:
        return SERVER
    return SERVER if sport < dport else CLIENT


def reassemble(packets: Iterable[Packet], **options: float) -> Iterator[Event]:
    """All events of *packets*, then of the connections left open at the end."""
    reassembler = Reassembler(**options)
    feed = reassembler.feed
    for packet in packets:
        yield from feed(packet)
    yield from reassembler.flush()
