"""Malformed DNS queries, and a driver that throws them at a server and counts what it did.

Rules this module keeps:

* Each kind of hostile input is one generator in ``MALFORMED``: bytes from a
  ``random.Random``, so the hypothesis tests (through ``st.randoms``) and the torture
  script share them.  Every kind starts from a real query and breaks one thing.
* What the server must do is ``expected(data)``, read off the header alone as server.py
  documents it: ``DROP`` a message shorter than a header or with QR=1, ``NOTIMP`` an
  opcode other than QUERY, else ``REPLY`` (an answer, or FORMERR for what does not decode).
  ``verdict`` checks a reply against that: same ID, QR=1, same opcode, and unless the
  rcode is FORMERR or NOTIMP, the question as asked and a UDP size within the client's.
* ``throw`` sends each malformed query followed by a good one (the marker) on the same
  socket.  One server thread answers in order, so whatever arrives before the marker's
  reply answers the malformed query, and "dropped" needs no timeout.
* Client garbage is never an internal fault: ``Tally.faults`` counts the server's
  ``internal_faults`` that appeared meanwhile, and must stay 0.
"""

from __future__ import annotations

import argparse
import random
import socket
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from dnslib import QTYPE, RCODE, DNSHeader, DNSQuestion, DNSRecord

from harness.dns.server import DnsServer, SocketFactory

_QR, _OPCODE = 0x8000, 0x7800
_UDP_MIN = 512
_MAX_MESSAGE = 65535
_EXAMPLES_KEPT = 10
_MARKER = DNSRecord.question("receiver.com", "MX")
_MARKER_ANSWER = ["receiver.com. MX 10 mail.receiver.com."]
_NAMES = ("receiver.com", "mail.receiver.com", "sender.com", "nothere.receiver.com", "x.org")
_TYPES = ("A", "AAAA", "MX", "PTR", "TXT", "ANY", "SOA", "NS", "CNAME")


class Expect(StrEnum):
    DROP = "drop"
    NOTIMP = "notimp"
    REPLY = "reply"


def _query(rng: random.Random) -> bytearray:
    """A valid query with a random ID, name and type (all drawn from ``rng``)."""
    question = DNSQuestion(rng.choice(_NAMES), getattr(QTYPE, rng.choice(_TYPES)))
    return bytearray(DNSRecord(DNSHeader(id=rng.randrange(65536), rd=1), q=question).pack())


def _opt(rng: random.Random) -> bytes:
    """An OPT record with garbage in its size, version, flags and options."""
    rdata = rng.randbytes(rng.randrange(0, 40))
    rdlength = len(rdata) if rng.random() < 0.5 else rng.randrange(65536)
    name = b"\0" if rng.random() < 0.8 else b"\x01x\0"
    fixed = struct.pack("!HHIH", 41, rng.randrange(65536), rng.getrandbits(32), rdlength)
    return name + fixed + rdata


def _set_counts(data: bytearray, counts: tuple[int, int, int, int]) -> bytearray:
    data[4:12] = struct.pack("!4H", *counts)
    return data


def truncated_header(rng: random.Random) -> bytes:
    return bytes(_query(rng)[: rng.randrange(12)])


def truncated_query(rng: random.Random) -> bytes:
    data = _query(rng)
    return bytes(data[: rng.randrange(12, len(data))])


