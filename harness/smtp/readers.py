"""Readers: each turns the bytes of one direction, in one mode, into events.

Rules kept here (the modes and who switches them are in protocol.py):

1. ``read(buf, direction)`` consumes at most one unit and returns its events, or None when
   it needs more bytes.  An empty list means progress without an event (a skipped piece).
   ``DataReader`` alone reads every unit already buffered up to its end marker in one call:
   no reply can change what content means, so the events are those of one unit per call.
   A capture's ``DataReader(plain_runs=True)`` hands out each run of consecutive plain
   lines buffered (complete, CRLF-ended, within the limit, no leading dot, no odd byte:
   nothing to unstuff nor to report) as one ``Content``, the bytes, offsets, anomalies
   and sizes being those of the lines one by one; a peer's reads one event per line.
   A reader whose ``needs_bytes`` is true returns None for an empty buffer.
5. A reply is built once, complete: ``ReplyReader`` asks its ``answer`` hook (the
   Observer's session) which command the reply answers as it reads the reply's last line.
2. Command and reply lines over their limit are cut at the limit and the rest of the line
   is skipped up to its LF; one ``LINE_TOO_LONG`` anomaly and one command/reply report it.
3. DATA content (RFC 5321 §4.1.1.4, §4.5.2): only CRLF ``.`` CRLF ends it, where the first
   CRLF is the end of the previous line (or of the DATA command).  A leading dot is removed
   only at the start of a CRLF line (the line that follows a bare LF did not start a line).
   Every other dot between line breaks - ``LF.LF``, ``LF.CRLF``, ``CRLF.LF``, ``CR.CR``,
   ``CRLF.CRCRLF`` and kin - is content, reported as a ``SMUGGLING`` anomaly.  Overlong
   text lines are reported once and kept whole: content is never dropped.
4. BDAT content is counted, not framed: exactly ``chunk_size`` octets, handed out in
   pieces of at most ``CHUNK_PIECE`` so that events do not depend on segmentation.
6. A hole (octets missing from a capture, framing rule 5) is passed by ``gap(buf,
   direction)`` once ``read`` has consumed every byte before it; each reader reports a
   ``Gap`` for the octets it passes.  A line reader drops the partial line before the hole
   and resynchronises: the first line after it is kept only if it reads as a whole line of
   its kind (a known verb; a well-formed reply line), else it is the tail of a cut line and
   dropped too; each drop is a ``CUT_BY_GAP`` anomaly.  DATA content reports the bytes
   before the hole as content and the hole as a content gap, then assumes a line starts
   (a ``.`` CRLF right after a gap ends the data).  A BDAT chunk counts the hole towards
   its size and leaves the rest of it to the commands that follow.  TLS passes it whole.
7. At EOF, ``unfinished(buf, direction)`` reports the unit the stream ended inside
   (events rule 4), leaving the buffer as it is: a partial command line; a reply begun
   (its lines so far and a partial one); content or a chunk begun.  A partial line right
   after a gap that does not read as a whole one is the tail of a cut line: dropped and
   reported as ``CUT_BY_GAP`` (rule 6), not an unfinished unit.
8. After a 334 challenge (RFC 4954 §4) the client's next line is an AUTH response, not a
   command: ``AuthResponseReader`` reads that one line (up to ``AUTH_LINE_LIMIT``) and
   reports it as sent, base64 or ``*``; after a gap a line is whole if it reads as one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple, Protocol

from harness.smtp.commands import VERBS, parse_command
from harness.smtp.events import (
    Anomaly,
    AnomalyKind,
    AuthResponse,
    Content,
    Direction,
    EndOfChunk,
    EndOfData,
    Event,
    Gap,
    Opaque,
    Reply,
    Unfinished,
    UnitKind,
)
from harness.smtp.framing import (
    AUTH_LINE_LIMIT,
    COMMAND_LINE_LIMIT,
    REPLY_LINE_LIMIT,
    TEXT_LINE_LIMIT,
    ReceiveBuffer,
    Unit,
    has_odd_bytes,
    odd_bytes,
)
from harness.smtp.replies import ReplyBuilder, parse_reply_line

CHUNK_PIECE = 65536
_END_MARKER = b".\r\n"
_DOT_ALONE = re.compile(rb"\.[\r\n]*\n")  # a unit holding a dot and line breaks only
_DOT_AFTER_CR = re.compile(rb"\r\.(?=[\r\n])")  # a dot between a bare CR and a break
_PLAIN_RUN = re.compile(  # lines the per-line fast path passes as they are (rule 1)
    rb"(?:(?:[^\r\n\x00.][^\r\n\x00]{0,%d})?\r\n)+" % (TEXT_LINE_LIMIT - 3)
)
_LONGEST = TEXT_LINE_LIMIT - 2  # the longest plain line, without its CRLF
_NO_FLAWS: frozenset[AnomalyKind] = frozenset()
_VERB_BYTES = frozenset(verb.encode() for verb in [*VERBS, "AUTH"])
_AUTH_LINE = re.compile(rb"[A-Za-z0-9+/]*={0,2}|\*")  # base64 or the cancel (RFC 4954 §4)


class Reader(Protocol):
    needs_bytes: bool  # read() of an empty buffer returns None (see rule 1)

    def read(self, buf: ReceiveBuffer, direction: Direction) -> list[Event] | None: ...

    def gap(self, buf: ReceiveBuffer, direction: Direction) -> list[Event]: ...

    def unfinished(self, buf: ReceiveBuffer, direction: Direction) -> list[Event]: ...


class _Line(NamedTuple):
    body: bytes | None  # without the line ending; None: the tail of a line cut by a gap
    offset: int
    raw: bytes  # as received (only the kept head of an overlong line)
    anomalies: list[Anomaly]


class _LineReader:
    """Whole lines up to ``limit`` octets; an overlong line is cut (rule 2), a line cut by a
    gap dropped (rule 6); ``whole`` tells a line of this kind from the tail of one."""

    def __init__(self, limit: int, whole: Callable[[bytes], bool]) -> None:
        self._limit = limit
        self._whole = whole
        self._head: Unit | None = None  # the kept first piece of an overlong line
        self._resync = False  # a gap was passed: the next line may be the tail of a cut one

    @property
    def idle(self) -> bool:
        return self._head is None and not self._resync

    def next_line(self, buf: ReceiveBuffer, direction: Direction) -> _Line | None:
        while (unit := buf.next_unit(self._limit)) is not None:
            if not unit.complete:
                self._head = self._head or unit
                continue
            head, self._head = self._head, None
            if head is None:  # the common line: ends in LF, seldom holds an odd byte
                raw, offset = unit.raw, unit.offset
                if raw.endswith(b"\r\n") and raw.count(b"\r") == 1 and raw.find(b"\x00") < 0:
                    line = _Line(raw[:-2], offset, raw, [])  # its one LF, after its one CR
                else:
                    body = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
                    line = _Line(body, offset, raw, odd_bytes(raw, offset, direction))
            else:
                cut = _too_long(head.offset, direction, self._limit)
                anomalies = [*odd_bytes(head.raw, head.offset, direction), cut]
                line = _Line(head.raw, head.offset, head.raw, anomalies)
            return self._resynchronised(line, unit, direction) if self._resync else line
        return None

    def _resynchronised(self, line: _Line, unit: Unit, direction: Direction) -> _Line:
        """The first line after a gap: kept if whole, else dropped as a tail (rule 6)."""
        self._resync = False
        if line.body is not None and self._whole(line.body):
            return line
        end = unit.offset + len(unit.raw)
        return _Line(None, line.offset, line.raw, [_cut(line.offset, end, direction)])

    def rest(self, buf: ReceiveBuffer, direction: Direction) -> _Line | None:
        """At EOF: the line the stream ended inside (rule 7), None if there is none; its
        ``body`` is None for the tail of a line cut by a gap."""
        if self._head is not None:
            head = self._head
            return _Line(
                head.raw, head.offset, head.raw, [_too_long(head.offset, direction, self._limit)]
            )
        data = buf.peek()
        if not data:
            return None
        if self._resync and not self._whole(data):
            return _Line(
                None, buf.offset, data, [_cut(buf.offset, buf.offset + len(data), direction)]
            )
        return _Line(data, buf.offset, data, [])

    def gap(self, buf: ReceiveBuffer, direction: Direction) -> list[Event]:
        """Drop the partial line before the hole, pass the hole (rule 6)."""
        start = self._head.offset if self._head else buf.offset
        end = buf.offset + len(buf)
        buf.take(len(buf))
        self._head, self._resync = None, True
        events: list[Event] = [_cut(start, end, direction)] if end > start else []
        return [*events, _pass(buf, buf.hole, direction)]


def _cut(start: int, end: int, direction: Direction) -> Anomaly:
    detail = f"{end - start} octets dropped"
    return Anomaly(direction=direction, offset=start, kind=AnomalyKind.CUT_BY_GAP, detail=detail)


def _pass(buf: ReceiveBuffer, n: int, direction: Direction, *, content: bool = False) -> Gap:
    """Pass ``n`` octets of the hole; the ``Gap`` that reports them."""
    offset = buf.offset
    buf.pass_hole(n)
    return Gap(direction=direction, offset=offset, size=n, content=content)


def _known_verb(body: bytes) -> bool:
    return body.partition(b" ")[0].upper() in _VERB_BYTES


def _reply_line(body: bytes) -> bool:
    return parse_reply_line(body).error is None


def _too_long(offset: int, direction: Direction, limit: int) -> Anomaly:
    """Reported at the start of the overlong line."""
    kind, detail = AnomalyKind.LINE_TOO_LONG, f"over {limit} octets"
    return Anomaly(direction=direction, offset=offset, kind=kind, detail=detail)


def _flaws(anomalies: list[Anomaly]) -> frozenset[AnomalyKind]:
    return frozenset(a.kind for a in anomalies) if anomalies else _NO_FLAWS


class _OneLineReader:
    """Units of one line each: a command, or an AUTH response (rules 2, 6, 7)."""

    needs_bytes = True
    _unit: UnitKind

    def __init__(self, limit: int, whole: Callable[[bytes], bool]) -> None:
        self._lines = _LineReader(limit, whole)
        self.gap = self._lines.gap

    def read(self, buf: ReceiveBuffer, direction: Direction) -> list[Event] | None:
        line = self._lines.next_line(buf, direction)
        if line is None:
            return None
        if line.body is None:
            return line.anomalies
        return [*line.anomalies, self._event(line, direction)]

    def unfinished(self, buf: ReceiveBuffer, direction: Direction) -> list[Event]:
        line = self._lines.rest(buf, direction)
        if line is None:
            return []
        if line.body is None:
            return line.anomalies
        unit = Unfinished(direction=direction, offset=line.offset, unit=self._unit, raw=line.raw)
        return [*line.anomalies, unit]

    def _event(self, line: _Line, direction: Direction) -> Event:
        raise NotImplementedError


class CommandReader(_OneLineReader):
    _unit = UnitKind.COMMAND

    def __init__(self) -> None:
        super().__init__(COMMAND_LINE_LIMIT, _known_verb)

    def _event(self, line: _Line, direction: Direction) -> Event:
        assert line.body is not None
        return parse_command(
            line.body,
            direction=direction,
            offset=line.offset,
            raw=line.raw,
            flaws=_flaws(line.anomalies),
        )


class AuthResponseReader(_OneLineReader):
    """The client's line after a 334 challenge (rule 8), kept as sent."""

    _unit = UnitKind.AUTH_RESPONSE

    def __init__(self) -> None:
        super().__init__(AUTH_LINE_LIMIT, _AUTH_LINE.fullmatch)

    def _event(self, line: _Line, direction: Direction) -> Event:
        return AuthResponse(direction=direction, offset=line.offset, raw=line.raw)


