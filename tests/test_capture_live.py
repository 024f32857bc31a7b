"""Live capture on a real lab bridge: complete pcaps that tshark reads, drops detected."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from harness.capture.live import Capture, CaptureIncomplete
from harness.capture.pcapfile import read
from harness.errors import InternalError
from harness.lab import Lab, netns

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


def _burst(lab: Lab, count: int, rate: float | None = None, delivered: bool = False) -> None:
    """*count* UDP datagrams sender -> receiver, at about *rate* a second (None: at once);
    with *delivered*, returns once the receiver has them all (so they crossed the bridge:
    an ARP exchange first, on a lab whose neighbour entries went stale, takes a while).
    One datagram first, before any capture, so that ARP does not add frames to count."""
    tx = lab.socket_factory("sender")(socket.AF_INET, socket.SOCK_DGRAM)
    rx = lab.socket_factory("receiver")(socket.AF_INET, socket.SOCK_DGRAM)
    with tx, rx:
        rx.bind(("192.0.2.25", 9))
        rx.settimeout(10)
        start = time.perf_counter()
        for i in range(count):
            if rate and i % 100 == 0 and (ahead := start + i / rate - time.perf_counter()) > 0:
                time.sleep(ahead)  # pacing the sender, not waiting for a result
            tx.sendto(i.to_bytes(4, "big") * 16, ("192.0.2.25", 9))
        for _ in range(count if delivered else 0):
            rx.recv(2048)


def _udp_frames(path) -> int:
    """Frames of the burst in the pcap (other frames: the hosts' IPv6 MLD reports)."""
    out = subprocess.run(
        ["tshark", "-r", str(path), "-Y", "udp.dstport == 9", "-T", "fields", "-e", "udp.length"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return len(out.split())


def _frames(path) -> int:
    return sum(1 for _ in read(str(path)))


@pytest.fixture
def warm_lab(lab: Lab) -> Lab:
    _burst(lab, 1)  # ARP resolved before the capture starts
    return lab


@pytest.mark.parametrize("backend", ["afpacket", "scapy"])
def test_a_burst_is_written_whole(warm_lab: Lab, tmp_path, backend: str) -> None:
    """15,000 frames at ~50k/s: scapy falls far behind; what was queued when the capture
    stopped used to be thrown away (issue 8 finding 11: 9,910-11,289 of 15,000 written,
    0 reported lost).  Now the queue is drained and the count proven against the kernel's."""
    pcap = tmp_path / "burst.pcap"
    with Capture(warm_lab, pcap, backend) as cap:
        _burst(warm_lab, 15_000, rate=50_000)
    assert _udp_frames(pcap) == 15_000
    assert cap.packets == cap.delivered == _frames(pcap) and cap.dropped == 0


def test_afpacket_is_exact_at_load_rates(warm_lab: Lab, tmp_path) -> None:
    """100,000 frames at 50k/s, sent by another process (an unpaced flood can outrun the
    reader on a loaded two-core machine: that loss is then reported, as the next test shows,
    but it is not this one's; and a sender in this process took the reader's GIL: on a
    loaded machine the kernel then dropped 8,000 of them).  The buffer holds the whole
    burst, so a reader starved of CPU by other work still loses nothing: what this proves
    is that every frame the kernel took is written and counted, not the reader's speed."""
    pcap = tmp_path / "flood.pcap"
    rx = warm_lab.socket_factory("receiver")(socket.AF_INET, socket.SOCK_DGRAM)
    with rx, Capture(warm_lab, pcap, "afpacket", buffer_bytes=256 << 20) as cap:
        rx.bind(("192.0.2.25", 9))  # a listener: no ICMP port unreachable among the frames
        code = PACED.format(count=100_000, rate=50_000)
        sender = warm_lab.popen("sender", [sys.executable, "-c", code])
        assert sender.wait(timeout=60) == 0
    assert _udp_frames(pcap) == 100_000
    assert cap.packets == cap.delivered == _frames(pcap) and cap.dropped == 0


PACED = """
import socket, time
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
start = time.perf_counter()
for i in range({count}):
    if i % 100 == 0 and (ahead := start + i / {rate} - time.perf_counter()) > 0:
        time.sleep(ahead)
    tx.sendto(i.to_bytes(4, "big") * 16, ("192.0.2.25", 9))
"""
SEND = """
import socket
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range({count}):
    tx.sendto(i.to_bytes(4, "big") * 16, ("192.0.2.25", 9))
"""


def _burst_while_the_reader_starves(lab: Lab, count: int) -> None:
    """*count* datagrams at once from another process while this one keeps the GIL (a long
    switch interval, a loop that never blocks), so our reader thread cannot drain the
    socket: the kernel must drop, however fast the reader is (on a quiet machine it kept
    up with an in-process burst, and the kernel dropped nothing)."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(5.0)
    try:
        sender = lab.popen("sender", [sys.executable, "-c", SEND.format(count=count)])
        while sender.poll() is None:  # the GIL is let go only for this call
            end = time.perf_counter() + 0.01
            while time.perf_counter() < end:
                pass
    finally:
        sys.setswitchinterval(interval)
    assert sender.returncode == 0


@pytest.mark.parametrize("backend", ["afpacket", "scapy"])
def test_kernel_drops_fail_the_capture_with_the_true_loss(warm_lab: Lab, tmp_path, backend):
    """A 64 KiB buffer and 20,000 frames while the reader cannot run: the kernel drops; the
    loss reported is the true one (it used to understate it by ~17,000) and the failure is
    ours (verdict error)."""
    pcap = tmp_path / "x.pcap"
    cap = Capture(warm_lab, pcap, backend, buffer_bytes=64 << 10)
    cap.start()
    _burst_while_the_reader_starves(warm_lab, 20_000)
    with pytest.raises(CaptureIncomplete, match=r"packets lost: the kernel dropped") as caught:
        cap.stop()
    assert isinstance(caught.value, InternalError)
    assert cap.dropped > 0 and cap.packets == cap.delivered == _frames(pcap)
    others = _frames(pcap) - _udp_frames(pcap)
    # every frame of the burst is written or counted dropped; a dropped MLD report may
    # add to the drops, never hide one
    assert 0 <= _udp_frames(pcap) + cap.dropped - 20_000 <= others + 16


def test_frames_read_but_not_written_fail_the_capture(warm_lab: Lab, tmp_path) -> None:
    """A planted fault (a mock: our writer does not lose frames for real): one frame the
    kernel delivered never reaches the pcap, and the count against the kernel's catches it."""

    class Leaky(Capture):
        def _write(self, frame: bytes, length: int, t_ns: int) -> None:
            if self.delivered == 0 and length == 106 and not getattr(self, "leaked", False):
                self.leaked = True
                return
            super()._write(frame, length, t_ns)

    cap = Leaky(warm_lab, tmp_path / "leak.pcap", "afpacket")
    cap.start()
    _burst(warm_lab, 100)
    with pytest.raises(CaptureIncomplete, match=r"1 packets lost: .* dropped 0 and delivered"):
        cap.stop()
    assert cap.delivered == cap.packets + 1


def test_frames_the_bridge_itself_sends_are_kept_out(warm_lab: Lab, tmp_path) -> None:
    """The kernel filter drops PACKET_OUTGOING: a frame sent out of br0 from the lan
    namespace is not written, while one crossing the bridge is, once."""
    with netns.entered(warm_lab.lan_ns):
        out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    frame = bytes.fromhex("ffffffffffff020000000099") + b"\x88\xb5" + b"smtp-harness" * 4
    pcap = tmp_path / "own.pcap"
    with out, Capture(warm_lab, pcap, "afpacket") as cap:
        out.bind(("br0", 0))
        out.send(frame)
        _burst(warm_lab, 1, delivered=True)
    frames = [r.data for r in read(str(pcap))]
    assert frame not in frames
    assert _udp_frames(pcap) == 1 and cap.packets == cap.delivered == len(frames)
