"""The scripted SMTP sender: resolve MX, deliver over one session per domain, report.

Rules kept here:

1. Every byte in and out goes through ``ClientConnection``; this module only decides.
2. MX (RFC 5321 §5.1): the lowest preference value first, equal ones in DNS order, the
   next host when one cannot be reached or greets with 4yz; no MX records: the domain's
   own address (implicit MX); NXDOMAIN or a null MX (RFC 7505) reject; other DNS failures
   defer.  The MX host's address comes from the additional section when it is there (the
   seed's step 2; ``use_glue=False`` asks for the A record instead, as real MTAs do).
3. The seed dialogue: wait for 220, HELO (or EHLO, falling back to HELO on 500/502,
   §3.2), VRFY each recipient and drop those answered 550/551/553 (a 502 or 252 only
   says "cannot verify"), MAIL, RCPT for the rest, DATA, the message, QUIT, then wait for
   221 *and* the receiver's FIN before closing: the receiver releases first (seed 29-33).
   With ``half_close`` our FIN leaves with QUIT, in one segment (Exim's way: the socket
   corked, QUIT written, our writing side shut, uncorked): we still read the 221 and the
   receiver's FIN (§4.1.1.10: the receiver "MUST send a 221 OK reply" to QUIT).  Inside
   TLS there is no half-close: ``half_close`` is not acted on there.
4. Outcomes by the first digit (§4.2.1, §4.3.2): 4yz defers, 5yz rejects, per recipient at
   RCPT, for all remaining recipients elsewhere; a lost connection or a timeout before the
   reply to the end of data defers (§6.1: after "." the outcome is unknown, so retry).
5. Scripting edits the dialogue, not the rules: ``ScriptStep`` adds, replaces or follows
   any command (or the message, ``<message>``) with a command line, raw bytes or a pause.
6. ``SendReport.contents``: for each DATA answered 354, the content our bytes after it
   carried, as a conformant receiver stores it: every byte we wrote after the 354, script
   steps included, read by the core's own ``DataReader`` (dot-unstuffed, up to the first
   CRLF.CRLF, its final CRLF kept).  A content whose end marker never went out is not
   one: a conformant receiver stores nothing of it.
7. Our faults are records: an exception of ours while delivering to a domain (a bug, a
   command that cannot be formatted) is an ``InternalFault`` in ``Sender.internal_faults``
   (and a ``fault`` log entry); that domain's recipients still open get no outcome, and
   the other domains are still tried.  What the server does (refusals, 4yz, garbage,
   closing, silence) is an outcome, never a fault.
8. STARTTLS by ``starttls`` (RFC 3207; the policies of ``harness.mta.base``): after EHLO,
   when its reply lists STARTTLS, send it (``starttls_inject``'s bytes behind it in the same
   write); after 220 the handshake (``loop.start_tls``, SNI the MX host's name; ``verify``
   checks the chain against the run's CA and the name, the others take any certificate),
   then the core reads a new session (``secured()``) and we EHLO again with
   ``ehlo_after_tls`` (§4.2: the client SHOULD).  Not offered, or any reply but 220:
   ``opportunistic`` goes on in plaintext (RFC 7435 §3), ``required`` and ``verify`` defer
   every recipient at stage STARTTLS, after QUIT.  A failed handshake (a refused
   certificate among them: its reason in the outcome's text) defers, without QUIT: the
   connection is unusable.  What TLS decrypts is read from a new stream, so plaintext the
   server sent behind its 220 is never taken for a reply inside TLS (§4.2): the core
   reports and drops what it had of it, unless ``starttls_plaintext="keep"`` (a sender
   built to fail the client-side injection check), which feeds it to the new session.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dnslib import QTYPE, RCODE, DNSRecord

from harness.errors import HarnessError, InternalError, InternalFault
from harness.outcome import Outcome, SendReport
from harness.smtp.commands import path_argument
from harness.smtp.events import (
    NEED_DATA,
    Anomaly,
    ConnectionClosed,
    Content,
    Direction,
    EndOfData,
    Event,
    Reply,
    Status,
)
from harness.smtp.framing import ReceiveBuffer
from harness.smtp.peer import (
    EventLog,
    Resolve,
    SocketFactory,
    client_context,
    family_of,
    tls_summary,
)
from harness.smtp.protocol import ClientConnection
from harness.smtp.readers import DataReader
from harness.smtp.state import GREETING, State

MESSAGE = "<message>"
_UNKNOWN_USER = frozenset({550, 551, 553})  # VRFY replies that say "no such user" (§3.5.3)
POSITIONS = ("before", "instead", "after")
STARTTLS_POLICIES = ("never", "opportunistic", "required", "verify")  # harness.mta.base KNOBS


@dataclass(frozen=True)
class ScriptStep:
    """Something to do around the sender's command ``at`` (a verb, or ``<message>``).

    ``argument`` narrows it to one argument (the address for MAIL/RCPT, the user for VRFY).
    ``send`` is a command line (str, CRLF added) or raw bytes (sent as they are: bare-LF
    probes); None only pauses.  ``reply`` waits for a reply to what was sent.  With
    ``instead``, the last reply received stands for the replaced command's reply."""

    at: str
    position: str = "before"
    argument: str | None = None
    send: str | bytes | None = None
    pause: float = 0.0
    reply: bool = True

    def __post_init__(self) -> None:
        if self.position not in POSITIONS:
            raise HarnessError(f"script step position {self.position!r}: expected {POSITIONS}")

    def matches(self, key: str, argument: str | None) -> bool:
        if self.at.upper() != key.upper():
            return False
        return self.argument is None or (argument or "").lower() == self.argument.lower()


@dataclass
class SenderConfig:
    recipients: tuple[str, ...]
    message: bytes
    mail_from: str = "luke@sender.com"
    helo_name: str = "mail.sender.com"
    ehlo: bool = False  # the seed says HELO
    vrfy: bool = True  # the seed verifies every recipient first
    port: int = 25
    use_glue: bool = True
    timeout: float = 30.0  # per connect and per reply
    half_close: bool = False  # our FIN right after QUIT, before its 221 (rule 3)
    script: list[ScriptStep] = field(default_factory=list)
    log_path: Path | None = None
    starttls: str = "never"  # rule 8: never, opportunistic, required, verify
    ehlo_after_tls: str | None = None  # None: helo_name again
    starttls_inject: bytes | None = None  # a probe: raw bytes behind STARTTLS, in its write
    starttls_plaintext: str = "discard"  # "keep": bytes behind the 220 read inside TLS
    ca: Path | None = None  # the run's root CA (verify)
    keylog: Path | None = None  # where the TLS secrets go (NSS key log format)

    def __post_init__(self) -> None:
        if self.starttls not in STARTTLS_POLICIES:
            raise HarnessError(f"sender starttls = {self.starttls!r}: expected {STARTTLS_POLICIES}")


class _Settled(Exception):
    """Every recipient still open gets this outcome; the session ends."""

    def __init__(self, status: str, stage: str, reply: Reply | None = None, text: str = "") -> None:
        super().__init__(text)
        self.status, self.stage = status, stage
        self.code = reply.code if reply else None
        self.text = reply.text if reply else text


class _NextHost(Exception):
    """This MX host cannot take the mail now; try the next one (§5.1)."""


class Sender:
    """Delivers one message to its recipients, one SMTP session per recipient domain."""

    def __init__(
        self,
        config: SenderConfig,
        *,
        resolve: Resolve,
        socket_factory: SocketFactory = socket.socket,
    ) -> None:
        if config.starttls == "verify" and config.ca is None:
            raise InternalError('sender: starttls = "verify" without a CA to verify against')
        self.config = config
        self.resolve = resolve
        self.socket_factory = socket_factory
        self.log = EventLog(config.log_path)
        self.internal_faults: list[InternalFault] = []
        self.contents: list[bytes] = []  # rule 6
        self._outcomes: dict[str, Outcome] = {}

    async def send(self) -> SendReport:
        try:
            for domain, recipients in _by_domain(self.config.recipients).items():
                await self._guarded(domain, recipients)
        finally:
            self.log.close()
        return SendReport(self._outcomes, self.log.entries, self.contents)

    async def _guarded(self, domain: str, recipients: list[str]) -> None:
        """``_deliver``; an exception of ours is recorded, not raised (rule 7)."""
        try:
            await self._deliver(domain, recipients)
        except Exception as exc:
            fault = InternalFault.from_exception(f"sender, delivery to {domain!r}", exc)
            self.internal_faults.append(fault)
            self.log.add("fault", summary=fault.summary)

    def settle(self, recipients: list[str], outcome: _Settled) -> None:
        for r in recipients:
            if r not in self._outcomes:
                o = outcome
                self._outcomes[r] = Outcome(r, o.status, o.stage, o.code, o.text)

    async def _deliver(self, domain: str, recipients: list[str]) -> None:
        try:
            if not domain:
                raise _Settled("rejected", "address", text="no domain in the address")
            last = _Settled("deferred", "connect", text="no MX host took the mail")
            for host, glue in await self._mx(domain):
                try:
                    addresses = glue or _rdata((await self._query(host, "A")).rr, QTYPE.A)
                except _Settled as failure:  # this host has no address now: try the next
                    last = _Settled("deferred", "dns", text=failure.text)
                    continue
                for address in addresses:
                    with contextlib.suppress(_NextHost):
                        await self._session(host, address, recipients)
                        return
            raise last
        except _Settled as outcome:
            self.settle(recipients, outcome)

    async def _query(self, qname: str, qtype: str) -> DNSRecord:
        self.log.add("dns-query", qname=qname, qtype=qtype)
        try:
            record = await self.resolve(qname, qtype)
        except Exception as exc:  # whatever the resolver raises, there is no usable answer
            error = f"{type(exc).__name__}: {exc}"
            self.log.add("dns-error", qname=qname, qtype=qtype, error=error)
            raise _Settled("deferred", "dns", text=f"{qname} {qtype}: {exc}") from None
        rcode = RCODE.get(record.header.rcode)
        self.log.add("dns-answer", qname=qname, qtype=qtype, rcode=rcode, answers=_rdata(record.rr))
        if rcode == "NXDOMAIN":
            raise _Settled("rejected", "dns", text=f"{qname}: no such domain")
        if rcode != "NOERROR":
            raise _Settled("deferred", "dns", text=f"{qname} {qtype}: {rcode}")
        return record

    async def _mx(self, domain: str) -> list[tuple[str, list[str]]]:
        """(host, glue addresses) to try, in order (rule 2)."""
        answer = await self._query(domain, "MX")
        records = [rr.rdata for rr in answer.rr if rr.rtype == QTYPE.MX]
        mx = sorted(((r.preference, str(r.label).rstrip(".")) for r in records), key=lambda m: m[0])
        if any(host == "" for _, host in mx):
            raise _Settled("rejected", "dns", text=f"{domain} has a null MX (RFC 7505)")
        hosts = [host for _, host in mx] or [domain]
        if not self.config.use_glue:
            return [(host, []) for host in hosts]
        glue = [(r.rname, str(r.rdata)) for r in answer.ar if r.rtype == QTYPE.A]
        return [(host, [a for name, a in glue if _same(name, host)]) for host in hosts]

    async def _session(self, host: str, address: str, recipients: list[str]) -> None:
        sock = self.socket_factory(family_of(address), socket.SOCK_STREAM)
        sock.setblocking(False)
        target = (address, self.config.port)
        self.log.add("connect", host=host, to=list(target))
        try:
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.sock_connect(sock, target), self.config.timeout)
            reader, writer = await asyncio.open_connection(sock=sock)
        except (OSError, TimeoutError) as exc:
            sock.close()
            self.log.add("connect-failed", to=list(target), error=f"{type(exc).__name__}: {exc}")
            raise _NextHost from None
        self.log.add("connected", local=list(sock.getsockname()[:2]))
        dialogue = _Dialogue(self, reader, writer, host)
        try:
            await dialogue.run(recipients)
        finally:
            await dialogue.close()
            self.log.add("close")


class _Lost(Exception):
    """The connection broke or timed out."""


class _Dialogue:
    """One SMTP session over an open connection (rules 3 and 4)."""

    def __init__(
        self,
        sender: Sender,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        host: str,
    ) -> None:
        self.sender, self.config, self.log = sender, sender.config, sender.log
        self.reader, self.writer = reader, writer
        self.host = host  # the MX host's name: the name its certificate must bear (rule 8)
        self.conn = ClientConnection()
        # rule 8: the server's plaintext, kept only to read it inside TLS
        self._tap = bytearray() if self.config.starttls_plaintext == "keep" else None
        self.open: list[str] = []  # recipients without an outcome yet
        self.content: _Content | None = None  # what we send after the last 354 (rule 6)

    async def close(self) -> None:
        """Close our end: the TLS stream's once there is one.  After a failed handshake
        asyncio has closed the connection already, and the first stream hears nothing
        more of it (its protocol was replaced): nothing to wait for then."""
        self.writer.close()
        if self.conn.state is not State.TLS:
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()

    async def run(self, recipients: list[str]) -> None:
        self.open = list(recipients)
        try:
            await self._transaction()
        except _Settled as outcome:
            self.sender.settle(self.open, outcome)
        except _Lost as lost:
            self.sender.settle(self.open, _Settled("deferred", "connection", text=str(lost)))
            return
        with contextlib.suppress(_Lost):
            await self._quit()

    async def _transaction(self) -> None:
        greeting = await self._reply()
        if greeting.transient:
            with contextlib.suppress(_Lost):
                await self._quit()
            raise _NextHost
        _require(greeting, GREETING)
        hello = await self._hello(self.config.helo_name)
        if self.config.starttls != "never":
            await self._secure(hello)
        if self.config.vrfy:
            await self._verify()
        if not self.open:
            return
        sender = self.config.mail_from
        _require(await self._command("MAIL", path_argument("FROM", sender), sender), "MAIL")
        accepted = [r for r in list(self.open) if await self._recipient(r)]
        if not accepted:
            return
        _require(await self._command("DATA"), "DATA")
        final = await self._step(MESSAGE, None, lambda: self.conn.send_data(self.config.message))
        self._finish(accepted, final)

    async def _hello(self, name: str) -> Reply:
        verb = "EHLO" if self.config.ehlo else "HELO"
        reply = await self._command(verb, name)
        if verb == "EHLO" and reply.code in (500, 502):
            reply = await self._command("HELO", name)
        _require(reply, verb)
        return reply

    # --- STARTTLS (rule 8) ---------------------------------------------------------------
    async def _secure(self, hello: Reply) -> None:
        if hello.answers != "EHLO" or "STARTTLS" not in _keywords(hello):
            self._without_tls(None, f"{self.host} does not offer STARTTLS")
            return
        reply = await self._step("STARTTLS", None, self._starttls)
        if reply.code != 220:
            self._without_tls(reply, "")
            return
        await self._handshake(reply)
        await self._hello(self.config.ehlo_after_tls or self.config.helo_name)

    def _starttls(self) -> bytes:
        inject = self.config.starttls_inject
        return self.conn.send_command("STARTTLS") + (self.conn.send_raw(inject) if inject else b"")

    def _without_tls(self, reply: Reply | None, why: str) -> None:
        """Plaintext for ``opportunistic``; every recipient deferred for the others."""
        if self.config.starttls != "opportunistic":
            raise _Settled(
                "deferred", "STARTTLS", reply, f"{why} (starttls = {self.config.starttls})"
            )
        self.log.add("plaintext", why=why or f"STARTTLS answered {reply and reply.code}")

    async def _handshake(self, ready: Reply) -> None:
        """TLS on this connection, read from a new stream; the session starts afresh."""
        ca = self.config.ca if self.config.starttls == "verify" else None
        context = client_context(ca, self.config.keylog)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        await self.writer.drain()
        try:
            transport = await loop.start_tls(
                self.writer.transport,
                protocol,
                context,
                server_hostname=self.host,
                ssl_handshake_timeout=self.config.timeout,
            )
        except OSError as exc:  # ssl.SSLError among them
            reason = getattr(exc, "verify_message", None) or str(exc)
            self.log.add("tls-failed", error=f"{type(exc).__name__}: {exc}")
            why = f"TLS with {self.host} failed: {reason}"
            raise _Settled("deferred", "STARTTLS", text=why) from None
        protocol.connection_made(transport)  # start_tls does not: the stream is new
        self.reader, self.writer = reader, asyncio.StreamWriter(transport, protocol, reader, loop)
        self.conn.secured()
        self.log.add("tls", **tls_summary(transport))
        if self._tap is not None:
            kept = bytes(self._tap[ready.offset + len(ready.raw) :])
            self._tap = None
            self.log.add("plaintext-kept", size=len(kept), data=kept[:512].decode("latin-1"))
            self.conn.receive_data(kept)

    async def _verify(self) -> None:
        for recipient in list(self.open):
            user = recipient.partition("@")[0]
            reply = await self._command("VRFY", user, user)
            if reply.code in _UNKNOWN_USER:
                self.sender.settle([recipient], _Settled("rejected", "VRFY", reply))
                self.open.remove(recipient)

    async def _recipient(self, recipient: str) -> bool:
        reply = await self._command("RCPT", path_argument("TO", recipient), recipient)
        if reply.positive:
            return True
        status = "deferred" if reply.transient else "rejected"
        self.sender.settle([recipient], _Settled(status, "RCPT", reply))
        self.open.remove(recipient)
        return False

    def _finish(self, accepted: list[str], final: Reply) -> None:
        status = "delivered" if final.positive else "deferred" if final.transient else "rejected"
        self.sender.settle(accepted, _Settled(status, "<end-of-data>", final))
        self.open = [r for r in self.open if r not in accepted]

    async def _quit(self) -> None:
        """QUIT, its 221, then the receiver's FIN (rule 3); nothing if the server closed or
        a TLS handshake failed (rule 8)."""
        if self.conn.state is State.TLS:
            return
        if self.conn.state is not State.CLOSED:
            # TLS has no half-close (the close_notify closes both ways): a whole close there
            half_close = self.config.half_close and not self.conn.in_tls
            then = self._corked_half_close() if half_close else None
            await self._step("QUIT", None, lambda: self.conn.send_command("QUIT"), then)
        while not isinstance(await self._next(), ConnectionClosed):
            pass
        self.log.add("eof")

    def _corked_half_close(self) -> Callable[[], None]:
        """Cork the socket now; the returned function half-closes and uncorks: QUIT and our
        FIN leave in one segment (as Exim sends them), before any 221 can come back."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)

        def half_close() -> None:
            self.writer.write_eof()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)

        return half_close

    async def _command(
        self, verb: str, argument: str | None = None, match: str | None = None
    ) -> Reply:
        return await self._step(
            verb, match or argument, lambda: self.conn.send_command(verb, argument)
        )

    async def _step(
        self,
        key: str,
        argument: str | None,
        send: Callable[[], bytes],
        then: Callable[[], None] | None = None,
    ) -> Reply:
        """Send one command (or the message) with the script's edits around it (rule 5);
        ``then`` right after it is written (the half-close after QUIT)."""
        steps = [s for s in self.config.script if s.matches(key, argument)]
        for step in steps:
            if step.position == "before":
                await self._scripted(step)
        instead = [s for s in steps if s.position == "instead"]
        reply = None
        for step in instead:
            reply = await self._scripted(step) or reply
        if not instead:
            self._write(send())
            if then is not None:
                then()
        if reply is None:
            reply = await self._reply()
        for step in steps:
            if step.position == "after":
                await self._scripted(step)
        return reply

    async def _scripted(self, step: ScriptStep) -> Reply | None:
        if step.pause:
            self.log.add("pause", seconds=step.pause)
            await asyncio.sleep(step.pause)
        if step.send is None:
            return None
        data = step.send if isinstance(step.send, bytes) else step.send.encode() + b"\r\n"
        self._write(self.conn.send_raw(data))
        return await self._reply() if step.reply else None

    def _write(self, data: bytes) -> None:
        if self.content is not None and (content := self.content.feed(data)) is not None:
            self.sender.contents.append(content)
        if self.conn.state is State.DATA:
            self.log.add("message", size=len(data), sha256=hashlib.sha256(data).hexdigest())
        else:
            lines = data.decode("utf-8", "surrogateescape").split("\r\n")[:-1]
            self.log.add("sent", lines=lines or [repr(data)])
        self.writer.write(data)

    async def _reply(self) -> Reply:
        while not isinstance(event := await self._next(), Reply):
            if isinstance(event, ConnectionClosed):
                raise _Lost("the server closed the connection")
        self.log.add("reply", code=event.code, lines=list(event.lines))
        if event.code == 421 and event.answers != GREETING:  # closing: stop here (§3.8)
            raise _Settled("deferred", event.answers or "reply", event)
        return event

    async def _next(self) -> Event | Status:
        """The next event from the server, reading as needed (timeout: ``_Lost``)."""
        while (event := self.conn.next_event()) is NEED_DATA:
            try:
                await self.writer.drain()
                data = await asyncio.wait_for(self.reader.read(65536), self.config.timeout)
            except (OSError, TimeoutError) as exc:
                raise _Lost(f"{type(exc).__name__}: {exc}") from None
            if self._tap is not None:
                self._tap += data
            self.conn.receive_data(data)
        if isinstance(event, Anomaly):
            self.log.add("anomaly", anomaly=event.kind.value, offset=event.offset)
        elif isinstance(event, Reply) and event.answers == "DATA":
            # rule 6: after 354 (the core's state says DATA) a new content starts
            self.content = _Content() if self.conn.state is State.DATA else None
        return event


class _Content:
    """One message content as a conformant receiver stores it (rule 6): our bytes after a
    354, through the core's DATA reader."""

    def __init__(self) -> None:
        self._buffer = ReceiveBuffer()
        self._reader = DataReader()
        self._data = bytearray()
        self._ended = False

    def feed(self, data: bytes) -> bytes | None:
        """The whole content, once ``data`` brings its end marker; None before and after."""
        if self._ended:
            return None
        self._buffer.feed(data)
        while (events := self._reader.read(self._buffer, Direction.CLIENT)) is not None:
            for event in events:
                if isinstance(event, Content):
                    self._data += event.data
                elif isinstance(event, EndOfData):
                    self._ended = True
                    return bytes(self._data)
        return None


def _require(reply: Reply, stage: str) -> None:
    """Positive, or every open recipient is settled by the first digit (rule 4)."""
    if not reply.positive:
        raise _Settled("deferred" if reply.transient else "rejected", stage, reply)


def _keywords(ehlo: Reply) -> set[str]:
    """The extension keywords an EHLO reply lists (RFC 5321 §4.1.1.1)."""
    return {line.split(" ", 1)[0].upper() for line in ehlo.lines[1:] if line}


def _by_domain(recipients: tuple[str, ...]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for r in recipients:
        groups.setdefault(r.rpartition("@")[2].lower() if "@" in r else "", []).append(r)
    return groups


def _same(name: object, host: str) -> bool:
    return str(name).rstrip(".").lower() == host.lower()


def _rdata(records: list, qtype: int | None = None) -> list[str]:
    return [str(rr.rdata) for rr in records if qtype is None or rr.rtype == qtype]
