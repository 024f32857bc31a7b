"""The fake DNS server: UDP and TCP on each listen address, one background thread.

Rules this module keeps:

* Wire format is dnslib's; what to answer is ``policy.resolve``; how to misbehave is
  ``faults``.  ``Responder`` is the sans-IO core (bytes in, reply bytes and a delay out);
  ``DnsServer`` only moves bytes.
* UDP replies fit the client's limit: 512 bytes, or the EDNS0 size it advertised (never
  less than 512).  A larger reply goes out as TC=1 with no records, and the client repeats
  the query over TCP (RFC 1035 §4.2.1, RFC 6891 §6.2.5).  A query with an OPT record gets
  one back.
* TCP uses two-byte length framing and serves any number of queries per connection,
  replying as each is answered (RFC 7766 §6.2.1.1 allows out-of-order replies).
* TCP connections idle out and are capped, so a client cannot hold our descriptors.  RFC
  7766 §6.2.3: "it is RECOMMENDED that the default server application-level idle period
  be on the order of seconds, but no particular value is specified"; §10 names "total
  number of TCP connections" and "TCP connection idle timeout" as the options to offer.
  A connection with no reply pending and nothing received or sent for
  ``tcp_idle_timeout`` seconds (default ``TCP_IDLE_TIMEOUT``, 10 s) is closed.  At most
  ``tcp_max_connections`` (default ``TCP_MAX_CONNECTIONS``, 128) are held: a new one
  beyond that closes the longest-idle one without a reply pending, since §6.2.3 lets
  servers "use zero timeouts when they are experiencing heavy load or are under attack",
  and a client that has just connected (an MTA retrying after TC=1) is the one that has a
  question; only if every held connection awaits a reply is the new one closed at once.
* Bad packets never stop the server.  Shorter than a header, or a response (QR=1), is
  dropped without a word (answering responses could start a loop between two servers);
  an opcode other than QUERY gets NOTIMP; anything else we cannot decode — wrong counts,
  truncated sections, trailing bytes, not exactly one question, a label over 63 octets
  (the reserved 01/10 label types of RFC 1035 §4.1.4) or a name over 255 (§2.3.4) —
  gets a header-only FORMERR.  That is the client's doing, never an internal fault.
* Our own faults are errors, not drops: if answering raises, the client gets SERVFAIL
  with its ID and question (so it is not left waiting), the fault is kept in
  ``DnsServer.internal_faults`` (the runner turns any into the ``error`` verdict) and the
  query log entry says ``internal``.  Anything else that escapes the event loop is kept
  there too.
* Every received message is logged (``QueryLog``) before its reply is sent.
* Speed: a reply that no fault touched is cached, packed, under the query's own bytes
  after the ID (so case, flags and EDNS are part of the key); a hit costs one dict lookup
  and a two-byte splice.  The cache empties whenever the zones change.
* Sockets are made by ``socket_factory(family, type)`` in the caller's thread (so the lab
  can make them inside a network namespace) and bound here; UDP and TCP share a port.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

from dnslib import (
    CLASS,
    EDNS0,
    QTYPE,
    RCODE,
    RR,
    DNSBuffer,
    DNSHeader,
    DNSLabel,
    DNSQuestion,
    DNSRecord,
)

from harness.dns.faults import FaultRule, FaultRules
from harness.dns.policy import Answer, resolve
from harness.dns.querylog import QueryEntry, QueryLog
from harness.dns.zones import Key, ZoneSet, name_key
from harness.errors import HarnessError, InternalFault

SocketFactory = Callable[[int, int], socket.socket]

_log = logging.getLogger(__name__)

_UDP_MIN = 512
_OUR_UDP_SIZE = 1232  # what our OPT advertises (the 2020 DNS flag day value)
_MAX_MESSAGE = 65535
_CACHE_MAX = 4096
_DEFAULT_LOG_LEN = 100_000
_UDP_BATCH = 64  # datagrams read per readiness callback
_PORT_TRIES = 20  # ephemeral ports tried to find one free for both UDP and TCP
_TCP_BACKLOG = 128
TCP_IDLE_TIMEOUT = 10.0  # seconds; RFC 7766 §6.2.3: "on the order of seconds"
TCP_MAX_CONNECTIONS = 128
_MAX_LABEL, _MAX_NAME = 63, 255  # octets on the wire (RFC 1035 §2.3.4)
# Header flag bits (RFC 1035 §4.1.1).
_QR, _OPCODE, _AA, _TC, _RD = 0x8000, 0x7800, 0x0400, 0x0200, 0x0100
_FAULT_RCODES = {"servfail": RCODE.SERVFAIL, "refused": RCODE.REFUSED}


class _Query(NamedTuple):
    header: DNSHeader
    question: DNSQuestion
    edns: RR | None  # the OPT record, if any


class _Cached(NamedTuple):
    key: Key
    qname: str
    qtype: str
    rcode: str
    answers: tuple[str, ...]
    tail: bytes  # the packed reply without its ID


class Responder:
    """Sans-IO: turn one received message into the reply to send (or None) and a delay."""

    def __init__(self, zones: ZoneSet, faults: FaultRules, log: QueryLog) -> None:
        self.zones = zones
        self.faults = faults
        self.log = log
        self._cache: dict[tuple[str, bytes], _Cached] = {}
        self._version = zones.version
        self.internal_faults: list[InternalFault] = []

    def respond(self, data: bytes, client: tuple, transport: str) -> tuple[bytes | None, float]:
        """Reply to ``data`` from ``client`` over ``transport`` ("udp"/"tcp"): (reply, seconds).

        Never raises: our own fault is answered with SERVFAIL and kept in ``internal_faults``.
        """
        try:
            return self._respond(data, client, transport)
        except Exception as exc:
            return self._our_fault(data, client, transport, exc), 0.0

    def _respond(self, data: bytes, client: tuple, transport: str) -> tuple[bytes | None, float]:
        if self._version != self.zones.version:
            self._cache.clear()
            self._version = self.zones.version
        hit = self._cache.get((transport, data[2:]))
        rule = self.faults.match(hit.key, hit.qtype) if hit else None
        if hit and rule is None:
            self._record(client, transport, hit.qname, hit.qtype, hit.rcode, hit.answers, None)
            return data[:2] + hit.tail, 0.0
        query = _decode(data)
        if not isinstance(query, _Query):
            rcode = RCODE[query[3] & 0xF] if query else None
            self._record(client, transport, "", "", rcode, (), None)
            return query, 0.0
        if hit is None:
            rule = self.faults.match(name_key(query.question.qname), QTYPE[query.question.qtype])
        return self._answer(data, query, client, transport, rule)

    def _answer(
        self, data: bytes, query: _Query, client: tuple, transport: str, rule: FaultRule | None
    ) -> tuple[bytes | None, float]:
        question = query.question
        qname, qtype = str(question.qname), QTYPE[question.qtype]
        fault = rule.describe() if rule else None
        if rule and rule.action == "drop":
            self._record(client, transport, qname, qtype, None, (), fault)
            return None, 0.0
        version = self.zones.version
        answer = self._policy(question, rule)
        force_tc = bool(rule and rule.action == "truncate" and transport == "udp")
        limit = _udp_limit(query) if transport == "udp" else _MAX_MESSAGE
        reply, truncated = _pack(query, answer, limit, force_tc)
        answers = () if truncated else tuple(map(_summary, answer.answer))
        rcode = RCODE[answer.rcode]
        if rule is None and version == self.zones.version:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            key = name_key(question.qname)
            self._cache[(transport, data[2:])] = _Cached(
                key, qname, qtype, rcode, answers, reply[2:]
            )
        self._record(client, transport, qname, qtype, rcode, answers, fault)  # last: see _our_fault
        return reply, (rule.ms / 1000 if rule and rule.action == "delay" else 0.0)

    def _policy(self, question: DNSQuestion, rule: FaultRule | None) -> Answer:
        if rule and rule.action in _FAULT_RCODES:
            return Answer(_FAULT_RCODES[rule.action], aa=False)
        if rule and rule.action == "fail_times":
            return Answer(getattr(RCODE, rule.rcode), aa=False)
        if question.qclass != CLASS.IN:
            return Answer(RCODE.REFUSED, aa=False)
        return resolve(self.zones, question.qname, question.qtype)

    def _record(
        self, client, transport, qname, qtype, rcode, answers, fault, internal=None
    ) -> None:
        entry = QueryEntry(
            time.time(), client[:2], transport, qname, qtype, rcode, answers, fault, internal
        )
        self.log.append(entry)

    def _our_fault(
        self, data: bytes, client: tuple, transport: str, exc: Exception
    ) -> bytes | None:
        """Keep the fault, log it, and answer SERVFAIL (each query is logged last, so once)."""
        fault = _keep(self.internal_faults, f"dns server ({transport})", exc)
        reply = _error_reply(data, RCODE.SERVFAIL)
        rcode = "SERVFAIL" if reply else None
        with contextlib.suppress(Exception):  # the log may be what failed; the fault is kept
            self._record(client, transport, *_question_text(data), rcode, (), None, fault.summary)
        return reply


def _keep(faults: list[InternalFault], where: str, exc: BaseException) -> InternalFault:
    """Keep one of our faults for the runner; one line to the log (the traceback at debug)."""
    fault = InternalFault.from_exception(where, exc)
    faults.append(fault)
    _log.error("%s", fault.line())
    _log.debug("%s", fault.traceback)
    return fault


def _decode(data: bytes) -> _Query | bytes | None:
    """The query in ``data``; else the error reply to send; else None (drop silently)."""
    if len(data) < 12:
        return None
    ident, flags = struct.unpack_from("!HH", data)
    if flags & _QR:
        return None
    if flags & _OPCODE:
        return _header_reply(ident, flags, RCODE.NOTIMP)
    buffer = DNSBuffer(data)
    # dnslib's decoders raise DNSError, BufferError, struct.error, UnicodeDecodeError or
    # RecursionError (long pointer chains) on hostile input: each of them means FORMERR.
    try:
        header = DNSHeader.parse(buffer)
        if header.q != 1 or header.a or header.auth:
            return _header_reply(ident, flags, RCODE.FORMERR)
        question = DNSQuestion.parse(buffer)
        extra = [RR.parse(buffer) for _ in range(header.ar)]
    except Exception:
        return _header_reply(ident, flags, RCODE.FORMERR)
    opts = [rr for rr in extra if rr.rtype == QTYPE.OPT]
    if buffer.remaining() or len(opts) > 1 or not _valid_name(question.qname):
        return _header_reply(ident, flags, RCODE.FORMERR)
    return _Query(header, question, opts[0] if opts else None)


def _valid_name(name: DNSLabel) -> bool:
    """Labels of at most 63 octets, a name of at most 255 (dnslib decodes longer ones)."""
    labels = name.label
    return all(len(label) <= _MAX_LABEL for label in labels) and (
        sum(map(len, labels)) + len(labels) + 1 <= _MAX_NAME
    )


def _header_reply(ident: int, flags: int, rcode: int, question: bytes = b"") -> bytes:
    """A reply with no records, keeping the query's opcode and RD bit (and ``question``)."""
    bitmap = _QR | (flags & (_OPCODE | _RD)) | rcode
    return struct.pack("!6H", ident, bitmap, 1 if question else 0, 0, 0, 0) + question


