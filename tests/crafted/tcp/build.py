"""Build the crafted TCP and capture-file corpus: one small capture per defect class.

Rules this script keeps:

- Every capture is written from scapy frames (or, for the file formats, struct-packed
  headers) with real sequence and acknowledgement numbers; nothing here runs the harness.
- The expected ladder of each capture (``NAME.ladder`` beside it) is written by hand from
  these frames, never generated: this script only writes the ``.pcap`` files.
- Addresses are documentation addresses (RFC 5737, RFC 3849); times are 1 ms apart.
- Deterministic: the same bytes on every run (fixed MACs, IP ids, times), so the committed
  files are what this script writes.

Usage: .venv/bin/python tests/crafted/tcp/build.py   (rewrites every .pcap here)
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable
from pathlib import Path

from scapy.layers.inet import GRE, IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet

HERE = Path(__file__).resolve().parent
T0 = 1_700_000_000_000_000_000  # ns
CLIENT, SERVER = "192.0.2.10", "192.0.2.25"
CLIENT6, SERVER6 = "2001:db8::10", "2001:db8::25"
GREETING = b"220 mx.example ESMTP\r\n"
HELLO = b"EHLO client.example\r\n"
HELLO_REPLY = b"250 mx.example\r\n"
QUIT, BYE = b"QUIT\r\n", b"221 bye\r\n"


class Flow:
    """One TCP connection: ``c``/``s`` send from the client/server with the next sequence
    number and an ACK of everything the peer sent, unless told otherwise."""

    def __init__(
        self, wrap: Callable[[str, str], Packet] | None = None, client=CLIENT, server=SERVER
    ):
        self.frames: list[bytes] = []
        self.addr = {"c": client, "s": server}
        self.port = {"c": 40000, "s": 25}
        self.next = {"c": 1000, "s": 5000}  # next sequence number each side sends
        self.wrap = wrap or (lambda src, dst: IP(src=src, dst=dst, id=1, flags="DF"))

    def send(self, side: str, flags: str, data: bytes = b"", *, seq=None, ack=None) -> None:
        peer = "s" if side == "c" else "c"
        tcp = TCP(
            sport=self.port[side],
            dport=self.port[peer],
            flags=flags,
            seq=self.next[side] if seq is None else seq,
            ack=(self.next[peer] if ack is None else ack) if "A" in flags else 0,
            window=65535,
        )
        ether = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        self.frames.append(bytes(ether / self.wrap(self.addr[side], self.addr[peer]) / tcp / data))
        if seq is None:
            self.next[side] += len(data) + ("S" in flags) + ("F" in flags)

    def c(self, flags: str, data: bytes = b"", **kw) -> None:
        self.send("c", flags, data, **kw)

    def s(self, flags: str, data: bytes = b"", **kw) -> None:
        self.send("s", flags, data, **kw)

    def handshake(self) -> None:
        self.c("S")
        self.s("SA")
        self.c("A")

    def hello(self) -> None:
        """Greeting, EHLO and its reply, each acknowledged by the next packet."""
        self.s("PA", GREETING)
        self.c("PA", HELLO)
        self.s("PA", HELLO_REPLY)

    def close(self) -> None:
        """QUIT, 221, the server's FIN, the client's FIN, the last ACK."""
        self.c("PA", QUIT)
        self.s("PA", BYE)
        self.s("FA")
        self.c("FA")
        self.s("A")


def late_data() -> list[bytes]:
    """D2: the client's ACK of the 250 is captured before the 250 itself (frames 7, 8)."""
    f = Flow()
    f.handshake()
    f.s("PA", GREETING)
    f.c("PA", HELLO)
    reply_seq = f.next["s"]
    f.c("A", ack=reply_seq + len(HELLO_REPLY))  # the ACK overtook the data it covers
    f.s("PA", HELLO_REPLY, seq=reply_seq)
    f.next["s"] += len(HELLO_REPLY)
    f.close()
    return f.frames


def quit_after_fin() -> list[bytes]:
    """D5: the server says 421 and closes; the client's QUIT comes after the FIN; RST."""
    f = Flow()
    f.handshake()
    f.hello()
    f.s("PA", b"421 idle too long\r\n")
    f.s("FA")
    f.c("A")  # acknowledges the FIN
    f.c("PA", QUIT)
    f.s("R", seq=f.next["s"])
    return f.frames


def quit_after_data_fin() -> list[bytes]:
    """D5 in the SMTP layer: DATA gets no reply, the server closes, the client sends QUIT."""
    f = Flow()
    f.handshake()
    f.hello()
    f.c("PA", b"MAIL FROM:<alice@example.org>\r\n")
    f.s("PA", b"250 ok\r\n")
    f.c("PA", b"DATA\r\n")
    f.s("FA")
    f.c("PA", QUIT)  # acknowledges the FIN
    f.s("R", seq=f.next["s"])
    return f.frames


