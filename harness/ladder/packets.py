"""Decode captured frames into IP/TCP/UDP packets.

Rules this module keeps:

- Hand-written decoding with precompiled ``struct`` formats at fixed offsets: no object per
  layer, one ``Packet`` tuple per frame.
- Packet content never raises: a frame whose headers are truncated or inconsistent is skipped
  and counted in ``Decoder.warnings[reason]``; a sound frame this module does not decode
  (ARP, ICMP, IP fragments, ...) is skipped and counted in ``Decoder.ignored[reason]``.
- Link types: those of ``harness.capture.pcapfile.LINKTYPES`` (Ethernet with any number of
  802.1Q/802.1ad tags, Linux SLL and SLL2, raw IP, BSD null and OpenBSD loop).
- The payload ends where the IP header says, so Ethernet padding and FCS never leak into it.
  An IP packet cut short by the snaplen is a warning ("snapped"), not a short payload: a
  short payload would misplace every sequence number after it.
- Tunnels are opened: IPv4 or IPv6 inside IPv4 or IPv6 (IP protocols 4 and 41, RFC 2003,
  RFC 4213) and GRE (47, RFC 2784 with RFC 2890's key and sequence number) carrying IPv4,
  IPv6 or Ethernet; the packet is the innermost one, up to MAX_TUNNELS deep (deeper is
  ignored: "tunnel depth").  GRE with routing (RFC 1701) or version 1 (PPTP) is ignored.
  The hot path (TCP or UDP right inside the outer IP header) pays nothing for it.
- IP fragments are not reassembled: every fragment, first or not, is ignored
  ("ip-fragment").  SMTP's TCP sets DF and practically never fragments.
- IPv6 extension headers (hop-by-hop, routing, destination options, AH, atomic fragment)
  are skipped; ESP and anything after it are ignored.
- Addresses stay packed (4 or 16 bytes): ``format_addr`` turns them into text when shown.
  Checksums are not verified: offloading makes them wrong in most local captures.
- ``decode_all`` reads the commonest frame (Ethernet, an option-less IPv4 header, TCP) with
  one ``struct`` call and only the checks ``decode`` makes of it; any other frame, or one
  those checks refuse, goes through ``decode``, so the packet, the warning or the count is
  the one ``decode`` gives.  With ``keep``, a TCP packet of a flow it refuses comes out as
  its record, undecoded (a reader that does not follow the flow needs only its number and
  time).
"""

from __future__ import annotations

import socket
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from harness.capture import pcapfile
from harness.capture.pcapfile import Record

TCP = 6
UDP = 17

FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")  # bit 0 first

_ETH_IPV4, _ETH_IPV6, _ETH_BRIDGED = 0x0800, 0x86DD, 0x6558
MAX_TUNNELS = 4
_IP_IN_IP = {4: pcapfile.LINKTYPE_IPV4, 41: pcapfile.LINKTYPE_IPV6}  # protocol -> inner
_GRE = 47
_GRE_INNER = {
    _ETH_IPV4: pcapfile.LINKTYPE_IPV4,
    _ETH_IPV6: pcapfile.LINKTYPE_IPV6,
    _ETH_BRIDGED: pcapfile.LINKTYPE_ETHERNET,
}
_VLAN_TAGS = (0x8100, 0x88A8, 0x9100)
_AF_INET6 = (10, 24, 28, 30)  # Linux, NetBSD/OpenBSD, FreeBSD, macOS
_IPV6_EXTENSIONS = (0, 43, 44, 51, 60)  # hop-by-hop, routing, fragment, AH, dest. options

_U16 = struct.Struct("!H").unpack_from
_U32_LE = struct.Struct("<I").unpack_from
_U32_BE = struct.Struct("!I").unpack_from
_IPV4 = struct.Struct("!BxHxxHxB").unpack_from  # version/IHL, total length, fragment, proto
_IPV6 = struct.Struct("!4xHB").unpack_from  # payload length, next header
_TCP = struct.Struct("!HHIIHH").unpack_from  # ports, seq, ack, offset/flags, window
_UDP = struct.Struct("!HHH").unpack_from  # ports, length
# Ethernet type, IPv4 version/IHL, total length, fragment, proto, addresses; TCP's fields
_ETH_IPV4_TCP = struct.Struct("!12xHBxHxxHxBxx4s4sHHIIHH").unpack_from
_ETH_IPV4_TCP_SIZE = 50  # the bytes it reads: 14 of Ethernet, 20 of IPv4, 16 of TCP
_L4 = 34  # where TCP starts in such a frame

_new = tuple.__new__  # builds a NamedTuple without its Python-level __new__ (2x faster)


