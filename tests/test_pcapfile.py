"""The pcap/pcapng reader and the packet decoder: formats, link types, bad input, corpus."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ladder_pcaps import CORPUS
from scapy.layers.inet import GRE, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.packet import Raw

from harness.capture import pcapfile
from harness.capture.pcapfile import PcapError, PcapWriter, read
from harness.errors import HarnessError
from harness.ladder.packets import ACK, MAX_TUNNELS, PSH, Decoder, format_addr
from harness.ladder.tcpstream import Reassembler

T0 = 1_700_000_000_123_456_789  # ns; not a whole microsecond, on purpose

IP4_TCP = bytes(
    IP(src="192.0.2.1", dst="198.51.100.25", flags="DF")
    / TCP(sport=40000, dport=25, seq=1000, ack=2000, flags="PA", window=501)
    / Raw(b"EHLO client.example\r\n")
)
IP6_TCP = bytes(
    IPv6(src="2001:db8::1", dst="2001:db8::25")
    / TCP(sport=40000, dport=25, seq=1000, ack=2000, flags="PA", window=501)
    / Raw(b"EHLO client.example\r\n")
)
ETH = bytes.fromhex("020000000002 020000000001")


def eth(ip: bytes, *tags: int) -> bytes:
    """An Ethernet frame around *ip*, with VLAN tags of the given TPIDs."""
    vlans = b"".join(struct.pack("!HH", tpid, 100 + i) for i, tpid in enumerate(tags))
    ethertype = b"\x08\x00" if ip[0] >> 4 == 4 else b"\x86\xdd"
    return ETH + vlans + ethertype + ip


def write_pcap(path: Path, frames: list[bytes], linktype: int = 1, **options) -> Path:
    with open(path, "wb") as f:
        writer = PcapWriter(f, linktype, **options)
        for i, frame in enumerate(frames):
            writer.write(T0 + i * 1000, frame)
    return path


def block(order: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    length = len(body) + 12
    return struct.pack(order + "II", btype, length) + body + struct.pack(order + "I", length)


def shb(order: str) -> bytes:
    return block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(order: str, linktype: int, tsresol: int | None = None, tsoffset: int = 0) -> bytes:
    options = b""
    if tsresol is not None:
        options += struct.pack(order + "HHB3x", 9, 1, tsresol)
    if tsoffset:
        options += struct.pack(order + "HHq", 14, 8, tsoffset)
    options += struct.pack(order + "HH", 0, 0) if options else b""
    return block(order, 1, struct.pack(order + "HHI", linktype, 0, 0) + options)


def epb(order: str, ifid: int, ts: int, data: bytes) -> bytes:
    head = struct.pack(order + "IIIII", ifid, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data))
    return block(order, 6, head + data)


def only(path: Path):
    """The single packet decoded from *path*, and the decoder."""
    decoder = Decoder()
    packets = list(decoder.decode_all(read(str(path))))
    assert len(packets) == 1, (decoder.warnings, decoder.ignored)
    return packets[0]


def assert_smtp_packet(packet, ipv6: bool = False) -> None:
    assert format_addr(packet.src) == ("2001:db8::1" if ipv6 else "192.0.2.1")
    assert format_addr(packet.dst) == ("2001:db8::25" if ipv6 else "198.51.100.25")
    assert (packet.proto, packet.sport, packet.dport) == (6, 40000, 25)
    assert (packet.seq, packet.ack, packet.flags, packet.window) == (1000, 2000, PSH | ACK, 501)
    assert packet.payload == b"EHLO client.example\r\n"


# --- pcap and pcapng


@pytest.mark.parametrize("byteorder", ["<", ">"])
@pytest.mark.parametrize("nanoseconds", [False, True])
def test_pcap_byte_orders_and_resolutions(tmp_path, byteorder, nanoseconds):
    frames = [eth(IP4_TCP), eth(IP4_TCP)[:30], b"x" * 7]
    path = write_pcap(tmp_path / "t.pcap", frames, byteorder=byteorder, nanoseconds=nanoseconds)
    records = list(read(str(path)))
    assert [r.number for r in records] == [1, 2, 3]
    assert [r.data for r in records] == frames
    second = 24 + 16 + len(frames[0])
    assert [r.offset for r in records] == [24, second, second + 16 + 30]
    expected = T0 if nanoseconds else T0 // 1000 * 1000
    assert records[0].time == expected and records[1].time == expected + 1000
    assert (records[0].linktype, records[0].caplen, records[0].origlen) == (1, 75, 75)
    assert_smtp_packet(only(write_pcap(tmp_path / "one.pcap", frames[:1], byteorder=byteorder)))


@pytest.mark.parametrize("order", ["<", ">"])
def test_pcapng_blocks_interfaces_and_sections(tmp_path, order):
    other = ">" if order == "<" else "<"
    simple = struct.pack(order + "I", len(IP4_TCP)) + IP4_TCP
    obsolete = struct.pack(order + "HHIIII", 1, 0, 0, 5_000_000, len(IP6_TCP), len(IP6_TCP))
    data = b"".join(
        [
            shb(order),
            idb(order, 101),  # microseconds (the default)
            idb(order, 229, tsresol=9, tsoffset=10),  # nanoseconds, +10 s
            block(order, 0xBAD, b"an unknown block is skipped"),
            epb(order, 0, T0 // 1000, IP4_TCP),
            epb(order, 1, T0, IP6_TCP),
            block(order, 3, simple),
            block(order, 2, obsolete + IP6_TCP),
            shb(other),  # a new section: interfaces start again, in the other byte order
            idb(other, 1, tsresol=0x80 | 10),  # 2**-10 s
            epb(other, 0, 3 << 10, eth(IP4_TCP)),
        ]
    )
    path = tmp_path / "t.pcapng"
    path.write_bytes(data)
    records = list(read(str(path)))
    assert [r.linktype for r in records] == [101, 229, 101, 229, 1]
    assert [r.time for r in records] == [
        T0 // 1000 * 1000,
        T0 + 10_000_000_000,
        0,
        5_000_000 + 10_000_000_000,
        3_000_000_000,
    ]
    decoder = Decoder()
    packets = [decoder.decode(r) for r in records]
    for packet in packets:
        assert_smtp_packet(packet, ipv6=len(packet.src) == 16)
    assert [r.number for r in records] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_modified_pcap_records_have_24_byte_headers(tmp_path, byteorder):
    """Magic 0xa1b2cd34 (Kuznetsov's patched libpcap): each record header has ifindex,
    protocol, pkt_type and a pad after the usual 16 bytes (libpcap sf-pcap.c, tshark reads
    it as "modified libpcap"); refused as "not a pcap" before."""
    frames = [eth(IP4_TCP), eth(IP6_TCP)]
    head = struct.pack(byteorder + "IHHiIII", 0xA1B2CD34, 2, 4, 0, 0, 65535, 1)
    body = b"".join(
        struct.pack(byteorder + "IIIIiHBx", 1_700_000_000, i, len(f), len(f), 2, 0x0800, 0) + f
        for i, f in enumerate(frames)
    )
    path = tmp_path / "modified.pcap"
    path.write_bytes(head + body)
    records = list(read(str(path)))
    assert [r.data for r in records] == frames
    assert [r.time for r in records] == [1_700_000_000 * 10**9, 1_700_000_000 * 10**9 + 1000]
    assert [r.offset for r in records] == [24, 24 + 24 + len(frames[0])]


CUTS = {  # where the file ends -> the warning
    "in a record's data": (-10, "offset 206: record 3: 65 of 75 bytes"),
    "in a record header": (-(75 + 16 - 6), "offset 206: record 3: 6 of 16 header bytes"),
}


@pytest.mark.parametrize("where", sorted(CUTS))
def test_a_capture_cut_short_keeps_every_complete_record_and_warns_once(tmp_path, where):
    cut, what = CUTS[where]
    path = write_pcap(tmp_path / "t.pcap", [eth(IP4_TCP)] * 3)
    path.write_bytes(path.read_bytes()[:cut])
    warnings: Counter[str] = Counter()
    records = list(read(str(path), warnings))
    assert [r.number for r in records] == [1, 2]
    assert warnings == {f"capture cut short at {what}, the rest lost": 1}


def test_a_pcapng_cut_short_keeps_every_complete_block_and_warns_once(tmp_path):
    frames = [eth(IP4_TCP), eth(IP6_TCP)]
    data = shb("<") + idb("<", 1) + b"".join(epb("<", 0, i, f) for i, f in enumerate(frames))
    path = tmp_path / "t.pcapng"
    path.write_bytes(data[:-20])
    warnings: Counter[str] = Counter()
    assert [r.data for r in read(str(path), warnings)] == frames[:1]
    what = "offset 156: block: 108 of 128 bytes"
    assert warnings == {f"capture cut short at {what}, the rest lost": 1}


def test_not_a_capture_is_still_an_error_with_warnings(tmp_path):
    path = tmp_path / "junk.pcap"
    path.write_bytes(b"GIF89a....")
    with pytest.raises(PcapError, match="offset 0: not a pcap"):
        list(read(str(path), Counter()))


def test_pcapng_corpus_file_matches_its_pcap_peer():
    records = list(read(str(CORPUS / "smtp-bdat-cmd-invalid.pcapng")))
    assert len(records) == 66 and {r.linktype for r in records} == {1}


@pytest.mark.parametrize("chunk", [5, 64, 1000])
def test_records_across_chunk_boundaries(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(pcapfile, "CHUNK", chunk)
    frames = [eth(IP4_TCP)[: 20 + i * 7] for i in range(40)]
    assert [r.data for r in read(str(write_pcap(tmp_path / "t.pcap", frames)))] == frames
    ng = tmp_path / "t.pcapng"
    ng.write_bytes(
        shb("<") + idb("<", 1) + b"".join(epb("<", 0, i, f) for i, f in enumerate(frames))
    )
    assert [r.data for r in read(str(ng))] == frames


# --- bad files: one line naming the file and the offset


def _bad_pcapng_block(order: str = "<") -> bytes:
    return shb(order) + idb(order, 1)


BAD_FILES = {
    "empty": (b"", 0, "empty file"),
    "not-a-capture": (b"GIF89a....", 0, "not a pcap or pcapng file"),
    "short-header": (b"\xd4\xc3\xb2\xa1\x02\x00", 0, "truncated pcap file header"),
    "bad-version": (
        struct.pack("<IHHiIII", 0xA1B2C3D4, 3, 0, 0, 0, 65535, 1),
        4,
        "unsupported pcap version 3",
    ),
    "bad-linktype": (
        struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 147),
        20,
        "unsupported link type 147",
    ),
    "short-record-header": (
        struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + b"\0" * 10,
        24,
        "truncated record 1: 10 of 16 header bytes",
    ),
    "short-record": (
        struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
        + struct.pack("<IIII", 1, 0, 100, 100)
        + b"x" * 60,
        24,
        "truncated record 1: 60 of 100 bytes",
    ),
    "huge-record": (
        struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
        + struct.pack("<IIII", 1, 0, 10**9, 10**9),
        24,
        "record length 1000000000 exceeds 262144",
    ),
    "ng-no-bom": (b"\x0a\x0d\x0d\x0a" + b"\x1c\0\0\0" + b"\0" * 20, 0, "byte-order magic"),
    "ng-bad-length": (
        _bad_pcapng_block() + struct.pack("<III", 6, 13, 0),
        48,
        "bad block length 13",
    ),
    "ng-trailer": (
        _bad_pcapng_block() + struct.pack("<III", 6, 12, 16),
        48,
        "trailing length differ",
    ),
    "ng-short-block": (
        _bad_pcapng_block() + struct.pack("<II", 6, 400) + b"\0" * 8,
        48,
        "truncated block",
    ),
    "ng-interface": (_bad_pcapng_block() + epb("<", 3, 0, b"abc"), 48, "undeclared interface 3"),
    "ng-linktype": (shb("<") + idb("<", 147), 28, "unsupported link type 147"),
    "ng-caplen": (
        _bad_pcapng_block() + block("<", 6, struct.pack("<IIIII", 0, 0, 0, 999, 999) + b"abcd"),
        48,
        "captured length 999 overruns its block",
    ),
    "ng-version": (
        block("<", 0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 2, 0, -1)),
        0,
        "version 2",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_input_is_one_line_with_file_and_offset(tmp_path, name):
    data, offset, what = BAD_FILES[name]
    path = tmp_path / f"{name}.pcap"
    path.write_bytes(data)
    with pytest.raises(PcapError) as caught:
        list(read(str(path)))
    message = str(caught.value)
    assert isinstance(caught.value, HarnessError)
    assert "\n" not in message
    assert message.startswith(f"{path}: offset {offset}: ")
    assert what in message


def test_records_before_a_fault_are_yielded(tmp_path):
    path = write_pcap(tmp_path / "t.pcap", [eth(IP4_TCP)] * 3)
    path.write_bytes(path.read_bytes()[:-10])
    got = []
    with pytest.raises(PcapError, match="truncated record"):
        got.extend(read(str(path)))
    assert len(got) == 2


# --- link types and IP


def _null(family: int, order: str) -> bytes:
    return struct.pack(order + "I", family)


LINKS = {
    "ethernet": (1, lambda ip: eth(ip)),
    "vlan": (1, lambda ip: eth(ip, 0x8100)),
    "qinq": (1, lambda ip: eth(ip, 0x88A8, 0x8100)),
    "null-le": (0, lambda ip: _null(2 if ip[0] >> 4 == 4 else 30, "<") + ip),
    "null-be": (0, lambda ip: _null(2 if ip[0] >> 4 == 4 else 28, ">") + ip),
    "loop": (108, lambda ip: _null(2 if ip[0] >> 4 == 4 else 24, ">") + ip),
    "raw": (101, lambda ip: ip),
    "ipv4-or-6": (None, lambda ip: ip),
    "sll": (113, lambda ip: bytes(14) + (b"\x08\x00" if ip[0] >> 4 == 4 else b"\x86\xdd") + ip),
    "sll2": (276, lambda ip: (b"\x08\x00" if ip[0] >> 4 == 4 else b"\x86\xdd") + bytes(18) + ip),
}


@pytest.mark.parametrize("link", sorted(LINKS))
@pytest.mark.parametrize("ipv6", [False, True])
def test_every_linktype(tmp_path, link, ipv6):
    linktype, frame = LINKS[link]
    if linktype is None:
        linktype = 229 if ipv6 else 228
    path = write_pcap(tmp_path / "t.pcap", [frame(IP6_TCP if ipv6 else IP4_TCP)], linktype)
    assert_smtp_packet(only(path), ipv6=ipv6)


def test_ipv4_options_padding_and_udp(tmp_path):
    with_options = bytes(
        IP(src="192.0.2.1", dst="198.51.100.25", options=b"\x01\x01\x01\x00")
        / TCP(sport=40000, dport=25, seq=1000, ack=2000, flags="PA", window=501)
        / Raw(b"EHLO client.example\r\n")
    )
    assert_smtp_packet(only(write_pcap(tmp_path / "a.pcap", [eth(with_options) + b"\0" * 6])))
    dns = bytes(IP(src="192.0.2.1", dst="192.0.2.53") / UDP(sport=5353, dport=53) / Raw(b"q"))
    packet = only(write_pcap(tmp_path / "b.pcap", [eth(dns) + b"pad!"]))
    assert (packet.proto, packet.sport, packet.dport, packet.payload) == (17, 5353, 53, b"q")


def test_ipv6_extension_headers_are_skipped(tmp_path):
    tcp = TCP(sport=40000, dport=25, seq=1000, ack=2000, flags="PA", window=501)
    ip = IPv6(src="2001:db8::1", dst="2001:db8::25") / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
    frame = eth(bytes(ip / tcp / Raw(b"EHLO client.example\r\n")))
    assert_smtp_packet(only(write_pcap(tmp_path / "t.pcap", [frame])), ipv6=True)


def test_fragments_and_other_protocols_are_ignored_not_warned():
    fragments = [
        bytes(IP(src="192.0.2.1", dst="192.0.2.2", flags="MF") / TCP() / Raw(b"x" * 16)),
        bytes(IP(src="192.0.2.1", dst="192.0.2.2", frag=3, proto=6) / Raw(b"x" * 16)),
        bytes(IPv6() / IPv6ExtHdrFragment(offset=5) / Raw(b"x" * 16)),
        bytes(IP(src="192.0.2.1", dst="192.0.2.2", proto=1) / Raw(b"icmp")),
    ]
    arp = ETH + b"\x08\x06" + bytes(28)
    decoder = Decoder()
    for i, frame in enumerate([*map(eth, fragments), arp]):
        assert decoder.decode(pcapfile.Record(i, 0, 1, frame, 0, 0, 0)) is None
    assert decoder.ignored == {"ip-fragment": 3, "ip protocol 1": 1, "ethertype 0x0806": 1}
    assert not decoder.warnings


OUTER = IP(src="198.51.100.1", dst="198.51.100.2")


@pytest.mark.parametrize(
    "tunnel",
    [
        OUTER / IP(IP4_TCP),  # IPv4 in IPv4, protocol 4 (RFC 2003)
        OUTER / IPv6(IP6_TCP),  # IPv6 in IPv4, protocol 41 (RFC 4213)
        IPv6(src="2001:db8::a", dst="2001:db8::b") / IP(IP4_TCP),
        OUTER / GRE() / IP(IP4_TCP),  # RFC 2784
        OUTER / GRE(key_present=1, key=7, seqnum_present=1, sequence_number=9) / IPv6(IP6_TCP),
        OUTER / GRE(chksum_present=1) / IP(IP4_TCP),
        OUTER / GRE(proto=0x6558) / Raw(eth(IP4_TCP)),  # transparent Ethernet bridging
        OUTER / GRE() / OUTER / IP(IP4_TCP),  # nested
    ],
    ids=["ipip", "6in4", "4in6", "gre", "gre-key-seq", "gre-checksum", "gre-ether", "nested"],
)
def test_tunnels_are_opened(tmp_path, tunnel):
    packet = only(write_pcap(tmp_path / "t.pcap", [eth(bytes(tunnel))]))
    assert_smtp_packet(packet, ipv6=len(packet.src) == 16)


def _nested(depth: int) -> IP:
    frame = IP(IP4_TCP)
    for _ in range(depth):
        frame = OUTER / frame
    return frame


def test_tunnels_are_opened_up_to_max_tunnels_deep(tmp_path):
    assert_smtp_packet(only(write_pcap(tmp_path / "t.pcap", [eth(bytes(_nested(MAX_TUNNELS)))])))


def test_tunnels_the_decoder_does_not_open_are_counted():
    frames = {
        "gre version or routing": OUTER / GRE(version=1) / IP(IP4_TCP),
        "gre protocol 0x880b": OUTER / GRE(proto=0x880B) / Raw(b"ppp!"),
        "tunnel depth": _nested(MAX_TUNNELS + 1),
    }
    decoder = Decoder()
    for frame in frames.values():
        assert decoder.decode(pcapfile.Record(1, 0, 1, eth(bytes(frame)), 0, 0, 0)) is None
    assert decoder.ignored == dict.fromkeys(frames, 1)
    short = IP(src="198.51.100.1", dst="198.51.100.2", proto=47) / Raw(b"\x20\x00\x08\x00")
    assert decoder.decode(pcapfile.Record(1, 0, 1, eth(bytes(short)), 0, 0, 0)) is None  # no key
    assert decoder.warnings == {"bad gre header": 1}


BROKEN = {
    "short ethernet": (ETH, "truncated"),
    "short ip": (eth(IP4_TCP[:8]), "truncated"),
    "ihl 3": (eth(b"\x43" + IP4_TCP[1:]), "bad ipv4 header"),
    "total < ihl": (eth(IP4_TCP[:2] + b"\x00\x10" + IP4_TCP[4:]), "bad ipv4 header"),
    "snapped": (eth(IP4_TCP[:50]), "snapped"),
    "tcp offset 2": (eth(IP4_TCP[:32] + b"\x20" + IP4_TCP[33:]), "bad tcp header length"),
    "tcp offset 15": (eth(IP4_TCP[:32] + b"\xf0" + IP4_TCP[33:]), "bad tcp header length"),
    "udp length": (eth(bytes(IP() / UDP(len=4) / Raw(b"abcd"))), "bad udp length"),
    "raw version 5": (b"\x50" + IP4_TCP[1:], "ip version 5"),
    "ipv6 in v4 frame": (ETH + b"\x08\x00" + IP6_TCP, "bad ipv4 header"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_packets_are_counted_not_raised(name):
    frame, reason = BROKEN[name]
    linktype = 101 if name.startswith("raw") else 1
    decoder = Decoder()
    assert decoder.decode(pcapfile.Record(1, 0, linktype, frame, 0, 0, 0)) is None
    assert decoder.warnings == {reason: 1}


# --- the foreign corpus, against tshark


def _tshark_count(path: Path) -> int:
    out = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.number"],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    return len(out.split())


@pytest.mark.skipif(not shutil.which("tshark"), reason="tshark not installed")
@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.pcap*")), ids=lambda p: p.name)
def test_corpus_is_read_like_tshark(path):
    decoder = Decoder()
    records = list(read(str(path)))
    packets = list(decoder.decode_all(records))
    assert len(records) == _tshark_count(path)
    assert not decoder.warnings
    assert len(packets) + sum(decoder.ignored.values()) == len(records)


# --- fuzz: bad bytes give PcapError or clean results, nothing else

_SEEDS = [
    (CORPUS / "smtp-bdat-gap.pcap").read_bytes()[:1500],
    (CORPUS / "smtp-bdat-cmd-invalid.pcapng").read_bytes()[:1500],
]


def _read_all(data: bytes, tmp: Path) -> None:
    tmp.write_bytes(data)
    decoder, reassembler = Decoder(), Reassembler()
    try:
        for record in read(str(tmp)):
            packet = decoder.decode(record)
            if packet is not None:
                reassembler.feed(packet)
    except PcapError as exc:
        assert "\n" not in str(exc)
    reassembler.flush()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.sampled_from(_SEEDS),
    edits=st.lists(st.tuples(st.integers(0, 1499), st.integers(0, 255)), max_size=12),
    cut=st.integers(0, 1500),
)
def test_fuzz_mutated_captures(tmp_path, seed, edits, cut):
    data = bytearray(seed)
    for position, value in edits:
        data[position % len(data)] = value
    _read_all(bytes(data[:cut] if cut < 1500 else data), tmp_path / "fuzz")


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=300), head=st.sampled_from([b"", b"\xd4\xc3\xb2\xa1", b"\n\r\r\n"]))
def test_fuzz_random_bytes(tmp_path, data, head):
    _read_all(head + data, tmp_path / "fuzz")


@settings(max_examples=300, deadline=None)
@given(frame=st.binary(max_size=120), linktype=st.sampled_from(sorted(pcapfile.LINKTYPES)))
def test_fuzz_decoder_never_raises(frame, linktype):
    decoder = Decoder()
    packet = decoder.decode(pcapfile.Record(1, 0, linktype, frame, 0, 0, 0))
    assert packet is not None or sum(decoder.warnings.values()) + sum(decoder.ignored.values()) == 1


def test_writer_round_trips_origlen():
    buffer = io.BytesIO()
    PcapWriter(buffer, 101).write(5, b"abc", origlen=1500)
    assert struct.unpack_from("<IIII", buffer.getvalue(), 24) == (0, 0, 3, 1500)


def _decoded_both_ways(record: pcapfile.Record, keep=None) -> None:
    """``decode_all``'s fast path gives what ``decode`` gives: the packet, or the same count;
    with *keep*, a refused TCP packet comes out as its record, and only such a one."""
    one, many = Decoder(), Decoder()
    packet = one.decode(record)
    out = list(many.decode_all([record], keep))
    assert (many.warnings, many.ignored) == (one.warnings, one.ignored)
    if packet is None:
        assert out == []
    elif keep is not None and packet.proto == 6 and not keep(*packet[2:4], *packet[5:7]):
        assert out == [record]
    else:
        assert out == [packet]
        assert type(out[0]) is type(packet)


@settings(max_examples=600, deadline=None)
@given(
    edits=st.lists(st.tuples(st.integers(0, 59), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 80),
    pad=st.integers(0, 8),
    refuse=st.booleans(),
)
def test_fast_decoding_is_decode(edits, cut, pad, refuse):
    """Damage to the Ethernet, IPv4 and TCP headers (version, IHL, total length, fragment
    bits, protocol, data offset), a frame cut or padded: each decoded as ``decode`` does."""
    frame = bytearray(eth(IP4_TCP) + bytes(pad))
    for position, value in edits:
        frame[position] = value
    data = bytes(frame[: len(frame) - cut])
    keep = (lambda *_: False) if refuse else None
    _decoded_both_ways(pcapfile.Record(7, T0, 1, data, len(data), len(data), 0), keep)


@pytest.mark.parametrize("ip", [IP4_TCP, IP6_TCP], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("tags", [(), (0x8100,)], ids=["plain", "vlan"])
def test_keep_refuses_tcp_on_every_path(ip, tags):
    """A refused TCP packet is its record whether the fast path read it or ``decode`` did;
    keep is asked the packet's own (src, dst, sport, dport)."""
    asked = []
    data = eth(ip, *tags)
    record = pcapfile.Record(3, T0, 1, data, len(data), len(data), 0)
    _decoded_both_ways(record, lambda *fields: asked.append(fields) or False)
    packet = Decoder().decode(record)
    assert asked[0] == (packet.src, packet.dst, packet.sport, packet.dport) == asked[-1]
    _decoded_both_ways(record, lambda *_: True)


def test_keep_leaves_udp_decoded():
    data = eth(bytes(IP(src="192.0.2.1", dst="192.0.2.53") / UDP(sport=5353, dport=53) / b"q"))
    _decoded_both_ways(pcapfile.Record(1, T0, 1, data, len(data), len(data), 0), lambda *_: False)
