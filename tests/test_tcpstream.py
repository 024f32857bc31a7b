"""TCP reassembly: order, retransmission, overlap, gaps, roles, closing, the corpus."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ladder_pcaps import CORPUS

from harness.capture.pcapfile import read
from harness.ladder.packets import ACK, FIN, PSH, RST, SYN, URG, Decoder, Packet
from harness.ladder.tcpstream import (
    CLIENT,
    LATE_PACKETS,
    LATE_TIME,
    SERVER,
    Event,
    Reassembler,
    reassemble,
)

T0 = 1_700_000_000_000_000_000
CLIENT_ADDR, SERVER_ADDR = bytes([192, 0, 2, 1]), bytes([198, 51, 100, 25])
C_ISN, S_ISN = 1000, 5000
PA = PSH | ACK


def seg(number, direction, flags, seq, ack=0, payload=b"", *, ports=(40000, 25), time=None):
    """A TCP packet of the test connection; *seq*/*ack* are relative to the ISNs."""
    cport, sport = ports
    if direction == CLIENT:
        addrs, seq, ack = (CLIENT_ADDR, SERVER_ADDR, cport, sport), C_ISN + seq, S_ISN + ack
    else:
        addrs, seq, ack = (SERVER_ADDR, CLIENT_ADDR, sport, cport), S_ISN + seq, C_ISN + ack
    src, dst, sp, dp = addrs
    time = T0 + number * 1_000_000 if time is None else time
    mask = 0xFFFFFFFF
    return Packet(number, time, src, dst, 6, sp, dp, seq & mask, ack & mask, flags, 1000, payload)


def handshake():
    return [seg(1, CLIENT, SYN, 0), seg(2, SERVER, SYN | ACK, 0, 1), seg(3, CLIENT, ACK, 1, 1)]


def run(packets, **options) -> list[Event]:
    return list(reassemble(packets, **options))


def steps(events) -> list[tuple]:
    return [(e.kind, e.direction, e.first, e.offset) for e in events if e.kind != "close"]


def stream(events, direction) -> bytes:
    return b"".join(e.data for e in events if e.kind == "data" and e.direction == direction)


def test_a_whole_session():
    packets = [
        *handshake(),
        seg(4, SERVER, PA, 1, 1, b"220 ready\r\n"),
        seg(5, CLIENT, ACK, 1, 12),
        seg(6, CLIENT, PA, 1, 12, b"QUIT\r\n"),
        seg(7, SERVER, PA, 12, 7, b"221 bye\r\n"),
        seg(8, SERVER, FIN | ACK, 21, 7),
        seg(9, CLIENT, ACK, 7, 22),
        seg(10, CLIENT, FIN | ACK, 7, 22),
        seg(11, SERVER, ACK, 22, 8),
    ]
    events = run(packets)
    assert steps(events) == [
        ("syn", CLIENT, 1, -1),
        ("syn-ack", SERVER, 2, -1),
        ("handshake-ack", CLIENT, 3, 0),
        ("data", SERVER, 4, 0),
        ("ack", CLIENT, 5, 11),
        ("data", CLIENT, 6, 0),
        ("ack", SERVER, 7, 6),
        ("data", SERVER, 7, 11),
        ("fin", SERVER, 8, 20),
        ("ack", CLIENT, 9, 21),  # acknowledges the FIN too
        ("fin", CLIENT, 10, 6),
        ("ack", SERVER, 11, 7),
    ]
    close = events[-1]
    assert (close.kind, close.conn.end, close.conn.roles) == ("close", "fin", "syn")
    assert close.conn.client == ("192.0.2.1", 40000)
    assert close.conn.server == ("198.51.100.25", 25)
    assert all(e.conn is close.conn for e in events)
    assert [e.time for e in events[:3]] == [T0 + n * 1_000_000 for n in (1, 2, 3)]


def test_lines_cut_across_segments():
    parts = [b"EH", b"LO client\r", b"\nMAIL FROM:<a@", b"example.org>\r\n"]
    packets, offset = handshake(), 1
    for number, part in enumerate(parts, 4):
        packets.append(seg(number, CLIENT, PA, offset, 1, part))
        offset += len(part)
    events = run(packets)
    assert stream(events, CLIENT) == b"EHLO client\r\nMAIL FROM:<a@example.org>\r\n"
    assert [e.first for e in events if e.kind == "data"] == [4, 5, 6, 7]


def test_out_of_order_segments_wait_for_the_hole():
    events = run(
        [
            *handshake(),
            seg(4, CLIENT, PA, 5, 1, b" x\r\n"),
            seg(5, CLIENT, PA, 9, 1, b"QUIT\r\n"),
            seg(6, CLIENT, PA, 1, 1, b"EHLO"),
        ]
    )
    data = [e for e in events if e.kind == "data"]
    assert len(data) == 1
    assert (data[0].data, data[0].first, data[0].last, data[0].offset) == (
        b"EHLO x\r\nQUIT\r\n",
        4,
        6,
        0,
    )


def test_retransmission_is_dropped():
    again = seg(5, CLIENT, PA, 1, 1, b"EHLO x\r\n")
    events = run([*handshake(), seg(4, CLIENT, PA, 1, 1, b"EHLO x\r\n"), again])
    assert [e.kind for e in events[3:]] == ["data", "close"]


def test_differing_retransmission_is_reported_and_the_first_copy_wins():
    events = run(
        [
            *handshake(),
            seg(4, CLIENT, PA, 1, 1, b"EHLO x\r\n"),
            seg(5, CLIENT, PA, 3, 1, b"LO y\r\nQUIT\r\n"),  # overlaps, differs, and extends
        ]
    )
    overlap = next(e for e in events if e.kind == "overlap")
    assert (overlap.first, overlap.offset, overlap.length, overlap.data) == (5, 2, 6, b"LO y\r\n")
    assert stream(events, CLIENT) == b"EHLO x\r\nQUIT\r\n"


def test_overlapping_held_segments_first_copy_wins():
    events = run(
        [
            *handshake(),
            seg(4, CLIENT, PA, 5, 1, b"AAAA"),
            seg(5, CLIENT, PA, 7, 1, b"BBBBCC"),  # overlaps the held AAAA by two bytes
            seg(6, CLIENT, PA, 1, 1, b"1234"),
        ]
    )
    assert [(e.kind, e.offset, e.data) for e in events if e.kind == "overlap"] == [
        ("overlap", 6, b"BB")
    ]
    assert stream(events, CLIENT) == b"1234AAAABBCC"


def test_gap_is_skipped_when_the_peer_acknowledges_past_it():
    events = run(
        [
            *handshake(),
            seg(4, CLIENT, PA, 1, 1, b"BDAT 8\r\n"),
            # packet 5, with bytes 8..16, was not captured
            seg(6, CLIENT, PA, 17, 1, b"QUIT\r\n"),
            seg(7, SERVER, ACK, 1, 23),
        ]
    )
    assert steps(events)[3:] == [
        ("data", CLIENT, 4, 0),
        ("gap", CLIENT, 7, 8),
        ("data", CLIENT, 6, 16),
        ("ack", SERVER, 7, 22),
    ]
    gap = next(e for e in events if e.kind == "gap")
    assert gap.length == 8


def feed_each(packets, **options) -> list[list[tuple]]:
    """The events of each packet fed, as (kind, direction, first, offset)."""
    reassembler = Reassembler(**options)
    return [steps(reassembler.feed(p)) for p in packets]


def test_data_captured_after_the_ack_that_covers_it_is_not_a_gap():
    """D2: a capture point between the hosts wrote the server's ACK of EHLO (packet 4) before
    the EHLO (packet 5).  RFC 9293 §3.10.7.4: the receiver acknowledges what it took, so the
    bytes exist; tshark shows packet 4 as "ACKed unseen segment" and follows the stream whole.
    Before: a gap of 8 bytes at packet 4, then packet 5 dropped as a retransmission."""
    events = run([*handshake(), seg(4, SERVER, ACK, 1, 9), seg(5, CLIENT, PA, 1, 1, b"EHLO x\r\n")])
    assert steps(events)[3:] == [("data", CLIENT, 5, 0), ("ack", SERVER, 4, 8)]
    assert stream(events, CLIENT) == b"EHLO x\r\n"


def test_a_hole_acknowledged_past_waits_late_packets_then_is_a_gap():
    keep_alive = [seg(5 + i, CLIENT, ACK, 1, 1) for i in range(LATE_PACKETS)]
    per_packet = feed_each([*handshake(), seg(4, SERVER, ACK, 1, 9), *keep_alive])
    assert all(not events for events in per_packet[3:-1])
    assert per_packet[-1] == [("gap", CLIENT, 4, 0), ("ack", SERVER, 4, 8)]


def test_a_hole_acknowledged_past_waits_late_time_at_most():
    later = T0 + 4_000_000 + int(LATE_TIME * 1e9) + 1
    per_packet = feed_each(
        [*handshake(), seg(4, SERVER, ACK, 1, 9), seg(5, CLIENT, ACK, 1, 1, time=later)]
    )
    assert per_packet[3:] == [[], [("gap", CLIENT, 4, 0), ("ack", SERVER, 4, 8)]]


def test_the_acknowledging_side_answering_ends_the_wait():
    """The server's reply answers the bytes it acknowledged: they are missing now, and the
    gap comes before the reply, in stream order for the SMTP layer."""
    events = run(
        [
            *handshake(),
            seg(4, SERVER, ACK, 1, 9),
            seg(5, SERVER, PA, 1, 9, b"250 ok\r\n"),
            seg(6, CLIENT, PA, 1, 1, b"EHLO x\r\n"),  # too late: the reply came before it
        ]
    )
    assert steps(events)[3:6] == [
        ("gap", CLIENT, 4, 0),
        ("ack", SERVER, 4, 8),
        ("data", SERVER, 5, 0),
    ]


def test_what_waits_comes_before_a_reset():
    events = run(
        [
            *handshake(),
            seg(4, SERVER, ACK, 1, 9),  # past the EHLO, never captured
            seg(5, SERVER, PA, 1, 1, BIG),  # held for the client's ACK
            seg(6, CLIENT, RST, 1),
        ]
    )
    assert steps(events)[3:] == [
        ("gap", CLIENT, 4, 0),  # the server answered: the EHLO was lost
        ("ack", SERVER, 4, 8),
        ("data", SERVER, 5, 0),  # held for an ACK, delivered at the reset
        ("rst", CLIENT, 6, 0),
    ]


def test_a_late_fin_is_not_a_gap():
    events = run(
        [
            *handshake(),
            seg(4, SERVER, ACK, 1, 2),
            seg(5, CLIENT, FIN | ACK, 1, 1),
            seg(6, SERVER, ACK, 1, 2),
        ]
    )
    assert steps(events)[3:] == [("fin", CLIENT, 5, 0), ("ack", SERVER, 4, 1)]


BIG = b"250 " + b"X" * 4996 + b"\r\n"  # 5,002 bytes, longer than TRUSTED


def test_the_copy_the_receiver_acknowledged_wins_over_a_longer_first_one():
    """D6: the server's 5,002-byte segment (4) is never acknowledged; the real reply (5) over
    the same sequence numbers is (6 acknowledges exactly its end).  RFC 9293 §3.10.7.4: the
    receiver's ACK is RCV.NXT, the end of what it took.  Before: the first copy won and the
    real reply was dropped as a differing retransmission."""
    events = run(
        [
            *handshake(),
            seg(4, SERVER, PA, 1, 1, BIG),
            seg(5, SERVER, PA, 1, 1, b"250 ok\r\n"),
            seg(6, CLIENT, PA, 1, 9, b"QUIT\r\n"),
        ]
    )
    assert stream(events, SERVER) == b"250 ok\r\n"
    assert stream(events, CLIENT) == b"QUIT\r\n"
    (loser,) = [e for e in events if e.kind == "overlap"]
    assert (loser.first, loser.offset, loser.length, loser.data) == (4, 0, len(BIG), BIG)


def test_a_long_segment_acknowledged_inside_is_taken():
    """A capture on the sender with segmentation offload: one 5,002-byte record, the
    receiver acknowledging the wire's segments inside it: it took it."""
    events = run([*handshake(), seg(4, SERVER, PA, 1, 1, BIG), seg(5, CLIENT, ACK, 1, 1449)])
    assert steps(events)[3:] == [("data", SERVER, 4, 0), ("ack", CLIENT, 5, 1448)]
    assert stream(events, SERVER) == BIG


def test_a_long_segment_no_ack_judges_is_delivered_after_the_wait():
    waiting = [seg(5 + i, SERVER, ACK, 1, 1) for i in range(LATE_PACKETS)]
    per_packet = feed_each([*handshake(), seg(4, SERVER, PA, 1, 1, BIG), *waiting])
    assert all(not events for events in per_packet[3:-1])
    assert per_packet[-1] == [("data", SERVER, 4, 0)]


def test_a_long_segment_is_delivered_when_too_much_waits_behind_it():
    after = [seg(5 + i, SERVER, PA, 1 + len(BIG) + 4 * i, 1, b"abcd") for i in range(3)]
    events = run([*handshake(), seg(4, SERVER, PA, 1, 1, BIG), *after], max_ahead=10)
    (data,) = [e for e in events if e.kind == "data"]  # one chunk, when the third comes
    assert (data.first, data.last, data.offset, data.data) == (4, 7, 0, BIG + b"abcd" * 3)
    assert not [e for e in events if e.kind == "gap"]


def test_a_long_segment_is_not_held_when_the_peer_is_not_captured():
    events = run([seg(1, SERVER, PA, 1, 1, BIG), seg(2, SERVER, PA, 1, 1, b"250 ok\r\n")])
    assert stream(events, SERVER) == BIG
    assert [e.kind for e in events] == ["data", "overlap", "close"]


@settings(max_examples=200, deadline=None)
@given(
    cuts=st.lists(st.integers(1, 3000), min_size=1, max_size=8),
    early=st.lists(st.booleans(), min_size=8, max_size=8),
)
def test_acks_overtaking_their_data_lose_nothing(cuts, early):
    """The server acknowledges each client segment; any of its ACKs may be captured just
    before the segment it covers (the two directions reordered).  Segments of any size,
    longer than TRUSTED or not: the stream comes back whole, with no gap and no overlap."""
    message = bytes(i % 251 for i in range(sum(cuts)))
    packets, start = [*handshake()], 0
    for size, ack_first in zip(cuts, early, strict=False):
        data = seg(len(packets) + 1, CLIENT, PA, 1 + start, 1, message[start : start + size])
        start += size
        ack = seg(len(packets) + 2, SERVER, ACK, 1, 1 + start)
        packets += [ack, data] if ack_first else [data, ack]
    events = run(packets)
    assert stream(events, CLIENT) == message
    assert not [e for e in events if e.kind in ("gap", "overlap")]
    acks = [e.offset for e in events if e.kind == "ack" and e.direction == SERVER]
    assert acks == sorted(acks) and acks[-1] == len(message)


def test_a_segment_with_rst_and_syn_is_no_syn_fin_or_data():
    """RFC 9293 §3.10.7.2-4: the RST bit is checked before the SYN bit, the text and the FIN
    bit, and every branch of that check drops the segment or resets and returns; so its
    SYN, FIN and data are never taken.  Before: it set the FIN, and the real one was lost."""
    xmas = FIN | SYN | RST | PSH | ACK | URG
    events = run(
        [
            *handshake(),
            seg(4, CLIENT, PA, 1, 1, b"NOOP\r\n"),
            seg(5, CLIENT, xmas, 7, 1, b"junk"),
            seg(6, CLIENT, PA, 7, 1, b"QUIT\r\n"),
            seg(7, CLIENT, FIN | ACK, 13, 1),
        ]
    )
    assert [(e.kind, e.first, e.offset, e.length) for e in events[3:-1]] == [
        ("data", 4, 0, 6),
        ("bad-flags", 5, 6, xmas),
        ("data", 6, 6, 6),
        ("fin", 7, 12, 0),
    ]
    assert events[-1].conn.end == "end"  # its RST did not reset the connection either


def test_a_segment_with_rst_and_syn_opens_no_handshake():
    events = run([seg(1, CLIENT, SYN | RST | ACK, 0), seg(2, CLIENT, PA, 1, 0, b"EHLO x\r\n")])
    assert [e.kind for e in events] == ["bad-flags", "data", "close"]
    assert events[0].conn.roles == "port" and events[0].offset == -1


def test_a_retransmitted_syn_ack_or_fin_is_folded_and_counted():
    reassembler = Reassembler()
    packets = [
        seg(1, CLIENT, SYN, 0),
        seg(2, SERVER, SYN | ACK, 0, 1),
        seg(3, SERVER, SYN | ACK, 0, 1),
        seg(4, CLIENT, ACK, 1, 1),
        seg(5, SERVER, FIN | ACK, 1, 1),
        seg(6, SERVER, FIN | ACK, 1, 1),
        seg(7, CLIENT, SYN, 0),  # the SYN again: the same connection, not a new one
    ]
    events = [e for p in packets for e in reassembler.feed(p)] + reassembler.flush()
    assert [e.kind for e in events] == ["syn", "syn-ack", "handshake-ack", "fin", "close"]
    assert reassembler.warnings == {
        "retransmitted-syn-ack": 1,
        "retransmitted-fin": 1,
        "retransmitted-syn": 1,
    }


def test_gap_is_skipped_at_the_end_without_acknowledgements():
    events = run(
        [
            seg(1, CLIENT, SYN, 0),
            seg(2, CLIENT, PSH, 1, 0, b"one"),
            seg(3, CLIENT, PSH, 9, 0, b"two"),
        ]
    )
    assert [(e.kind, e.offset, e.length) for e in events[1:]] == [
        ("data", 0, 3),
        ("gap", 3, 5),
        ("data", 8, 3),
        ("close", 0, 0),
    ]


def test_gap_is_skipped_when_too_much_waits_behind_it():
    packets = [*handshake()] + [seg(4 + i, CLIENT, PA, 11 + 4 * i, 1, b"abcd") for i in range(4)]
    events = run(packets, max_ahead=10)
    assert [(e.kind, e.first, e.offset, e.length) for e in events[3:6]] == [
        ("gap", 6, 0, 10),
        ("data", 4, 10, 12),
        ("data", 7, 22, 4),
    ]


def test_fin_comes_after_the_data_before_it():
    events = run(
        [
            *handshake(),
            seg(4, CLIENT, FIN | ACK, 5, 1),
            seg(5, CLIENT, PA, 1, 1, b"QUIT"),
        ]
    )
    assert steps(events)[3:] == [("data", CLIENT, 5, 0), ("fin", CLIENT, 4, 4)]


def _after_fin_order(events, direction) -> list[str]:
    """The kinds of *direction*'s data, gap and fin events, in order."""
    kinds = ("data", "gap", "fin")
    return [e.kind for e in events if e.kind in kinds and e.direction == direction]


def test_bytes_past_a_fin_are_dropped_and_reported():
    """Held past the FIN (before it came) and sent after it: neither data nor a gap follows
    the fin (issue 9 finding 6: a gap after the FIN crashed the dissector)."""
    events = run(
        [
            *handshake(),
            seg(4, CLIENT, PA, 100, 1, b"VRFY aibo\r\n"),  # far ahead: held behind a hole
            seg(5, CLIENT, PA, 1, 1, b"QUIT\r\n"),
            seg(6, CLIENT, FIN | ACK, 7, 1),
            seg(7, CLIENT, PA, 4, 1, b"T\r\nNOOP\r\n"),  # straddles the FIN
            seg(8, CLIENT, PA, 8, 1, b"NOOP\r\n"),  # wholly after it
        ]
    )
    after = [(e.first, e.offset, e.length) for e in events if e.kind == "after-fin"]
    assert after == [(4, 99, 11), (7, 6, 6), (8, 7, 6)]
    assert stream(events, CLIENT) == b"QUIT\r\n"
    assert _after_fin_order(events, CLIENT) == ["data", "fin"]


def test_a_fin_inside_a_held_segment_keeps_the_part_before_it():
    events = run(
        [
            *handshake(),
            seg(4, CLIENT, PA, 3, 1, b"IT\r\nNOOP\r\n"),  # held: offsets 2-11
            seg(5, CLIENT, FIN | ACK, 7, 1),  # the FIN at offset 6 cuts it
            seg(6, CLIENT, PA, 1, 1, b"QU"),
        ]
    )
    assert [(e.first, e.offset, e.length) for e in events if e.kind == "after-fin"] == [(4, 6, 6)]
    assert stream(events, CLIENT) == b"QUIT\r\n"
    assert _after_fin_order(events, CLIENT) == ["data", "fin"]


def test_one_sided_capture():
    events = run(
        [
            seg(1, CLIENT, SYN, 0),
            seg(2, CLIENT, ACK, 1, 1),
            seg(3, CLIENT, ACK, 1, 30),  # the greeting was never captured
            seg(4, CLIENT, PA, 1, 30, b"EHLO x\r\n"),
            seg(5, CLIENT, FIN | ACK, 9, 90),
        ]
    )
    assert steps(events) == [
        ("syn", CLIENT, 1, -1),
        ("handshake-ack", CLIENT, 2, 0),
        ("ack", CLIENT, 3, 29),
        ("data", CLIENT, 4, 0),
        ("ack", CLIENT, 5, 89),
        ("fin", CLIENT, 5, 8),
    ]
    assert events[-1].conn.end == "end"


@pytest.mark.parametrize(
    ("ports", "first_from", "server_port"),
    [
        ((40000, 25), CLIENT, 25),
        ((40000, 25), SERVER, 25),
        ((20, 587), SERVER, 587),  # the SMTP port wins over the lower port
        ((50000, 8080), SERVER, 8080),
    ],
)
def test_roles_without_a_handshake(ports, first_from, server_port):
    events = run([seg(1, first_from, PA, 1, 1, b"x", ports=ports)])
    conn = events[0].conn
    assert (conn.roles, conn.server[1], events[0].direction) == ("port", server_port, first_from)
    assert events[0].offset == 0


def test_roles_from_a_syn_ack():
    events = run(
        [
            seg(2, SERVER, SYN | ACK, 0, 1, ports=(25, 40000)),
            seg(3, CLIENT, ACK, 1, 1, ports=(25, 40000)),
        ]
    )
    assert events[0].conn.roles == "syn-ack"
    assert events[0].conn.client == ("192.0.2.1", 25)
    assert steps(events) == [("syn-ack", SERVER, 2, -1), ("handshake-ack", CLIENT, 3, 0)]


def test_sequence_numbers_wrap():
    isn = 0xFFFF_FFFF - 3 - C_ISN
    packets = [
        seg(1, CLIENT, SYN, isn),
        seg(2, CLIENT, PA, isn + 1, 0, b"EHLO"),
        seg(3, CLIENT, PA, isn + 5, 0, b" x\r\n"),
    ]
    events = run(packets)
    assert stream(events, CLIENT) == b"EHLO x\r\n"
    assert [e.offset for e in events if e.kind == "data"] == [0, 4]


def test_rst_closes_the_connection():
    events = run([*handshake(), seg(4, CLIENT, RST | ACK, 1, 1), seg(5, CLIENT, RST, 1)])
    assert steps(events)[3:] == [("rst", CLIENT, 4, 0), ("rst", CLIENT, 5, 0)]
    assert events[-1].conn.end == "rst"


def test_connections_finish_after_linger_and_idle_keeping_memory_flat():
    reassembler = Reassembler(idle=60, linger=1)
    closes = []
    for n in range(50):
        ports, base = (30000 + n, 25), n * 100
        packets = [
            seg(base + 1, CLIENT, SYN, 0, ports=ports),
            seg(base + 2, SERVER, SYN | ACK, 0, 1, ports=ports),
            seg(base + 3, CLIENT, RST, 1, ports=ports),
        ]
        for packet in packets:
            closes += [
                e
                for e in reassembler.feed(packet._replace(time=T0 + n * 2 * 10**9))
                if e.kind == "close"
            ]
    assert len(closes) == 49  # each closed one is finished by a later packet
    assert len(reassembler.flush()) == 1
    reassembler = Reassembler(idle=60)
    idle = seg(1, CLIENT, PA, 1, 1, b"x", time=T0)
    later = seg(2, CLIENT, PA, 1, 1, b"y", ports=(1, 25), time=T0 + 61 * 10**9)
    reassembler.feed(idle)
    events = reassembler.feed(later)
    assert [(e.kind, e.conn.end) for e in events[:1]] == [("close", "idle")]


def test_a_new_syn_on_the_same_ports_is_a_new_connection():
    events = run([*handshake(), seg(4, CLIENT, SYN, 777), seg(5, CLIENT, SYN, 777)])
    syns = [e for e in events if e.kind == "syn"]
    assert [e.conn.id for e in syns] == [1, 2]
    assert syns[0].conn.end == "reused"


@settings(max_examples=200, deadline=None)
@given(
    message=st.binary(min_size=1, max_size=200),
    cuts=st.lists(st.tuples(st.integers(0, 200), st.integers(1, 60)), max_size=20),
    order=st.randoms(use_true_random=False),
)
def test_any_order_and_duplication_gives_the_stream_back(message, cuts, order):
    """Segments cover the message, overlapping, duplicated and shuffled: it comes back whole."""
    size = len(message)
    ranges = [(i, min(i + 16, size)) for i in range(0, size, 16)]  # full coverage
    ranges += [(start % size, min(size, start % size + length)) for start, length in cuts]
    order.shuffle(ranges)
    packets = [seg(1, CLIENT, SYN, 0)]
    for number, (lo, hi) in enumerate(ranges, 2):
        packets.append(seg(number, CLIENT, PSH, 1 + lo, 0, message[lo:hi]))
    events = run(packets)
    assert stream(events, CLIENT) == message
    assert not [e for e in events if e.kind in ("gap", "overlap")]


# --- the foreign corpus

FIRST_COMMANDS = {
    "connect-with-smtp.pcap": b"CONNECT mailin03.sul.t-online.de:25",
    "smtp-attachment-msg.pcap": b"ehlo localhost.localdomain\r\nmail FROM:",
    "smtp-one-side-only.pcap": b"ehlo enzo.icir.org\r\nmail FROM:",
    "smtp-starttls.pcap": b"EHLO openssl.client.net\r\nSTARTTLS\r\n",
}


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.pcap*")), ids=lambda p: p.name)
def test_corpus_streams_start_with_smtp(path):
    events = list(reassemble(Decoder().decode_all(read(str(path)))))
    client: dict[int, bytes] = {}
    server: dict[int, bytes] = {}
    for e in events:
        if e.kind == "data":
            streams = client if e.direction == CLIENT else server
            streams[e.conn.id] = streams.get(e.conn.id, b"") + e.data
    smtp = [e.conn.id for e in events if e.kind == "syn" and e.conn.server[1] in (25, 8240)]
    assert smtp
    for conn_id in smtp:
        expected = FIRST_COMMANDS.get(path.name, b"EHLO ")
        assert client[conn_id].startswith(expected)
        if conn_id in server and path.name != "connect-with-smtp.pcap":
            assert server[conn_id].startswith(b"220")
    assert sum(e.kind == "close" for e in events) == len({e.conn.id for e in events})
    if path.name == "smtp-bdat-gap.pcap":
        assert [(e.offset, e.length) for e in events if e.kind == "gap"] == [(200, 1000)]
    else:
        assert not [e for e in events if e.kind in ("gap", "overlap")]


def _tshark_follow(path: Path) -> tuple[str, dict[bool, bytes]]:
    """tshark's reassembly of TCP stream 0: (node 0 as "addr:port", {sent by node 0: bytes})."""
    out = subprocess.run(
        ["tshark", "-r", str(path), "-qz", "follow,tcp,raw,0"],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    node0 = out.split("Node 0: ", 1)[1].split("\n", 1)[0]
    sent: dict[bool, bytes] = {True: b"", False: b""}
    for line in out.split("Node 1: ", 1)[1].splitlines()[1:]:
        if line and not line.startswith("="):
            sent[not line.startswith("\t")] += bytes.fromhex(line.strip())
    return node0, sent


@pytest.mark.skipif(not shutil.which("tshark"), reason="tshark not installed")
@pytest.mark.parametrize(
    "path",
    [p for p in sorted(CORPUS.glob("*.pcap*")) if p.name != "smtp-bdat-gap.pcap"],
    ids=lambda p: p.name,
)
def test_corpus_first_stream_matches_tshark(path):
    node0, sent = _tshark_follow(path)
    events = [e for e in reassemble(Decoder().decode_all(read(str(path)))) if e.conn.id == 1]
    node0_is_client = node0.endswith(f":{events[0].conn.client[1]}")  # ports differ here
    assert stream(events, CLIENT) == sent[node0_is_client]
    assert stream(events, SERVER) == sent[not node0_is_client]
