"""The scripted SMTP receiver: an asyncio protocol that decides replies; the core parses.

Rules kept here:

1. Every byte in and out goes through ``ServerConnection``; this module only decides.
2. Replies follow RFC 5321 unless a ``ReplyRule`` overrides them: a line with NUL, bare CR
   or bare LF gets 500 (policy ``bad_lines="accept"`` lets it through), an overlong line
   500 always, an unknown verb 500, a syntax error 501, a command out of sequence 503
   (§4.2.4, §4.3.2), an unadvertised MAIL/RCPT parameter 555 (§4.1.1.11); VRFY answers from
   the user table, or 252 / 502 by policy (§3.5.3, §7.3).
3. The PTR of the client's address is looked up at HELO/EHLO (the seed, steps 7-10) or at
   connect before the greeting (``ptr_at="connect"``, as real MTAs do) and compared with
   the HELO name: a mismatch is accepted, noted in the log, or refused with 550.
4. A message is stored only after its end-of-data marker (or BDAT LAST), byte-exact, once
   per accepted recipient, maildir-style (``<dir>/<recipient>/tmp`` then renamed into
   ``new``).  A session that ends any other way stores nothing.
5. After 221 (QUIT) or 421 the receiver closes first: ``transport.close()`` right after
   the reply is written flushes it, then sends our FIN before the client's (seed steps
   29-33; §3.8, §4.1.1.10).
6. Sessions are independent: one session's error (a reset, the idle ``timeout``, a bug) is
   logged and ends that session only.  Stopping the receiver, or cancelling its waits at
   shutdown, closes a session quietly: a ``close`` entry, nothing on stderr.
7. The log has one entry per thing that happened, in order: connect, each command and
   reply, DNS query and answer, anomalies, stored messages, close.
8. A session is an ``asyncio.Protocol``: ``data_received`` feeds the core and answers every
   event it completes at once, in the same call, when the reply needs no waiting (no
   rule delay, no DNS).  What must wait (a PTR lookup, a rule's ``delay``) runs in a task
   while ``pause_reading`` holds the client's further bytes - the core's "their bytes wait
   for our reply" - then reading resumes and what was buffered is handled.  So is
   a client that does not read its replies (``pause_writing``).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import itertools
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from dnslib import QTYPE, RCODE

from harness.errors import HarnessError
from harness.smtp.events import (
    NEED_DATA,
    PAUSED,
    Anomaly,
    AnomalyKind,
    Command,
    ConnectionClosed,
    Content,
    EndOfChunk,
    EndOfData,
    Event,
    Status,
)
from harness.smtp.peer import EventLog, Resolve, SocketFactory, family_of
from harness.smtp.protocol import ServerConnection
from harness.smtp.replies import parse_reply_line
from harness.smtp.state import END_OF_DATA, GREETING, State

Text = str | Sequence[str]

# MAIL/RCPT parameter -> the EHLO keyword that must have been advertised for it
_PARAM_EXTENSION = {
    "SIZE": "SIZE",
    "BODY": "8BITMIME",
    "SMTPUTF8": "SMTPUTF8",
    "RET": "DSN",
    "ENVID": "DSN",
    "NOTIFY": "DSN",
    "ORCPT": "DSN",
}
_CHOICES = {
    "vrfy": ("check", "252", "disabled"),
    "ptr_check": ("accept", "note", "reject"),
    "ptr_at": ("helo", "connect", "never"),
    "bad_lines": ("reject", "accept"),
}


@dataclass(frozen=True)
class ReplyRule:
    """Replace the reply to ``on`` (a verb, ``<greeting>`` or ``<end-of-data>``).

    ``argument`` narrows it to one argument (the address for MAIL/RCPT), case-insensitive.
    ``code``/``text`` replace the reply's (None keeps it), ``raw`` sends bytes as they are
    (malformed replies), ``delay`` waits first, ``line_pause`` waits between the lines of a
    multi-line reply (each line its own write), ``close`` closes the connection after it
    (``raw=b"", close=True`` drops the connection without a reply)."""

    on: str
    argument: str | None = None
    code: int | None = None
    text: Text | None = None
    raw: bytes | None = None
    delay: float = 0.0
    line_pause: float = 0.0
    close: bool = False

    def matches(self, key: str, command: Command | None) -> bool:
        if self.on.upper() != key.upper():
            return False
        if self.argument is None:
            return True
        seen = command and (command.address if command.address is not None else command.argument)
        return (seen or "").lower() == self.argument.lower()


@dataclass
class ReceiverConfig:
    hostname: str = "mail.receiver.com"
    greeting: str = "ESMTP smtp-harness"
    domains: tuple[str, ...] = ("receiver.com",)
    users: tuple[str, ...] = ("c3po", "r2d2")
    vrfy: str = "check"  # check: 250/550 from users; 252: never verify; disabled: 502
    ptr_check: str = "accept"  # on a HELO/PTR mismatch: accept, note (log), reject (550)
    ptr_at: str = "helo"  # helo, connect (before 220), never
    extensions: tuple[str, ...] = ("PIPELINING", "8BITMIME", "SIZE 10240000")
    bad_lines: str = "reject"  # NUL / bare CR / bare LF in a command: reject (500), accept
    rules: list[ReplyRule] = field(default_factory=list)
    maildir: Path | None = None
    log_path: Path | None = None
    timeout: float = 300.0  # RFC 5321 §4.5.3.2.7: the server waits at least 5 minutes

    def __post_init__(self) -> None:
        for name, options in _CHOICES.items():
            if getattr(self, name) not in options:
                value = getattr(self, name)
                raise HarnessError(f"receiver {name} = {value!r}: expected one of {options}")

    @property
    def advertised(self) -> frozenset[str]:
        return frozenset(ext.split()[0].upper() for ext in self.extensions)

    @property
    def size_limit(self) -> int | None:
        for ext in self.extensions:
            name, _, value = ext.partition(" ")
            if name.upper() == "SIZE" and value.strip().isdigit() and int(value) > 0:
                return int(value)
        return None


@dataclass(frozen=True)
class Answered:
    """One reply the receiver sent, as sent (after reply rules), with what it answered."""

    session: int
    key: str  # a verb, "<greeting>" or "<end-of-data>"
    argument: str | None
    address: str | None
    code: int
    lines: tuple[str, ...]


@dataclass(frozen=True)
class StoredMessage:
    recipient: str
    mail_from: str
    path: Path | None
    data: bytes

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
        self.stored: list[StoredMessage] = []
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


class _Session(asyncio.Protocol):
    """One SMTP session: feed the core what arrives, decide each reply, send it (rule 8)."""

    transport: asyncio.Transport

    def __init__(self, receiver: Receiver, number: int) -> None:
        self.receiver = receiver
        self.config = receiver.config
        self.number = number
        self.conn = ServerConnection()
        self.peer = ("0.0.0.0", 0)
        self.ptr: list[str] | None = None  # PTR names of the client, once looked up
        self.helo: str | None = None
        self.esmtp = False
        self.closing = False
        self._add = partial(receiver.log.add, session=self.number)  # one log entry
        self._effect: Callable[[], None] | None = None  # what a positive reply commits to
        self._loop = asyncio.get_running_loop()
        self.ended = self._loop.create_future()
        self._waits: deque[tuple[Callable[[], Awaitable[None]], Callable[[], None]]] = deque()
        self._task: asyncio.Task[None] | None = None  # runs the waits; input is paused
        self._write_blocked = False
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._reset()

    def _reset(self) -> None:
        self.mail_from: str | None = None
        self.recipients: list[str] = []
        self.content: bytearray | None = None
        self.chunk: tuple[Command, int, Text] | None = None  # a BDAT reply owed after its chunk

    # --- transport callbacks -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer = _client_address(transport.get_extra_info("peername"))
        self.receiver._sessions.add(self)
        self._add("connect", peer=self.peer)
        try:
            if self._resolving("connect"):
                self._wait(self._look_up_ptr, self._greet)
            else:
                self._greet()
        except Exception as exc:  # rule 6
            self._fail(exc)
        self._pump()

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        if self._task is None:
            self._pump()

    def eof_received(self) -> bool:
        self.data_received(b"")
        return True  # half-open: the session closes the transport itself (rule 5)

    def pause_writing(self) -> None:
        self._write_blocked = True  # the client does not read its replies: stop reading too
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_blocked = False
        self._resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and not self.closing:
            self._add("error", error=f"{type(exc).__name__}: {exc}")
        self.closing = True
        if self._task is not None:
            self._task.cancel()
        if self._timer is not None:
            self._timer.cancel()
        self.receiver._sessions.discard(self)
        self._add("close")
        self.ended.set_result(None)

    def stop(self) -> None:
        """End the session now (the receiver stops): no reply owed is sent."""
        if self._task is not None:
            self._task.cancel()
        self._close()

    # --- the event loop of one session ---------------------------------------------------
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
        except Exception as exc:  # rule 6: even bugs end this session only
            self._fail(exc)

    def _wait(self, step: Callable[[], Awaitable[None]], then: Callable[[], None]) -> None:
        """Await ``step``, then run ``then``, in a task; the client's bytes wait meanwhile."""
        self._waits.append((step, then))
        if self._task is None:
            self.transport.pause_reading()
            self._task = self._loop.create_task(self._run_waits())

    async def _run_waits(self) -> None:
        try:
            while self._waits and not self.closing:
                step, then = self._waits.popleft()
                await step()
                then()
        except asyncio.CancelledError:
            self._close()  # shutdown: close quietly, no reply owed is sent
            raise
        except Exception as exc:  # rule 6
            self._fail(exc)
        finally:
            self._task = None
            self._waits.clear()
        self._resume_reading()
        self._pump()  # what the client pipelined meanwhile

    def _resume_reading(self) -> None:
        if self._task is None and not self._write_blocked and not self.closing:
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
            self._fail(TimeoutError())

    def _fail(self, exc: Exception) -> None:
        self._add("error", error=f"{type(exc).__name__}: {exc}")
        self._close()

    def _close(self) -> None:
        """Close first: what is written is flushed, then our FIN (rule 5)."""
        self.closing = True
        self.transport.close()

    # --- events --------------------------------------------------------------------------
    def _handle(self, event: Event | Status) -> None:
        match event:
            case Command():
                self._add("command", line=_first_line(event.raw), offset=event.offset)
                self._command(event)
            case Content() if self.content is not None:
                self.content += event.data
            case EndOfData():
                self._answer(END_OF_DATA, None, *self._deliver(), reset=True)
            case EndOfChunk():
                self._end_chunk(event)
            case Anomaly():
                self._add("anomaly", anomaly=event.kind.value, offset=event.offset)
            case ConnectionClosed():
                if self.content is not None:
                    self._add("aborted", reason="client closed mid-message", size=len(self.content))
                self._add("client-closed", partial=len(event.partial))
                self._close()

    def _command(self, cmd: Command) -> None:
        refusal = self._refusal(cmd)
        if refusal is None and cmd.verb in _HELLO and self._resolving("helo"):
            self._wait(self._look_up_ptr, partial(self._decided, cmd, None))
        else:
            self._decided(cmd, refusal)

    def _decided(self, cmd: Command, refusal: tuple[int, Text] | None) -> None:
        code, text = refusal or _VERBS[cmd.verb](self, cmd)
        if cmd.chunk_size is not None:  # BDAT: the reply follows the chunk (RFC 3030 §2)
            self.chunk = (cmd, code, text)
            if 200 <= code < 300 and self.content is None:
                self.content = bytearray()
            return
        self._answer(cmd.key, cmd, code, text)

    def _refusal(self, cmd: Command) -> tuple[int, Text] | None:
        if cmd.flaws:
            if AnomalyKind.LINE_TOO_LONG in cmd.flaws:
                return 500, "5.5.2 Line too long"
            if self.config.bad_lines == "reject":
                return 500, "5.5.2 NUL, bare CR or bare LF in command line"
        if not cmd.known:
            return 500, "5.5.1 Command unrecognized"
        if cmd.syntax_error:
            return 501, f"5.5.4 Syntax error: {cmd.syntax_error}"
        if not cmd.in_order:
            return 503, "5.5.1 Bad sequence of commands"
        return None

    def _answer(
        self, key: str, cmd: Command | None, code: int, text: Text, *, reset: bool = False
    ) -> None:
        """Send the reply, or what a matching rule puts in its place (rule 2), after the
        rule's delay; ``reset``: the reply ends the transaction, whatever it says."""
        rule = self._rule(key, cmd) if self.config.rules else None
        send = partial(self._send, key, code, text, rule, reset)
        if rule is not None and rule.delay:
            self._wait(partial(asyncio.sleep, rule.delay), send)
        else:
            send()

    def _send(self, key: str, code: int, text: Text, rule: ReplyRule | None, reset: bool) -> None:
        sent: int | None = code
        if rule is None:
            data = self.conn.send_reply(code, text)
        elif rule.raw is not None:
            data = self.conn.send_raw(rule.raw)
            sent = parse_reply_line(data.partition(b"\r\n")[0]).code
        else:
            if rule.code is not None:
                code, text = rule.code, "Scripted reply"
                sent = code
            if rule.text is not None:
                text = rule.text
            data = self.conn.send_reply(code, text)
        self.transport.write(data)
        self._add("reply", to=key, lines=_lines(data))
        effect, self._effect = self._effect, None
        if effect and sent and 200 <= sent < 400:  # a rule may have refused what we accepted
            effect()
        if reset:
            self._reset()
        # 221 to QUIT and any 421 close the session in the core's state table (rule 5)
        if self.conn.state is State.CLOSED or (rule is not None and rule.close):
            self._close()

    def _rule(self, key: str, cmd: Command | None) -> ReplyRule | None:
        return next((r for r in self.config.rules if r.matches(key, cmd)), None)

    def _greet(self) -> None:
        self._answer(GREETING, None, 220, f"{self.config.hostname} {self.config.greeting}")

    # --- DNS -----------------------------------------------------------------------------
    def _resolving(self, at: str) -> bool:
        return self.config.ptr_at == at and self.receiver.resolve is not None

    async def _look_up_ptr(self) -> None:
        """The PTR names of the client (empty if the lookup failed)."""
        assert self.receiver.resolve is not None  # see _resolving
        qname = ipaddress.ip_address(self.peer[0]).reverse_pointer
        self._add("dns-query", qname=qname, qtype="PTR")
        try:
            record = await self.receiver.resolve(qname, "PTR")
        except Exception as exc:  # the resolver's own errors (timeouts, refusals) vary
            self._add("dns-error", qname=qname, error=f"{type(exc).__name__}: {exc}")
            self.ptr = []
            return
        names = [str(rr.rdata).rstrip(".").lower() for rr in record.rr if rr.rtype == QTYPE.PTR]
        self._add("dns-answer", qname=qname, rcode=RCODE.get(record.header.rcode), ptr=names)
        self.ptr = names

    # --- verbs ---------------------------------------------------------------------------
    def _hello(self, cmd: Command) -> tuple[int, Text]:
        name = (cmd.argument or "").rstrip(".").lower()
        if self.ptr is not None and name not in self.ptr:
            if self.config.ptr_check != "accept":
                self._add("ptr-mismatch", helo=cmd.argument, ptr=self.ptr)
            if self.config.ptr_check == "reject":
                return 550, "5.7.1 HELO name does not match the name of your address"
        self._effect = partial(self._greeted, cmd)
        hello = f"{self.config.hostname} Hello {cmd.argument}"
        return 250, [hello, *self.config.extensions] if cmd.verb == "EHLO" else hello

    def _greeted(self, cmd: Command) -> None:
        self._reset()
        self.helo, self.esmtp = cmd.argument, cmd.verb == "EHLO"

    def _mail(self, cmd: Command) -> tuple[int, Text]:
        refused = self._unadvertised(cmd) if cmd.params else None
        if refused:
            return refused
        limit, declared = self.config.size_limit, cmd.params.get("SIZE") or "0"
        if limit and declared.isdigit() and int(declared) > limit:
            return 552, "5.3.4 Message size exceeds fixed maximum message size"
        self._effect = partial(setattr, self, "mail_from", cmd.address)
        return 250, "OK"

    def _rcpt(self, cmd: Command) -> tuple[int, Text]:
        refused = self._unadvertised(cmd) if cmd.params else None
        if refused:
            return refused
        if not self._known(cmd.address or ""):
            return 550, f"5.1.1 <{cmd.address}>: Recipient address rejected: User unknown"
        self._effect = lambda: self.recipients.append(cmd.address or "")
        return 250, "OK"

    def _data(self, cmd: Command) -> tuple[int, Text]:
        self._effect = self._start_content
        return 354, "End data with <CR><LF>.<CR><LF>"

    def _start_content(self) -> None:
        self.content = bytearray()

    def _bdat(self, cmd: Command) -> tuple[int, Text]:
        if "CHUNKING" not in self.config.advertised:
            return 502, "5.5.1 BDAT not implemented"
        return 250, f"2.0.0 {cmd.chunk_size} octets received"

    def _vrfy(self, cmd: Command) -> tuple[int, Text]:
        if self.config.vrfy == "disabled":
            return 502, "5.5.1 VRFY command is disabled"
        if self.config.vrfy == "252":
            return 252, "2.5.2 Cannot VRFY user, but will accept message and attempt delivery"
        user = (cmd.argument or "").strip("<>")
        if self._known(user):
            local = user.partition("@")[0]
            return 250, f"<{local}@{self.config.domains[0]}>"
        return 550, f"5.1.1 <{user}>: Recipient address rejected: User unknown"

    def _fixed(self, cmd: Command) -> tuple[int, Text]:
        return _FIXED[cmd.verb]

    def _rset(self, cmd: Command) -> tuple[int, Text]:
        self._effect = self._reset
        return 250, "2.0.0 OK"

    def _quit(self, cmd: Command) -> tuple[int, Text]:
        return 221, f"2.0.0 {self.config.hostname} closing connection"

    def _unadvertised(self, cmd: Command) -> tuple[int, Text] | None:
        extensions = self.config.advertised if self.esmtp else frozenset()
        for name in cmd.params:
            if _PARAM_EXTENSION.get(name) not in extensions:
                return 555, f"5.5.4 {name} parameter not recognized or not implemented"
        return None

    def _known(self, address: str) -> bool:
        local, at, domain = address.partition("@")
        domains = {d.lower() for d in self.config.domains}
        in_domain = not at or domain.lower() in domains
        return in_domain and local.lower() in {u.lower() for u in self.config.users}

    # --- storing -------------------------------------------------------------------------
    def _deliver(self) -> tuple[int, Text]:
        """The reply to the end of a message; storing it waits for that reply (rule 4)."""
        data = bytes(self.content or b"")
        limit = self.config.size_limit
        if limit and len(data) > limit:
            return 552, "5.3.4 Message size exceeds fixed maximum message size"
        self._effect = partial(self._store, data)
        return 250, "OK Mail accepted"

    def _store(self, data: bytes) -> None:
        """One copy per accepted recipient, byte-exact."""
        for recipient in self.recipients:
            path = self._write(recipient, data)
            stored = StoredMessage(recipient, self.mail_from or "", path, data)
            self.receiver.stored.append(stored)
            self._add(
                "stored",
                mail_from=stored.mail_from,
                recipient=recipient,
                size=len(data),
                sha256=stored.sha256,
                path=path,
            )

    def _end_chunk(self, event: EndOfChunk) -> None:
        assert self.chunk is not None  # set by every BDAT command with a chunk size
        cmd, code, text = self.chunk
        self.chunk = None
        if 200 <= code < 300 and event.last:
            code, text = self._deliver()
        self._answer(cmd.key, cmd, code, text, reset=event.last)

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


_HELLO = frozenset({"HELO", "EHLO"})
_FIXED: dict[str, tuple[int, str]] = {
    "NOOP": (250, "2.0.0 OK"),
    "HELP": (214, "2.0.0 See RFC 5321"),
    "EXPN": (502, "5.5.1 EXPN not available"),
    "STARTTLS": (502, "5.5.1 STARTTLS not available"),
}

_VERBS = {
    "HELO": _Session._hello,
    "EHLO": _Session._hello,
    "MAIL": _Session._mail,
    "RCPT": _Session._rcpt,
    "DATA": _Session._data,
    "BDAT": _Session._bdat,
    "VRFY": _Session._vrfy,
    "QUIT": _Session._quit,
    "RSET": _Session._rset,
    **dict.fromkeys(_FIXED, _Session._fixed),
}


def _client_address(peername: tuple[str, int] | None) -> tuple[str, int]:
    """The client's (address, port); an IPv4-mapped IPv6 address as IPv4."""
    host, port = (peername or ("0.0.0.0", 0))[:2]
    if ":" not in host:
        return (host, port)
    mapped = getattr(ipaddress.ip_address(host), "ipv4_mapped", None)
    return (str(mapped) if mapped else host, port)


def _lines(raw: bytes) -> list[str]:
    return raw.decode("utf-8", "surrogateescape").split("\r\n")[:-1] or [repr(raw)]


def _first_line(raw: bytes) -> str:
    """``_lines(raw)[0]`` without splitting every line."""
    line, crlf, _ = raw.decode("utf-8", "surrogateescape").partition("\r\n")
    return line if crlf else repr(raw)