def flipped_bytes(rng: random.Random) -> bytes:
    data = _query(rng)
    for _ in range(rng.randrange(1, 6)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def bad_pointers(rng: random.Random) -> bytes:
    """The question name through pointers: to itself, forwards, past the end, in loops."""
    data = _query(rng)[:12]
    targets = [12, 13, 14, len(data) + 2, rng.randrange(0x4000), 0x3FFF]
    prefix = b"" if rng.random() < 0.5 else b"\x01a"
    data += prefix + struct.pack("!H", 0xC000 | rng.choice(targets))
    if rng.random() < 0.5:
        data += struct.pack("!H", 0xC000 | 12)  # a second pointer back at the first
    return bytes(data + b"\0\x01\0\x01")


def reserved_labels(rng: random.Random) -> bytes:
    """Label lengths 64-191 (types 01 and 10, RFC 1035 §4.1.4) or a name over 255 octets."""
    data = _query(rng)[:12]
    if rng.random() < 0.5:
        length = rng.randrange(64, 192)
        data += bytes([length]) + bytes(rng.choice(b"abc") for _ in range(length))
    else:
        data += (b"\x3f" + b"a" * 63) * rng.randrange(4, 6)
    return bytes(data + b"\0\0\x01\0\x01")


def huge_counts(rng: random.Random) -> bytes:
    counts = tuple(rng.choice((0, 1, 2, 255, 65535, rng.randrange(65536))) for _ in range(4))
    return bytes(_set_counts(_query(rng), counts))


def edns_garbage(rng: random.Random) -> bytes:
    data = _query(rng)
    opts = [_opt(rng) for _ in range(rng.randrange(1, 3))]
    return bytes(_set_counts(data, (1, 0, 0, len(opts))) + b"".join(opts))


def response_bit(rng: random.Random) -> bytes:
    data = _query(rng)
    data[2] |= 0x80
    return bytes(data)


def other_opcode(rng: random.Random) -> bytes:
    data = _query(rng)
    data[2] = (data[2] & 0x87) | (rng.randrange(1, 16) << 3)
    return bytes(data)


def trailing_bytes(rng: random.Random) -> bytes:
    return bytes(_query(rng) + rng.randbytes(rng.randrange(1, 40)))


def random_bytes(rng: random.Random) -> bytes:
    return rng.randbytes(rng.randrange(0, 600))


MALFORMED: dict[str, Callable[[random.Random], bytes]] = {
    f.__name__.replace("_", " "): f
    for f in (
        truncated_header,
        truncated_query,
        flipped_bytes,
        bad_pointers,
        reserved_labels,
        huge_counts,
        edns_garbage,
        response_bit,
        other_opcode,
        trailing_bytes,
        random_bytes,
    )
}


def expected(data: bytes) -> Expect:
    """What server.py says it does with ``data`` (see the module's rules)."""
    if len(data) < 12 or data[2] & 0x80:
        return Expect.DROP
    if struct.unpack_from("!H", data, 2)[0] & _OPCODE:
        return Expect.NOTIMP
    return Expect.REPLY


def verdict(data: bytes, reply: bytes | None, transport: str) -> str | None:
    """What is wrong with ``reply`` as the answer to ``data``, or None if nothing is."""
    want = expected(data)
    if reply is None:
        return None if want is Expect.DROP else f"no reply (expected {want})"
    if want is Expect.DROP:
        return "a reply to a message that must be dropped"
    parsed = _parse(reply)
    if parsed is None:
        return "a reply that does not parse"
    header, flags = parsed.header, struct.unpack_from("!H", data, 2)[0]
    rcode = RCODE[header.rcode]
    if (header.id, header.qr, header.opcode) != (
        struct.unpack_from("!H", data)[0],
        1,
        flags >> 11 & 0xF,
    ):
        return "ID, QR or opcode not those of the query"
    if want is Expect.NOTIMP:
        return None if rcode == "NOTIMP" else f"{rcode} to another opcode"
    if rcode in ("FORMERR", "NOTIMP"):
        return None if rcode == "FORMERR" else "NOTIMP to a QUERY"
    return _answer_problem(data, parsed, len(reply), transport)


def _answer_problem(data: bytes, reply: DNSRecord, size: int, transport: str) -> str | None:
    query = _parse(data)
    if query is None:
        return f"{RCODE[reply.header.rcode]} to a query that does not decode"
    if [(q.qname, q.qtype) for q in reply.questions] != [
        (q.qname, q.qtype) for q in query.questions
    ]:
        return "the question is not the one asked"
    opt = [rr.edns_len for rr in query.ar if rr.rtype == QTYPE.OPT]
    limit = max([_UDP_MIN, *opt]) if transport == "udp" else _MAX_MESSAGE
    return None if size <= limit else f"{size} bytes over UDP, limit {limit}"


@dataclass
class Tally:
    """What ``throw`` saw: every count next to its meaning."""

    transport: str
    sent: int = 0
    answered: Counter[str] = field(default_factory=Counter)  # by rcode
    dropped: int = 0  # no reply, as documented
    wrong: int = 0  # not what server.py documents (see ``examples``)
    faults: int = 0  # internal faults the server recorded meanwhile: must be 0
    still_answering: bool = False
    examples: list[str] = field(default_factory=list)  # "kind: hex: problem", the first few

    @property
    def ok(self) -> bool:
        return self.wrong == 0 and self.faults == 0 and self.still_answering

    def lines(self) -> list[str]:
        rcodes = ", ".join(f"{rcode} {n}" for rcode, n in sorted(self.answered.items()))
        return [
            f"malformed DNS queries over {self.transport}: {self.sent} sent",
            f"  answered {sum(self.answered.values())} ({rcodes or 'none'})",
            f"  dropped {self.dropped}",
            f"  wrong {self.wrong}",
            f"  internal faults {self.faults}",
            f"  still answering a good query: {'yes' if self.still_answering else 'NO'}",
            *(f"  e.g. {example}" for example in self.examples),
        ]


def throw(
    server: DnsServer,
    count: int,
    *,
    seed: int = 0,
    transport: str = "udp",
    address: tuple[str, int] | None = None,
    socket_factory: SocketFactory = socket.socket,
) -> Tally:
    """Send ``count`` malformed queries to ``server`` (at ``address``, default its first) and
    count answers, drops, undocumented behaviour and internal faults."""
    rng = random.Random(seed)
    kinds = sorted(MALFORMED)
    address = address or server.addresses[0]
    tally = Tally(transport)
    faults_before = len(server.internal_faults)
    with Link(address, transport, socket_factory) as link:
        try:
            for _ in range(count):
                kind = rng.choice(kinds)
                data = MALFORMED[kind](rng)
                _count(tally, kind, data, link.exchange(data))
            tally.still_answering = link.marker_answered()
        except OSError as exc:  # a timeout or a closed connection: the server stopped
            tally.wrong += 1
            tally.examples.append(f"{kind}: {data.hex()}: no answer to the marker ({exc})")
    tally.faults = len(server.internal_faults) - faults_before
    return tally


def _count(tally: Tally, kind: str, data: bytes, reply: bytes | None) -> None:
    tally.sent += 1
    problem = verdict(data, reply, tally.transport)
    if problem:
        tally.wrong += 1
        if len(tally.examples) < _EXAMPLES_KEPT:
            tally.examples.append(f"{kind}: {data.hex()}: {problem}")
    elif reply is None:
        tally.dropped += 1
    else:
        tally.answered[RCODE[struct.unpack_from("!H", reply, 2)[0] & 0xF]] += 1


def _parse(data: bytes) -> DNSRecord | None:
    try:
        return DNSRecord.parse(data)
    except Exception:  # dnslib raises several types on garbage
        return None


class Link:
    """One socket to the server; each malformed query is followed by the marker."""

    def __init__(self, address: tuple[str, int], transport: str, factory: SocketFactory) -> None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        self.sock = factory(family, kind)
        self.sock.settimeout(5)
        self.sock.connect(address)
        self.udp = transport == "udp"
        self._buffer = b""

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()

    def exchange(self, data: bytes) -> bytes | None:
        """The reply to ``data`` (None if dropped), read up to the marker's reply."""
        marker = self._marker(data)
        self._send(data, marker)
        first = self._receive()
        if self._replies_to(first, marker):  # nothing came before it: dropped
            return None
        self._receive()  # the marker's reply
        return first

    def marker_answered(self) -> bool:
        """Whether a good query still gets its full answer."""
        marker = bytes(_MARKER.pack())
        self._send(marker)
        reply = self._receive()
        if not self._replies_to(reply, marker):
            return False
        answers = [f"{rr.rname} {QTYPE[rr.rtype]} {rr.rdata.toZone()}" for rr in _parse(reply).rr]
        return answers == _MARKER_ANSWER

    @staticmethod
    def _marker(data: bytes) -> bytes:
        """The good query, with an ID that is not the malformed query's."""
        ident = (int.from_bytes(data[:2], "big") + 1) % 65536 if len(data) >= 2 else 1
        return ident.to_bytes(2, "big") + bytes(_MARKER.pack())[2:]

    @staticmethod
    def _replies_to(reply: bytes, marker: bytes) -> bool:
        """Whether ``reply`` (whatever its rcode) is the reply to ``marker``."""
        parsed = _parse(reply) if reply[:2] == marker[:2] else None
        return parsed is not None and parsed.q.qname == _MARKER.q.qname

    def _send(self, *messages: bytes) -> None:
        """Each message as a datagram, or all framed in one write (Nagle would hold a second)."""
        if self.udp:
            for message in messages:
                self.sock.send(message)
        else:
            self.sock.sendall(b"".join(len(m).to_bytes(2, "big") + m for m in messages))

    def _receive(self) -> bytes:
        if self.udp:
            return self.sock.recv(_MAX_MESSAGE)
        size = int.from_bytes(self._read(2), "big")
        return self._read(size)

    def _read(self, size: int) -> bytes:
        while len(self._buffer) < size:
            chunk = self.sock.recv(_MAX_MESSAGE)
            if not chunk:
                raise ConnectionResetError("the DNS server closed the connection")
            self._buffer += chunk
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.dns.malformed``: the seed zones on loopback, N queries each way."""
    from harness.dns.querylog import QueryLog
    from harness.dns.zones import ZoneSet

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--zones", type=Path, default=Path(__file__).parents[2] / "fixtures/zones")
    args = parser.parse_args(argv)
    ok = True
    with DnsServer(ZoneSet.from_dir(args.zones), log=QueryLog(maxlen=1000)) as server:
        server.start([("127.0.0.1", 0)])
        for transport in ("udp", "tcp"):
            tally = throw(server, args.count, seed=args.seed, transport=transport)
            print("\n".join(tally.lines()))
            ok = ok and tally.ok
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
