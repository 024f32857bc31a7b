"""The scripted SMTP receiver: an asyncio protocol that moves bytes, waits and stores.

Rules kept here:

1. Every byte in and out goes through ``ServerConnection`` (the core parses and formats);
   every reply is decided by the pure reply policy (policy.py: which code and text, what
   a positive reply commits to, the PTR/HELO and VRFY policies, reply rules).  This module
   only moves the bytes, waits (a PTR lookup, a rule's delay or line pause) and stores.
2. The PTR of the client's address is looked up when the policy wants it (at HELO/EHLO,
   the seed's steps 7-10, or at connect before the greeting) through the injected
   ``resolve``; a failed lookup is an empty answer, not a fault.
3. A message is stored only after its end-of-data marker (or BDAT LAST), byte-exact, once
   per accepted recipient, maildir-style (``<dir>/<recipient>/tmp`` then renamed into
   ``new``), and before the positive reply to it is written.  A session that ends any
   other way stores nothing.
4. After 221 (QUIT) or 421 the receiver closes first: ``transport.close()`` right after
   the reply is written flushes it, then sends our FIN before the client's (seed steps
   29-33; §3.8, §4.1.1.10).  A close whose reply the client does not read is cut off
   (abort) after ``timeout`` seconds.
5. Our faults are records (``Receiver.internal_faults``, ``harness.errors.InternalFault``,
   and a ``fault`` log entry): an exception of ours in a session (a bug, a reply that
   cannot be formatted) ends that session only; a session our side cut short (the
   receiver stopped, or the event loop cancelled its wait, while it was in progress) is a
   fault too.  What the client does - garbage, a reset, silence, closing - never is.
6. Server timeout: RFC 5321 §4.5.3.2.7, "An SMTP server SHOULD have a timeout of at least
   5 minutes while it is awaiting the next command from the sender."  Here the bound is
   ``config.timeout`` (a scenario setting) while the client owes bytes; then 421 and close
   (§3.8: "After a timeout ... occurs waiting for the client to send a command or data"),
   logged as ``timeout``.
7. The log has one entry per thing that happened, in order: connect, each command and
   reply, DNS query and answer, anomalies, bytes received while a reply waited, each line
   of a reply written line by line, stored messages, timeout, faults, close.
   ``Receiver.answered`` has one ``Answered`` per complete reply, in the order sent.
8. A session is an ``asyncio.Protocol``: ``data_received`` feeds the core and answers
   every event it completes at once, in the same call, when the reply needs no waiting.
   What must wait runs in a task; meanwhile the client's bytes are still read (logged as
   ``received``) and buffered in the core, unparsed, to be judged and answered in order
   once the wait is over (RFC 2920; protocol.py rule 4).  A close noticed during a wait
   cuts it short: after an EOF (the client may have only half-closed, and still reads)
   the rest of every delay and line pause is skipped, the replies owed go out at once
   (a QUIT still gets its 221, §4.1.1.10), then the EOF is handled; after a reset the
   session ends with nothing more sent.  Reading stops while the client does not read
   its replies (``pause_writing``) or once it has sent ``HOLD_LIMIT`` octets during one
   wait.
9. A reply rule's ``reset`` ends the session with an RST (SO_LINGER 0, then close): once
   the reply (if any) is acknowledged by the client, so that the RST lands after it, not
   instead of it (a close with unacknowledged data would discard it).  The TCP faults of
   RFC 5321 §6.1 and RFC 1047: after RCPT, after 354, after the final ``.`` before its
   250 (``raw = ""``), after the 250.  ``stop_reading`` stops reading for good after its
   reply (after 354: the client's content fills the receive window, a zero window); the
   idle timeout (rule 6) then ends the session, its 421 and close an RST since bytes are
   left unread.
10. STARTTLS (policy rule 5): once the 220 is written (with ``starttls_inject``'s bytes
   behind it, in the same write) reading stops and the handshake runs as a wait, with the
   run's credentials (``loop.start_tls``); then the core reads a new session
   (``secured()``, protocol rule 3) and the facts are forgotten but for the PTR, which
   the client did not tell us.  What the client pipelined behind STARTTLS in plaintext is
   reported and dropped by the core, unless ``starttls_plaintext="answer"`` (a receiver
   built to fail the injection check): then it is answered inside TLS, as if sent there.
   Bytes that come decrypted before the handshake's wait is over wait for the new
   session.  A failed handshake (the client's alert, a reset, the timeout) is the
   client's doing: logged as ``tls-failed``, the session closed.  The log's ``tls`` entry
   says the version, the cipher and the EHLO name given before TLS; ``hello-in-tls`` the
   names before and after.  A message received inside TLS is stored behind a
   ``Received:`` trace field (RFC 5321 §4.4; "with ESMTPS", RFC 3848) naming the EHLO
   name given inside TLS (``StoredMessage.trace``; ``data`` stays the content received).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email.utils
import fcntl
import hashlib
import ipaddress
import itertools
import re
import socket
import ssl
import struct
import termios
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple

from dnslib import QTYPE, RCODE

from harness.errors import InternalError, InternalFault
from harness.smtp.events import (
    NEED_DATA,
    PAUSED,
    Anomaly,
    Command,
    ConnectionClosed,
    Content,
    EndOfChunk,
    EndOfData,
    Event,
    Status,
)
from harness.smtp.peer import (
    EventLog,
    Resolve,
    SocketFactory,
    family_of,
    server_context,
    tls_summary,
)
from harness.smtp.policy import (
    TIMEOUT,
    Decision,
    Effect,
    Facts,
    ReceiverConfig,
    ReplyRule,
    Settled,
    after_tls,
    answer,
    end_of_chunk,
    end_of_message,
    greeting,
    ptr_wanted,
    raw_reply,
    reply_texts,
    rule_for,
    scripted,
    settle,
    timeout_reply,
    with_ptr,
)
from harness.smtp.protocol import ServerConnection
from harness.smtp.state import END_OF_DATA, GREETING, State

__all__ = ["Answered", "Receiver", "ReceiverConfig", "ReplyRule", "StoredMessage"]

HOLD_LIMIT = 1 << 20  # octets a client may send while one reply waits (rule 8)
RESET_POLL_S = 0.005  # how often a reset looks whether its reply was acknowledged (rule 9)
_PIECES = re.compile(rb"[^\n]*\n|[^\n]+")  # a reply's lines, for writing them one by one
_UNPRINTABLE = re.compile(r"[^\x21-\x7e]")  # kept out of the trace field (rule 10)


class Answered(NamedTuple):
    """One complete reply the receiver sent.  ``key`` names what it answered as
    ``ReplyRule.matches`` knows it (a verb, ``BDAT LAST``, ``<greeting>``,
    ``<end-of-data>``; ``<timeout>`` for the idle timeout's 421, which answers nothing);
    ``argument``/``address`` are the answered command's; ``code``/``lines`` the reply as
    sent, after reply rules: ``lines`` the text of each line after its code, as
    ``Reply.lines``; ``code`` None only for raw bytes with no readable code."""

    session: int
    key: str
    argument: str | None
    address: str | None
    code: int | None
    lines: tuple[str, ...]


@dataclass(frozen=True)
class StoredMessage:
    recipient: str
    mail_from: str
    path: Path | None
    data: bytes
    trace: bytes = b""  # the Received: field stored before ``data`` (rule 10)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


class Receiver:
    """Serves SMTP on its listening sockets; every session runs concurrently."""

    def __init__(
        self,
        config: ReceiverConfig,
        *,
        resolve: Resolve | None = None,
        socket_factory: SocketFactory = socket.socket,
    ) -> None:
        self.config = config
        self.resolve = resolve
        self.socket_factory = socket_factory
        self.log = EventLog(config.log_path, per_turn=True)
        self.tls_context = _tls_context(config)
        self.stored: list[StoredMessage] = []
        self.answered: list[Answered] = []
        self.internal_faults: list[InternalFault] = []
        self._servers: list[asyncio.Server] = []
        self._sessions: set[_Session] = set()
        self._numbers = itertools.count(1)

    async def start(
        self, host: str = "0.0.0.0", port: int = 25, *, sock: socket.socket | None = None
    ) -> tuple[str, int]:
        """Listen (on ``sock`` if given, else on a new socket bound to host:port)."""
        if sock is None:
            sock = self.socket_factory(family_of(host), socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(64)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        self._servers.append(await loop.create_server(self._session, sock=sock))
        return sock.getsockname()[:2]

    async def idle(self) -> None:
        """Wait until every session that has started has ended."""
        while self._sessions:
            await asyncio.wait([session.ended for session in self._sessions])

    async def stop(self) -> None:
        """Stop listening and end every session; one still in progress is cut short (a
        fault, rule 5)."""
        for server in self._servers:
            server.close()
            await server.wait_closed()
        for session in list(self._sessions):
            session.stop()
        await self.idle()
        self.log.close()

    async def __aenter__(self) -> Receiver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _session(self) -> _Session:
        return _Session(self, next(self._numbers))


Step = Callable[[], Awaitable[None]]


class _Session(asyncio.Protocol):
    """One SMTP session: feed the core what arrives, ask the policy, send, wait, store."""

    transport: asyncio.Transport

    def __init__(self, receiver: Receiver, number: int) -> None:
        self.receiver = receiver
        self.config = receiver.config
        self.number = number
        self.where = f"receiver session {number}"
        self.conn = ServerConnection()
        self.peer = ("0.0.0.0", 0)
        self.facts = Facts()
        self.answered: Counter[str] = Counter()  # key -> times answered (a rule's ``nth``)
        self.content: bytearray | None = None  # the message being received
        self.chunk: tuple[Command, Decision] | None = None  # a BDAT reply owed after its chunk
        self.closing = False
        self._add = receiver.log.for_session(number)  # one log entry
        self._loop = asyncio.get_running_loop()
        self.ended = self._loop.create_future()
        self._waits: deque[tuple[Step, Callable[[], None], str]] = deque()
        self._task: asyncio.Task[None] | None = None  # runs the waits
        self._waiting = ""  # what the running wait is for
        self._held = 0  # octets received during the running wait (rule 8)
        self._gone = asyncio.Event()  # the client's EOF came during a wait (rule 8)
        self._write_blocked = False
        self._timer: asyncio.TimerHandle | None = None  # the idle timeout, or a close's bound
        self._deadline = 0.0
        self._resetting = False
        self._deaf = False  # a rule's stop_reading: reading never resumes (rule 9)
        # rule 10: the client's plaintext, kept only to answer it inside TLS
        self._tap = bytearray() if self.config.starttls_plaintext == "answer" else None
        self._kept = b""  # what the client pipelined behind STARTTLS
        self._early: bytearray | None = None  # not None while the handshake runs
        self._tls: dict[str, object] = {}  # what the handshake gave
        self._helo_before: str | None = None  # the EHLO name given before TLS

    # --- transport callbacks -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer = _client_address(transport.get_extra_info("peername"))
        self.receiver._sessions.add(self)
        self._add("connect", peer=self.peer)
        self._guarded(self._open)
        self._pump()

    def data_received(self, data: bytes) -> None:
        if self._resetting:  # rule 9: nothing more is judged, stored or answered
            self._add("ignored", size=len(data))
            return
        if self._early is not None:  # rule 10: for the session inside TLS
            self._early += data
            return
        if self._tap is not None and not self.conn.in_tls:
            self._tap += data
        try:
            self.conn.receive_data(data)
        except Exception as exc:  # rule 5 (the core refuses bytes only after an EOF)
            self._fault(exc)
            return
        if self._task is None:
            self._pump()
        else:
            self._hold(data)

    def eof_received(self) -> bool:
        if self._resetting:
            return True  # the reset closes the transport
        if self._task is None:
            self.data_received(b"")
        elif not self.closing:  # rule 8: the wait is cut short, the EOF handled after it
            self._add("eof-while-waiting", waiting=self._waiting, unanswered=self._held)
            self._gone.set()
        # half-open: the session closes the transport itself (rule 4); inside TLS the
        # client's close_notify ends the connection (asyncio closes it: no half-open TLS)
        return not self.conn.in_tls

    def pause_writing(self) -> None:
        self._write_blocked = True  # the client does not read its replies: stop reading too
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_blocked = False
        self._resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ended.done():  # rule 10: a failed handshake may end the session twice
            return
        if exc is not None and not self.closing:  # the client reset: not our fault
            self._add("connection-lost", error=f"{type(exc).__name__}: {exc}")
        self.closing = True
        if self._task is not None:
            self._task.cancel()
        if self._timer is not None:
            self._timer.cancel()
        self.receiver._sessions.discard(self)
        self._add("close")
        self.ended.set_result(None)

    def stop(self) -> None:
        """End the session now (the receiver stops): no reply owed is sent; one still in
        progress is cut short (rule 5)."""
        if not self.closing:
            self._cut_short("the receiver stopped")
        self.closing = True
        if self._task is not None:
            self._task.cancel()
        if self.transport.get_write_buffer_size():
            self.transport.abort()  # what is left unread would hold the close
        else:
            self.transport.close()

    # --- the event loop of one session ---------------------------------------------------
    def _open(self) -> None:
        if self._resolving(None):
            self._wait(self._look_up_ptr, self._greet, "the PTR lookup at connect")
        else:
            self._greet()

    def _pump(self) -> None:
        """Handle every event the buffered bytes complete, synchronously, until the core
        needs more bytes or a reply has to wait (rule 8)."""
        conn = self.conn
        try:
            while self._task is None and not self.closing:
                event = conn.next_event()
                if event is NEED_DATA or event is PAUSED:
                    self._arm()
                    return
                if event.__class__ is Content and self.content is not None:
                    self.content += event.data  # the bulk of a message
                else:
                    self._handle(event)
        except Exception as exc:  # rule 5: even bugs end this session only
            self._fault(exc)

    def _wait(self, step: Step, then: Callable[[], None], what: str) -> None:
        """Await ``step``, then run ``then``, in a task, for ``what`` (rule 8)."""
        self._waits.append((step, then, what))
        if self._task is None:
            self._held = 0
            self._task = self._loop.create_task(self._run_waits())

    async def _run_waits(self) -> None:
        try:
            while self._waits and not self.closing:
                step, then, self._waiting = self._waits.popleft()
                await step()
                then()
        except asyncio.CancelledError:
            if not self.closing:  # not cancelled by the session itself: shutdown
                self._cut_short(f"its wait ({self._waiting}) was cancelled")
            self._close()  # no reply owed is sent
            raise
        except Exception as exc:  # rule 5
            self._fault(exc)
        finally:
            self._task = None
            self._waits.clear()
        self._held = 0
        self._resume_reading()
        self._pump()  # what the client pipelined meanwhile
        if self._gone.is_set() and self._task is None and not self.closing:
            self.data_received(b"")  # rule 8: the EOF noticed during the wait

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if the client's EOF comes first (rule 8)."""
        if not self._gone.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._gone.wait(), seconds)

    def _hold(self, data: bytes) -> None:
        """Bytes that arrived while a reply waits: logged, parsed later (rule 8)."""
        self._held += len(data)
        self._add("received", size=len(data), data=data[:512].decode("utf-8", "surrogateescape"))
        if self._held > HOLD_LIMIT:
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if not (self._write_blocked or self._deaf or self.closing) and self._held <= HOLD_LIMIT:
            self.transport.resume_reading()

    def _arm(self) -> None:
        """The idle timeout (``config.timeout``) runs from now, while the client owes bytes."""
        self._deadline = self._loop.time() + self.config.timeout
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline, self._idle_check)

    def _idle_check(self) -> None:
        self._timer = None
        if self.closing or self._task is not None:
            return  # the end of the wait arms it again
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._idle_check)
        else:
            self._guarded(self._time_out)

    def _time_out(self) -> None:
        """Rule 6: 421, then close, whatever the core makes of it (after an unfinished raw
        reply it reads the 421 as that reply's last line)."""
        self._add("timeout", seconds=self.config.timeout)
        self._send(TIMEOUT, None, timeout_reply(self.config), None)
        self._close()

    def _guarded(self, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception as exc:  # rule 5
            self._fault(exc)

    def _fault(self, exc: Exception) -> None:
        self._record(InternalFault.from_exception(self.where, exc))
        self._close()

    def _cut_short(self, why: str) -> None:
        state = self.conn.state.value
        self._record(InternalFault(self.where, f"session cut short: {why} ({state})"))

    def _record(self, fault: InternalFault) -> None:
        self.receiver.internal_faults.append(fault)
        self._add("fault", summary=fault.summary)

    def _close(self) -> None:
        """Close first: what is written is flushed, then our FIN (rule 4).  Once only: a
        TLS transport asyncio closed itself (the client's EOF, no half-open TLS) forgets
        its protocol when closed again."""
        self.closing = True
        if self.transport.is_closing():
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.transport.close()
        if self.transport.get_write_buffer_size():  # bounded for a client that does not read
            self._timer = self._loop.call_later(self.config.timeout, self.transport.abort)

    def _reset(self) -> None:
        """Rule 9: an RST once every byte written was acknowledged (at most ``timeout``)."""
        self.closing = self._resetting = True
        if self._timer is not None:
            self._timer.cancel()
        deadline = self._loop.time() + self.config.timeout
        self._timer = self._loop.call_soon(self._reset_when_acknowledged, deadline)

    def _reset_when_acknowledged(self, deadline: float) -> None:
        sock = self.transport.get_extra_info("socket")
        if sock is None or self.transport.is_closing():
            return
        waiting = self.transport.get_write_buffer_size() or _unacknowledged(sock.fileno())
        if waiting and self._loop.time() < deadline:
            self._timer = self._loop.call_later(
                RESET_POLL_S, self._reset_when_acknowledged, deadline
            )
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._add("reset")
        self.transport.abort()

    def _client_left(self, **fields: object) -> None:
        if self.content is not None:
            self._add("aborted", reason="client closed mid-message", size=len(self.content))
        self._add("client-closed", **fields)
        self._close()

    # --- events --------------------------------------------------------------------------
    def _handle(self, event: Event | Status) -> None:
        match event:
            case Command():
                self._add("command", line=_first_line(event.raw), offset=event.offset)
                self._command(event)
            case Content() if self.content is not None:
                self.content += event.data
            case EndOfData():
                decision = end_of_message(self.config, len(self.content or b""))
                self._answer(END_OF_DATA, None, decision)
            case EndOfChunk():
                self._end_chunk(event)
            case Anomaly():
                self._add("anomaly", anomaly=event.kind.value, offset=event.offset)
            case ConnectionClosed():
                self._client_left(partial=len(event.partial))

    def _command(self, cmd: Command) -> None:
        if self._resolving(cmd):
            self._wait(
                self._look_up_ptr, partial(self._decide, cmd), f"the PTR lookup at {cmd.verb}"
            )
        else:
            self._decide(cmd)

    def _decide(self, cmd: Command) -> None:
        decision = answer(self.config, self.facts, cmd)
        if decision.note is not None:
            self._add(decision.note.kind, **decision.note.fields)
        if cmd.chunk_size is not None:  # BDAT: the reply follows the chunk (RFC 3030 §2)
            self.chunk = (cmd, decision)
            if decision.effect is Effect.DATA and self.content is None:
                self.content = bytearray()
            return
        self._answer(cmd.key, cmd, decision)

    def _end_chunk(self, event: EndOfChunk) -> None:
        assert self.chunk is not None  # set by every BDAT command with a chunk size
        cmd, pending = self.chunk
        self.chunk = None
        size = len(self.content or b"")
        self._answer(cmd.key, cmd, end_of_chunk(self.config, pending, size, event.last))

    def _greet(self) -> None:
        self._answer(GREETING, None, greeting(self.config))

    # --- replies -------------------------------------------------------------------------
    def _answer(self, key: str, cmd: Command | None, decision: Decision) -> None:
        """Send the reply, or what a matching rule puts in its place, after the rule's
        delay."""
        self.answered[key.upper()] += 1
        seen = self.answered[key.upper()]
        rule = rule_for(self.config.rules, key, cmd, seen) if self.config.rules else None
        if rule is not None and rule.delay:
            send = partial(self._send, key, cmd, decision, rule)
            self._wait(partial(self._pause, rule.delay), send, f"the delay before {key}")
        else:
            self._send(key, cmd, decision, rule)

    def _send(
        self, key: str, cmd: Command | None, decision: Decision, rule: ReplyRule | None
    ) -> None:
        """Commit what the reply commits to (store first, rule 3), then write it, at once or
        line by line."""
        data, code, texts = self._format(decision, rule)
        if self.conn.state is State.TLS and self._early is None:  # a 220 to STARTTLS
            data += self._behind_220(cmd)
        if decision.effect is not None or decision.ends_transaction:  # else nothing to commit
            self._commit(settle(self.facts, decision, cmd, code))
        argument, address = (None, None) if cmd is None else (cmd.argument, cmd.address)
        answered = Answered(self.number, key, argument, address, code, texts)
        if rule is not None and rule.line_pause and data.count(b"\n") > 1:
            lines = partial(self._write_lines, key, data, rule.line_pause)
            sent = partial(self._sent, answered, data, rule)
            self._wait(lines, sent, f"the pause between the lines of {key}")
        else:
            self.transport.write(data)
            self._sent(answered, data, rule)

    def _format(
        self, decision: Decision, rule: ReplyRule | None
    ) -> tuple[bytes, int | None, tuple[str, ...]]:
        """The reply's bytes (tracked by the core as sent), code and line texts."""
        if rule is not None and rule.raw is not None:
            data = self.conn.send_raw(rule.raw) if rule.raw else b""  # b"" is EOF to the core
            return (data, *raw_reply(data))
        code, text = (decision.code, decision.text) if rule is None else scripted(rule, decision)
        return self.conn.send_reply(code, text), code, reply_texts(code, text)

    def _commit(self, settled: Settled) -> None:
        facts, effect, over = settled
        if effect is Effect.DATA:
            self.content = bytearray()
        elif effect is Effect.DELIVER:
            self._store(bytes(self.content or b""))
        elif effect is Effect.GREET and facts.tls:
            self._add("hello-in-tls", before=self._helo_before, after=facts.helo)
        self.facts = facts
        if over:
            self.content = self.chunk = None

    async def _write_lines(self, key: str, data: bytes, pause: float) -> None:
        for i, piece in enumerate(_PIECES.findall(data)):
            if i:
                await self._pause(pause)
            self.transport.write(piece)
            self._add("reply-line", to=key, line=_first_line(piece))

    def _sent(self, answered: Answered, data: bytes, rule: ReplyRule | None) -> None:
        self._add("reply", to=answered.key, lines=_lines(data))
        if data:
            self.receiver.answered.append(answered)
        if rule is not None and rule.stop_reading:
            self._deaf = True
            self.transport.pause_reading()
            self._add("stopped-reading")
        if rule is not None and rule.reset:
            self._reset()
        # 221 to QUIT and any 421 close the session in the core's state table (rule 4)
        elif self.conn.state is State.CLOSED or (rule is not None and rule.close):
            self._close()
        elif self.conn.state is State.TLS and self._early is None:
            self._secure()

    # --- TLS (rule 10) -------------------------------------------------------------------
    def _behind_220(self, cmd: Command | None) -> bytes:
        """The 220 to STARTTLS goes out: keep what the client pipelined behind STARTTLS
        (when it is to be answered); the probe's bytes go behind the 220."""
        if self._tap is not None and cmd is not None:
            self._kept = bytes(self._tap[cmd.offset + len(cmd.raw) :])
            self._tap = None
        inject = self.config.starttls_inject
        return self.conn.send_raw(inject) if inject else b""

    def _secure(self) -> None:
        if self.receiver.tls_context is None:  # a reply rule's 220 with tls = "off"
            self._add("tls-failed", error="no TLS offered: the client's bytes stay opaque")
            return
        self._drain_core()
        self._early = bytearray()
        self.transport.pause_reading()  # the handshake's bytes are not ours to read
        self._wait(self._handshake, self._secured, "the TLS handshake")

    def _drain_core(self) -> None:
        """What the core says of the switch to TLS (the plaintext it dropped), logged
        before the handshake (rule 7)."""
        while (event := self.conn.next_event()) is not NEED_DATA and event is not PAUSED:
            self._handle(event)

    async def _handshake(self) -> None:
        assert self.receiver.tls_context is not None  # see _secure
        try:
            self.transport = await self._loop.start_tls(
                self.transport,
                self,
                self.receiver.tls_context,
                server_side=True,
                ssl_handshake_timeout=self.config.timeout,
            )
        except BaseException as exc:
            # asyncio does not tell the protocol of a connection lost mid-handshake (a
            # timeout, a cancel): the session ends itself, once this wait is over
            self._loop.call_soon(self.connection_lost, None)
            if not isinstance(exc, OSError):  # cancelled: the receiver stops (rule 5)
                raise
            # ssl.SSLError among them: the client's doing (rule 10)
            self._add("tls-failed", error=f"{type(exc).__name__}: {exc}")
            self._close()

    def _secured(self) -> None:
        if self.closing:
            return
        early, self._early = self._early or b"", None
        self.conn.secured()
        self._tls = tls_summary(self.transport)
        self._helo_before = self.facts.helo
        self._add("tls", **self._tls, ehlo_before=self._helo_before)
        self.facts = after_tls(self.facts)
        if self._kept:
            text = self._kept[:512].decode("utf-8", "surrogateescape")
            self._add("plaintext-answered", size=len(self._kept), data=text)
            self.conn.receive_data(self._kept)
        if early:
            self.conn.receive_data(bytes(early))

    # --- DNS -----------------------------------------------------------------------------
    def _resolving(self, cmd: Command | None) -> bool:
        return self.receiver.resolve is not None and ptr_wanted(self.config, cmd)

    async def _look_up_ptr(self) -> None:
        """The PTR names of the client (empty if the lookup failed)."""
        assert self.receiver.resolve is not None  # see _resolving
        qname = ipaddress.ip_address(self.peer[0]).reverse_pointer
        self._add("dns-query", qname=qname, qtype="PTR")
        try:
            record = await self.receiver.resolve(qname, "PTR")
        except Exception as exc:  # the resolver's own errors (timeouts, refusals) vary
            self._add("dns-error", qname=qname, error=f"{type(exc).__name__}: {exc}")
            self.facts = with_ptr(self.facts, [])
            return
        names = [str(rr.rdata).rstrip(".").lower() for rr in record.rr if rr.rtype == QTYPE.PTR]
        self._add("dns-answer", qname=qname, rcode=RCODE.get(record.header.rcode), ptr=names)
        self.facts = with_ptr(self.facts, names)

    # --- storing -------------------------------------------------------------------------
    def _store(self, data: bytes) -> None:
        """One copy per accepted recipient, byte-exact."""
        mail_from = self.facts.mail_from or ""
        for recipient in self.facts.recipients:
            trace = self._trace(recipient) if self.facts.tls else b""
            path = self._write(recipient, trace + data)
            stored = StoredMessage(recipient, mail_from, path, data, trace)
            self.receiver.stored.append(stored)
            self._add(
                "stored",
                mail_from=mail_from,
                recipient=recipient,
                size=len(data),
                sha256=stored.sha256,
                path=path,
            )

    def _trace(self, recipient: str) -> bytes:
        """The Received: field of a message taken inside TLS (rule 10)."""
        helo = _UNPRINTABLE.sub("?", self.facts.helo or "")
        when = email.utils.format_datetime(datetime.datetime.now(datetime.UTC))
        tls = f"{self._tls.get('version')} {self._tls.get('cipher')}"
        return (
            f"Received: from {helo} ([{self.peer[0]}])\r\n"
            f"\tby {self.config.hostname} with ESMTPS ({tls})\r\n"
            f"\tfor <{_UNPRINTABLE.sub('?', recipient)}>; {when}\r\n"
        ).encode("ascii")

    def _write(self, recipient: str, data: bytes) -> Path | None:
        if self.config.maildir is None:
            return None
        box = self.config.maildir / recipient
        for sub in ("tmp", "new"):
            (box / sub).mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns()}.s{self.number}.{len(self.receiver.stored)}.eml"
        tmp = box / "tmp" / name
        tmp.write_bytes(data)
        return tmp.rename(box / "new" / name)


