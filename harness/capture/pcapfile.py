"""Streaming reader (and a small writer) for pcap and pcapng capture files.

Rules this module keeps:

- Streaming: the file is read in CHUNK-sized pieces; memory is bounded by CHUNK plus the
  largest single record or block (MAX_CAPLEN, MAX_BLOCK), never by the file size.
- Records come out in file order as ``Record`` tuples, numbered from 1 like tshark's
  ``frame.number``.
- Time is an ``int`` of nanoseconds since the Unix epoch: exact for every timestamp
  resolution (a float cannot hold nanoseconds at today's epoch) and cheap to subtract.
- pcap: both byte orders, micro- and nanosecond magic, and Alexey Kuznetsov's "modified
  pcap" (magic 0xa1b2cd34, as libpcap's sf-pcap.c reads it: 8 more bytes per record header,
  ifindex, protocol, packet type and a pad, skipped).  pcapng: every section (either byte
  order), per-interface link type, ``if_tsresol`` and ``if_tsoffset``; Enhanced, Simple and
  (obsolete) Packet blocks; any other block is skipped.
- The pcap header's snaplen is advisory (writers put 0, 65535, 262144 or more); what bounds
  memory is the length of each record: a captured length above MAX_CAPLEN (libpcap's own
  maximum) or a pcapng block above MAX_BLOCK is an error.
- Only the link types in LINKTYPES are accepted; another one is an error at the header or
  interface block that declares it (it could not be decoded anyway).
- ``annotations`` reads what a pcapng says about its frames, apart from them: the names of
  its Name Resolution Blocks (address -> the last name of its record, as Wireshark shows
  it), each packet's ``opt_comment`` options by frame number, and the section header's
  ``shb_userappl`` and comments.  A pcap has none of these.  ``read`` gives the names of
  each Name Resolution Block as it passes it, so a streaming reader needs no pass of its
  own for them.
- Anything else that is not a well-formed capture raises ``PcapError``: one line naming the
  file and the byte offset of the offending header, record or block.  Records before the
  fault have already been yielded, so nothing readable is lost.
- A file cut short inside its last record or block (a capture copied while it was written,
  a download cut off) is a capture all the same when the caller passes ``warnings``: every
  complete record is yielded, then ONE warning is counted naming the offset and what was
  lost, as tshark shows every complete packet then says "cut short in the middle of a
  packet".  Without ``warnings`` it is a ``PcapError`` like any other fault.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from typing import BinaryIO, NamedTuple

from harness.errors import HarnessError

LINKTYPE_NULL = 0  # BSD loopback, address family in the writer's byte order
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101  # IPv4 or IPv6, told apart by the version nibble
LINKTYPE_LOOP = 108  # OpenBSD loopback, address family in network byte order
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
LINKTYPES = frozenset(
    {
        LINKTYPE_NULL,
        LINKTYPE_ETHERNET,
        LINKTYPE_RAW,
        LINKTYPE_LOOP,
        LINKTYPE_LINUX_SLL,
        LINKTYPE_IPV4,
        LINKTYPE_IPV6,
        LINKTYPE_LINUX_SLL2,
    }
)

CHUNK = 1 << 18  # bytes read at a time: a refill briefly holds three (old, read, joined)
CUT_SHORT = "capture cut short"  # how the warning of a file cut short begins
MAX_CAPLEN = 262_144
MAX_BLOCK = 4 << 20

_PCAP_MAGIC = {  # first four bytes -> (byte order, ns per fraction unit, record header size)
    b"\xd4\xc3\xb2\xa1": ("<", 1000, 16),
    b"\xa1\xb2\xc3\xd4": (">", 1000, 16),
    b"\x4d\x3c\xb2\xa1": ("<", 1, 16),
    b"\xa1\xb2\x3c\x4d": (">", 1, 16),
    b"\x34\xcd\xb2\xa1": ("<", 1000, 24),  # modified pcap (Kuznetsov): +ifindex, protocol, type
    b"\xa1\xb2\xcd\x34": (">", 1000, 24),
}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
_PCAPNG_BOM = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}

# pcapng block types
_IDB, _OPB, _SPB, _NRB, _EPB, _SHB = 1, 2, 3, 4, 6, 0x0A0D0D0A
# pcapng interface options
_IF_TSRESOL, _IF_TSOFFSET = 9, 14

_new = tuple.__new__  # builds a NamedTuple without its Python-level __new__ (2x faster)


class PcapError(HarnessError):
    """The file is not a readable pcap/pcapng capture."""


class Record(NamedTuple):
    """One captured frame, as stored in the file."""

    number: int  # 1-based, in file order
    time: int  # nanoseconds since the Unix epoch
    linktype: int
    data: bytes  # the captured bytes (caplen of them)
    caplen: int
    origlen: int  # length on the wire
    offset: int  # byte offset of the record (pcap) or block (pcapng) in the file


Names = Callable[[dict[str, str]], None]


def read(
    path: str, warnings: Counter[str] | None = None, names: Names | None = None
) -> Iterator[Record]:
    """Yield every record of the pcap or pcapng file at *path*, streaming.

    With *warnings*, a file cut short in its last record or block ends with one warning
    counted there instead of a ``PcapError``.  With *names*, each Name Resolution Block's
    names (as ``annotations`` reads them) are given to it as the block is read, before the
    records that follow it."""
    with open(path, "rb") as f:
        source = _Source(f, str(path), warnings)
        head = source.buf[:4]
        if not head:
            raise source.error(0, "empty file, not a pcap or pcapng capture")
        if head == _PCAPNG_SHB:
            yield from _read_pcapng(source, names)
        elif head in _PCAP_MAGIC:
            yield from _read_pcap(source)
        else:
            raise source.error(0, f"not a pcap or pcapng file (magic {head.hex()})")


class _Source:
    """A file seen through a sliding buffer; ``base`` is the file offset of ``buf[0]``."""

    __slots__ = ("base", "buf", "file", "path", "warnings")

    def __init__(self, file: BinaryIO, path: str, warnings: Counter[str] | None) -> None:
        self.file = file
        self.path = path
        self.warnings = warnings
        self.base = 0
        self.buf = file.read(CHUNK)

    def refill(self, pos: int, need: int) -> bytes:
        """Drop ``buf[:pos]`` and read until *need* bytes follow, or the file ends."""
        self.base += pos
        buf = self.buf[pos:]
        if len(buf) < need:
            buf += self.file.read(max(CHUNK, need - len(buf)))
        self.buf = buf
        return buf

    def error(self, pos: int, what: str) -> PcapError:
        return PcapError(f"{self.path}: offset {self.base + pos}: {what}")

    def cut_short(self, pos: int, what: str) -> None:
        """The file ends inside the record or block at *pos*: a warning, if the caller
        takes warnings, else an error."""
        if self.warnings is None:
            raise self.error(pos, f"truncated {what}")
        self.warnings[f"{CUT_SHORT} at offset {self.base + pos}: {what}, the rest lost"] += 1


def _read_pcap(source: _Source) -> Iterator[Record]:
    buf = source.refill(0, 24)
    if len(buf) < 24:
        raise source.error(0, f"truncated pcap file header ({len(buf)} of 24 bytes)")
    order, unit, hlen = _PCAP_MAGIC[buf[:4]]
    major, linktype = struct.unpack_from(order + "H14xI", buf, 4)  # skips minor ... snaplen
    if major != 2:
        raise source.error(4, f"unsupported pcap version {major}")
    linktype &= 0x03FF_FFFF  # the upper bits may carry FCS information
    if linktype not in LINKTYPES:
        raise source.error(20, f"unsupported link type {linktype}")
    header = struct.Struct(order + "IIII").unpack_from
    number = 0
    pos, end = 24, len(buf)
    while True:
        if pos + hlen > end:
            buf = source.refill(pos, hlen)
            pos, end = 0, len(buf)
            if end == 0:
                return
            if end < hlen:
                return source.cut_short(0, f"record {number + 1}: {end} of {hlen} header bytes")
        sec, frac, caplen, origlen = header(buf, pos)
        if caplen > MAX_CAPLEN:
            raise source.error(pos, f"record length {caplen} exceeds {MAX_CAPLEN}")
        stop = pos + hlen + caplen
        if stop > end:
            buf = source.refill(pos, hlen + caplen)
            pos, end, stop = 0, len(buf), hlen + caplen
            if stop > end:
                return source.cut_short(0, f"record {number + 1}: {end - hlen} of {caplen} bytes")
        number += 1
        yield _new(
            Record,
            (
                number,
                sec * 1_000_000_000 + frac * unit,
                linktype,
                buf[pos + hlen : stop],
                caplen,
                origlen,
                source.base + pos,
            ),
        )
        pos = stop


class _Interface(NamedTuple):
    """A pcapng interface: time = (ts * mul // div) + offset, all in nanoseconds."""

    linktype: int
    snaplen: int
    mul: int
    div: int
    offset: int


def _read_pcapng(source: _Source, names: Names | None) -> Iterator[Record]:
    order = "<"
    interfaces: list[_Interface] = []
    number = 0
    buf, pos = source.buf, 0
    while True:
        if pos + 12 > len(buf):
            buf, pos = source.refill(pos, 12), 0
            if not buf:
                return
            if len(buf) < 12:
                return source.cut_short(0, f"block: {len(buf)} of 12 header bytes")
        if buf[pos : pos + 4] == _PCAPNG_SHB:
            order = _PCAPNG_BOM.get(buf[pos + 8 : pos + 12], "")
            if not order:
                raise source.error(pos, "section header without a byte-order magic")
            interfaces = []
        btype, blen = struct.unpack_from(order + "II", buf, pos)
        if blen < 12 or blen % 4 or blen > MAX_BLOCK:
            raise source.error(pos, f"bad block length {blen} (block type {btype:#x})")
        if pos + blen > len(buf):
            buf, pos = source.refill(pos, blen), 0
            if blen > len(buf):
                return source.cut_short(0, f"block: {len(buf)} of {blen} bytes")
        if struct.unpack_from(order + "I", buf, pos + blen - 4)[0] != blen:
            raise source.error(pos, "block length and trailing length differ")
        if btype in (_EPB, _SPB, _OPB):
            iface, ts, data, origlen = _packet(source, buf, pos, btype, order, interfaces)
            number += 1
            time = ts * iface.mul // iface.div + iface.offset
            yield _new(
                Record,
                (number, time, iface.linktype, data, len(data), origlen, source.base + pos),
            )
        elif btype == _SHB:
            major = struct.unpack_from(order + "H", buf, pos + 12)[0]
            if major != 1:
                raise source.error(pos, f"unsupported pcapng version {major}")
        elif btype == _IDB:
            interfaces.append(_interface(source, buf, pos, blen, order))
        elif btype == _NRB and names is not None:
            names(_name_records(buf[pos + 8 : pos + blen], order))
        pos += blen


def _packet(
    source: _Source, buf: bytes, pos: int, btype: int, order: str, interfaces: list[_Interface]
) -> tuple[_Interface, int, bytes, int]:
    """Decode an EPB, SPB or OPB at *pos*: (interface, raw timestamp, data, origlen)."""
    blen = struct.unpack_from(order + "I", buf, pos + 4)[0]
    if btype == _SPB:
        if blen < 16:
            raise source.error(pos, f"simple packet block too short ({blen} bytes)")
        ifid, ts = 0, 0
        origlen = struct.unpack_from(order + "I", buf, pos + 8)[0]
        start, caplen = 12, min(origlen, blen - 16)
        if interfaces:
            caplen = min(caplen, interfaces[0].snaplen or caplen)
    else:
        if blen < 32:
            raise source.error(pos, f"packet block too short ({blen} bytes)")
        fmt = "IIIII" if btype == _EPB else "HHIIII"
        fields = struct.unpack_from(order + fmt, buf, pos + 8)
        ifid, hi, lo, caplen, origlen = fields[0], *fields[-4:]
        ts, start = (hi << 32) | lo, 28
        if caplen > blen - 32:
            raise source.error(pos, f"captured length {caplen} overruns its block")
    if caplen > MAX_CAPLEN:
        raise source.error(pos, f"record length {caplen} exceeds {MAX_CAPLEN}")
    if ifid >= len(interfaces):
        raise source.error(pos, f"packet names undeclared interface {ifid}")
    data = buf[pos + start : pos + start + caplen]
    return interfaces[ifid], ts, data, origlen


def _interface(source: _Source, buf: bytes, pos: int, blen: int, order: str) -> _Interface:
    """Decode an Interface Description Block, including its time options."""
    if blen < 20:
        raise source.error(pos, f"interface block too short ({blen} bytes)")
    linktype, _reserved, snaplen = struct.unpack_from(order + "HHI", buf, pos + 8)
    if linktype not in LINKTYPES:
        raise source.error(pos, f"unsupported link type {linktype}")
    mul, div, offset = 1000, 1, 0  # default resolution: microseconds
    opt, stop = pos + 16, pos + blen - 4
    while opt + 4 <= stop:
        code, length = struct.unpack_from(order + "HH", buf, opt)
        if code == 0:
            break
        if opt + 4 + length > stop:
            raise source.error(pos, f"interface option {code} overruns its block")
        if code == _IF_TSRESOL and length >= 1:
            mul, div = _resolution(buf[opt + 4])
        elif code == _IF_TSOFFSET and length >= 8:
            offset = struct.unpack_from(order + "q", buf, opt + 4)[0] * 1_000_000_000
        opt += 4 + (length + 3) // 4 * 4
    return _Interface(linktype, snaplen, mul, div, offset)


class Annotations(NamedTuple):
    """What a pcapng file says besides its frames (``annotations``)."""

    names: dict[str, str]  # address (as ipaddress writes it) -> name
    comments: dict[int, tuple[str, ...]]  # frame number -> its comments
    application: str  # the first section's shb_userappl
    section_comments: tuple[str, ...]  # the first section's comments


def annotations(path: str) -> Annotations:
    """The names, packet comments and section header text of the capture at *path* (all
    empty for a pcap), reading only the blocks that hold them."""
    names: dict[str, str] = {}
    comments: dict[int, tuple[str, ...]] = {}
    section: list[tuple[int, bytes]] | None = None  # the first section header's options
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed by the with below)
    except OSError as exc:
        raise PcapError(f"{path}: cannot read: {exc.strerror or exc}") from None
    with f:
        if f.read(4) != _PCAPNG_SHB:
            return Annotations({}, {}, "", ())
        order, number, pos = "<", 0, f.seek(0)
        while head := f.read(12):
            if len(head) < 12:
                raise PcapError(f"{path}: offset {pos}: truncated block header")
            if head[:4] == _PCAPNG_SHB:
                order = _PCAPNG_BOM.get(head[8:12], "<")
            btype, blen = struct.unpack_from(order + "II", head)
            if blen < 12 or blen % 4 or blen > MAX_BLOCK:
                raise PcapError(f"{path}: offset {pos}: bad block length {blen}")
            number += btype in (_EPB, _SPB, _OPB)
            if btype in (_EPB, _NRB) or (btype == _SHB and section is None):
                block = head[8:] + f.read(blen - 12)  # from its first field on
                if len(block) < blen - 8:
                    raise PcapError(f"{path}: offset {pos}: truncated block")
                if btype == _EPB:
                    options = _block_options(block, order, _epb_options_at(block, order))
                    if notes := _texts(options, 1):
                        comments[number] = notes
                elif btype == _NRB:
                    names.update(_name_records(block, order))
                else:
                    section = _block_options(block, order, 16)
            pos += blen
            f.seek(pos)
    section = section or []
    return Annotations(names, comments, "".join(_texts(section, 4)), _texts(section, 1))