class Packet(NamedTuple):
    """One decoded TCP or UDP packet (for UDP, seq/ack/flags/window are 0)."""

    number: int
    time: int  # nanoseconds since the Unix epoch
    src: bytes  # packed address, 4 or 16 bytes
    dst: bytes
    proto: int  # TCP or UDP
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int  # the TCP flag byte: FIN SYN RST PSH ACK URG ECE CWR
    window: int
    payload: bytes


Keep = Callable[[bytes, bytes, int, int], bool]  # of a TCP packet's src, dst, sport, dport


class _Malformed(Exception):
    """The frame's headers contradict themselves or are cut short."""


class _Ignored(Exception):
    """A sound frame this module does not decode."""


def flag_names(flags: int) -> str:
    """The TCP flag byte as text: ``SYN+RST+ACK``."""
    return "+".join(name for bit, name in enumerate(FLAG_NAMES) if flags >> bit & 1)


def format_addr(addr: bytes) -> str:
    """Text form of a packed IPv4 or IPv6 address."""
    return socket.inet_ntop(socket.AF_INET if len(addr) == 4 else socket.AF_INET6, addr)


class Decoder:
    """Turns records into packets, keeping counts of what it skipped and why."""

    __slots__ = ("_depth", "ignored", "warnings")

    def __init__(self) -> None:
        self.warnings: Counter[str] = Counter()
        self.ignored: Counter[str] = Counter()
        self._depth = 0  # tunnels opened around the record being decoded

    def decode(self, record: Record) -> Packet | None:
        """The TCP/UDP packet in *record*, or None (and a count) if there is none."""
        data = record[3]
        try:
            ethertype, off = _LINKS[record[2]](data)
            if ethertype == _ETH_IPV4:
                proto, src, dst, l4, end = _ipv4(data, off)
            elif ethertype == _ETH_IPV6:
                proto, src, dst, l4, end = _ipv6(data, off)
            else:
                raise _Ignored(f"ethertype {ethertype:#06x}")
            if proto == TCP:
                sport, dport, seq, ack, offflags, window = _TCP(data, l4)
                start = l4 + (offflags >> 12) * 4
                if start < l4 + 20 or start > end:
                    raise _Malformed("bad tcp header length")
                fields = (seq, ack, offflags & 0xFF, window)
            elif proto == UDP:
                sport, dport, length = _UDP(data, l4)
                if length < 8 or l4 + length > end:
                    raise _Malformed("bad udp length")
                start, end, fields = l4 + 8, l4 + length, (0, 0, 0, 0)
            elif proto in _IP_IN_IP or proto == _GRE:
                return self._tunnel(record, proto, data[l4:end])
            else:
                raise _Ignored(f"ip protocol {proto}")
        except _Ignored as exc:
            self.ignored[exc.args[0]] += 1
            return None
        except _Malformed as exc:
            self.warnings[exc.args[0]] += 1
            return None
        except (struct.error, IndexError):
            self.warnings["truncated"] += 1
            return None
        return _new(
            Packet, (record[0], record[1], src, dst, proto, sport, dport, *fields, data[start:end])
        )

    def _tunnel(self, record: Record, proto: int, inner: bytes) -> Packet | None:
        """The packet inside a tunnel's payload *inner* (IP in IP, or GRE)."""
        if self._depth == MAX_TUNNELS:
            raise _Ignored("tunnel depth")
        if proto == _GRE:
            linktype, inner = _gre(inner)
        else:
            linktype = _IP_IN_IP[proto]
        self._depth += 1
        try:
            return self.decode(record._replace(linktype=linktype, data=inner))
        finally:
            self._depth -= 1

    def decode_all(
        self, records: Iterable[Record], keep: Keep | None = None
    ) -> Iterator[Packet | Record]:
        """The packets among *records*, in order; with *keep*, a TCP packet whose
        (src, dst, sport, dport) it refuses comes out as its record."""
        decode, ethernet = self.decode, pcapfile.LINKTYPE_ETHERNET
        for record in records:
            data = record[3]
            if record[2] == ethernet and len(data) >= _ETH_IPV4_TCP_SIZE:
                (ethertype, vihl, total, fragment, proto, src, dst, sport, dport, seq, ack, flags,
                 window) = _ETH_IPV4_TCP(data, 0)  # fmt: skip
                end = _L4 - 20 + total if total else len(data)
                start = _L4 + (flags >> 12) * 4
                if (
                    ethertype == _ETH_IPV4
                    and vihl == 0x45
                    and proto == TCP
                    and not fragment & 0x3FFF
                    and _L4 + 20 <= start <= end <= len(data)
                ):
                    if keep is not None and not keep(src, dst, sport, dport):
                        yield record
                        continue
                    yield _new(
                        Packet,
                        (record[0], record[1], src, dst, TCP, sport, dport, seq, ack, flags & 0xFF,
                         window, data[start:end]),
                    )  # fmt: skip
                    continue
            packet = decode(record)
            if packet is None:
                continue
            if keep is not None and packet[4] == TCP and not keep(*packet[2:4], *packet[5:7]):
                yield record
            else:
                yield packet


