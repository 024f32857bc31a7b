"""When a capture ends: every TCP connection closed both ways, or a bounded wait and a
warning naming the ones that did not (issue 14, "verdicts that hold")."""

from __future__ import annotations

import threading

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from harness.capture.closing import ConnectionTracker
from harness.capture.live import Capture
from harness.lab import Lab
from harness.ladder.dissect import dissect

C, S = ("192.0.2.10", 40000), ("192.0.2.25", 25)


def _seg(src, dst, flags: str, seq: int, ack: int = 0, data: bytes = b"", v6: bool = False):
    ip = IPv6(src=src[0], dst=dst[0]) if v6 else IP(src=src[0], dst=dst[0])
    return bytes(
        Ether() / ip / TCP(sport=src[1], dport=dst[1], flags=flags, seq=seq, ack=ack) / data
    )


def _tracker(*frames: bytes) -> ConnectionTracker:
    tracker = ConnectionTracker()
    for frame in frames:
        tracker.see(frame)
    return tracker


HANDSHAKE = (_seg(C, S, "S", 100), _seg(S, C, "SA", 500, 101), _seg(C, S, "A", 101, 501))


def test_a_connection_is_open_until_each_fin_is_acknowledged() -> None:
    t = _tracker(*HANDSHAKE, _seg(S, C, "PA", 501, 101, b"221 bye\r\n"))
    assert not t.all_closed()
    t.see(_seg(S, C, "FA", 510, 101))  # FIN after 9 bytes: its ACK is 511
    t.see(_seg(C, S, "A", 101, 511))
    t.see(_seg(C, S, "FA", 101, 511))
    assert not t.all_closed()
    assert t.open() == [
        "192.0.2.10:40000 - 192.0.2.25:25: the FIN of 192.0.2.10:40000 not acknowledged"
    ]
    t.see(_seg(S, C, "A", 511, 101))  # acknowledges data, not the FIN at 101 (its ACK is 102)
    assert not t.all_closed()
    t.see(_seg(S, C, "A", 511, 102))
    assert t.all_closed() and t.open() == []


def test_an_ack_short_of_the_fin_does_not_close_it_and_wraps_modulo_2_32() -> None:
    top = 2**32 - 1  # the FIN takes the last sequence number: its ACK wraps to 0
    t = _tracker(_seg(C, S, "FA", top, 1), _seg(S, C, "A", 1, top))
    assert "the FIN of 192.0.2.10:40000 not acknowledged" in t.open()[0]
    t.see(_seg(S, C, "A", 1, 0))
    t.see(_seg(S, C, "FA", 1, 0))
    t.see(_seg(C, S, "A", 0, 2))
    assert t.all_closed()


def test_an_rst_closes_and_a_new_syn_on_the_same_ports_opens_again() -> None:
    t = _tracker(*HANDSHAKE, _seg(C, S, "R", 101))
    assert t.all_closed()
    t.see(_seg(C, S, "S", 9000))
    assert t.open() == [
        "192.0.2.10:40000 - 192.0.2.25:25: no FIN from 192.0.2.10:40000, no FIN from 192.0.2.25:25"
    ]


def test_ipv6_and_frames_that_are_not_tcp() -> None:
    c6, s6 = ("2001:db8::10", 40000), ("2001:db8::25", 25)
    t = _tracker(_seg(c6, s6, "S", 1, v6=True), b"\x00" * 13, bytes(Ether() / IP() / b"x"))
    assert t.open() == ["[2001:db8::10]:40000 - [2001:db8::25]:25: no FIN from "
                        "[2001:db8::10]:40000, no FIN from [2001:db8::25]:25"]  # fmt: skip


# --- on a real lab bridge ----------------------------------------------------------------
def _connected(lab: Lab):
    srv = lab.socket_factory("receiver")()
    cli = lab.socket_factory("sender")()
    srv.bind(("192.0.2.25", 25))
    srv.listen()
    cli.connect(("192.0.2.25", 25))
    conn, _ = srv.accept()
    srv.close()
    return cli, conn


@pytest.mark.lab
def test_the_capture_waits_for_a_close_that_comes_late(lab: Lab, tmp_path) -> None:
    """The server closes; the client closes 0.3 s later, after the capture was told to
    stop.  A fixed 0.1 s drain missed the client's FIN and its ACK."""
    pcap = tmp_path / "late.pcap"
    with Capture(lab, pcap) as cap:
        cli, conn = _connected(lab)
        conn.sendall(b"221 bye\r\n")
        conn.close()
        assert cli.recv(100) == b"221 bye\r\n"
        closer = threading.Timer(0.3, cli.close)
        closer.start()
    closer.join()
    steps = [s.kind for s in dissect(str(pcap), {}).steps]
    assert steps[-4:] == ["fin", "fin-ack", "fin", "close-ack"]
    assert cap.warnings == []


@pytest.mark.lab
def test_a_connection_left_open_is_named_after_the_bounded_wait(lab: Lab, tmp_path) -> None:
    with Capture(lab, tmp_path / "open.pcap", close_wait_s=0.3) as cap:
        cli, conn = _connected(lab)
    port = cli.getsockname()[1]
    cli.close()
    conn.close()
    assert cap.warnings[0] == (
        "capture stopped after 0.3 s with a TCP connection open: "
        f"192.0.2.10:{port} - 192.0.2.25:25: no FIN from 192.0.2.10:{port}, "
        "no FIN from 192.0.2.25:25"
    )


@pytest.mark.lab
def test_a_failed_block_does_not_wait_for_connections(lab: Lab, tmp_path) -> None:
    """An open connection and a failing block: the capture stops without waiting (it
    would wait 600 s) and warns of nothing."""
    ends = []
    with pytest.raises(OSError), Capture(lab, tmp_path / "fail.pcap", close_wait_s=600) as cap:
        ends += _connected(lab)
        raise OSError("the block failed")
    for end in ends:
        end.close()
    assert cap.warnings == []
