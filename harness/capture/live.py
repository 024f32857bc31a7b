"""Live capture on the lab bridge, written as a pcap that Wireshark opens.

Rules kept here:
- The capture socket is an AF_PACKET socket bound to the bridge inside the lab's private
  ``-lan`` namespace, in promiscuous mode (without it the bridge shows nothing forwarded).
  It exists before ``start()`` returns, so every later packet is queued for us: the capture
  is live before any traffic.
- Two backends read it: ``scapy`` (scapy's AsyncSniffer on that socket; loses packets
  above ~3k pps, see lab-facts) and ``afpacket`` (a plain reader thread with an 8 MiB
  buffer, 100% at 50k pps) for load.  Both write through scapy's pcap writer.
- Completeness is read from the kernel (PACKET_STATISTICS): a capture that dropped packets
  raises ``CaptureIncomplete`` — never a silent partial pcap.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
from pathlib import Path

from harness.errors import HarnessError
from harness.lab import netns

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_STATISTICS = 6
SO_RCVBUFFORCE = 33
BUFFER_BYTES = 8 << 20
SNAPLEN = 65535
DRAIN_S = 0.1
BACKENDS = ("afpacket", "scapy")


class CaptureIncomplete(HarnessError):
    """The kernel dropped packets: the pcap is not the whole exchange."""


def open_bridge_socket(
    netns_name: str, iface: str = "br0", buffer_bytes: int = BUFFER_BYTES
) -> socket.socket:
    """A promiscuous AF_PACKET socket on ``iface`` inside ``netns_name``."""
    with netns.entered(netns_name):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        index = socket.if_nametoindex(iface)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, buffer_bytes)
    mreq = struct.pack("iHH8s", index, PACKET_MR_PROMISC, 0, b"")
    sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
    sock.bind((iface, ETH_P_ALL))
    return sock


def kernel_counts(sock: socket.socket) -> tuple[int, int]:
    """(packets seen, packets dropped) since the last call, from the kernel."""
    return struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))


class Capture:
    """``with Capture(lab, path):`` captures everything on the lab bridge into ``path``."""

    def __init__(
        self,
        lab,
        path: str | os.PathLike,
        backend: str = "afpacket",
        buffer_bytes: int = BUFFER_BYTES,
    ) -> None:
        if backend not in BACKENDS:
            raise HarnessError(f"capture backend {backend!r}: expected one of {BACKENDS}")
        self.lab = lab
        self.path = Path(path)
        self.backend = backend
        self.buffer_bytes = buffer_bytes
        self.packets = 0
        self.dropped = 0
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._writer = None
        self._sniffer = None

    def __enter__(self) -> Capture:
        self.start()
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        self.stop(check=exc_type is None)

    def start(self) -> None:
        from scapy.utils import RawPcapWriter

        self._sock = open_bridge_socket(self.lab.lan_ns, buffer_bytes=self.buffer_bytes)
        kernel_counts(self._sock)  # reset: count from here on
        self._writer = RawPcapWriter(str(self.path), linktype=1, nano=True, snaplen=SNAPLEN)
        self._writer.write_header(None)
        if self.backend == "scapy":
            self._start_scapy()
        else:
            self._thread = threading.Thread(target=self._read_loop, daemon=True)
            self._thread.start()

    def _start_scapy(self) -> None:
        from scapy.arch.linux import L2ListenSocket
        from scapy.sendrecv import AsyncSniffer

        wrapped = L2ListenSocket.__new__(L2ListenSocket)
        wrapped.ins = wrapped.outs = self._sock
        wrapped.iface, wrapped.type, wrapped.promisc = "br0", ETH_P_ALL, True
        wrapped.LL = __import__("scapy.packet", fromlist=["Raw"]).Raw
        wrapped.closed = False
        started = threading.Event()
        self._sniffer = AsyncSniffer(
            opened_socket=wrapped,
            prn=self._write_scapy,
            store=False,
            started_callback=started.set,
        )
        self._sniffer.start()
        if not started.wait(5):
            raise HarnessError("capture: scapy sniffer did not start within 5 s")

    def _write_scapy(self, pkt) -> None:
        t = int(pkt.time * 1_000_000_000)
        self._write(bytes(pkt), t)

    def _write(self, frame: bytes, t_ns: int) -> None:
        sec, nsec = divmod(t_ns, 1_000_000_000)
        self._writer.write_packet(frame, sec=sec, usec=nsec)
        self.packets += 1

    def _read_loop(self) -> None:
        sock, stop = self._sock, self._stop
        while True:
            ready, _, _ = select.select([sock], [], [], 0.05)
            if not ready:
                if stop.is_set():
                    return
                continue
            frame, addr = sock.recvfrom(SNAPLEN)
            if addr[2] == socket.PACKET_OUTGOING:
                continue  # the bridge's own transmissions would appear twice
            self._write(frame, time.time_ns())

    def stop(self, check: bool = True) -> None:
        """Drain, stop, close; raise ``CaptureIncomplete`` if the kernel dropped any."""
        if self._sock is None:
            return
        time.sleep(DRAIN_S)
        if self._sniffer is not None:
            self._sniffer.stop(join=True)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        _, self.dropped = kernel_counts(self._sock)
        self._sock.close()
        self._sock = None
        self._writer.close()
        if check and self.dropped:
            raise CaptureIncomplete(
                f"capture {self.path}: the kernel dropped {self.dropped} packets "
                f"({self.packets} written); use backend 'afpacket' for load"
            )
