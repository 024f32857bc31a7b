"""The fake DNS server live on loopback: real UDP and TCP, asked by dig and by our stub."""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from harness.dns import (
    DnsServer,
    DnsTimeout,
    FaultRule,
    QueryLog,
    ZoneSet,
    aquery,
    query,
)
from harness.errors import HarnessError

SEED_ZONES = Path(__file__).resolve().parent.parent / "fixtures" / "zones"
BIG_TXT = " ".join(f'"{chr(97 + i) * 200}"' for i in range(4))  # ~800 bytes: > 512


@pytest.fixture
def zones() -> ZoneSet:
    zones = ZoneSet.from_dir(SEED_ZONES)
    zones.add(
        "alias.receiver.com. 300 IN CNAME www.receiver.com.\n"
        "www.receiver.com. 300 IN CNAME mail.receiver.com.\n"
        f"big.receiver.com. 300 IN TXT {BIG_TXT}\n"
    )
    return zones


@pytest.fixture
def server(zones):
    with DnsServer(zones, log=QueryLog()) as server:
        server.start([("127.0.0.1", 0), ("::1", 0)])
        yield server


@pytest.fixture
def v4(server) -> tuple[str, int]:
    return server.addresses[0]


@dataclass
class Dig:
    status: str
    flags: set[str]
    sections: dict[str, list[str]] = field(default_factory=dict)
    transport: str = ""
    output: str = ""

    def section(self, name: str) -> list[str]:
        return self.sections.get(name, [])


def dig(address: tuple[str, int], name: str, qtype: str, *options: str) -> Dig:
    """Run dig once (one try, one second) and parse its text output."""
    command = ["dig", f"@{address[0]}", "-p", str(address[1]), "+tries=1", "+timeout=1"]
    out = subprocess.run(
        [*command, *options, name, qtype], capture_output=True, text=True, timeout=10
    ).stdout
    status = re.search(r"status: (\w+)", out)
    flags = re.search(r";; flags: ([\w ]*);", out)
    transport = re.search(r";; SERVER: .*\((UDP|TCP)\)", out)
    result = Dig(
        status.group(1) if status else "",
        set(flags.group(1).split()) if flags else set(),
        transport=transport.group(1) if transport else "",
        output=out,
    )
    current = None
    for line in out.splitlines():
        heading = re.match(r";; (\w+) SECTION:", line)
        if heading:
            current = heading.group(1)
        elif current and line and not line.startswith(";"):
            result.sections.setdefault(current, []).append(" ".join(line.split()))
        elif not line:
            current = None
    return result


def records(reply: DNSRecord, section: str = "rr") -> list[str]:
    return [f"{rr.rname} {QTYPE[rr.rtype]} {rr.rdata.toZone()}" for rr in getattr(reply, section)]


# --- the seed's questions, asked by dig and by the stub --------------------------------


def test_dig_gets_the_seed_mx_with_glue(v4):
    result = dig(v4, "receiver.com", "MX")
    assert result.status == "NOERROR"
    assert {"qr", "aa"} <= result.flags and "ra" not in result.flags
    assert result.section("ANSWER") == ["receiver.com. 300 IN MX 10 mail.receiver.com."]
    assert result.section("ADDITIONAL") == [
        "mail.receiver.com. 300 IN A 192.0.2.25",
        "mail.receiver.com. 300 IN AAAA 2001:db8::25",
    ]


def test_stub_gets_the_seed_mx_with_glue(v4):
    reply = query(v4, "receiver.com", "MX")
    assert reply.header.aa == 1 and reply.header.rcode == RCODE.NOERROR
    assert records(reply) == ["receiver.com. MX 10 mail.receiver.com."]
    assert records(reply, "ar") == [
        "mail.receiver.com. A 192.0.2.25",
        "mail.receiver.com. AAAA 2001:db8::25",
    ]


@pytest.mark.parametrize(
    ("name", "qtype", "expected"),
    [
        ("mail.receiver.com", "A", "192.0.2.25"),
        ("mail.receiver.com", "AAAA", "2001:db8::25"),
        ("mail.sender.com", "A", "192.0.2.10"),
        ("10.2.0.192.in-addr.arpa", "PTR", "mail.sender.com."),
        (
            "0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa",
            "PTR",
            "mail.sender.com.",
        ),
    ],
)
def test_dig_and_stub_agree_on_addresses_and_ptrs(server, name, qtype, expected):
    v4, v6 = server.addresses
    assert dig(v4, name, qtype).section("ANSWER") == [f"{name}. 300 IN {qtype} {expected}"]
    assert dig(v6, name, qtype, "+tcp").section("ANSWER") == [f"{name}. 300 IN {qtype} {expected}"]
    assert records(query(v6, name, qtype)) == [f"{name}. {qtype} {expected}"]


