"""Live capture on the lab bridge, written as a pcapng that Wireshark opens.

Rules kept here:
- The capture socket is an AF_PACKET socket bound to the bridge inside the lab's private
  ``-lan`` namespace, in promiscuous mode (without it the bridge shows nothing forwarded).
  It exists before ``start()`` returns, so every later packet is queued for us: the capture
  is live before any traffic.  It is made with protocol 0 (it receives nothing) and only
  bound to the bridge, for every protocol, once its filter is in place, so its kernel
  counters count the bridge's frames from the first.
- A classic BPF filter keeps the bridge's own transmissions (``PACKET_OUTGOING``) out in
  the kernel: they would appear twice, and what the kernel counts is exactly what is ours
  to write.
- Two backends read it: ``scapy`` (scapy's AsyncSniffer on that socket; it falls behind
  above ~3k pps, see lab-facts) and ``afpacket`` (a plain reader thread with an 8 MiB
  buffer, kernel timestamps, 100% at 100k pps) for load.  Both write through the writer
  ``open_writer`` makes (``pcapng.PcapngWriter``: nanosecond timestamps, interface
  ``br0``); a frame longer than the read buffer is written cut, with its true length, and
  counted as lost bytes.  Names and comments are added afterwards (``pcapng.rewrite``).
- Stopping waits for the end of the exchange on the wire, not for a fixed time after it:
  once the reader has caught up (the bridge quiet for ``DRAIN_S``), until every TCP
  connection seen on the bridge has closed in both directions (each
  FIN acknowledged, or an RST: ``closing.ConnectionTracker``), at most ``close_wait_s``;
  the ones still open then are named in ``warnings`` (the capture goes on to stop: the
  run decides what an unfinished close means).  Then it drains: it waits until the bridge
  has been quiet for ``DRAIN_S`` (at most ``MAX_DRAIN_S``), stops the backend, swaps in a
  filter that admits nothing (the kernel's counters freeze) and writes every frame still
  queued.  Nothing the kernel delivered is left unread.
- The reader (our thread, or scapy's) is the only other user of the socket and the file, so
  whatever ends the capture (``stop()``, or an exception, a SIGTERM's ``SystemExit`` or a
  Ctrl-C in ``start()`` or ``stop()``) first tells it to stop and waits for it, at most
  ``READER_STOP_S``; only then are the socket and the file closed.  A reader that does not
  stop is an ``InternalError``, and the socket and file stay open for it: it never reads a
  closed socket or writes a closed file.
- Completeness is proven, not assumed: the kernel's PACKET_STATISTICS (frames delivered to
  the socket, frames dropped for want of buffer) against the frames written.  Any
  difference, any drop, any cut frame raises ``CaptureIncomplete``: an ``InternalError``
  (a capture that lost packets is our fault; the run's verdict is error), never a silent
  partial pcap.
"""

from __future__ import annotations

import ctypes
import os
import select
import socket
import struct
import threading
import time
from pathlib import Path
from typing import BinaryIO

from harness import signals
from harness.capture.closing import ConnectionTracker
from harness.capture.pcapfile import MAX_CAPLEN
from harness.capture.pcapng import PcapngWriter
from harness.errors import HarnessError, InternalError
from harness.lab import netns

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4
SO_RCVBUFFORCE = 33
SO_ATTACH_FILTER = 26
SO_TIMESTAMPNS = 35  # SCM_TIMESTAMPNS is the same number
BUFFER_BYTES = 8 << 20
FRAME_BYTES = MAX_CAPLEN  # the read buffer: a GSO frame on a veth may exceed 65,535 bytes
DRAIN_S = 0.1  # quiet time on the bridge before the capture stops
MAX_DRAIN_S = 2.0  # stop anyway after this (the frozen queue is still drained)
CLOSE_WAIT_S = 5.0  # at most this long for the open TCP connections to close (RTO backoff
# from 200 ms: a FIN lost four times in a row is past it)
CLOSE_POLL_S = 0.01
READER_STOP_S = 5.0  # a reader polls every 0.05 s; one that takes longer than this is stuck
BACKENDS = ("afpacket", "scapy")

# classic BPF (struct sock_filter: code, jt, jf, k)
_BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_RET_K = 0x20, 0x15, 0x06
_SKF_AD_PKTTYPE = 0xFFFFF000 + 4  # SKF_AD_OFF + SKF_AD_PKTTYPE: the frame's packet type
_NOT_OUTGOING = (  # if pkttype == PACKET_OUTGOING: drop, else keep the whole frame
    (_BPF_LD_W_ABS, 0, 0, _SKF_AD_PKTTYPE),
    (_BPF_JEQ_K, 0, 1, PACKET_OUTGOING),
    (_BPF_RET_K, 0, 0, 0),
    (_BPF_RET_K, 0, 0, 0xFFFF_FFFF),
)
_NOTHING = ((_BPF_RET_K, 0, 0, 0),)
_TIMESPEC = struct.Struct("qq")