def overlap_acked() -> list[bytes]:
    """D6: a 5,002-byte segment the client never acknowledges, then the real 250 over the
    same sequence numbers, which the client does acknowledge (frames 8, 9, 10)."""
    f = Flow()
    f.handshake()
    f.s("PA", GREETING)
    f.c("PA", HELLO)
    seq = f.next["s"]
    bogus = b"250 " + b"X" * 4996 + b"\r\n"
    f.s("PA", bogus, seq=seq)
    f.s("PA", HELLO_REPLY, seq=seq)
    f.next["s"] += len(HELLO_REPLY)
    f.close()
    return f.frames


def retransmitted_control() -> list[bytes]:
    """The SYN-ACK is sent twice (frames 2, 3) and the server's FIN twice (frames 12, 13)."""
    f = Flow()
    f.c("S")
    f.s("SA")
    f.s("SA", seq=f.next["s"] - 1)  # the same SYN-ACK again
    f.c("A")
    f.hello()
    f.c("PA", QUIT)
    f.s("PA", BYE)
    f.s("FA")
    f.s("FA", seq=f.next["s"] - 1)  # the same FIN again
    f.c("FA")
    f.s("A")
    return f.frames


def christmas_tree() -> list[bytes]:
    """A segment with every flag (frame 8) in the middle of a session that goes on."""
    f = Flow()
    f.handshake()
    f.hello()
    f.c("FSRPAU", seq=f.next["c"])
    f.close()
    return f.frames


def tunnels() -> list[bytes]:
    """One short session in each tunnel: IPv4 in IPv4 (protocol 4), IPv6 in IPv4 (41), GRE."""
    outer = ("198.51.100.1", "198.51.100.2")

    def ipip(src: str, dst: str) -> Packet:
        return IP(src=outer[0], dst=outer[1], id=1) / IP(src=src, dst=dst, id=1)

    def sixin4(src: str, dst: str) -> Packet:
        return IP(src=outer[0], dst=outer[1], id=1) / IPv6(src=src, dst=dst)

    def gre(src: str, dst: str) -> Packet:
        return IP(src=outer[0], dst=outer[1], id=1) / GRE() / IP(src=src, dst=dst, id=1)

    frames = []
    for wrap, ends in (
        (ipip, (CLIENT, SERVER)),
        (sixin4, (CLIENT6, SERVER6)),
        (gre, ("192.0.2.11", SERVER)),
    ):
        f = Flow(wrap, *ends)
        f.handshake()
        f.s("PA", GREETING)
        f.c("PA", QUIT)
        f.s("PA", BYE)
        f.s("R", seq=f.next["s"])
        frames += f.frames
    return frames


def write_pcap(path: Path, frames: list[bytes], *, magic: int = 0xA1B2C3D4) -> None:
    """A classic pcap (little-endian); the "modified" magic 0xa1b2cd34 adds to each record
    header ifindex (4), protocol (2), pkt_type (1) and a pad byte (libpcap's pcap-common.c)."""
    out = [struct.pack("<IHHiIII", magic, 2, 4, 0, 0, 262144, 1)]
    for n, frame in enumerate(frames):
        sec, ns = divmod(T0 + n * 1_000_000, 1_000_000_000)
        out.append(struct.pack("<IIII", sec, ns // 1000, len(frame), len(frame)))
        if magic == 0xA1B2CD34:
            out.append(struct.pack("<iHBx", 2, 0x0800, 0))
        out.append(frame)
    path.write_bytes(b"".join(out))


CAPTURES: dict[str, Callable[[], list[bytes]]] = {
    "late-data": late_data,
    "quit-after-fin": quit_after_fin,
    "quit-after-data-fin": quit_after_data_fin,
    "overlap-acked": overlap_acked,
    "retransmitted-control": retransmitted_control,
    "christmas-tree": christmas_tree,
    "tunnels": tunnels,
}


def write_all(folder: Path) -> list[Path]:
    """Write every capture into *folder*; their paths."""
    for name, build in CAPTURES.items():
        write_pcap(folder / f"{name}.pcap", build())
    hello = Flow()
    hello.handshake()
    hello.hello()
    hello.close()
    write_pcap(folder / "modified-pcap.pcap", hello.frames, magic=0xA1B2CD34)
    # the same session cut 10 bytes into the data of its last record (frame 11, 54 bytes)
    cut = folder / "cut-mid-record.pcap"
    write_pcap(cut, hello.frames)
    cut.write_bytes(cut.read_bytes()[: -len(hello.frames[-1]) + 10])
    return [folder / f"{name}.pcap" for name in CAPTURES] + [folder / "modified-pcap.pcap", cut]


if __name__ == "__main__":
    print(f"wrote {len(write_all(HERE))} captures in {HERE}", file=sys.stderr)