def test_nxdomain_and_nodata_over_the_wire(v4):
    soa = "receiver.com. 300 IN SOA ns.receiver.com. hostmaster.receiver.com. 1 3600 600 86400 300"
    nx = dig(v4, "nothere.receiver.com", "A")
    nodata = dig(v4, "mail.receiver.com", "MX")
    assert (nx.status, nodata.status) == ("NXDOMAIN", "NOERROR")
    for result in (nx, nodata):
        assert "aa" in result.flags
        assert result.section("ANSWER") == []
        assert result.section("AUTHORITY") == [soa]


def test_refused_outside_our_zones(v4):
    result = dig(v4, "example.org", "A")
    assert result.status == "REFUSED" and "aa" not in result.flags
    assert query(v4, "example.org", "A").header.rcode == RCODE.REFUSED


def test_cname_chain_over_the_wire(v4):
    assert dig(v4, "alias.receiver.com", "A").section("ANSWER") == [
        "alias.receiver.com. 300 IN CNAME www.receiver.com.",
        "www.receiver.com. 300 IN CNAME mail.receiver.com.",
        "mail.receiver.com. 300 IN A 192.0.2.25",
    ]


def test_question_case_is_preserved(v4):
    reply = query(v4, "MaIl.ReCeIvEr.CoM", "A")
    assert str(reply.q.qname) == "MaIl.ReCeIvEr.CoM."
    assert records(reply) == ["mail.receiver.com. A 192.0.2.25"]


def test_aquery_on_both_families(server):
    async def both():
        return await asyncio.gather(*(aquery(a, "receiver.com", "MX") for a in server.addresses))

    for reply in asyncio.run(both()):
        assert records(reply) == ["receiver.com. MX 10 mail.receiver.com."]


# --- size limits and transports -------------------------------------------------------


def test_large_answer_is_truncated_over_udp_and_complete_over_tcp(v4):
    result = dig(v4, "big.receiver.com", "TXT", "+noedns")
    assert "Truncated, retrying in TCP mode" in result.output
    assert result.transport == "TCP" and len(result.section("ANSWER")) == 1
    truncated = query(v4, "big.receiver.com", "TXT", tcp_fallback=False)
    assert truncated.header.tc == 1 and truncated.rr == []
    assert len(query(v4, "big.receiver.com", "TXT").rr) == 1


def test_edns_buffer_size_is_honoured(v4):
    request = DNSRecord.question("big.receiver.com", "TXT")
    request.add_ar(EDNS0(udp_len=4096))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.sendto(request.pack(), v4)
        reply = DNSRecord.parse(sock.recv(65535))
    assert reply.header.tc == 0 and len(reply.rr) == 1
    assert [rr.rtype for rr in reply.ar] == [QTYPE.OPT]


def test_several_queries_on_one_tcp_connection(v4):
    names = ["receiver.com", "sender.com", "mail.receiver.com"]
    with socket.create_connection(v4, timeout=2) as sock:
        requests = [DNSRecord.question(name, "MX") for name in names]
        sock.sendall(b"".join(frame(r.pack()) for r in requests))  # pipelined
        replies = {reply.header.id: reply for reply in (read_frame(sock) for _ in names)}
    for request in requests:
        assert replies[request.header.id].q.qname == request.q.qname