class CaptureIncomplete(InternalError):
    """The pcap is not the whole exchange: the kernel dropped frames, or fewer were written
    than it delivered, or frames were cut."""


def open_writer(file: BinaryIO) -> PcapngWriter:
    """The writer every backend writes its frames through."""
    return PcapngWriter(file, iface="br0", snaplen=FRAME_BYTES)


def open_bridge_socket(
    netns_name: str, iface: str = "br0", buffer_bytes: int = BUFFER_BYTES
) -> socket.socket:
    """A promiscuous AF_PACKET socket on ``iface`` inside ``netns_name``, filtered, with
    kernel timestamps, counting from its bind."""
    with netns.entered(netns_name):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # receives nothing yet
        index = socket.if_nametoindex(iface)
    attach_filter(sock, _NOT_OUTGOING)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, buffer_bytes)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    mreq = struct.pack("iHH8s", index, PACKET_MR_PROMISC, 0, b"")
    sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
    sock.bind((iface, ETH_P_ALL))  # Python puts the protocol in network order itself
    return sock


def attach_filter(sock: socket.socket, program: tuple[tuple[int, int, int, int], ...]) -> None:
    """Replace the socket's classic BPF filter (SO_ATTACH_FILTER copies the program)."""
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in program))
    sock.setsockopt(
        socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("HP", len(program), ctypes.addressof(code))
    )


def kernel_counts(sock: socket.socket) -> tuple[int, int]:
    """(frames that passed the filter, frames of them dropped) since the last call."""
    packets, drops = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
    return packets, drops  # packets includes the drops (af_packet.c, PACKET_STATISTICS)


