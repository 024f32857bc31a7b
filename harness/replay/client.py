"""The replay client: re-sends a captured client side, turn by turn, and judges each reply.

Rules kept here:

1. Every byte in and out goes through the core's ``ClientConnection`` (sans-IO); this
   module only moves bytes and waits.
2. SMTP timing, not packet timing: a turn's writes go out, then the client waits for as
   many replies as the capture had before its client sent again (RFC 5321 §4.3.1: a
   client waits for each reply; RFC 2920 §3: a pipelined group is sent, then its replies
   are read).  ``timing="capture"`` also sleeps the captured gap before each write (each
   gap at most ``MAX_PAUSE_S``).
3. Each live reply is judged against its captured one (``judge.reply_differences``); a
   divergence (another code, the connection closed or silent where a reply was due)
   stops the replay there unless ``keep_going``; another status code or text is
   recorded and the replay goes on.
4. The close is the capture's: when the captured client closed first, close after the
   last reply; else wait (``timeout``) for the server to close first.
5. Shaped like the scripted sender for ``harness.mta.roles.to_mta`` (``send()``,
   ``internal_faults``); our own exception is an ``InternalFault``, never a verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass, field

from harness.errors import InternalFault
from harness.outcome import SendReport
from harness.replay.judge import Judged, reply_differences
from harness.replay.script import Mapping, writes
from harness.replay.session import CapturedReply, Session
from harness.smtp.events import NEED_DATA, ConnectionClosed, Reply
from harness.smtp.peer import EventLog, SocketFactory, family_of
from harness.smtp.protocol import ClientConnection

MAX_PAUSE_S = 60.0
NS = 1_000_000_000


class _Stop(Exception):
    """The replay stops at this reply (rule 3)."""


@dataclass
class ReplayClient:
    session: Session
    mapping: Mapping
    target: tuple[str, int]
    socket_factory: SocketFactory = socket.socket
    timing: str = "smtp"  # or "capture"
    keep_going: bool = False
    timeout: float = 30.0
    log: EventLog = field(default_factory=EventLog)
    judged: list[Judged] = field(default_factory=list)
    stopped: Judged | None = None
    internal_faults: list[InternalFault] = field(default_factory=list)

    async def send(self) -> SendReport:
        try:
            await self._replay()
        except Exception as exc:  # rule 5
            self.internal_faults.append(InternalFault.from_exception("replay client", exc))
        finally:
            self.log.close()
        return SendReport({}, self.log.entries, [])

    async def _replay(self) -> None:
        sock = self.socket_factory(family_of(self.target[0]), socket.SOCK_STREAM)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.sock_connect(sock, self.target), self.timeout)
        except (OSError, TimeoutError) as exc:
            sock.close()
            self.stopped = Judged(self.session.turns[0].replies[0], None, [f"connect: {exc}"])
            return
        reader, writer = await asyncio.open_connection(sock=sock)
        self._io = _Io(reader, writer, ClientConnection(), self.timeout, self.log)
        try:
            with contextlib.suppress(_Stop):
                await self._turns()
                if not self.session.client_closes_first:
                    await self._io.wait_closed()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _turns(self) -> None:
        last = self.session.turns[0].replies[0].time
        for turn in self.session.turns:
            for write in writes(turn, self.mapping):
                if self.timing == "capture":
                    await asyncio.sleep(min(max(write.time - last, 0) / NS, MAX_PAUSE_S))
                    last = write.time
                self._io.write(write.data)
            for captured in turn.replies:
                await self._judge(captured)
                last = captured.time

    async def _judge(self, captured: CapturedReply) -> None:
        live = await self._io.reply()
        if live is None:
            self.stopped = Judged(
                captured, None, ["no reply: the connection closed or fell silent"]
            )
            self.judged.append(self.stopped)
            raise _Stop
        judged = Judged(captured, live, reply_differences(captured, live, self.mapping))
        self.judged.append(judged)
        if judged.diverges and not self.keep_going:
            self.stopped = judged
            raise _Stop


class _Io:
    """One connection's bytes through the core (rule 1)."""

    def __init__(self, reader, writer, conn: ClientConnection, timeout: float, log) -> None:
        self.reader, self.writer, self.conn = reader, writer, conn
        self.timeout, self.log = timeout, log

    def write(self, data: bytes) -> None:
        self.log.add("sent", size=len(data), head=data[:80].decode("utf-8", "backslashreplace"))
        self.writer.write(self.conn.send_raw(data))

    async def reply(self) -> Reply | None:
        """The next reply; None when the connection closed or timed out first."""
        while True:
            event = await self._next()
            if event is None or isinstance(event, ConnectionClosed):
                return None
            if isinstance(event, Reply):
                self.log.add("reply", code=event.code, lines=list(event.lines))
                return event

    async def wait_closed(self) -> None:
        while (event := await self._next()) is not None and not isinstance(event, ConnectionClosed):
            pass

    async def _next(self):
        while (event := self.conn.next_event()) is NEED_DATA:
            try:
                await self.writer.drain()
                data = await asyncio.wait_for(self.reader.read(65536), self.timeout)
            except (OSError, TimeoutError):
                return None
            self.conn.receive_data(data)
        return event
