"""The stub resolver against hand-made peers that misbehave (loopback UDP/TCP)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from dnslib import RR, DNSRecord

from harness.dns import DnsError, DnsTimeout, aquery, query

Replies = Callable[[DNSRecord], list[bytes]]


@pytest.fixture
def udp_peer() -> Iterator[Callable[[Replies], tuple[str, int]]]:
    """Start a UDP peer that answers each datagram with what ``replies`` makes of it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)
    stop = threading.Event()
    threads = []

    def start(replies: Replies) -> tuple[str, int]:
        def serve() -> None:
            while not stop.is_set():
                try:
                    data, client = sock.recvfrom(65535)
                except TimeoutError:
                    continue
                for reply in replies(DNSRecord.parse(data)):
                    sock.sendto(reply, client)

        threads.append(threading.Thread(target=serve, daemon=True))
        threads[-1].start()
        return sock.getsockname()

    yield start
    stop.set()
    for thread in threads:
        thread.join(timeout=2)
    sock.close()


def answer(request: DNSRecord, **changes) -> bytes:
    reply = request.reply()
    reply.add_answer(*RR.fromZone(f"{request.q.qname} 60 IN A 192.0.2.25"))
    for key, value in changes.items():
        setattr(reply.header, key, value)
    return bytes(reply.pack())


def stray_then_right(request: DNSRecord) -> list[bytes]:
    other = DNSRecord.question("other.receiver.com", "A", "IN")
    other.header.id = request.header.id
    return [
        answer(request, id=(request.header.id + 1) % 65536),  # wrong ID
        answer(other),  # right ID, wrong question
        b"\x00garbage",
        answer(request),
    ]


def silent(request: DNSRecord) -> list[bytes]:
    return []


def test_stray_datagrams_are_ignored(udp_peer):
    address = udp_peer(stray_then_right)
    reply = query(address, "mail.receiver.com", "A", timeout=1)
    assert str(reply.q.qname) == "mail.receiver.com." and len(reply.rr) == 1
    async_reply = asyncio.run(aquery(address, "mail.receiver.com", "A", timeout=1))
    assert async_reply.header.id != 0 and len(async_reply.rr) == 1


def test_silence_is_a_timeout_after_two_tries(udp_peer):
    address = udp_peer(silent)
    for ask in (
        lambda: query(address, "receiver.com", "MX", timeout=0.2),
        lambda: asyncio.run(aquery(address, "receiver.com", "MX", timeout=0.2)),
    ):
        started = time.monotonic()
        with pytest.raises(DnsTimeout, match=r"no udp answer to receiver\.com\. MX"):
            ask()
        assert 0.4 <= time.monotonic() - started < 1.5
    assert issubclass(DnsTimeout, TimeoutError) and issubclass(DnsTimeout, DnsError)


def test_tries_twice_before_giving_up(udp_peer):
    seen = []

    def second_time_lucky(request: DNSRecord) -> list[bytes]:
        seen.append(request.header.id)
        return [answer(request)] if len(seen) == 2 else []

    address = udp_peer(second_time_lucky)
    assert len(query(address, "receiver.com", "A", timeout=0.3).rr) == 1
    assert len(seen) == 2 and seen[0] == seen[1]


def test_truncated_reply_without_a_tcp_server_is_an_error(udp_peer):
    address = udp_peer(lambda request: [answer(request, tc=1)])
    assert query(address, "receiver.com", "A", tcp_fallback=False).header.tc == 1
    with pytest.raises(DnsError, match="refused"):
        query(address, "receiver.com", "A", timeout=0.5)
    with pytest.raises(DnsError, match="refused"):
        asyncio.run(aquery(address, "receiver.com", "A", timeout=0.5))


def closed_port() -> tuple[str, int]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()


def test_nobody_listening_is_a_clear_error_not_a_timeout():
    address = closed_port()
    with pytest.raises(DnsError, match=f"127.0.0.1:{address[1]}: receiver.com. MX: .*refused"):
        query(address, "receiver.com", "MX", timeout=1)
    with pytest.raises(DnsError) as caught:
        asyncio.run(aquery(address, "receiver.com", "MX", timeout=1))
    assert not isinstance(caught.value, DnsTimeout)


def test_unknown_type_is_refused_before_sending():
    with pytest.raises(DnsError, match="unknown query type 'BOGUS'"):
        query(("127.0.0.1", 9), "receiver.com", "BOGUS")