class ReplyReader:
    needs_bytes = True

    def __init__(self, answer: Callable[[int | None], str | None] | None = None) -> None:
        self._answer = answer  # rule 5: code -> the key of the command it answers
        self._lines = _LineReader(REPLY_LINE_LIMIT, _reply_line)
        self.gap = self._lines.gap
        self._builder = ReplyBuilder()
        self._start = 0
        self._raw: list[bytes] = []  # the reply's lines so far (its builder's), joined at its end
        self._flaws = _NO_FLAWS

    @property
    def idle(self) -> bool:
        """No reply nor line begun: the next bytes start a reply."""
        return not self._raw and self._lines.idle

    def read(self, buf: ReceiveBuffer, direction: Direction) -> list[Event] | None:
        line = self._lines.next_line(buf, direction)
        if line is None:
            return None
        body, offset, raw, anomalies = line
        if body is None:
            return anomalies
        if not self._raw:
            self._start, self._flaws = offset, _NO_FLAWS
        self._raw.append(raw)
        if anomalies:
            self._flaws |= _flaws(anomalies)
        done = self._builder.add(parse_reply_line(body))
        if done is None:
            return anomalies
        code, lines, error = done
        raw, self._raw = b"".join(self._raw), []
        reply = Reply(
            direction=direction,
            offset=self._start,
            code=code,
            lines=lines,
            raw=raw,
            error=error,
            flaws=self._flaws,
            answers=self._answer(code) if self._answer else None,
        )
        return [*anomalies, reply]

    def unfinished(self, buf: ReceiveBuffer, direction: Direction) -> list[Event]:
        """The reply begun: its lines so far and the partial line after them (rule 7)."""
        line = self._lines.rest(buf, direction)
        anomalies: list[Event] = [*line.anomalies] if line else []
        partial = line if line is not None and line.body is not None else None
        if self._raw:
            start, raw, code = self._start, b"".join(self._raw), self._builder.code
        elif partial is not None:
            start, raw, code = partial.offset, b"", parse_reply_line(partial.body).code
        else:
            return anomalies
        raw += partial.raw if partial else b""
        unit = Unfinished(
            direction=direction, offset=start, unit=UnitKind.REPLY, raw=raw, code=code
        )
        return [*anomalies, unit]


class DataReader:
    """DATA content up to CRLF.CRLF (rule 3)."""

    needs_bytes = True

    def __init__(self, *, plain_runs: bool = False) -> None:
        self._plain_runs = plain_runs  # a run of plain lines is one Content (rule 1)
        self._line_start = True  # the DATA command's CRLF starts the first line
        self._continuing = False  # the last unit was a piece of an overlong line
        self._size = 0

    def read(self, buf: ReceiveBuffer, direction: Direction) -> list[Event] | None:
        """Every buffered unit up to and including the end marker (rule 1)."""
        events: list[Event] | None = None
        while True:
            if self._plain_runs and (run := _plain_run(buf.data)):
                events = events if events is not None else []
                events.append(self._plain(buf.next_unit_of(run), direction))
            if (unit := buf.next_unit(TEXT_LINE_LIMIT)) is None:
                return events
            events = events if events is not None else []
            if self._line_start and unit.raw == _END_MARKER:
                events.append(EndOfData(direction=direction, offset=unit.offset, size=self._size))
                return events
            events += self._unit(unit, direction)

    def gap(self, buf: ReceiveBuffer, direction: Direction) -> list[Event]:
        """The bytes before the hole are content, the hole a content gap (rule 6)."""
        events: list[Event] = []
        if len(buf):  # the bytes before the hole end there: a unit, not an overlong piece
            offset = buf.offset
            events += self._unit(Unit(buf.take(len(buf)), offset, True), direction)
        self._size += buf.hole
        self._line_start, self._continuing = True, False
        return [*events, _pass(buf, buf.hole, direction, content=True)]

    def unfinished(self, buf: ReceiveBuffer, direction: Direction) -> list[Event]:
        """Content begun and never ended (rule 7); nothing if none arrived."""
        rest = buf.peek()
        if not self._size and not rest:
            return []
        return [Unfinished(direction=direction, offset=buf.offset, unit=UnitKind.CONTENT, raw=rest)]

    def _plain(self, unit: Unit, direction: Direction) -> Content:
        """Plain lines, one or more: nothing to unstuff nor to report."""
        self._size += len(unit.raw)
        self._line_start, self._continuing = True, False  # no odd bytes: it ends in CRLF
        return Content(direction=direction, offset=unit.offset, data=unit.raw)

    def _unit(self, unit: Unit, direction: Direction) -> list[Event]:
        raw = unit.raw
        # find, not in: see framing.has_odd_bytes
        if unit.complete and raw[:1] != b"." and raw.find(b"\r.") < 0 and not has_odd_bytes(raw):
            return [self._plain(unit, direction)]  # the common line
        events: list[Event] = [*odd_bytes(unit.raw, unit.offset, direction)]
        events += self._lookalikes(unit, direction)
        if not unit.complete and not self._continuing:
            events.append(_too_long(unit.offset, direction, TEXT_LINE_LIMIT))
        data = unit.raw[1:] if self._line_start and unit.raw[:1] == b"." else unit.raw
        self._size += len(data)
        self._line_start = unit.crlf
        self._continuing = not unit.complete
        events.append(Content(direction=direction, offset=unit.offset, data=data))
        return events

    def _lookalikes(self, unit: Unit, direction: Direction) -> list[Anomaly]:
        """Dots that some parser might take for the end of data (rule 3)."""
        raw = unit.raw
        found = [m.start() for m in _DOT_AFTER_CR.finditer(raw)] if raw.find(b"\r.") >= 0 else []
        if not self._continuing and raw[:1] == b"." and _DOT_ALONE.fullmatch(raw):
            found.insert(0, 0)
        if not found:
            return []
        detail = "only CRLF.CRLF ends DATA (RFC 5321 §4.1.1.4)"
        return [
            Anomaly(
                direction=direction,
                offset=unit.offset + i,
                kind=AnomalyKind.SMUGGLING,
                detail=detail,
            )
            for i in found
        ]


