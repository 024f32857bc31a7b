"""Crafted captures for the ladder tests: scapy frames with real sequence numbers.

``seed_capture`` writes the reference exchange of seed/ladder.md; ``SEED_LADDER`` is the
ladder it must give.  Variants cut lines across segments, pack several per segment,
retransmit, or change one reply, so that tests can say what must (not) change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import dnslib
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether as _Ether

from harness.capture.pcapfile import PcapWriter


def Ether() -> _Ether:  # fixed MACs: scapy would look them up (and warn) otherwise
    return _Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


DATA = Path(__file__).resolve().parent / "data"
# committed copies of the Zeek test traces (BSD licence: data/zeek/COPYING), so a clone
# has them without ../shared
CORPUS = DATA / "zeek"
FUZZ = DATA / "fuzz"  # one capture per class of crash the fuzzers found (test_fuzz.py)

SENDER, DNS, RECEIVER = "192.0.2.10", "192.0.2.53", "192.0.2.25"
HOSTS = {SENDER: "mail.sender.com", DNS: "dns", RECEIVER: "mail.receiver.com"}
T0 = 1_700_000_000_000_000_000

MESSAGE = (
    b"From: Luke <luke@sender.com>\r\n"
    b"To: c3po@receiver.com, r2d2@receiver.com\r\n"
    b"Subject: Hello\r\n"
    b"\r\n"
    b"Hello Robots,\r\n"
    b"..May the force be with you.\r\n"  # dot-stuffed: the content line is ".May ..."
    b"Luke\r\n"
)


@dataclass
class Capture:
    """Frames in order, each 1 ms after the last (plus any ``pause`` before it)."""

    frames: list[bytes] = field(default_factory=list)
    pauses: dict[int, int] = field(default_factory=dict)  # frame number -> ns of silence first

    def add(self, frame) -> None:
        self.frames.append(bytes(frame))

    def pause(self, seconds: float) -> None:
        """Nothing on the wire for ``seconds`` before the next frame."""
        at = len(self.frames)
        self.pauses[at] = self.pauses.get(at, 0) + int(seconds * 1e9)

    def write(self, path: Path) -> Path:
        with open(path, "wb") as f:
            writer = PcapWriter(f)
            silence = 0
            for n, frame in enumerate(self.frames):
                silence += self.pauses.get(n, 0)
                writer.write(T0 + n * 1_000_000 + silence, frame)
        return path

    def dns(self, client: str, server: str, message: dnslib.DNSRecord, *, reply: bool) -> None:
        src, dst, sport, dport = (server, client, 53, 5353) if reply else (client, server, 5353, 53)
        self.add(Ether() / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / message.pack())


class Tcp:
    """One TCP connection in a capture; ``c`` is the client side, ``s`` the server."""

    def __init__(self, cap: Capture, client: str, server: str, cport: int = 40000, port: int = 25):
        self.cap = cap
        self.ends = {"c": (client, cport), "s": (server, port)}
        self.seq = {"c": 1000, "s": 5000}
        self.rcv = {"c": self.seq["s"], "s": self.seq["c"]}  # next byte expected from the peer

    def _send(self, side: str, flags: str, data: bytes = b"", seq: int | None = None) -> None:
        peer = "s" if side == "c" else "c"
        (src, sport), (dst, dport) = self.ends[side], self.ends[peer]
        tcp = TCP(sport=sport, dport=dport, flags=flags, seq=self.seq[side] if seq is None else seq)
        if "A" in flags:
            tcp.ack = self.rcv[side]
        self.cap.add(Ether() / IP(src=src, dst=dst) / tcp / data)

    def _advance(self, side: str, n: int) -> None:
        self.seq[side] += n
        self.rcv["s" if side == "c" else "c"] = self.seq[side]

    def handshake(self) -> None:
        self._send("c", "S")
        self._advance("c", 1)
        self._send("s", "SA")
        self._advance("s", 1)
        self._send("c", "A")

    def send(self, side: str, data: bytes, *, acked: bool = True) -> None:
        self._send(side, "PA", data)
        self._advance(side, len(data))
        if acked:
            self.ack("s" if side == "c" else "c")

    def lose(self, side: str, data: bytes) -> None:
        """A segment the capture missed: its bytes are sent, no packet of it is written."""
        self._advance(side, len(data))

    def retransmit(self, side: str, data: bytes) -> None:
        self._send(side, "PA", data, seq=self.seq[side] - len(data))

    def ack(self, side: str) -> None:
        self._send(side, "A")

    def fin(self, side: str) -> None:
        self._send(side, "FA")
        self._advance(side, 1)

    def rst(self, side: str) -> None:
        self._send(side, "R")


def mx_answer() -> tuple[dnslib.DNSRecord, dnslib.DNSRecord]:
    query = dnslib.DNSRecord.question("receiver.com", "MX")
    answer = query.reply()
    answer.add_answer(
        dnslib.RR("receiver.com", dnslib.QTYPE.MX, rdata=dnslib.MX("mail.receiver.com"))
    )
    answer.add_ar(dnslib.RR("mail.receiver.com", dnslib.QTYPE.A, rdata=dnslib.A(RECEIVER)))
    return query, answer


def ptr_answer() -> tuple[dnslib.DNSRecord, dnslib.DNSRecord]:
    query = dnslib.DNSRecord.question("10.2.0.192.in-addr.arpa", "PTR")
    answer = query.reply()
    name = "10.2.0.192.in-addr.arpa"
    answer.add_answer(dnslib.RR(name, dnslib.QTYPE.PTR, rdata=dnslib.PTR("mail.sender.com")))
    return query, answer


SEED_DIALOGUE: list[tuple[str, bytes]] = [
    ("s", b"220 mail.receiver.com ESMTP ready\r\n"),
    ("c", b"HELO mail.sender.com\r\n"),
    ("ptr", b""),
    ("s", b"250 mail.receiver.com\r\n"),
    ("c", b"VRFY aibo\r\n"),
    ("s", b"550 5.1.1 aibo: no such user\r\n"),
    ("c", b"VRFY c3po\r\n"),
    ("s", b"250 C3PO <c3po@receiver.com>\r\n"),
    ("c", b"VRFY r2d2\r\n"),
    ("s", b"250 R2D2 <r2d2@receiver.com>\r\n"),
    ("c", b"MAIL FROM:<luke@sender.com>\r\n"),
    ("s", b"250 OK\r\n"),
    ("c", b"RCPT TO:<c3po@receiver.com>\r\n"),
    ("s", b"250 OK\r\n"),
    ("c", b"RCPT TO:<r2d2@receiver.com>\r\n"),
    ("s", b"250 OK\r\n"),
    ("c", b"DATA\r\n"),
    ("s", b"354 Start mail input; end with <CRLF>.<CRLF>\r\n"),
    ("c", MESSAGE + b".\r\n"),
    ("s", b"250 OK Mail accepted\r\n"),
    ("c", b"QUIT\r\n"),
    ("s", b"221 mail.receiver.com closing\r\n"),
]


def seed_capture(
    path: Path,
    *,
    dialogue: list[tuple[str, bytes]] = SEED_DIALOGUE,
    cut: int = 0,
    retransmit: bool = False,
    close: str = "receiver-first",
) -> Path:
    """The seed exchange.  *cut* > 0 sends every payload in pieces of *cut* bytes;
    *retransmit* sends each payload twice; *close* is "receiver-first", "sender-first"
    or "rst" (the sender resets after 221)."""
    cap = Capture()
    query, answer = mx_answer()
    cap.dns(SENDER, DNS, query, reply=False)
    cap.dns(SENDER, DNS, answer, reply=True)
    tcp = Tcp(cap, SENDER, RECEIVER)
    tcp.handshake()
    for side, data in dialogue:
        if side == "ptr":
            query, answer = ptr_answer()
            cap.dns(RECEIVER, DNS, query, reply=False)
            cap.dns(RECEIVER, DNS, answer, reply=True)
            continue
        pieces = [data[i : i + cut] for i in range(0, len(data), cut)] if cut else [data]
        for piece in pieces:
            tcp.send(side, piece)
            if retransmit:
                tcp.retransmit(side, piece)
    _close(tcp, close)
    return cap.write(path)


def _close(tcp: Tcp, how: str) -> None:
    first, second = ("s", "c") if how == "receiver-first" else ("c", "s")
    tcp.fin(first)
    if how == "rst":
        tcp.rst("c")
        return
    tcp.ack(second)
    tcp.fin(second)
    tcp.ack(first)


S, R, D = "mail.sender.com", "mail.receiver.com", "dns"
SEED_LADDER: list[tuple[str, str, str, str | None]] = [
    (S, D, "dns-query", "receiver.com IN MX"),
    (D, S, "dns-answer", "MX 10 mail.receiver.com. + A mail.receiver.com. 192.0.2.25"),
    (S, R, "syn", "SYN to port 25"),
    (R, S, "syn-ack", "SYN-ACK"),
    (S, R, "ack", "ACK"),
    (R, S, "reply", "220 mail.receiver.com ESMTP ready"),
    (S, R, "command", "HELO mail.sender.com"),
    (R, D, "dns-query", "10.2.0.192.in-addr.arpa IN PTR"),
    (D, R, "dns-answer", "PTR mail.sender.com."),
    (R, S, "reply", "250 mail.receiver.com"),
    (S, R, "command", "VRFY aibo"),
    (R, S, "reply", "550 5.1.1 aibo: no such user"),
    (S, R, "command", "VRFY c3po"),
    (R, S, "reply", "250 C3PO <c3po@receiver.com>"),
    (S, R, "command", "VRFY r2d2"),
    (R, S, "reply", "250 R2D2 <r2d2@receiver.com>"),
    (S, R, "command", "MAIL FROM:<luke@sender.com>"),
    (R, S, "reply", "250 OK"),
    (S, R, "command", "RCPT TO:<c3po@receiver.com>"),
    (R, S, "reply", "250 OK"),
    (S, R, "command", "RCPT TO:<r2d2@receiver.com>"),
    (R, S, "reply", "250 OK"),
    (S, R, "command", "DATA"),
    (R, S, "reply", "354 Start mail input; end with <CRLF>.<CRLF>"),
    (S, R, "content", None),  # checked on its own
    (R, S, "reply", "250 OK Mail accepted"),
    (S, R, "command", "QUIT"),
    (R, S, "reply", "221 mail.receiver.com closing"),
    (R, S, "fin", "FIN"),
    (S, R, "fin-ack", "ACK of FIN"),
    (S, R, "fin", "FIN"),
    (R, S, "close-ack", "ACK of FIN"),
]


ZOO = {  # record type -> one record of it in zone-file form, for dns_zoo_capture
    "A": "x 60 IN A 192.0.2.25",
    "AAAA": "x 60 IN AAAA 2001:db8::25",
    "MX": "x 60 IN MX 0 .",
    "TXT": 'x 60 IN TXT "v=spf1 -all" "b"',
    "PTR": "x 60 IN PTR mail.sender.com.",
    "CNAME": "x 60 IN CNAME mail.receiver.com.",
    "NS": "x 60 IN NS ns.receiver.com.",
    "SOA": "x 60 IN SOA ns.receiver.com. root.receiver.com. 1 2 3 4 5",
    "SRV": "x 60 IN SRV 1 2 25 mail.receiver.com.",
    "NAPTR": 'x 60 IN NAPTR 1 2 "u" "E2U+sip" "!^.*$!sip:a@b!" .',
    "CAA": 'x 60 IN CAA 0 issue "ca.example"',
    "DNSKEY": "x 60 IN DNSKEY 257 3 8 AwEAAQ==",
    "RRSIG": "x 60 IN RRSIG A 8 2 60 20240101000000 20230101000000 1 receiver.com. AAAA",
    "NSEC": "x 60 IN NSEC a.receiver.com. A MX",
    "DS": "x 60 IN DS 1 8 2 AABB",
    "SSHFP": "x 60 IN SSHFP 1 1 AABB",
    "TLSA": "x 60 IN TLSA 3 1 1 AABB",
    "HTTPS": "x 60 IN HTTPS 1 . alpn=h2",
    "LOC": "x 60 IN LOC 52 22 23.000 N 4 53 32.000 E -2.00m 0.00m 10000m 10m",
    "RP": "x 60 IN RP a.receiver.com. b.receiver.com.",
}


def dns_zoo_capture(path: Path) -> Path:
    """A question and an answer for each type of ``ZOO`` (over UDP), with EDNS, authority
    and additional records: a seed for fuzzing what dnslib shows of each type."""
    cap = Capture()
    for n, (qtype, zone) in enumerate(ZOO.items()):
        query = dnslib.DNSRecord.question("receiver.com", qtype)
        query.header.id = n
        answer = query.reply()
        for rr in dnslib.RR.fromZone(zone.replace("x ", "receiver.com. ", 1)):
            answer.add_answer(rr)
        answer.add_auth(dnslib.RR("receiver.com", dnslib.QTYPE.NS, rdata=dnslib.NS("ns.x")))
        answer.add_ar(dnslib.EDNS0())
        cap.dns(SENDER, DNS, query, reply=False)
        cap.dns(SENDER, DNS, answer, reply=True)
    return cap.write(path)