def _error_reply(data: bytes, rcode: int) -> bytes | None:
    """``rcode`` with the query's ID and question as sent; None if ``data`` is no query."""
    if len(data) < 12:
        return None
    ident, flags, qdcount = struct.unpack_from("!3H", data)
    if flags & _QR:
        return None
    return _header_reply(ident, flags, rcode, _raw_question(data) if qdcount == 1 else b"")


def _raw_question(data: bytes) -> bytes:
    """The first question's bytes (name, type, class) as sent; b"" if not plainly there.

    Resolvers (glibc's res_queriesmatch) ignore a reply whose question differs from theirs,
    so an error reply that must reach the client echoes it.  No pointers are followed.
    """
    end = 12
    while end < len(data) and data[end]:
        if data[end] > _MAX_LABEL:
            return b""
        end += 1 + data[end]
    end += 5  # the root label, QTYPE, QCLASS
    return data[12:end] if end <= len(data) and end - 16 <= _MAX_NAME else b""


def _question_text(data: bytes) -> tuple[str, str]:
    """(qname, qtype) for the log, or ("", "") if the question does not decode."""
    try:
        buffer = DNSBuffer(data)
        buffer.offset = 12
        question = DNSQuestion.parse(buffer)
        return str(question.qname), QTYPE[question.qtype]
    except Exception:  # hostile input: dnslib raises several types (see _decode)
        return "", ""