def _block_options(block: bytes, order: str, start: int) -> list[tuple[int, bytes]]:
    """The (code, value) options from *start* of a block that runs from its first field to
    its trailing length: an SHB's (at 16), an EPB's (after its padded data), an NRB's
    records (at 0: laid out as options are)."""
    options, end = [], len(block) - 4
    while start + 4 <= end:
        code, length = struct.unpack_from(order + "HH", block, start)
        if code == 0 or start + 4 + length > end:
            break
        options.append((code, block[start + 4 : start + 4 + length]))
        start += 4 + (length + 3) // 4 * 4
    return options


def _epb_options_at(block: bytes, order: str) -> int:
    """Where an EPB's options begin: after its 20 octets of fields and its padded data."""
    if len(block) < 24:
        return len(block)
    return 20 + (struct.unpack_from(order + "I", block, 12)[0] + 3) // 4 * 4


def _texts(options: list[tuple[int, bytes]], code: int) -> tuple[str, ...]:
    return tuple(v.decode("utf-8", "backslashreplace") for c, v in options if c == code)


def _name_records(block: bytes, order: str) -> dict[str, str]:
    """address -> the last name of its record, for the IPv4 and IPv6 records of an NRB
    (names that are not printable or hold a space are left out, as ``--host`` refuses)."""
    names = {}
    for kind, value in _block_options(block, order, 0):
        size = {1: 4, 2: 16}.get(kind)
        if size is None or len(value) <= size:
            continue
        address = str(ipaddress.ip_address(value[:size]))
        given = [n.decode("utf-8", "backslashreplace") for n in value[size:].split(b"\0")]
        shown = [n for n in given if n.isprintable() and n and not any(c.isspace() for c in n)]
        if shown:
            names[address] = shown[-1]
    return names


