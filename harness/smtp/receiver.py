"""The scripted SMTP receiver: an asyncio server that decides replies; the core parses.

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
5. After 221 (QUIT) or 421 the receiver closes first: drain, then ``transport.close()``, so
   its FIN precedes the client's (seed steps 29-33; §3.8, §4.1.1.10).
6. Sessions are independent: one session's error is logged and ends that session only.
7. The log has one entry per thing that happened, in order: connect, each command and
   reply, DNS query and answer, anomalies, stored messages, close.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import itertools
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dnslib import QTYPE, RCODE

from harness.errors import HarnessError
from harness.smtp.events import (
    NEED_DATA,
    Anomaly,
    AnomalyKind,
    Command,
    ConnectionClosed,
    Content,
    EndOfChunk,
    EndOfData,
    Event,
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
    (malformed replies), ``delay`` waits first, ``close`` closes the connection after it
    (``raw=b"", close=True`` drops the connection without a reply)."""

    on: str
    argument: str | None = None
    code: int | None = None
    text: Text | None = None
    raw: bytes | None = None
    delay: float = 0.0
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
class StoredMessage:
    recipient: str
    mail_from: str
    path: Path | None
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


class Receiver:
    """Serves SMTP on one listening socket; every session runs concurrently."""

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
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()
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
        self._server = await asyncio.start_server(self._accept, sock=sock)
        return sock.getsockname()[:2]

    async def idle(self) -> None:
        """Wait until every session that has started has ended."""
        while self._sessions:
            await asyncio.gather(*self._sessions, return_exceptions=True)

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()
        for task in self._sessions:
            task.cancel()
        await self.idle()
        self.log.close()

    async def __aenter__(self) -> Receiver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        try:
            await _Session(self, next(self._numbers), reader, writer).run()
        finally:
            self._sessions.discard(task)


class _Session:
    """One SMTP session: read events from the core, decide each reply, send it."""

    def __init__(
        self,
        receiver: Receiver,
        number: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.receiver = receiver
        self.config = receiver.config
        self.number = number
        self.reader, self.writer = reader, writer
        self.conn = ServerConnection()
        self.peer = _client_address(writer.get_extra_info("peername"))
        self.ptr: list[str] | None = None  # PTR names of the client, once looked up
        self.helo: str | None = None
        self.esmtp = False
        self.closing = False
        self._effect: Callable[[], None] | None = None  # what a positive reply commits to
        self._reset()

    def _reset(self) -> None:
        self.mail_from: str | None = None
        self.recipients: list[str] = []
        self.content: bytearray | None = None
        self.chunk: tuple[Command, int, Text] | None = None  # a BDAT reply owed after its chunk

    def _log(self, kind: str, **fields: object) -> None:
        self.receiver.log.add(kind, session=self.number, **fields)

    async def run(self) -> None:
        self._log("connect", peer=self.peer)
        try:
            if self.config.ptr_at == "connect":
                self.ptr = await self._lookup_ptr()
            await self._answer(
                GREETING, None, 220, f"{self.config.hostname} {self.config.greeting}"
            )
            while not self.closing:
                await self._step()
        except Exception as exc:  # rule 6: resets, timeouts, even bugs end this session only
            self._log("error", error=f"{type(exc).__name__}: {exc}")
        finally:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
            self._log("close")

    async def _step(self) -> None:
        event = self.conn.next_event()
        if event is NEED_DATA:
            async with asyncio.timeout(self.config.timeout):
                data = await self.reader.read(65536)
            self.conn.receive_data(data)
        elif isinstance(event, Content) and self.content is not None:
            self.content += event.data  # the bulk of a message: no coroutine per line
        elif isinstance(event, Event):
            await self._handle(event)

    async def _handle(self, event: Event) -> None:
        match event:
            case Command():
                self._log("command", line=_lines(event.raw)[0], offset=event.offset)
                await self._command(event)
            case Content() if self.content is not None:
                self.content += event.data
            case EndOfData():
                await self._answer(END_OF_DATA, None, *self._deliver())
                self._reset()  # the reply to end of data ends the transaction either way
            case EndOfChunk():
                await self._end_chunk(event)
            case Anomaly():
                self._log("anomaly", anomaly=event.kind.value, offset=event.offset)
            case ConnectionClosed():
                if self.content is not None:
                    self._log("aborted", reason="client closed mid-message", size=len(self.content))
                self._log("client-closed", partial=len(event.partial))
                self.closing = True

    async def _command(self, cmd: Command) -> None:
        code, text = await self._decide(cmd)
        if cmd.chunk_size is not None:  # BDAT: the reply follows the chunk (RFC 3030 §2)
            self.chunk = (cmd, code, text)
            if 200 <= code < 300 and self.content is None:
                self.content = bytearray()
            return
        await self._answer(cmd.key, cmd, code, text)

    async def _decide(self, cmd: Command) -> tuple[int, Text]:
        if AnomalyKind.LINE_TOO_LONG in cmd.flaws:
            return 500, "5.5.2 Line too long"
        if cmd.flaws and self.config.bad_lines == "reject":
            return 500, "5.5.2 NUL, bare CR or bare LF in command line"
        if not cmd.known:
            return 500, "5.5.1 Command unrecognized"
        if cmd.syntax_error:
            return 501, f"5.5.4 Syntax error: {cmd.syntax_error}"
        if not cmd.in_order:
            return 503, "5.5.1 Bad sequence of commands"
        return await _VERBS[cmd.verb](self, cmd)

    async def _answer(self, key: str, cmd: Command | None, code: int, text: Text) -> None:
        """Send the reply, or what a matching rule puts in its place (rule 2)."""
        rule = self._rule(key, cmd)
        if rule and rule.delay:
            await asyncio.sleep(rule.delay)
        sent: int | None = code
        if rule and rule.raw is not None:
            data = self.conn.send_raw(rule.raw)
            sent = parse_reply_line(data.partition(b"\r\n")[0]).code
        else:
            if rule and rule.code is not None:
                code, text = rule.code, "Scripted reply"
                sent = code
            if rule and rule.text is not None:
                text = rule.text
            data = self.conn.send_reply(code, text)
        self.writer.write(data)
        self._log("reply", to=key, lines=_lines(data))
        effect, self._effect = self._effect, None
        if effect and sent and 200 <= sent < 400:  # a rule may have refused what we accepted
            effect()
        if self._must_drain():
            await self.writer.drain()
        # 221 to QUIT and any 421 close the session in the core's state table (rule 5)
        self.closing = self.conn.state is State.CLOSED or (rule is not None and rule.close)

    def _must_drain(self) -> bool:
        """Whether ``drain()`` would do anything: wait for a full buffer, or raise for a lost
        connection.  A small reply leaves the buffer empty (the socket took it at once)."""
        transport = self.writer.transport
        return bool(
            transport.get_write_buffer_size()
            or transport.is_closing()
            or self.reader.exception() is not None
        )

    def _rule(self, key: str, cmd: Command | None) -> ReplyRule | None:
        if not self.config.rules:
            return None
        return next((r for r in self.config.rules if r.matches(key, cmd)), None)

    async def _lookup_ptr(self) -> list[str] | None:
        """The PTR names of the client (empty if the lookup failed); None: no resolver."""
        if self.receiver.resolve is None:
            return None
        qname = ipaddress.ip_address(self.peer[0]).reverse_pointer
        self._log("dns-query", qname=qname, qtype="PTR")
        try:
            record = await self.receiver.resolve(qname, "PTR")
        except Exception as exc:  # the resolver's own errors (timeouts, refusals) vary
            self._log("dns-error", qname=qname, error=f"{type(exc).__name__}: {exc}")
            return []
        names = [str(rr.rdata).rstrip(".").lower() for rr in record.rr if rr.rtype == QTYPE.PTR]
        self._log("dns-answer", qname=qname, rcode=RCODE.get(record.header.rcode), ptr=names)
        return names

    async def _hello(self, cmd: Command) -> tuple[int, Text]:
        if self.config.ptr_at == "helo":
            self.ptr = await self._lookup_ptr()
        name = (cmd.argument or "").rstrip(".").lower()
        if self.ptr is not None and name not in self.ptr:
            if self.config.ptr_check != "accept":
                self._log("ptr-mismatch", helo=cmd.argument, ptr=self.ptr)
            if self.config.ptr_check == "reject":
                return 550, "5.7.1 HELO name does not match the name of your address"
        self._effect = lambda: self._greeted(cmd)
        hello = f"{self.config.hostname} Hello {cmd.argument}"
        return 250, [hello, *self.config.extensions] if cmd.verb == "EHLO" else hello

    def _greeted(self, cmd: Command) -> None:
        self._reset()
        self.helo, self.esmtp = cmd.argument, cmd.verb == "EHLO"

    async def _mail(self, cmd: Command) -> tuple[int, Text]:
        refused = self._unadvertised(cmd)
        if refused:
            return refused
        limit, declared = self.config.size_limit, cmd.params.get("SIZE") or "0"
        if limit and declared.isdigit() and int(declared) > limit:
            return 552, "5.3.4 Message size exceeds fixed maximum message size"
        self._effect = lambda: setattr(self, "mail_from", cmd.address)
        return 250, "OK"

    async def _rcpt(self, cmd: Command) -> tuple[int, Text]:
        refused = self._unadvertised(cmd)
        if refused:
            return refused
        if not self._known(cmd.address or ""):
            return 550, f"5.1.1 <{cmd.address}>: Recipient address rejected: User unknown"
        self._effect = lambda: self.recipients.append(cmd.address or "")
        return 250, "OK"

    async def _data(self, cmd: Command) -> tuple[int, Text]:
        self._effect = lambda: setattr(self, "content", bytearray())
        return 354, "End data with <CR><LF>.<CR><LF>"

    async def _bdat(self, cmd: Command) -> tuple[int, Text]:
        if "CHUNKING" not in self.config.advertised:
            return 502, "5.5.1 BDAT not implemented"
        return 250, f"2.0.0 {cmd.chunk_size} octets received"

    async def _vrfy(self, cmd: Command) -> tuple[int, Text]:
        if self.config.vrfy == "disabled":
            return 502, "5.5.1 VRFY command is disabled"
        if self.config.vrfy == "252":
            return 252, "2.5.2 Cannot VRFY user, but will accept message and attempt delivery"
        user = (cmd.argument or "").strip("<>")
        if self._known(user):
            local = user.partition("@")[0]
            return 250, f"<{local}@{self.config.domains[0]}>"
        return 550, f"5.1.1 <{user}>: Recipient address rejected: User unknown"

    async def _fixed(self, cmd: Command) -> tuple[int, Text]:
        return _FIXED[cmd.verb]

    async def _rset(self, cmd: Command) -> tuple[int, Text]:
        self._effect = self._reset
        return 250, "2.0.0 OK"

    async def _quit(self, cmd: Command) -> tuple[int, Text]:
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

    def _deliver(self) -> tuple[int, Text]:
        """The reply to the end of a message; storing it waits for that reply (rule 4)."""
        data = bytes(self.content or b"")
        limit = self.config.size_limit
        if limit and len(data) > limit:
            return 552, "5.3.4 Message size exceeds fixed maximum message size"
        self._effect = lambda: self._store(data)
        return 250, "OK Mail accepted"

    def _store(self, data: bytes) -> None:
        """One copy per accepted recipient, byte-exact."""
        for recipient in self.recipients:
            path = self._write(recipient, data)
            stored = StoredMessage(recipient, self.mail_from or "", path, data)
            self.receiver.stored.append(stored)
            self._log(
                "stored",
                mail_from=stored.mail_from,
                recipient=recipient,
                size=len(data),
                sha256=stored.sha256,
                path=path,
            )

    async def _end_chunk(self, event: EndOfChunk) -> None:
        assert self.chunk is not None  # set by every BDAT command with a chunk size
        cmd, code, text = self.chunk
        self.chunk = None
        if 200 <= code < 300 and event.last:
            code, text = self._deliver()
        await self._answer(cmd.key, cmd, code, text)
        if event.last:
            self._reset()

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
    mapped = getattr(ipaddress.ip_address(host), "ipv4_mapped", None)
    return (str(mapped) if mapped else host, port)


def _lines(raw: bytes) -> list[str]:
    return raw.decode("utf-8", "surrogateescape").split("\r\n")[:-1] or [repr(raw)]