def _tls_context(config: ReceiverConfig) -> ssl.SSLContext | None:
    """The server context for ``tls = "offer"`` (rule 10); its credentials are the runner's
    to give (``harness.tls.pki``)."""
    if config.tls != "offer":
        return None
    if config.credentials is None:
        raise InternalError('receiver: tls = "offer" without credentials to serve')
    return server_context(config.credentials.chain, config.credentials.key, config.keylog)


def _client_address(peername: tuple[str, int] | None) -> tuple[str, int]:
    """The client's (address, port); an IPv4-mapped IPv6 address as IPv4."""
    host, port = (peername or ("0.0.0.0", 0))[:2]
    if ":" not in host:
        return (host, port)
    mapped = getattr(ipaddress.ip_address(host), "ipv4_mapped", None)
    return (str(mapped) if mapped else host, port)


def _lines(raw: bytes) -> list[str]:
    return raw.decode("utf-8", "surrogateescape").split("\r\n")[:-1] or [repr(raw)]


def _unacknowledged(fd: int) -> int:
    """Octets in the socket's send queue, sent or not, not yet acknowledged (SIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0" * 4))[0]


def _first_line(raw: bytes) -> str:
    """``_lines(raw)[0]`` without splitting every line."""
    line, crlf, _ = raw.decode("utf-8", "surrogateescape").partition("\r\n")
    return line if crlf else repr(raw)