def frame(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def read_frame(sock: socket.socket) -> DNSRecord:
    size = struct.unpack("!H", recv_exactly(sock, 2))[0]
    return DNSRecord.parse(recv_exactly(sock, size))


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "server closed the connection"
        data += chunk
    return data


# --- faults ---------------------------------------------------------------------------


def add_fault(server: DnsServer, **table) -> FaultRule:
    return server.faults.add(FaultRule.from_dict({"name": "receiver.com", "type": "MX", **table}))


@pytest.mark.parametrize(("action", "status"), [("servfail", "SERVFAIL"), ("refused", "REFUSED")])
def test_rcode_faults(server, v4, action, status):
    query(v4, "receiver.com", "MX")  # cached first: a fault must still win over the cache
    add_fault(server, action=action)
    assert dig(v4, "receiver.com", "MX").status == status
    assert RCODE[query(v4, "receiver.com", "MX").header.rcode] == status
    assert dig(v4, "receiver.com", "A").status == "NOERROR"  # other types untouched
    assert [e.fault for e in server.log.find("receiver.com", "MX")] == [None, action, action]


def test_drop_times_out(server, v4):
    add_fault(server, type="*", action="drop")
    started = time.monotonic()
    result = dig(v4, "receiver.com", "MX")
    assert result.status == "" and "timed out" in result.output
    assert time.monotonic() - started < 3
    with pytest.raises(DnsTimeout, match=r"after 2 tries of 0\.2s"):
        query(v4, "receiver.com", "A", timeout=0.2)
    assert [e.rcode for e in server.log.find("receiver.com")] == [None, None, None]


def test_delay_answers_after_the_delay(server, v4):
    add_fault(server, action="delay", ms=300)
    started = time.monotonic()
    reply = query(v4, "receiver.com", "MX")
    assert time.monotonic() - started >= 0.3
    assert records(reply) == ["receiver.com. MX 10 mail.receiver.com."]
    started = time.monotonic()
    query(v4, "receiver.com", "A")
    assert time.monotonic() - started < 0.3


def test_truncate_makes_dig_and_stub_retry_over_tcp(server, v4):
    add_fault(server, action="truncate")
    result = dig(v4, "receiver.com", "MX")
    assert "Truncated, retrying in TCP mode" in result.output
    assert result.transport == "TCP"
    assert result.section("ANSWER") == ["receiver.com. 300 IN MX 10 mail.receiver.com."]
    assert records(query(v4, "receiver.com", "MX")) == ["receiver.com. MX 10 mail.receiver.com."]
    transports = [(e.transport, e.answers != ()) for e in server.log.find("receiver.com", "MX")]
    assert transports == [("udp", False), ("tcp", True)] * 2


def test_fail_times_then_answers(server, v4):
    add_fault(server, action="fail_times", times=2)
    rcodes = [RCODE[query(v4, "receiver.com", "MX").header.rcode] for _ in range(3)]
    assert rcodes == ["SERVFAIL", "SERVFAIL", "NOERROR"]
    assert dig(v4, "receiver.com", "MX").status == "NOERROR"


def test_fail_times_with_another_rcode_and_removal_at_run_time(server, v4):
    rule = add_fault(server, action="fail_times", times=5, rcode="NXDOMAIN")
    assert dig(v4, "receiver.com", "MX").status == "NXDOMAIN"
    server.faults.remove(rule)
    assert dig(v4, "receiver.com", "MX").status == "NOERROR"


def test_zone_changes_at_run_time_are_served_not_the_cache(server, v4):
    assert records(query(v4, "mail.receiver.com", "A")) == ["mail.receiver.com. A 192.0.2.25"]
    server.zones.add("mail.receiver.com. 300 IN A 192.0.2.26", replace=True)
    assert records(query(v4, "mail.receiver.com", "A")) == ["mail.receiver.com. A 192.0.2.26"]


# --- the query log --------------------------------------------------------------------


def test_query_log_records_what_was_asked_and_answered(server, v4):
    query(v4, "receiver.com", "MX")
    dig(server.addresses[1], "nothere.sender.com", "AAAA", "+tcp")
    first, second = server.log.entries()
    assert (first.client[0], first.transport, first.qname, first.qtype, first.rcode) == (
        "127.0.0.1",
        "udp",
        "receiver.com.",
        "MX",
        "NOERROR",
    )
    assert first.answers == ("receiver.com. MX 10 mail.receiver.com.",) and first.fault is None
    assert (second.client[0], second.transport, second.rcode, second.answers) == (
        "::1",
        "tcp",
        "NXDOMAIN",
        (),
    )
    assert first.time <= second.time <= time.time()


# --- our own faults are errors, not drops ---------------------------------------------


def _broken_policy(*_args: object) -> None:
    raise RuntimeError("injected policy bug")


def tcp_exchange(address: tuple[str, int], data: bytes) -> DNSRecord:
    with socket.create_connection(address, timeout=2) as sock:
        sock.sendall(frame(data))
        return read_frame(sock)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_our_fault_is_answered_servfail_and_recorded(server, v4, monkeypatch, transport):
    """Issue 8 finding 3: a query our server failed on was dropped (the client waited for
    nothing) and only logged.  No real bug of ours is known to provoke it (the two the
    fuzzer found are fixed, see test_dns_fuzz.py), so the policy is made to raise: a mock
    of our own fault, exercised over real sockets."""
    monkeypatch.setattr("harness.dns.server.resolve", _broken_policy)
    result = dig(v4, "receiver.com", "MX", *(["+tcp"] if transport == "tcp" else []))
    assert (result.status, result.transport) == ("SERVFAIL", transport.upper())
    exchange = udp_exchange if transport == "udp" else tcp_exchange
    reply = exchange(v4, GOOD)
    reply = DNSRecord.parse(reply) if transport == "udp" else reply
    assert (reply.header.id, reply.header.qr, RCODE[reply.header.rcode]) == (
        parsed_id(GOOD),
        1,
        "SERVFAIL",
    )
    assert [(str(q.qname), QTYPE[q.qtype]) for q in reply.questions] == [("receiver.com.", "MX")]
    summary = "RuntimeError: injected policy bug"
    assert [(f.where, f.summary) for f in server.internal_faults] == [
        (f"dns server ({transport})", summary)
    ] * 2
    assert "_broken_policy" in server.internal_faults[0].traceback
    assert [(e.qname, e.qtype, e.rcode, e.internal) for e in server.log.entries()] == [
        ("receiver.com.", "MX", "SERVFAIL", summary)
    ] * 2
    monkeypatch.undo()
    assert good_query_answers(v4)
    assert server.log.entries()[-1].internal is None


def test_a_fault_outside_answering_is_kept_too(server, v4, monkeypatch):
    """The catch-all: what escapes an event-loop callback (here the UDP send, made to
    raise: a mock) is an internal fault, not a line in a log nobody reads."""
    monkeypatch.setattr("harness.dns.server._sendto", _broken_policy)
    assert udp_exchange(v4, GOOD) is None
    wait_until(lambda: server.internal_faults)
    (fault,) = server.internal_faults
    assert (fault.where, fault.summary) == (
        "dns server (event loop)",
        "RuntimeError: injected policy bug",
    )
    monkeypatch.undo()
    assert good_query_answers(v4)


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# --- bad input never kills the server -------------------------------------------------


def good_query_answers(address: tuple[str, int]) -> bool:
    return records(query(address, "receiver.com", "MX", timeout=1)) == [
        "receiver.com. MX 10 mail.receiver.com."
    ]


def udp_exchange(address: tuple[str, int], data: bytes) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.3)
        sock.sendto(data, address)
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


