"""A stub resolver for our own peers: one question to one server, blocking or asyncio.

Rules this module keeps:

* UDP first, on a connected socket (so only the server's datagrams reach us); a datagram
  whose ID or question does not match ours is ignored, not taken as the answer.
* ``tries`` UDP tries (two unless told), each waiting ``timeout`` seconds; then
  ``DnsTimeout``.
* TC=1 repeats the question over TCP (two-byte length framing) unless ``tcp_fallback``
  is off, in which case the truncated reply is returned as it is.
* Any rcode is an answer: SERVFAIL or NXDOMAIN come back as the ``DNSRecord``; only "no
  usable reply" raises (``DnsTimeout``, or ``DnsError`` for refused connections and
  garbled TCP replies).
* The rules live in ``_Exchange``; ``query`` and ``aquery`` only do the I/O.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

from dnslib import QTYPE, DNSError, DNSRecord

from harness.dns.server import SocketFactory

_TRIES = 2
_MAX_MESSAGE = 65535


class DnsError(Exception):
    """No usable reply came back from the DNS server."""


class DnsTimeout(DnsError, TimeoutError):
    """The DNS server did not answer in time."""


class _Exchange:
    """One question and what counts as its answer, without any I/O."""

    def __init__(
        self, server: tuple[str, int], qname: str, qtype: str, timeout: float, tries: int = _TRIES
    ) -> None:
        try:
            self.request = DNSRecord.question(qname, qtype.upper())
        except DNSError:
            raise DnsError(f"unknown query type {qtype!r}") from None
        self.server = server
        self.family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        self.timeout = timeout
        self.tries = tries
        self.packet = self.request.pack()
        self.frame = len(self.packet).to_bytes(2, "big") + self.packet

    def accept(self, data: bytes) -> DNSRecord | None:
        """``data`` as the reply to our question, or None if it is not that."""
        try:
            reply = DNSRecord.parse(data)
        except Exception:  # dnslib raises several types on garbage; garbage is not our reply
            return None
        ours = self.request.q
        if reply.header.id != self.request.header.id or not reply.header.qr:
            return None
        if reply.questions and (reply.q.qname, reply.q.qtype) != (ours.qname, ours.qtype):
            return None
        return reply

    def accept_tcp(self, data: bytes) -> DNSRecord:
        reply = self.accept(data)
        if reply is None:
            raise DnsError(f"{self.where()}: TCP reply does not answer {self.what()}")
        return reply

    def timed_out(self, transport: str) -> DnsTimeout:
        tries = f"{self.tries} tries of " if transport == "udp" else ""
        return DnsTimeout(
            f"{self.where()}: no {transport} answer to {self.what()} after {tries}{self.timeout}s"
        )

    def failed(self, exc: OSError) -> DnsError:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)  # same text sync and async
        return DnsError(f"{self.where()}: {self.what()}: {reason}")

    def where(self) -> str:
        host, port = self.server[:2]
        return f"[{host}]:{port}" if self.family == socket.AF_INET6 else f"{host}:{port}"

    def what(self) -> str:
        return f"{self.request.q.qname} {QTYPE[self.request.q.qtype]}"


def query(
    server: tuple[str, int],
    qname: str,
    qtype: str,
    *,
    timeout: float = 2.0,
    tcp_fallback: bool = True,
    socket_factory: SocketFactory = socket.socket,
    tries: int = _TRIES,
) -> DNSRecord:
    """Ask ``server`` for ``qname``/``qtype`` and return its reply (any rcode)."""
    exchange = _Exchange(server, qname, qtype, timeout, tries)
    try:
        reply = _udp(exchange, socket_factory)
        if reply.header.tc and tcp_fallback:
            reply = _tcp(exchange, socket_factory)
    except (TimeoutError, DnsError):
        raise
    except OSError as exc:
        raise exchange.failed(exc) from None
    return reply


def _udp(exchange: _Exchange, factory: SocketFactory) -> DNSRecord:
    with factory(exchange.family, socket.SOCK_DGRAM) as sock:
        sock.connect(exchange.server)
        for _ in range(exchange.tries):
            sock.send(exchange.packet)
            deadline = time.monotonic() + exchange.timeout
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    reply = exchange.accept(sock.recv(_MAX_MESSAGE))
                except TimeoutError:
                    break
                if reply is not None:
                    return reply
    raise exchange.timed_out("udp")


def _tcp(exchange: _Exchange, factory: SocketFactory) -> DNSRecord:
    with factory(exchange.family, socket.SOCK_STREAM) as sock:
        sock.settimeout(exchange.timeout)
        try:
            sock.connect(exchange.server)
            sock.sendall(exchange.frame)
            size = int.from_bytes(_recv_exactly(sock, 2), "big")
            return exchange.accept_tcp(_recv_exactly(sock, size))
        except TimeoutError:
            raise exchange.timed_out("tcp") from None


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionResetError("connection closed before the whole reply")
        data += chunk
    return data


async def aquery(
    server: tuple[str, int],
    qname: str,
    qtype: str,
    *,
    timeout: float = 2.0,
    tcp_fallback: bool = True,
    socket_factory: SocketFactory = socket.socket,
    tries: int = _TRIES,
) -> DNSRecord:
    """``query`` for asyncio code: the same rules, on the running loop."""
    exchange = _Exchange(server, qname, qtype, timeout, tries)
    try:
        reply = await _audp(exchange, socket_factory)
        if reply.header.tc and tcp_fallback:
            reply = await _atcp(exchange, socket_factory)
    except (TimeoutError, DnsError):
        raise
    except OSError as exc:
        raise exchange.failed(exc) from None
    return reply


async def _audp(exchange: _Exchange, factory: SocketFactory) -> DNSRecord:
    loop = asyncio.get_running_loop()
    with factory(exchange.family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, exchange.server)
        for _ in range(exchange.tries):
            await loop.sock_sendall(sock, exchange.packet)
            deadline = loop.time() + exchange.timeout
            while (left := deadline - loop.time()) > 0:
                try:
                    data = await asyncio.wait_for(loop.sock_recv(sock, _MAX_MESSAGE), left)
                except TimeoutError:
                    break
                reply = exchange.accept(data)
                if reply is not None:
                    return reply
    raise exchange.timed_out("udp")


async def _atcp(exchange: _Exchange, factory: SocketFactory) -> DNSRecord:
    loop = asyncio.get_running_loop()
    with factory(exchange.family, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        try:
            async with asyncio.timeout(exchange.timeout):
                await loop.sock_connect(sock, exchange.server)
                await loop.sock_sendall(sock, exchange.frame)
                size = int.from_bytes(await _arecv_exactly(loop, sock, 2), "big")
                return exchange.accept_tcp(await _arecv_exactly(loop, sock, size))
        except TimeoutError:
            raise exchange.timed_out("tcp") from None


async def _arecv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await loop.sock_recv(sock, size - len(data))
        if not chunk:
            raise ConnectionResetError("connection closed before the whole reply")
        data += chunk
    return data