def _resolution(tsresol: int) -> tuple[int, int]:
    """(mul, div) turning a timestamp in if_tsresol units into nanoseconds."""
    if tsresol & 0x80:
        return 1_000_000_000, 1 << (tsresol & 0x7F)
    if tsresol <= 9:
        return 10 ** (9 - tsresol), 1
    return 1, 10 ** (tsresol - 9)


class PcapWriter:
    """Write a classic pcap file (for tests, benchmarks and simple captures)."""

    def __init__(
        self,
        file: BinaryIO,
        linktype: int = LINKTYPE_ETHERNET,
        *,
        nanoseconds: bool = False,
        byteorder: str = "<",
        snaplen: int = MAX_CAPLEN,
    ) -> None:
        self._file = file
        self._unit = 1 if nanoseconds else 1000
        self._header = struct.Struct(byteorder + "IIII")
        magic = 0xA1B23C4D if nanoseconds else 0xA1B2C3D4
        file.write(struct.pack(byteorder + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype))

    def write(self, time: int, data: bytes, origlen: int | None = None) -> None:
        """Append one frame; *time* is in nanoseconds since the epoch."""
        sec, ns = divmod(time, 1_000_000_000)
        header = self._header.pack(sec, ns // self._unit, len(data), origlen or len(data))
        self._file.write(header + data)