def _udp_limit(query: _Query) -> int:
    return max(_UDP_MIN, query.edns.edns_len) if query.edns else _UDP_MIN


def _pack(query: _Query, answer: Answer, limit: int, force_tc: bool) -> tuple[bytes, bool]:
    """The packed reply and whether it had to be truncated (TC=1, no records)."""
    # The bitmap is built by hand: dnslib's per-flag setters cost a tenth of a reply.
    bitmap = _QR | (query.header.bitmap & _RD) | (_AA if answer.aa else 0) | answer.rcode
    opt = [EDNS0(udp_len=_OUR_UDP_SIZE)] if query.edns else []
    header = DNSHeader(query.header.id, bitmap)
    reply = DNSRecord(
        header, [query.question], answer.answer, auth=answer.authority, ar=answer.additional + opt
    )
    packed = bytes(reply.pack())
    if len(packed) <= limit and not force_tc:
        return packed, False
    header = DNSHeader(query.header.id, bitmap | _TC)
    return bytes(DNSRecord(header, [query.question], ar=opt).pack()), True


def _summary(rr: RR) -> str:
    return f"{rr.rname} {QTYPE[rr.rtype]} {rr.rdata.toZone()}"


class DnsServer:
    """The fake DNS server; ``start`` it on some addresses, ``stop`` it (or use ``with``)."""

    def __init__(
        self,
        zones: ZoneSet,
        faults: FaultRules | None = None,
        log: QueryLog | None = None,
        *,
        tcp_idle_timeout: float = TCP_IDLE_TIMEOUT,
        tcp_max_connections: int = TCP_MAX_CONNECTIONS,
    ) -> None:
        if not tcp_idle_timeout > 0 or tcp_max_connections < 1:
            raise ValueError("tcp_idle_timeout must be > 0 and tcp_max_connections >= 1")
        self.zones = zones
        self.faults = faults if faults is not None else FaultRules()
        self.log = log if log is not None else QueryLog(maxlen=_DEFAULT_LOG_LEN)
        self.tcp_idle_timeout = tcp_idle_timeout
        self.tcp_max_connections = tcp_max_connections
        self._responder = Responder(self.zones, self.faults, self.log)
        self.internal_faults: list[InternalFault] = self._responder.internal_faults
        self._udp: list[socket.socket] = []
        self._tcp: list[socket.socket] = []
        self._connections: set[_TcpConnection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (address, port) pairs, each served over both UDP and TCP."""
        return [sock.getsockname()[:2] for sock in self._udp]

    def start(
        self,
        listen: Iterable[tuple[str, int]],
        socket_factory: SocketFactory = socket.socket,
    ) -> None:
        """Bind every address (port 0: a free one) and serve from a background thread."""
        if self._thread is not None:
            raise RuntimeError("DnsServer is already running")
        try:
            for host, port in listen:
                udp, tcp = _bind(host, port, socket_factory)
                self._udp.append(udp)
                self._tcp.append(tcp)
            self._loop = asyncio.new_event_loop()
            started: concurrent.futures.Future[None] = concurrent.futures.Future()
            self._thread = threading.Thread(
                target=self._run, args=(started,), name="dns-server", daemon=True
            )
            self._thread.start()
            started.result()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop serving, join the thread, close every socket.  Safe to call twice."""
        if self._thread is not None:
            if self._thread.is_alive():
                self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._thread = None
        for sock in self._udp + self._tcp:
            sock.close()
        self._udp.clear()
        self._tcp.clear()

    def __enter__(self) -> DnsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self, started: concurrent.futures.Future[None]) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        loop.set_exception_handler(self._on_loop_error)
        servers = []
        try:
            for sock in self._tcp:
                coro = loop.create_server(lambda: _TcpConnection(self), sock=sock)
                servers.append(loop.run_until_complete(coro))
            for sock in self._udp:
                loop.add_reader(sock.fileno(), self._on_datagram, sock)
        except Exception as exc:
            started.set_exception(exc)
        else:
            started.set_result(None)
            loop.run_forever()
        for sock in self._udp:
            loop.remove_reader(sock.fileno())
        # Stop accepting, then let the connections accepted just before the stop finish
        # their set-up (asyncio does it in tasks, which fail if the server is closed under
        # them), so that every connection is known and can be cut.
        for sock in [sock for server in servers for sock in server.sockets]:
            loop.remove_reader(sock.fileno())
        pending = asyncio.all_tasks(loop)
        if pending:
            loop.run_until_complete(asyncio.wait(pending, timeout=1))
        for server in servers:
            server.close()
        for connection in list(self._connections):
            connection.transport.abort()
        loop.run_until_complete(asyncio.sleep(0))  # let the aborts finish
        loop.close()

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        """What escaped a callback is our fault too: keep it (asyncio would only log it)."""
        exc = context.get("exception") or RuntimeError(context.get("message", "event loop error"))
        _keep(self.internal_faults, "dns server (event loop)", exc)

    def _admit(self, connection: _TcpConnection) -> bool:
        """Hold ``connection`` within ``tcp_max_connections`` (see the module's rules)."""
        if len(self._connections) >= self.tcp_max_connections:
            idle = [c for c in self._connections if not c.pending]
            if not idle:
                return False
            oldest = min(idle, key=lambda c: c.last_active)
            self._connections.discard(oldest)
            oldest.close()
        self._connections.add(connection)
        return True

    def _on_datagram(self, sock: socket.socket) -> None:
        for _ in range(_UDP_BATCH):
            try:
                data, client = sock.recvfrom(_MAX_MESSAGE)
            except OSError:  # nothing left to read (EAGAIN), or a stray ICMP error
                return
            reply, delay = self._responder.respond(data, client, "udp")
            if reply is None:
                continue
            if delay:
                self._loop.call_later(delay, _sendto, sock, reply, client)
            else:
                _sendto(sock, reply, client)


