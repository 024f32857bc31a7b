"""Line framing: the receive buffer, line limits, odd-byte detection and dot-stuffing.

Rules kept here:

1. A *unit* ends at an LF, bare or not.  A bare LF therefore ends a unit (for framing, for
   the length limit and for event granularity) but it is reported as ``BARE_LF``, and it
   does not end an SMTP *line*: only CRLF does (RFC 5321 §2.3.8).  A bare CR never ends
   anything; it stays inside the unit and is reported as ``BARE_CR``.  NUL is reported.
2. Limits count octets including the CRLF: command and reply lines 512, text lines 1000
   (RFC 5321 §4.5.3.1.4-.6), AUTH response lines 12288 (RFC 4954 §4).  When ``limit``
   octets arrive without an LF the buffer hands out a piece of at most ``limit`` octets
   (never ending in a CR, which may pair with the next LF); the readers decide to keep or
   skip it.
3. Framing depends only on the bytes, never on how they were split into segments: feeding
   byte by byte yields the same units as feeding everything at once.
4. Dot-stuffing (RFC 5321 §4.5.2) works on CRLF lines only; a final CRLF is added to
   content that lacks one (§4.1.1.4), except to empty content.
5. Bytes missing from a capture (``skip``) are a *hole* in the stream: the buffer hands out
   the bytes before it, then reports ``hole`` until a reader passes it (``pass_hole``);
   bytes, holes and the EOF that arrive behind a hole wait behind it, in order.  Offsets
   count the missing bytes, so offsets after a hole stay true stream offsets.
"""

from __future__ import annotations

import re
from collections import deque
from typing import NamedTuple

from harness.smtp.events import Anomaly, AnomalyKind, Direction

COMMAND_LINE_LIMIT = 512  # RFC 5321 §4.5.3.1.4
REPLY_LINE_LIMIT = 512  # RFC 5321 §4.5.3.1.5
TEXT_LINE_LIMIT = 1000  # RFC 5321 §4.5.3.1.6
AUTH_LINE_LIMIT = 12288  # RFC 4954 §4: a server's limit on AUTH lines, 12288 recommended

_ODD_BYTES = re.compile(rb"\r(?!\n)|(?<!\r)\n|\x00")
_ODD_KIND = {b"\r": AnomalyKind.BARE_CR, b"\n": AnomalyKind.BARE_LF, b"\x00": AnomalyKind.NUL}


class Unit(NamedTuple):  # a tuple: one is made per line, and tuples are cheap to make
    """Bytes up to and including an LF (``complete``), or a piece of an overlong one."""

    raw: bytes
    offset: int
    complete: bool

    @property
    def crlf(self) -> bool:
        return self.raw.endswith(b"\r\n")

    @property
    def body(self) -> bytes:
        """The unit without its line ending (CRLF or bare LF)."""
        if self.crlf:
            return self.raw[:-2]
        return self.raw[:-1] if self.complete else self.raw


class ReceiveBuffer:
    """Bytes received in one direction and not yet consumed, with their stream offset."""

    def __init__(self) -> None:
        self.data = bytearray()  # the buffered bytes: callers read them, only methods change them
        self.offset = 0  # stream offset of the first unconsumed byte
        self.eof = False
        self.hole = 0  # octets missing right after the buffered ones (rule 5)
        # what arrived after the hole, in order (made at the first hole: most streams have
        # none, and an empty deque costs 600 bytes)
        self._behind: deque[bytes | int] | None = None
        self._ended = False  # EOF fed, perhaps still behind a hole
        self._searched = 0  # leading bytes already known to hold no LF

    def __len__(self) -> int:
        return len(self.data)

    def feed(self, data: bytes) -> None:
        if self._ended and data:
            raise RuntimeError("data received after EOF")
        self._ended = self._ended or not data
        if self.hole:
            self._later(data)
        elif data:
            self.data += data
        else:
            self.eof = True

    def skip(self, n: int) -> None:
        """``n`` octets of the stream are missing (rule 5)."""
        if self._ended:
            raise RuntimeError("gap reported after EOF")
        if n > 0 and self.hole:
            self._later(n)
        elif n > 0:
            self.hole = n

    def _later(self, item: bytes | int) -> None:
        if self._behind is None:
            self._behind = deque()
        self._behind.append(item)

    def pass_hole(self, n: int) -> None:
        """Consume ``n`` missing octets (all buffered bytes must be consumed first)."""
        assert not self.data and 0 < n <= self.hole, "a reader passed a hole out of turn"
        self.offset += n
        self.hole -= n
        while not self.hole and self._behind:
            item = self._behind.popleft()
            if isinstance(item, int):
                self.hole = item
            elif item:
                self.data += item
            else:
                self.eof = True

    def peek(self, start: int = 0, stop: int | None = None) -> bytes:
        """The buffered bytes (those from *start* to *stop*), left in the buffer."""
        return bytes(self.data[start:stop])

    def find(self, sub: bytes, start: int = 0) -> int:
        """Where *sub* first begins in the buffered bytes, from *start* on; -1 if nowhere."""
        return self.data.find(sub, start)

    def take(self, n: int) -> bytes:
        taken = bytes(self.data[:n])
        del self.data[:n]
        self.offset += len(taken)
        self._searched = 0
        return taken

    def next_unit_of(self, n: int) -> Unit:
        """The next ``n`` octets as one complete unit: whole lines the caller has matched."""
        offset = self.offset
        return Unit(self.take(n), offset, True)

    def next_unit(self, limit: int) -> Unit | None:
        """The next unit, a piece of an overlong one, or None if more bytes are needed."""
        data, offset = self.data, self.offset
        lf = data.find(b"\n", self._searched, limit)
        if lf >= 0:
            return Unit(self.take(lf + 1), offset, True)
        if len(data) < limit:
            self._searched = len(data)
            return None
        end = limit - 1 if data[limit - 1] == 0x0D else limit
        return Unit(self.take(end), offset, False)


def has_odd_bytes(raw: bytes) -> bool:
    """Whether ``raw`` holds a bare CR, a bare LF or NUL: counted at C speed, where a regex
    search would try its pattern at every octet (and ``find``, not ``in``: CPython's ``in``
    first tries the operand as an integer, and formats the TypeError it raises)."""
    crlf = raw.count(b"\r\n")
    return raw.find(b"\x00") >= 0 or raw.count(b"\r") != crlf or raw.count(b"\n") != crlf


def odd_bytes(raw: bytes, offset: int, direction: Direction) -> list[Anomaly]:
    """Bare CR, bare LF and NUL in ``raw`` (which starts at stream ``offset``)."""
    if not has_odd_bytes(raw):  # the common case: no list built
        return []
    return [
        Anomaly(direction=direction, offset=offset + m.start(), kind=_ODD_KIND[m.group()])
        for m in _ODD_BYTES.finditer(raw)
    ]


def dot_stuff(body: bytes) -> bytes:
    """Content as sent after DATA's 354, without the final ``.`` line: a leading dot on
    every CRLF line doubled, a final CRLF added if missing (empty content stays empty)."""
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    stuffed = body.replace(b"\r\n.", b"\r\n..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed
