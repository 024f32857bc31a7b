"""The sans-IO SMTP core: bytes in, events out, no sockets, no clock.

Rules kept here (the grammar is in commands.py and replies.py, framing in framing.py,
readers in readers.py, the state table in state.py):

1. One engine, three uses.  ``Observer`` sees both directions of a connection and is the
   whole protocol; ``ServerConnection`` and ``ClientConnection`` are observers that also
   *feed their own output* through it, so a scripted peer and a pcap dissector track
   state with the very same code.
2. Each direction is read in one mode at a time (h11's reader table):

       client: COMMAND --DATA/STARTTLS--> paused --reply--> DATA content | COMMAND | TLS
               COMMAND --AUTH--> paused --334--> AUTH RESPONSE (one line) --> paused
                                        --other reply--> COMMAND
               COMMAND --BDAT n--> CHUNK (n octets) --> COMMAND
               DATA --CRLF.CRLF--> COMMAND
       server: REPLY --220 to STARTTLS--> TLS

   After DATA, STARTTLS or AUTH (or an AUTH response) the client's bytes wait unparsed
   until the server's reply says what they are: content after 354, TLS after 220, an AUTH
   response after 334 (RFC 4954 §4), commands otherwise - whatever the session state
   (state.py rule 4: the reply is what the client acts on).  Every reply of an AUTH
   exchange answers the AUTH: an AUTH response waits for its reply as the AUTH again.
3. When TLS starts, bytes already received in either direction were sent in plaintext
   after STARTTLS: they are reported (``PLAINTEXT_AFTER_STARTTLS``) and dropped, never
   parsed as commands (RFC 3207 §4.2, CVE-2011-0411, CVE-2021-38371).  Once the caller
   has the handshake done (a peer's ssl, a capture's decrypter), ``secured()`` reads both
   directions as SMTP again: the plaintext inside TLS, a new session with no greeting that
   awaits EHLO (RFC 3207 §4.2: both ends forget what they learnt before).  ``in_tls``
   says whether it did.
4. A connection object parses its peer's bytes lazily, one unit per ``next_event`` step,
   so each command is judged in the state left by the replies to all earlier commands -
   a pipelined RCPT after a refused MAIL is out of order (503), as RFC 2920 wants.
   Its own output is parsed at once.
5. ``Observer.skip(direction, n)``: n octets of that direction are missing from a capture
   (a TCP gap).  They take their place in the stream behind the bytes already fed and are
   passed by the reader of the mode they fall in (readers.py rule 6): counted towards a
   BDAT chunk, a gap in DATA content, a dropped partial line among commands or replies.
   Each is reported as a ``Gap`` event.
6. A reply a ``ServerConnection`` formats itself is well-formed: between replies it is
   applied to the session directly (``Observer.formatted_reply``) with the events reading it
   back would give, instead of being parsed again - the cost of a reply, paid per command.
7. Nothing here raises on what the peer sent; bad local input (an invalid reply code, a
   command containing CRLF) raises ``HarnessError``.
8. A direction's EOF (``feed(direction, b"")``) is its end: the unit it ended inside is
   reported as ``Unfinished`` (events rule 4), then ``ConnectionClosed``.  Feeding or
   skipping after it is the caller's bug (``RuntimeError``): nothing follows an end.  A
   capture's reassembler guarantees it, a FIN ending its direction (tcpstream.py).
9. A capture's observer (``Observer(capture=True)``) repairs what the capture lost, and
   says so with a ``Resync`` event before the reply concerned; a peer's never does (it
   knows its own bytes, and answers what it was sent).  (a) A reply code that answers
   one kind of command only (``ONLY_ANSWERS``: 354 DATA and 221 QUIT, RFC 5321 §4.3.2;
   220 the greeting or STARTTLS, RFC 3207 §4; 334 and 235 AUTH, RFC 4954 §4) answers the
   oldest such command waiting: the commands before it are taken as answered by replies
   not captured; a 354 with no DATA waiting answers nothing (the late copy of a 354
   inferred by (c), where the capture point reordered the directions).  (b)
   ``midstream`` (the connection's start was not captured): a first reply that cannot be
   a greeting (220, 554, 421: §3.1, §4.3.2) answers the commands, the greeting being
   taken as sent before the capture began.  (c) The client paused after DATA whose bytes
   hold CRLF.CRLF followed by a whole valid command line, while the server's direction
   has nothing unparsed: the 354 was sent and not captured (a client sends content only
   after it, §4.3.2); an ``inferred`` 354 answers the DATA.  (d) The server's end of
   stream while the client waits on DATA, STARTTLS or AUTH: no reply can come after it,
   so the client's bytes after that command are commands (content follows only a 354,
   RFC 5321 §4.1.1.4; a client goes on after a command it got no reply to, e.g. its QUIT,
   RFC 2920 §3.1): the client reads commands again.
   Its DATA content comes as runs of plain lines, not line by line (readers.py rule 1): the
   same bytes, fewer events.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import replace

from harness.smtp.commands import format_command, parse_command
from harness.smtp.events import (
    NEED_DATA,
    PAUSED,
    Anomaly,
    AnomalyKind,
    AuthResponse,
    Command,
    ConnectionClosed,
    Direction,
    EndOfChunk,
    EndOfData,
    Event,
    Reply,
    Resync,
    Status,
    TlsStarted,
)
from harness.smtp.framing import ReceiveBuffer, dot_stuff
from harness.smtp.readers import (
    AuthResponseReader,
    ChunkReader,
    CommandReader,
    DataReader,
    OpaqueReader,
    Reader,
    ReplyReader,
)
from harness.smtp.replies import format_reply
from harness.smtp.state import END_OF_DATA, GREETING, Session, State

CLIENT, SERVER = Direction.CLIENT, Direction.SERVER
AUTH, CHALLENGE = "AUTH", 334  # RFC 4954 §4
_AWAIT_REPLY = frozenset({"DATA", "STARTTLS", AUTH})  # the reply decides what the next bytes are
ONLY_ANSWERS: dict[int, frozenset[str]] = {  # rule 9 (a)
    220: frozenset({GREETING, "STARTTLS"}),
    221: frozenset({"QUIT"}),
    235: frozenset({AUTH}),
    334: frozenset({AUTH}),
    354: frozenset({"DATA"}),
}
GREETING_CODES = frozenset({220, 421, 554})  # rule 9 (b)
_END_OF_DATA, _LINE_END = b"\r\n.\r\n", b"\r\n"


class _Side:
    """One direction of the connection: its unparsed bytes and the mode they are read in."""

    __slots__ = ("buffer", "closed", "reader")

    def __init__(self, reader: Reader) -> None:
        self.buffer = ReceiveBuffer()
        self.reader: Reader | None = reader  # None: paused until the server's reply
        self.closed = False  # its ConnectionClosed has been reported


class Observer:
    """Both directions of one SMTP connection: ``feed(direction, data)`` returns events."""

    def __init__(self, *, capture: bool = False, midstream: bool = False) -> None:
        self.session = Session()
        self._client = _Side(CommandReader())
        self._capture = capture  # rule 9
        self._midstream = midstream  # until the first reply
        me = weakref.ref(self)  # the reader holds no Observer: no cycle for the GC to find
        answer = (lambda code: me()._answer(code)) if capture else self.session.reply
        self._server = _Side(ReplyReader(answer=answer))
        self._paused_on: str | None = None
        self._passed: tuple[str, ...] = ()  # the commands the reply being read passed over
        self._scanned = 0  # client bytes after DATA known to hold no end of data (rule 9 c)
        self.in_tls = False  # rule 3: secured() was called

    def _side(self, direction: Direction) -> _Side:
        return self._client if direction is CLIENT else self._server  # no Enum hashing

    @property
    def state(self) -> State:
        return self.session.state

    def feed(self, direction: Direction, data: bytes) -> list[Event]:
        """Bytes seen travelling in ``direction`` (b"" for its EOF); all events they complete.

        The client's bytes are parsed first, one unit at a time: a reply may let the client's
        buffered bytes be parsed (354 after DATA), and the replies after it may answer them."""
        (self._client if direction is CLIENT else self._server).buffer.feed(data)  # _side
        return self._parse()

    def skip(self, direction: Direction, n: int) -> list[Event]:
        """``n`` octets of ``direction`` missing from a capture (rule 5); the events that
        follow, as ``feed``."""
        self._side(direction).buffer.skip(n)
        return self._parse()

    def _parse(self) -> list[Event]:
        events: list[Event] = []
        client, server = self._client, self._server
        while True:
            while self._step(client, CLIENT, events) or self._step(server, SERVER, events):
                pass
            paused_on_data = self._capture and self._paused_on == "DATA"
            if not paused_on_data or not self._infer_354(events):
                return events

    def _answer(self, code: int | None) -> str | None:
        """A capture's reply ``code``, paired by what it can answer (rule 9 a, b)."""
        session, keys = self.session, ONLY_ANSWERS.get(code or 0)
        if self._midstream:
            self._midstream = False
            if session.oldest == GREETING and code not in GREETING_CODES:
                keys = frozenset(session.waiting[1:])
        passed = session.skip_to(keys) if keys else ()
        if passed is None and code == 354:
            return None  # no DATA waits: the late copy of one inferred (rule 9 c)
        self._passed = passed or ()
        return session.reply(code)

    def _infer_354(self, out: list[Event]) -> bool:
        """The 354 the capture lacks, if the client's bytes after DATA show it was sent
        (rule 9 c): its events added to ``out``; whether it was."""
        server = self._server.buffer
        if server.data or server.hole or not self._data_ended():
            return False
        self._passed = self.session.skip_to(ONLY_ANSWERS[354]) or ()
        answers = self.session.reply(354)
        reply = Reply(
            direction=SERVER,
            offset=server.offset,
            code=354,
            lines=(),
            raw=b"",
            answers=answers,
            inferred=True,
        )
        self._apply(reply, out)
        return True

    def _data_ended(self) -> bool:
        """The client's bytes after DATA hold CRLF.CRLF and then a whole valid command."""
        buf = self._client.buffer
        if buf.peek(0, 3) == _END_OF_DATA[2:]:
            end = 3
        else:
            found = buf.find(_END_OF_DATA, max(self._scanned - 4, 0))
            if found < 0:
                self._scanned = len(buf)
                return False
            self._scanned, end = found, found + len(_END_OF_DATA)
        line_end = buf.find(_LINE_END, end)
        if line_end < 0:
            return False
        command = parse_command(buf.peek(end, line_end))
        return command.known and command.syntax_error is None

    def receive_data(self, direction: Direction, data: bytes) -> None:
        """Buffer bytes without parsing them (b"" marks EOF); ``step`` parses."""
        self._side(direction).buffer.feed(data)

    def formatted_reply(self, direction: Direction, data: bytes, code: int) -> list[Event] | None:
        """Reply ``data`` with ``code``, as ``format_reply`` makes them, sent in ``direction``:
        the events of reading it back, but for the ``Reply`` itself (rule 6); None if that
        direction is not between replies (its bytes must be read: ``receive_data``)."""
        side = self._side(direction)
        reader, buf = side.reader, side.buffer
        if not isinstance(reader, ReplyReader) or not reader.idle or buf.data or buf.hole:
            return None
        buf.offset += len(data)
        events: list[Event] = []
        self._after_reply(self.session.reply(code), code, events)
        return events

    def paused(self, direction: Direction) -> bool:
        return self._side(direction).reader is None

    def pending(self, direction: Direction) -> bool:
        """Bytes or a gap not yet parsed, or an EOF not yet reported, in ``direction``."""
        buf = self._side(direction).buffer
        return bool(buf.data or buf.hole) or (buf.eof and not self._side(direction).closed)

    def step(self, direction: Direction) -> list[Event] | None:
        """Parse one unit in ``direction``: its events, or None if nothing can be parsed."""
        events: list[Event] = []
        return events if self._step(self._side(direction), direction, events) else None

    def _step(self, side: _Side, direction: Direction, out: list[Event]) -> bool:
        """``step``, its events added to ``out``; whether a unit was parsed."""
        reader, buf = side.reader, side.buffer
        if reader is None or not (
            buf.data or buf.hole or (buf.eof and not side.closed) or not reader.needs_bytes
        ):
            return False  # paused, or nothing to parse nor to report (most calls)
        events = reader.read(buf, direction)
        if events is None and buf.hole:
            events = reader.gap(buf, direction)
        if events is not None:
            apply = self._apply
            for event in events:
                apply(event, out)
            return True
        if buf.eof and not side.closed:  # rule 8
            side.closed = True
            out += reader.unfinished(buf, direction)
            out.append(
                ConnectionClosed(direction=direction, offset=buf.offset, partial=buf.take(len(buf)))
            )
            if direction is SERVER and self._capture and self._paused_on is not None:
                self._paused_on, self._scanned = None, 0  # rule 9 d
                self._client.reader = CommandReader()
            return True
        return False

    def _apply(self, event: Event, out: list[Event]) -> None:
        """Update the session and the reading modes for ``event``; add it, annotated, to
        ``out``."""
        match event:
            case Command():
                if not self.session.command(event.key):  # commands arrive in order (default)
                    event = replace(event, in_order=False)
                if event.verb in _AWAIT_REPLY:
                    self._client.reader, self._paused_on = None, event.verb
                elif event.chunk_size is not None:
                    self._client.reader = ChunkReader(event.chunk_size, event.last)
            case AuthResponse():  # waits for its reply as the AUTH again (rule 2)
                self.session.command(AUTH)
                self._client.reader, self._paused_on = None, AUTH
            case Reply():  # already applied to the session as it was read (readers rule 5)
                if self._passed or event.inferred:
                    out += self._resync(event)
                out.append(event)
                self._after_reply(event.answers, event.code, out)
                return
            case EndOfData():
                self.session.command(END_OF_DATA)
                self._client.reader = CommandReader()
            case EndOfChunk():
                self._client.reader = CommandReader()
        out.append(event)

    def _resync(self, reply: Reply) -> list[Event]:
        """The ``Resync`` of a reply that passed over older commands or was inferred (rule 9),
        if it answers a command."""
        if reply.code is None or reply.answers is None:
            return []
        passed, self._passed = self._passed, ()
        resync = Resync(
            direction=reply.direction,
            offset=reply.offset,
            code=reply.code,
            answers=reply.answers,
            assumed=passed,
            inferred=reply.inferred,
        )
        return [resync]

    def _after_reply(self, answered: str | None, code: int | None, out: list[Event]) -> None:
        if self.session.state is State.TLS:
            out += self._start_tls()
        elif answered is not None and answered == self._paused_on:
            self._paused_on, self._scanned = None, 0
            self._client.reader = self._resumed(answered, code)

    def _resumed(self, answered: str, code: int | None) -> Reader:
        """The reader of the client's bytes after the reply to the command they waited on."""
        if answered == AUTH and code == CHALLENGE:
            return AuthResponseReader()
        if self.session.state is State.DATA:
            return DataReader(plain_runs=self._capture)  # readers rule 1
        return CommandReader()

    def _start_tls(self) -> list[Event]:
        events: list[Event] = []
        for d in Direction:
            side = self._side(d)
            buf = side.buffer
            if len(buf):
                events.append(
                    Anomaly(
                        direction=d,
                        offset=buf.offset,
                        kind=AnomalyKind.PLAINTEXT_AFTER_STARTTLS,
                        detail=f"{len(buf.take(len(buf)))} octets dropped",
                    )
                )
            events.append(TlsStarted(direction=d, offset=buf.offset))
            side.reader = OpaqueReader()
        self._paused_on = None
        return events

    def secured(self) -> None:
        """The TLS handshake is done: read the plaintext inside it as a new session (rule 3).
        Bytes fed before this call were TLS records, counted by the opaque readers."""
        if self.session.state is not State.TLS:
            raise RuntimeError(f"secured() in state {self.session.state.value}: no TLS began")
        self.session = Session(after_tls=True)
        answer = self._answer if self._capture else self.session.reply
        self._client = _Side(CommandReader())
        self._server = _Side(ReplyReader(answer=answer))
        self._paused_on, self._passed, self._scanned = None, (), 0
        self.in_tls = True


class _Peer:
    """One end of the connection: the peer's bytes in, events out, our bytes tracked."""

    _ours: Direction
    _theirs: Direction

    def __init__(self) -> None:
        self._observer = Observer()
        self._events: deque[Event] = deque()

    @property
    def state(self) -> State:
        return self._observer.state

    @property
    def session(self) -> Session:
        return self._observer.session

    def receive_data(self, data: bytes) -> None:
        """The peer's bytes; b"" when the peer closed its side."""
        self._observer.receive_data(self._theirs, data)

    def next_event(self) -> Event | Status:
        """The next event from the peer, or NEED_DATA, or PAUSED (we owe a reply)."""
        while not self._events:
            events = self._observer.step(self._theirs)
            if events is None:
                return PAUSED if self._observer.paused(self._theirs) else NEED_DATA
            self._keep(events)
            if self._observer.pending(self._ours):  # their reply may have unpaused ours
                self._drain_ours()
        return self._events.popleft()

    def secured(self) -> None:
        """Our TLS handshake is done: what follows is the plaintext inside TLS (rule 3)."""
        self._observer.secured()

    @property
    def in_tls(self) -> bool:
        return self._observer.in_tls

    def send_raw(self, data: bytes) -> bytes:
        """Send arbitrary bytes (probes); they are tracked like any other output."""
        self._observer.receive_data(self._ours, data)
        self._drain_ours()
        return data

    def _drain_ours(self) -> None:
        while (events := self._observer.step(self._ours)) is not None:
            self._keep(events)

    def _keep(self, events: Iterable[Event]) -> None:
        theirs = self._theirs
        self._events.extend([e for e in events if e.direction is theirs])


class ServerConnection(_Peer):
    """The receiving end: feed it the client's bytes, answer each command with a reply."""

    _ours, _theirs = SERVER, CLIENT

    def send_reply(self, code: int, text: str | Sequence[str] = "") -> bytes:
        """The bytes of a (multi-line, if ``text`` is a list) reply, now tracked as sent."""
        data = format_reply(code, text)
        events = self._observer.formatted_reply(SERVER, data, code)
        if events is None:
            return self.send_raw(data)
        self._keep(events)
        return data


class ClientConnection(_Peer):
    """The sending end: feed it the server's bytes, get Reply events; send commands."""

    _ours, _theirs = CLIENT, SERVER

    def send_command(self, verb: str, argument: str | None = None) -> bytes:
        return self.send_raw(format_command(verb, argument))

    def send_data(self, body: bytes) -> bytes:
        """The message after 354: dot-stuffed, final CRLF ensured, then ``.`` CRLF."""
        return self.send_raw(dot_stuff(body) + b".\r\n")

    def send_bdat(self, chunk: bytes, *, last: bool = False) -> bytes:
        """A BDAT command and its chunk (RFC 3030)."""
        argument = f"{len(chunk)} LAST" if last else str(len(chunk))
        return self.send_raw(format_command("BDAT", argument) + chunk)