def _sendto(sock: socket.socket, reply: bytes, client: tuple) -> None:
    try:  # noqa: SIM105 (hot path: contextlib.suppress costs an object per reply)
        sock.sendto(reply, client)
    except OSError:  # full send buffer or a closed socket: UDP may lose a reply
        pass


class _TcpConnection(asyncio.Protocol):
    """One TCP client: length-framed queries in, length-framed replies out, idled out."""

    def __init__(self, server: DnsServer) -> None:
        self._server = server
        self._loop = server._loop
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.pending = 0  # delayed replies not yet sent
        self.last_active = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._client = transport.get_extra_info("peername")
        if not self._server._admit(self):
            transport.abort()
            return
        # asyncio sets TCP_NODELAY only on sockets made with proto=IPPROTO_TCP; ours have 0.
        # Without it the reply to a second pipelined query waits ~40 ms for the client's
        # delayed ACK (Nagle): measured 44 ms a pair, 0.35 ms a single query.
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._timer = self._loop.call_later(self._server.tcp_idle_timeout, self._idle_check)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()

    def close(self) -> None:
        """Close now: gracefully unless replies are stuck in a client that does not read."""
        if self.transport.get_write_buffer_size():
            self.transport.abort()
        else:
            self.transport.close()

    def _idle_check(self) -> None:
        idle_for = self._loop.time() - self.last_active
        timeout = self._server.tcp_idle_timeout
        if not self.pending and idle_for >= timeout:
            self._server._connections.discard(self)
            self.close()
        else:
            delay = timeout if self.pending else timeout - idle_for
            self._timer = self._loop.call_later(delay, self._idle_check)

    def data_received(self, data: bytes) -> None:
        self.last_active = self._loop.time()
        self._buffer += data
        while len(self._buffer) >= 2:
            size = int.from_bytes(self._buffer[:2], "big")
            if len(self._buffer) < 2 + size:
                return
            message = bytes(self._buffer[2 : 2 + size])
            del self._buffer[: 2 + size]
            reply, delay = self._server._responder.respond(message, self._client, "tcp")
            if reply is None:
                continue
            if delay:
                self.pending += 1
                self._loop.call_later(delay, self._send_delayed, reply)
            else:
                self._send(reply)

    def _send_delayed(self, reply: bytes) -> None:
        self.pending -= 1
        self._send(reply)

    def _send(self, reply: bytes) -> None:
        if not self.transport.is_closing():
            self.last_active = self._loop.time()
            self.transport.write(len(reply).to_bytes(2, "big") + reply)

    # A client that sends but does not read must not make us buffer without end.
    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


def _bind(host: str, port: int, factory: SocketFactory) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket bound to the same address and port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    error: OSError | None = None
    for _ in range(_PORT_TRIES if port == 0 else 1):
        udp, tcp = factory(family, socket.SOCK_DGRAM), factory(family, socket.SOCK_STREAM)
        try:
            for sock in (udp, tcp):
                sock.setblocking(False)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            udp.bind((host, port))
            tcp.bind((host, udp.getsockname()[1]))
            tcp.listen(_TCP_BACKLOG)
            return udp, tcp
        except OSError as exc:
            udp.close()
            tcp.close()
            error = exc
    where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
    raise HarnessError(f"cannot listen on {where}: {error.strerror or error}")
