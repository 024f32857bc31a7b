"""Fuzzing the DNS server as a standing test: malformed queries over real UDP and TCP on
loopback (and through the sans-IO core), within a bounded budget of a few seconds.

The server must never raise (no internal fault for a client's garbage), must answer or
drop each message as server.py documents (``malformed.verdict``), and must still answer a
good query afterwards.  Crashes found here are fixed and kept as regression inputs in
``test_dns_server.test_malformed_queries`` (a 64-octet label, a 257-octet name).
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest
from dnslib import DNSRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_dns_server import GOOD, frame, good_query_answers, read_frame, records

from harness.dns import DnsServer, FaultRules, QueryLog, ZoneSet
from harness.dns.malformed import MALFORMED, Expect, Link, expected, throw, verdict
from harness.dns.server import Responder

SEED_ZONES = Path(__file__).resolve().parent.parent / "fixtures" / "zones"
LIVE = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def server():
    with DnsServer(ZoneSet.from_dir(SEED_ZONES), log=QueryLog(maxlen=1000)) as server:
        server.start([("127.0.0.1", 0)])
        yield server


def built(kind: str, rng: random.Random) -> bytes:
    return MALFORMED[kind](rng)


def hostile() -> st.SearchStrategy[bytes]:
    """Every kind of ``MALFORMED``, and hypothesis's own bytes: random, cut, flipped."""
    kinds = st.builds(built, st.sampled_from(sorted(MALFORMED)), st.randoms(use_true_random=False))
    cut = st.integers(0, len(GOOD)).map(lambda n: GOOD[:n])
    flipped = st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), max_size=6)
    return st.one_of(
        kinds,
        st.binary(max_size=600),
        cut,
        flipped.map(edited),
        st.binary(max_size=40).map(GOOD.__add__),
    )


def edited(edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(GOOD)
    for index, value in edits:
        out[index] = value
    return bytes(out)


RESPONDER = Responder(ZoneSet.from_dir(SEED_ZONES), FaultRules(), QueryLog(maxlen=10))


@settings(max_examples=300, deadline=None)
@given(data=hostile())
def test_the_core_answers_or_drops_as_documented(data):
    reply, delay = RESPONDER.respond(data, ("127.0.0.1", 1), "udp")
    assert (verdict(data, reply, "udp"), delay) == (None, 0.0)
    assert RESPONDER.internal_faults == []


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@LIVE
@given(messages=st.lists(hostile(), min_size=1, max_size=4))
def test_the_live_server_answers_or_drops_as_documented(server, transport, messages):
    with Link(server.addresses[0], transport, socket.socket) as link:
        for data in messages:
            assert verdict(data, link.exchange(data), transport) is None
        assert link.marker_answered()
    assert server.internal_faults == []


@LIVE
@given(payloads=st.lists(hostile(), max_size=4), cut=st.integers(1, 3))
def test_a_tcp_frame_cut_short_leaves_the_server_answering(server, payloads, cut):
    v4 = server.addresses[0]
    with socket.create_connection(v4, timeout=2) as sock:
        sock.sendall(b"".join(map(frame, payloads)) + frame(GOOD)[:-cut])
    with socket.create_connection(v4, timeout=2) as sock:
        sock.sendall(frame(GOOD))
        assert records(read_frame(sock)) == ["receiver.com. MX 10 mail.receiver.com."]
    assert good_query_answers(v4)
    assert server.internal_faults == []


@pytest.mark.parametrize(("transport", "count"), [("udp", 1000), ("tcp", 1000)])
def test_throw_counts_every_outcome(server, transport, count):
    """The torture script's driver: each documented outcome occurs, nothing else does."""
    tally = throw(server, count, seed=7, transport=transport)
    assert tally.ok, "\n".join(tally.lines())
    assert tally.sent == count == tally.dropped + sum(tally.answered.values())
    assert tally.dropped and tally.answered["FORMERR"] and tally.answered["NOTIMP"]
    assert tally.answered["NOERROR"] and tally.answered["REFUSED"]


def test_throw_counts_internal_faults(monkeypatch):
    """The counter can fail: with the policy made to raise (a mock of our own fault), the
    well-formed queries among the garbage, and the markers, come back SERVFAIL, each
    counted as a fault.  A fresh server: the module's would answer from its cache."""
    monkeypatch.setattr("harness.dns.server.resolve", lambda *_: 1 / 0)
    with DnsServer(ZoneSet.from_dir(SEED_ZONES)) as broken:
        broken.start([("127.0.0.1", 0)])
        tally = throw(broken, 300, seed=7)
        assert tally.faults == len(broken.internal_faults) > tally.answered["SERVFAIL"] > 0
    assert not tally.ok and not tally.still_answering and tally.wrong == 0


QUERY_A = bytes(DNSRecord.question("receiver.com", "A").pack())
REPLY = b"\x81\x80"  # QR, RD, RA; opcode QUERY, NOERROR


@pytest.mark.parametrize(
    ("data", "reply", "problem"),
    [
        (GOOD[:11], GOOD[:2] + REPLY + GOOD[4:], "a reply to a message that must be dropped"),
        (GOOD, None, "no reply (expected reply)"),
        (GOOD, GOOD[:2] + REPLY + b"\0\5" + GOOD[6:], "a reply that does not parse"),
        (GOOD, b"\0\0" + REPLY + GOOD[4:], "ID, QR or opcode not those of the query"),
        (GOOD, GOOD[:2] + b"\x81\x84" + GOOD[4:], "NOTIMP to a QUERY"),
        (GOOD, GOOD[:2] + REPLY + QUERY_A[4:], "the question is not the one asked"),
    ],
    ids=["reply to QR=1", "no reply", "garbage", "wrong id", "notimp", "other question"],
)
def test_the_verdict_can_fail(data, reply, problem):
    assert verdict(data, reply, "udp") == problem


def test_expected_reads_the_header_as_documented():
    assert [expected(d) for d in (GOOD[:11], bytes([0, 0, 0x80]) + GOOD[3:], GOOD)] == [
        Expect.DROP,
        Expect.DROP,
        Expect.REPLY,
    ]
    assert expected(GOOD[:2] + bytes([GOOD[2] | 0x28]) + GOOD[3:]) is Expect.NOTIMP