class Capture:
    """``with Capture(lab, path):`` captures everything on the lab bridge into ``path``.

    After ``stop()``: ``packets`` frames written, ``delivered`` and ``dropped`` as the
    kernel counted them, ``cut`` frames longer than the read buffer, and ``warnings``: one
    line for each TCP connection that had not closed when the capture stopped."""

    def __init__(
        self,
        lab,
        path: str | os.PathLike,
        backend: str = "afpacket",
        buffer_bytes: int = BUFFER_BYTES,
        close_wait_s: float = CLOSE_WAIT_S,
    ) -> None:
        if backend not in BACKENDS:
            raise HarnessError(f"capture backend {backend!r}: expected one of {BACKENDS}")
        self.lab = lab
        self.path = Path(path)
        self.backend = backend
        self.buffer_bytes = buffer_bytes
        self.packets = 0
        self.delivered = 0
        self.dropped = 0
        self.cut = 0
        self.close_wait_s = close_wait_s
        self.warnings: list[str] = []
        self._connections = ConnectionTracker()
        self._sock: socket.socket | None = None
        self._file = None
        self._writer: PcapngWriter | None = None
        self._last = 0.0  # time.monotonic() of the last frame written
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sniffer = None
        self._sniffing = threading.Event()  # set by scapy's thread once it can be stopped
        self._frame = bytearray(FRAME_BYTES)
        self._ancillary = socket.CMSG_SPACE(_TIMESPEC.size)

    def __enter__(self) -> Capture:
        self.start()
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        self.stop(check=exc_type is None)

    def start(self) -> None:
        self._sock = open_bridge_socket(self.lab.lan_ns, buffer_bytes=self.buffer_bytes)
        try:
            self._file = open(self.path, "wb")  # noqa: SIM115 (closed by _close)
            self._writer = open_writer(self._file)
            self._last = time.monotonic()
            self._start_reader()
        except BaseException:
            self._close()
            raise

    @signals.holding  # a signal inside Thread.start would leave a reader that can be
    def _start_reader(self) -> None:  # neither joined nor closed under: it waits for this
        try:
            if self.backend == "scapy":
                self._start_scapy()
            else:
                reader = threading.Thread(target=self._read_loop, daemon=True)
                reader.start()
                self._thread = reader  # only once started: one that is not cannot be joined
        finally:
            signals.release()

    def _start_scapy(self) -> None:
        from scapy.arch.linux import L2ListenSocket
        from scapy.packet import Raw
        from scapy.sendrecv import AsyncSniffer

        wrapped = L2ListenSocket.__new__(L2ListenSocket)
        wrapped.ins = wrapped.outs = self._sock
        wrapped.iface, wrapped.type, wrapped.promisc = "br0", ETH_P_ALL, True
        wrapped.LL = Raw
        wrapped.closed = False
        wrapped.auxdata_available = True  # it reads the SO_TIMESTAMPNS the socket sends
        self._sniffer = AsyncSniffer(
            opened_socket=wrapped,
            prn=self._write_scapy,
            store=False,
            started_callback=self._sniffing.set,
        )
        self._sniffer.start()
        if not self._sniffing.wait(5):
            raise HarnessError("capture: scapy sniffer did not start within 5 s")

    def _write_scapy(self, pkt) -> None:
        frame = bytes(pkt)
        self._write(frame, len(frame), int(pkt.time * 1_000_000_000))

    def _write(self, frame: bytes, length: int, t_ns: int) -> None:
        self._writer.write(t_ns, frame, length)
        self.packets += 1
        self._last = time.monotonic()
        self._connections.see(frame)

    def _read_one(self, sock: socket.socket) -> None:
        """Read one queued frame, with its kernel timestamp and true length, and write it."""
        size, ancillary, _, _ = sock.recvmsg_into([self._frame], self._ancillary, socket.MSG_TRUNC)
        t_ns = time.time_ns()
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = _TIMESPEC.unpack_from(data)
                t_ns = sec * 1_000_000_000 + nsec
        if size > FRAME_BYTES:
            self.cut += 1
        self._write(bytes(self._frame[: min(size, FRAME_BYTES)]), size, t_ns)

    def _read_loop(self) -> None:
        sock, stop = self._sock, self._stop
        while not stop.is_set():
            if select.select([sock], [], [], 0.05)[0]:
                self._read_one(sock)

    def stop(self, check: bool = True) -> None:
        """Wait for the TCP connections to close (unless ``check`` is off: the block that
        captured failed), drain, stop, close; raise ``CaptureIncomplete`` unless every frame
        the kernel delivered was written, none was dropped and none was cut."""
        if self._sock is None:
            return
        try:
            self._quiet()  # the reader has caught up with what the kernel queued
            if check:
                self._closed_or_warned()
                self._quiet()
            self._stop_reader()
            attach_filter(self._sock, _NOTHING)  # the counters freeze; the queue stays
            while select.select([self._sock], [], [], 0)[0]:
                self._read_one(self._sock)
            passed, self.dropped = kernel_counts(self._sock)
            self.delivered = passed - self.dropped
        finally:
            self._close()
        if self._sniffer is not None and self._sniffer.exception is not None:
            raise self._sniffer.exception  # what scapy's thread caught (from _write_scapy)
        if check and (self.dropped or self.cut or self.delivered != self.packets):
            raise CaptureIncomplete(self._loss())

    def _stop_reader(self) -> None:
        """Tell the reader to stop and wait for it, at most READER_STOP_S (a stopped one:
        at once); ``InternalError`` if it does not stop."""
        self._stop.set()
        reader = self._thread
        if self._sniffer is not None:
            reader = self._sniffer.thread
            if self._sniffing.wait(READER_STOP_S) and self._sniffer.running:
                self._sniffer.stop(join=False)  # scapy cannot be told before it sniffs
        if reader is not None:
            reader.join(READER_STOP_S)
            if reader.is_alive():
                raise InternalError(f"capture {self.path}: its reader did not stop")

    def _close(self) -> None:
        """Stop the reader, then close the socket and the file; a second call does nothing."""
        if self._sock is None:
            return
        self._stop_reader()
        self._sock.close()
        self._sock = None
        if self._file is not None:
            self._file.close()

    def _closed_or_warned(self) -> None:
        """Wait until every TCP connection seen has closed, at most ``close_wait_s``; name
        in ``warnings`` those that did not."""
        deadline = time.monotonic() + self.close_wait_s
        while not self._connections.all_closed() and time.monotonic() < deadline:
            time.sleep(CLOSE_POLL_S)
        self.warnings += [
            f"capture stopped after {self.close_wait_s:g} s with a TCP connection open: {c}"
            for c in self._connections.open()
        ]

    def _quiet(self) -> None:
        """Wait until no frame was written for DRAIN_S, or MAX_DRAIN_S have passed."""
        deadline = time.monotonic() + MAX_DRAIN_S
        while (idle := time.monotonic() - self._last) < DRAIN_S and time.monotonic() < deadline:
            time.sleep(DRAIN_S - idle)

    def _loss(self) -> str:
        lost = self.dropped + abs(self.delivered - self.packets)
        hint = "; use backend 'afpacket' for load" if self.backend == "scapy" else ""
        cut = f", {self.cut} cut to {FRAME_BYTES} bytes" if self.cut else ""
        return (
            f"capture {self.path}: {lost} packets lost: the kernel dropped {self.dropped} and "
            f"delivered {self.delivered}, {self.packets} were written{cut}{hint}"
        )