GOOD = bytes(DNSRecord.question("receiver.com", "MX").pack())


def question(name: bytes) -> bytes:
    """A query with one question for the wire-format ``name`` (root label added), type A."""
    return GOOD[:12] + name + b"\0\0\x01\0\x01"


@pytest.mark.parametrize(
    ("data", "rcode"),
    [
        pytest.param(GOOD[:11], None, id="short"),
        pytest.param(GOOD[:2] + bytes([GOOD[2] | 0x80]) + GOOD[3:], None, id="response QR=1"),
        pytest.param(GOOD[:-3], "FORMERR", id="truncated question"),
        pytest.param(GOOD + b"\0\0", "FORMERR", id="trailing bytes"),
        pytest.param(GOOD[:4] + b"\0\x02" + GOOD[6:], "FORMERR", id="qdcount 2, one sent"),
        pytest.param(GOOD[:4] + b"\0\0" + GOOD[6:12], "FORMERR", id="no question"),
        pytest.param(GOOD[:6] + b"\0\x01" + GOOD[8:], "FORMERR", id="ancount in a query"),
        pytest.param(GOOD[:2] + bytes([GOOD[2] | 0x10]) + GOOD[3:], "NOTIMP", id="opcode STATUS"),
        # Found by the fuzzer (test_dns_fuzz.py): dnslib decodes both, then cannot pack the
        # reply, so the server used to drop them (and, with faults recorded, would have
        # called the client's garbage our fault).
        pytest.param(question(b"\x40" + b"a" * 64), "FORMERR", id="label type 01 (64 octets)"),
        pytest.param(question((b"\x3f" + b"a" * 63) * 4), "FORMERR", id="name of 257 octets"),
    ],
)
def test_malformed_queries(server, v4, data, rcode):
    reply = udp_exchange(v4, data)
    if rcode is None:
        assert reply is None
    else:
        parsed = DNSRecord.parse(reply)
        assert (RCODE[parsed.header.rcode], parsed.header.id) == (rcode, parsed_id(data))
    assert good_query_answers(v4)
    assert server.internal_faults == []  # the client's doing, not ours


def parsed_id(data: bytes) -> int:
    return int.from_bytes(data[:2], "big")


def test_stop_closes_every_socket_and_is_idempotent(zones):
    server = DnsServer(zones)
    server.start([("127.0.0.1", 0)])
    address = server.addresses[0]
    assert good_query_answers(address)
    idle = socket.create_connection(address, timeout=2)  # an open client must not block stop
    server.stop()
    server.stop()
    assert idle.recv(1) == b""
    idle.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=1)


def test_listen_error_is_one_line(server, v4):
    with pytest.raises(HarnessError, match=rf"cannot listen on 127\.0\.0\.1:{v4[1]}: "):
        DnsServer(server.zones).start([v4])


def test_socket_factory_is_used(zones):
    made = []

    def factory(family: int, kind: int) -> socket.socket:
        made.append((family, kind))
        return socket.socket(family, kind)

    with DnsServer(zones) as server:
        server.start([("127.0.0.1", 0)], socket_factory=factory)
        assert good_query_answers(server.addresses[0])
    assert made == [(socket.AF_INET, socket.SOCK_DGRAM), (socket.AF_INET, socket.SOCK_STREAM)]
