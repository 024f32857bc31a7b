"""Which TCP connections seen on the bridge are still open: when a capture may end.

Rules this module keeps:
- Fed every frame the capture writes (Ethernet, optionally one 802.1Q tag, then IPv4 or
  IPv6 without extension headers, then TCP); anything else is ignored, never raises.
- A connection is the pair of its two endpoints.  It is closed when an RST went either
  way, or when each side's FIN was acknowledged by the other (an ACK at or past the FIN's
  sequence number + 1, compared modulo 2**32, RFC 9293 §3.4).  Until then it is open.
- A SYN without ACK on a connection already closed is a new connection on the same ports:
  its state starts afresh.
- ``open()`` names every open connection and what it still waits for, for the warning of
  a capture that stopped before they closed.  Safe to call from another thread than the
  one feeding frames.
"""

from __future__ import annotations

import ipaddress
import struct
import threading
from dataclasses import dataclass, field

_ETH_IPV4, _ETH_IPV6, _ETH_VLAN = 0x0800, 0x86DD, 0x8100
_TCP = 6
_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10
_TCP_HEAD = struct.Struct("!HHIIBB")
Endpoint = tuple[bytes, int]  # (packed address, port)


@dataclass
class _Connection:
    first: Endpoint  # who sent the first frame we saw (the client, if we saw its SYN)
    second: Endpoint
    fin_end: dict[Endpoint, int] = field(default_factory=dict)  # sender -> ack that covers it
    fin_acked: set[Endpoint] = field(default_factory=set)
    reset: bool = False

    @property
    def closed(self) -> bool:
        return self.reset or self.fin_acked == {self.first, self.second}

    def waiting_for(self) -> str:
        waits = []
        for end in (self.first, self.second):
            if end not in self.fin_end:
                waits.append(f"no FIN from {_shown(end)}")
            elif end not in self.fin_acked:
                waits.append(f"the FIN of {_shown(end)} not acknowledged")
        return f"{_shown(self.first)} - {_shown(self.second)}: {', '.join(waits)}"


class ConnectionTracker:
    """Open TCP connections, from the frames on the wire."""

    def __init__(self) -> None:
        self._conns: dict[frozenset[Endpoint], _Connection] = {}
        self._lock = threading.Lock()

    def see(self, frame: bytes) -> None:
        """Account for one Ethernet frame."""
        segment = _tcp_segment(frame)
        if segment is not None:
            with self._lock:
                self._segment(*segment)

    def all_closed(self) -> bool:
        with self._lock:
            return all(c.closed for c in self._conns.values())

    def open(self) -> list[str]:
        """Each open connection and what it still waits for."""
        with self._lock:
            return [c.waiting_for() for c in self._conns.values() if not c.closed]

    def _segment(self, src: Endpoint, dst: Endpoint, seq: int, ack: int, flags: int, size: int):
        key = frozenset((src, dst))
        conn = self._conns.get(key)
        if conn is None or (conn.closed and flags & (_SYN | _ACK) == _SYN):
            conn = self._conns[key] = _Connection(src, dst)
        if flags & _RST:
            conn.reset = True
        if flags & _FIN:
            conn.fin_end[src] = (seq + size + 1 + bool(flags & _SYN)) % 2**32
        end = conn.fin_end.get(dst)
        if flags & _ACK and end is not None and (ack - end) % 2**32 < 2**31:
            conn.fin_acked.add(dst)


def _tcp_segment(frame: bytes) -> tuple[Endpoint, Endpoint, int, int, int, int] | None:
    """(src, dst, seq, ack, flags, payload length) of a TCP segment, or None."""
    if len(frame) < 14:
        return None
    ethertype, offset = int.from_bytes(frame[12:14], "big"), 14
    if ethertype == _ETH_VLAN and len(frame) >= 18:
        ethertype, offset = int.from_bytes(frame[16:18], "big"), 18
    ip = memoryview(frame)[offset:]
    if ethertype == _ETH_IPV4 and len(ip) >= 20 and ip[9] == _TCP:
        head = (ip[0] & 0x0F) * 4
        total = int.from_bytes(ip[2:4], "big")
        src, dst = bytes(ip[12:16]), bytes(ip[16:20])
    elif ethertype == _ETH_IPV6 and len(ip) >= 40 and ip[6] == _TCP:
        head, total = 40, 40 + int.from_bytes(ip[4:6], "big")
        src, dst = bytes(ip[8:24]), bytes(ip[24:40])
    else:
        return None
    tcp = ip[head:]
    if len(tcp) < 20:
        return None
    sport, dport, seq, ack, data_offset, flags = _TCP_HEAD.unpack_from(tcp)
    size = max(0, total - head - (data_offset >> 4) * 4)
    return (src, sport), (dst, dport), seq, ack, flags, size


def _shown(end: Endpoint) -> str:
    addr, port = ipaddress.ip_address(end[0]), end[1]
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"
