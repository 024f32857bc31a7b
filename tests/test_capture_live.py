"""Live capture on a real lab bridge: complete pcaps that tshark reads, drops detected."""

from __future__ import annotations

import socket
import subprocess

import pytest

from harness.capture.live import Capture, CaptureIncomplete
from harness.lab import Lab

pytestmark = pytest.mark.lab


def _tcp_exchange(lab: Lab) -> None:
    srv = lab.socket_factory("receiver")()
    cli = lab.socket_factory("sender")()
    with srv, cli:
        srv.bind(("192.0.2.25", 25))
        srv.listen()
        cli.connect(("192.0.2.25", 25))
        conn, _ = srv.accept()
        with conn:
            conn.sendall(b"220 mail.receiver.com ready\r\n")
            cli.recv(100)
            cli.sendall(b"QUIT\r\n")
            conn.recv(100)
            conn.sendall(b"221 bye\r\n")
        cli.recv(100)


def _tshark_tcp(path) -> list[str]:
    out = subprocess.run(
        [
            "tshark",
            "-r",
            str(path),
            "-Y",
            "tcp",
            "-T",
            "fields",
            "-e",
            "tcp.flags.str",
            "-e",
            "tcp.len",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return [line.replace("\u00b7", ".") for line in out.stdout.splitlines()]


@pytest.mark.parametrize("backend", ["afpacket", "scapy"])
def test_capture_sees_the_whole_tcp_exchange(lab: Lab, tmp_path, backend: str) -> None:
    pcap = tmp_path / "run.pcap"
    with Capture(lab, pcap, backend) as cap:
        _tcp_exchange(lab)
    assert cap.dropped == 0
    lines = _tshark_tcp(pcap)
    flags = [line.split("\t")[0] for line in lines]
    assert flags[:3] == ["..........S.", ".......A..S.", ".......A...."]  # SYN, SYN-ACK, ACK
    payloads = [int(line.split("\t")[1]) for line in lines]
    assert sum(payloads) == len(b"220 mail.receiver.com ready\r\n") + len(b"QUIT\r\n") + len(
        b"221 bye\r\n"
    )
    assert sum("F" in f for f in flags) == 2  # both FINs


def _flood(lab: Lab, count: int) -> None:
    tx = lab.socket_factory("sender")(socket.AF_INET, socket.SOCK_DGRAM)
    rx = lab.socket_factory("receiver")(socket.AF_INET, socket.SOCK_DGRAM)
    with tx, rx:
        rx.bind(("192.0.2.25", 9))
        for i in range(count):
            tx.sendto(i.to_bytes(4, "big") * 16, ("192.0.2.25", 9))


def test_dropped_packets_fail_the_capture(lab: Lab, tmp_path) -> None:
    """A small buffer and a flood the scapy reader cannot keep up with: a real drop."""
    cap = Capture(lab, tmp_path / "x.pcap", "scapy", buffer_bytes=64 << 10)
    cap.start()
    _flood(lab, 20000)
    with pytest.raises(CaptureIncomplete, match="dropped"):
        cap.stop()
    assert cap.dropped > 0


def test_afpacket_backend_keeps_up_with_a_burst(lab: Lab, tmp_path) -> None:
    with Capture(lab, tmp_path / "burst.pcap", "afpacket") as cap:
        _flood(lab, 3000)
    assert cap.dropped == 0
    udp = subprocess.run(
        ["tshark", "-r", str(tmp_path / "burst.pcap"), "-Y", "udp.dstport == 9"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert len(udp) == 3000