def _ipv4(data: bytes, off: int) -> tuple[int, bytes, bytes, int, int]:
    """(protocol, src, dst, transport offset, end of IP payload)."""
    vihl, total, fragment, proto = _IPV4(data, off)
    l4 = off + (vihl & 0x0F) * 4
    end = off + total if total else len(data)  # 0: TSO, the length was left to the NIC
    if vihl >> 4 != 4 or l4 < off + 20 or end < l4:
        raise _Malformed("bad ipv4 header")
    if end > len(data):
        raise _Malformed("snapped")
    if fragment & 0x3FFF:
        raise _Ignored("ip-fragment")
    return proto, data[off + 12 : off + 16], data[off + 16 : off + 20], l4, end


def _ipv6(data: bytes, off: int) -> tuple[int, bytes, bytes, int, int]:
    """(protocol, src, dst, transport offset, end of IP payload)."""
    length, proto = _IPV6(data, off)
    l4 = off + 40
    end = l4 + length if length else len(data)  # 0: jumbogram or TSO
    if data[off] >> 4 != 6:
        raise _Malformed("bad ipv6 header")
    if end > len(data):
        raise _Malformed("snapped")
    while proto in _IPV6_EXTENSIONS:
        if proto == 44:
            if _U16(data, l4 + 2)[0] & 0xFFF9:  # offset or more-fragments: a real fragment
                raise _Ignored("ip-fragment")
            size = 8
        elif proto == 51:
            size = (data[l4 + 1] + 2) * 4
        else:
            size = (data[l4 + 1] + 1) * 8
        proto = data[l4]
        l4 += size
        if l4 > end:
            raise _Malformed("bad ipv6 extension header")
    return proto, data[off + 8 : off + 24], data[off + 24 : off + 40], l4, end


def _gre(data: bytes) -> tuple[int, bytes]:
    """(link type, payload) of a GRE packet: RFC 2784's header, RFC 2890's key and
    sequence number; checksums are not verified (as for every other layer)."""
    flags, ethertype = _U16(data, 0)[0], _U16(data, 2)[0]
    if flags & 0x4007:  # routing present (RFC 1701), or a version other than 0 (PPTP's 1)
        raise _Ignored("gre version or routing")
    start = 4 + 4 * (bool(flags & 0x8000) + bool(flags & 0x2000) + bool(flags & 0x1000))
    if start > len(data):
        raise _Malformed("bad gre header")
    linktype = _GRE_INNER.get(ethertype)
    if linktype is None:
        raise _Ignored(f"gre protocol {ethertype:#06x}")
    return linktype, data[start:]


def _ethernet(data: bytes) -> tuple[int, int]:
    ethertype, off = _U16(data, 12)[0], 14
    while ethertype in _VLAN_TAGS:
        ethertype, off = _U16(data, off + 2)[0], off + 4
    return ethertype, off


def _linux_sll(data: bytes) -> tuple[int, int]:
    return _U16(data, 14)[0], 16


def _linux_sll2(data: bytes) -> tuple[int, int]:
    return _U16(data, 0)[0], 20


def _raw(data: bytes) -> tuple[int, int]:
    version = data[0] >> 4
    if version == 4:
        return _ETH_IPV4, 0
    if version == 6:
        return _ETH_IPV6, 0
    raise _Malformed(f"ip version {version}")


def _null(data: bytes) -> tuple[int, int]:
    family = _U32_LE(data, 0)[0]
    if family > 0xFFFF:  # written on a big-endian machine
        family = _U32_BE(data, 0)[0]
    return _family(family), 4


def _loop(data: bytes) -> tuple[int, int]:
    return _family(_U32_BE(data, 0)[0]), 4


def _family(family: int) -> int:
    if family == 2:
        return _ETH_IPV4
    if family in _AF_INET6:
        return _ETH_IPV6
    raise _Ignored(f"address family {family}")


_LINKS: dict[int, Callable[[bytes], tuple[int, int]]] = {
    pcapfile.LINKTYPE_NULL: _null,
    pcapfile.LINKTYPE_ETHERNET: _ethernet,
    pcapfile.LINKTYPE_RAW: _raw,
    pcapfile.LINKTYPE_LOOP: _loop,
    pcapfile.LINKTYPE_LINUX_SLL: _linux_sll,
    pcapfile.LINKTYPE_IPV4: lambda data: (_ETH_IPV4, 0),
    pcapfile.LINKTYPE_IPV6: lambda data: (_ETH_IPV6, 0),
    pcapfile.LINKTYPE_LINUX_SLL2: _linux_sll2,
}
assert _LINKS.keys() == pcapfile.LINKTYPES