def _plain_run(data: bytearray) -> int:
    """The length of the run of plain lines ``data`` starts with (``_PLAIN_RUN``'s match, 0 if
    none): when every line before the last CRLF, or before the first line with a leading
    dot, is plain (the common case), a few searches at C speed tell it; otherwise the regex
    finds where the run stops."""
    if data[:1] == b".":
        return 0
    end = data.rfind(b"\r\n") + 2
    dot = data.find(b"\n.", 0, end)
    end = end if dot < 0 else dot + 1  # a leading dot ends the run (the end marker, mostly)
    if end < 2:
        return 0
    crlf = data.count(b"\r\n", 0, end)
    plain = (
        data.find(b"\x00", 0, end) < 0
        and data.count(b"\r", 0, end) == crlf == data.count(b"\n", 0, end)
        and (end <= TEXT_LINE_LIMIT or max(map(len, data[: end - 2].split(b"\r\n"))) <= _LONGEST)
    )
    if plain:
        return end
    found = _PLAIN_RUN.match(data)
    return found.end() if found else 0


class ChunkReader:
    """One BDAT chunk of ``size`` octets (rule 4)."""

    def __init__(self, size: int, last: bool) -> None:
        self._size = size
        self._left = size
        self._last = last

    @property
    def needs_bytes(self) -> bool:
        return self._left > 0  # a finished chunk reports its end without more bytes

    def read(self, buf: ReceiveBuffer, direction: Direction) -> list[Event] | None:
        if not self._left:
            return [
                EndOfChunk(direction=direction, offset=buf.offset, size=self._size, last=self._last)
            ]
        want = min(self._left, CHUNK_PIECE)
        if len(buf) < want:
            return None
        return [self._content(buf, want, direction)]

    def gap(self, buf: ReceiveBuffer, direction: Direction) -> list[Event]:
        """Bytes before the hole, then as much of it as the chunk still counts (rule 6)."""
        events: list[Event] = [self._content(buf, len(buf), direction)] if len(buf) else []
        n = min(buf.hole, self._left)
        self._left -= n
        return [*events, _pass(buf, n, direction, content=True)]

    def unfinished(self, buf: ReceiveBuffer, direction: Direction) -> list[Event]:
        """A chunk begun and short of its size (rule 7); nothing if none of it arrived."""
        rest = buf.peek()
        if self._left == self._size and not rest:
            return []
        return [Unfinished(direction=direction, offset=buf.offset, unit=UnitKind.CHUNK, raw=rest)]

    def _content(self, buf: ReceiveBuffer, n: int, direction: Direction) -> Content:
        offset = buf.offset
        self._left -= n
        return Content(direction=direction, offset=offset, data=buf.take(n))


class OpaqueReader:
    """TLS records after STARTTLS: counted, not parsed."""

    needs_bytes = True

    def read(self, buf: ReceiveBuffer, direction: Direction) -> list[Event] | None:
        if not len(buf):
            return None
        offset = buf.offset
        return [Opaque(direction=direction, offset=offset, size=len(buf.take(len(buf))))]

    def gap(self, buf: ReceiveBuffer, direction: Direction) -> list[Event]:
        return [_pass(buf, buf.hole, direction)]

    def unfinished(self, buf: ReceiveBuffer, direction: Direction) -> list[Event]:
        return []  # it reads every byte it is given
