"""Dissect a capture into a ladder: read -> decode -> reassemble -> DNS and SMTP -> steps.

Rules this module keeps:

- Streaming: ``iter_steps`` yields each step as soon as the packet that completes it has
  been read; memory is bounded by the connections open at once, not by the file.  The
  handlers append a packet's steps to one list that ``steps`` drains (no generator frame
  per event and level); ``_tcp`` and ``_udp`` give an event's or datagram's as a list.
- Steps come out in the order of the packet that completed them, numbered from 1.  Their
  evidence is every packet that carried a byte of them (a content step lists all of its
  packets; a control step its one packet).
- DNS: UDP or TCP (2-octet length prefix) with port 53 on either side, decoded by dnslib.
  A question reads ``receiver.com IN MX``; an answer reads ``MX 10 mail.receiver.com. +
  A mail.receiver.com. 192.0.2.25`` (answer records, `` + `` the additional ones; a
  record named as the question is shown without its name), ``NODATA`` or the rcode name.
  Judges read the detail, never that text: ``qname`` (lower-case, no trailing dot, "."
  for the root), ``qtype`` and ``qclass`` of the first question, ``rcode``, the flags and,
  for an answer, ``records``: ``(section, name, type, rdata)`` for every record but OPT,
  section "answer", "authority" or "additional", rdata in dnslib's presentation form
  (``10 mail.receiver.com.``, ``0 .``, ``192.0.2.25``).  A type, class or rcode without
  a mnemonic is ``TYPE65000``, ``CLASS5555``, ``RCODE12`` (RFC 3597 §5).
- TCP: every connection gives its control steps (syn, syn-ack, ack, fin, fin-ack,
  close-ack, rst) and its gaps.  It is SMTP when its server port is in ``SMTP_PORTS``
  or the dissector's ``smtp_ports`` (unless the client opens with a TLS record: then it
  is opaque ``tls``), or when the server's first bytes are a ``220`` greeting, also
  behind an HTTP CONNECT tunnel.  Up to ``SNIFF_LIMIT`` bytes per direction are held
  while that is undecided.
- SMTP is understood only by the core's ``Observer`` (design rule 1), fed each direction's
  bytes in stream order and told of each gap (``Observer.skip``), which the core places:
  inside content (DATA, a BDAT chunk) it counts towards the content's size and is shown
  as ``missing`` in it (the digest covers the captured bytes only); among commands and
  replies the lines it cut are anomaly steps.  The gap step says where the damage is.
  Message content (DATA) and each BDAT chunk become one step; TLS after STARTTLS a
  ``tls-handshake`` step (read in the clear with no key log: version, cipher, SNI, and
  before TLS 1.3 the certificate) and, unless decrypted, one ``tls`` step per direction;
  each client line answering a 334 (RFC 4954 §4) one ``auth-response`` step, as sent
  (``cancel=True`` for ``*``).
- The core observes as a capture's observer (its rule 9): where the capture lost replies
  or the session's start (no handshake captured: ``midstream``), reply codes that answer
  one command only re-pair the replies, and a 354 the client's bytes show was sent is
  inferred: a ``reply`` step whose text ends `` (inferred)``, with ``inferred=True`` in its
  detail and no evidence.  Each session that needed it gets one warning in
  ``Ladder.warnings`` (where, and which replies were taken as not captured), counted once
  per repair.
- Names: ``hosts`` maps addresses to names; an address not in it is shown as is.  When
  both ends would get the same name (loopback captures), the server's gets ``:port``.
  With ``file_names``, a pcapng's Name Resolution Blocks name addresses too (``hosts``
  overriding them), read in the same pass as the packets: each names the connections and
  DNS messages that begin after it (a run's capture.pcapng has its one before them all).
- Nothing in a packet raises: garbage is skipped and counted in ``Ladder.warnings``; only
  an unreadable file raises ``PcapError`` (one line, with file and offset).  A file cut
  short in its last record is read up to it, with one warning saying where and what.
- Every string of a step is valid UTF-8: bytes that are not are escaped as ``\\xff``, the
  same way in ``text`` and in ``detail`` (a verb, a reply's ``answers``), so the JSON
  ladder of any capture is UTF-8.
- The end of a stream (FIN, RST, the end of the capture) ends the unit it fell inside: a
  command or reply without its line ending or last line, content without its end, a
  chunk short of its size becomes a step of its kind whose text ends ``(incomplete)`` and
  whose detail has ``incomplete=True`` (and a reply's ``code``).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import replace
from itertools import count
from types import ModuleType
from typing import TYPE_CHECKING

import dnslib

from harness import signals
from harness.capture.pcapfile import PcapError, read
from harness.ladder.model import Coverage, Detail, Ladder, Step, StepKind, detail, new_step
from harness.ladder.packets import UDP, Decoder, Packet, flag_names, format_addr
from harness.ladder.tcpstream import CLIENT, SERVER, Connection, Event, Reassembler
from harness.smtp import events as smtp
from harness.smtp.commands import parse_command
from harness.smtp.events import Direction
from harness.smtp.protocol import Observer
from harness.tls.keylog import KeyLog

if TYPE_CHECKING:
    from hashlib import _Hash as Hash

    from harness.ladder.parallel import Share
    from harness.tls.records import Established, Plaintext, Problem, TlsSession

SMTP_PORTS = frozenset({25, 465, 587, 2525})
DNS_PORT = 53
SNIFF_LIMIT = 4096

_SMTP_DIRECTION = {CLIENT: Direction.CLIENT, SERVER: Direction.SERVER}
_TLS_RECORD = b"\x16\x03"  # a TLS handshake record, any version
_ANOMALY, _COMMAND, _REPLY = StepKind.ANOMALY, StepKind.COMMAND, StepKind.REPLY
_AUTH = StepKind.AUTH_RESPONSE
INCOMPLETE = " (incomplete)"  # ends the text of a step the stream ended inside
INFERRED = " (inferred)"  # ends the text of a step inferred, not captured
_CONTROL = {  # reassembler event -> (step kind, text)
    "syn": (StepKind.SYN, "SYN"),
    "syn-ack": (StepKind.SYN_ACK, "SYN-ACK"),
    "handshake-ack": (StepKind.ACK, "ACK"),
    "fin": (StepKind.FIN, "FIN"),
}


def dissect(path: str, hosts: dict[str, str] | None = None, **options) -> Ladder:
    """The ladder of the capture at *path*; *options* go to the ``Dissector``."""
    dissector = Dissector(hosts, **options)
    steps = list(dissector.steps(str(path)))
    return Ladder(
        steps=steps,
        source=_clean(str(path)),
        hosts=dissector.hosts,
        warnings=dict(dissector.warnings),
        coverage=dissector.coverage,
    )


def iter_steps(path: str, hosts: dict[str, str] | None = None) -> Iterator[Step]:
    """The steps of the capture at *path*, one at a time."""
    return Dissector(hosts).steps(str(path))


def host_name(hosts: dict[str, str], addr: str) -> str:
    return hosts.get(addr, addr)


def endpoint_names(hosts: dict[str, str], client: str, server: tuple[str, int]) -> tuple[str, str]:
    """(client name, server name); the server gets ``:port`` when both names are equal."""
    c, s = host_name(hosts, client), host_name(hosts, server[0])
    if c == s:
        s = f"[{s}]:{server[1]}" if ":" in s else f"{s}:{server[1]}"
    return c, s


class Dissector:
    """One pass over a capture; ``warnings`` and ``coverage`` are complete after it."""

    def __init__(
        self,
        hosts: dict[str, str] | None = None,
        *,
        smtp_ports: frozenset[int] = SMTP_PORTS,
        idle: float = 600.0,
        keylog: KeyLog | None = None,
        file_names: bool = False,
    ) -> None:
        self.keylog = keylog  # TLS secrets: the dialogue inside TLS is read with them
        self._given = dict(hosts or {})
        self._found: dict[str, str] | None = {} if file_names else None  # the file's names
        self.hosts = {addr: _clean(name) for addr, name in self._given.items()}
        self.smtp_ports = smtp_ports  # a server port here is SMTP before any byte says so
        self.idle = idle  # seconds of capture time after which a silent connection ends
        self.warnings: Counter[str] = Counter()
        self.coverage: dict[int, Coverage] = {}
        self._index = count(1)
        self._conns: dict[int, _Conn] = {}
        self.share: Share | None = None  # a worker's share of the flows (ladder.parallel)

    def steps(self, path: str) -> Iterator[Step]:
        decoder = Decoder()
        reassembler = Reassembler(idle=self.idle)
        named = None if self._found is None else self._named
        share = self.share
        file_warnings = self.warnings
        if share is not None:
            file_warnings = share.file_warnings(self.warnings, reassembler)
        out: list[Step] = []  # the steps of one packet: every handler appends to it
        handle = self._handle
        try:
            records = read(path, file_warnings, named)
            if share is not None:  # a worker: its own flows decoded, others' ticked
                yield from share.steps(decoder, records, reassembler)
            else:
                for packet in decoder.decode_all(records):
                    if packet.proto == UDP:
                        out += self._udp(packet)
                    else:
                        for event in reassembler.feed(packet):
                            handle(event, out)
                    if out:
                        yield from out
                        out.clear()
            for event in reassembler.flush():
                if share is not None:
                    share.flushing(event)
                handle(event, out)
                yield from out  # each event's before the next (a worker keys them by it)
                out.clear()
        except OSError as exc:
            raise PcapError(f"{path}: cannot read: {exc.strerror or exc}") from None
        finally:
            file_warnings.update(decoder.warnings)
            self.warnings.update(reassembler.warnings)

    def conn_label(self, conn: int) -> str:
        """How a warning names connection *conn* (a worker's numbers are its own until the
        merge: ``Share.label``)."""
        return str(conn) if self.share is None else self.share.label(conn)

    def _named(self, names: dict[str, str]) -> None:
        """A Name Resolution Block's names: ``hosts`` from now on, in the order the file
        names them, each under the name ``hosts`` was given for it if it was."""
        assert self._found is not None
        self._found |= names
        self.hosts.clear()
        self.hosts.update((a, _clean(n)) for a, n in (self._found | self._given).items())

    def step(
        self,
        time: int,
        src: str,
        dst: str,
        kind: StepKind,
        text: str,
        evidence: tuple[int, ...],
        conn: int | None,
        info: Detail,
    ) -> Step:
        """A new step, numbered next."""
        if self.share is not None:
            self.share.stepped()
        return new_step(next(self._index), time, src, dst, kind, text, evidence, conn, info)

    def _udp(self, packet: Packet) -> list[Step]:
        """The step of a UDP packet: a DNS message's, if it is one."""
        if DNS_PORT not in (packet.sport, packet.dport):
            return []
        src, dst = format_addr(packet.src), format_addr(packet.dst)
        if packet.sport == DNS_PORT:
            client, server = endpoint_names(self.hosts, dst, (src, DNS_PORT))
            names = (server, client)
        else:
            names = endpoint_names(self.hosts, src, (dst, DNS_PORT))
        step = self.dns_step(packet.payload, packet.time, names, (packet.number,), None, "udp")
        return [] if step is None else [step]

    def dns_step(
        self,
        message: bytes,
        time: int,
        names: tuple[str, str],
        evidence: tuple[int, ...],
        conn: int | None,
        transport: str,
    ) -> Step | None:
        try:
            record = dnslib.DNSRecord.parse(message)
        except Exception:  # dnslib raises many kinds of errors on garbage
            self.warnings["dns-malformed"] += 1
            return None
        kind, text, info = describe_dns(record)
        info += (("transport", transport),)
        return self.step(time, *names, kind, text, evidence, conn, info)

    def _tcp(self, event: Event) -> list[Step]:
        """The steps a reassembler event completes (``Share.steps`` takes them so)."""
        out: list[Step] = []
        self._handle(event, out)
        return out

    def _handle(self, event: Event, out: list[Step]) -> None:
        """The steps a reassembler event completes, appended to *out*."""
        conn = self._conns.get(event.conn.id)
        if conn is None:
            conn = self._conns[event.conn.id] = _Conn(self, event.conn)
            if event.kind == "close":  # no event before its end: it carried nothing
                conn.mode = "other"
        _HANDLERS[event.kind](conn, event, out)  # no generator frame per event and level
        if event.kind == "close":
            del self._conns[event.conn.id]
            if conn.mode == "smtp":
                self.coverage[event.conn.id] = conn.coverage()
            self._closed(event, conn.mode, out)

    def _closed(self, event: Event, mode: str, out: list[Step]) -> None:
        """Connection *event* closed, its last steps in *out*, having carried *mode*."""


def describe_dns(record: dnslib.DNSRecord) -> tuple[StepKind, str, Detail]:
    """(kind, text, detail) of a DNS message."""
    header = record.header
    first = record.questions[0] if record.questions else None
    info = detail(
        id=header.id,
        rcode=_mnemonic(dnslib.RCODE, "RCODE", header.rcode),
        aa=bool(header.aa),
        tc=bool(header.tc),
        rd=bool(header.rd),
        ra=bool(header.ra),
        qname=None if first is None else dns_name(first.qname),
        qtype=None if first is None else _mnemonic(dnslib.QTYPE, "TYPE", first.qtype),
        qclass=None if first is None else _mnemonic(dnslib.CLASS, "CLASS", first.qclass),
    )
    questions = ", ".join(_question_text(q) for q in record.questions)
    if not header.qr:
        return StepKind.DNS_QUERY, questions or "(no question)", info
    qname = record.q.qname if record.questions else None
    if header.rcode:
        text = str(dnslib.RCODE.get(header.rcode))
    elif not record.rr:
        text = "NODATA"
    else:
        text = ", ".join(_rr_text(rr, qname) for rr in record.rr)
        extra = [_rr_text(rr, qname) for rr in record.ar if rr.rtype != dnslib.QTYPE.OPT]
        text = " + ".join([text, *extra])
    if header.tc:
        text += " (truncated)"
    counts = detail(answers=len(record.rr), authority=len(record.auth), additional=len(record.ar))
    return StepKind.DNS_ANSWER, text, (*info, *counts, ("records", _records(record)))


def dns_name(label: dnslib.DNSLabel) -> str:
    """A domain name as details spell it: lower-case, no trailing dot, "." for the root."""
    return str(label).rstrip(".").lower() or "."


def _mnemonic(table: dnslib.Bimap, prefix: str, value: int) -> str:
    """A type, class or rcode by name; one without a name as RFC 3597 §5 writes it."""
    name = table.forward.get(value)
    return f"{prefix}{value}" if name is None else name


def _records(record: dnslib.DNSRecord) -> tuple[tuple[str, str, str, str], ...]:
    """Every resource record as (section, name, type, rdata in presentation form); the OPT
    pseudo-record (EDNS, RFC 6891 §6.1.1) carries no data about the name and is left out."""
    sections = (("answer", record.rr), ("authority", record.auth), ("additional", record.ar))
    return tuple(
        (section, dns_name(rr.rname), _mnemonic(dnslib.QTYPE, "TYPE", rr.rtype), _rdata(rr))
        for section, rrs in sections
        for rr in rrs
        if rr.rtype != dnslib.QTYPE.OPT
    )


def _question_text(q: dnslib.DNSQuestion) -> str:
    name = str(q.qname).rstrip(".") or "."
    return f"{name} {dnslib.CLASS.get(q.qclass)} {dnslib.QTYPE.get(q.qtype)}"


def _rr_text(rr: dnslib.RR, qname: dnslib.DNSLabel | None) -> str:
    rtype = dnslib.QTYPE.get(rr.rtype)
    if rr.rname == qname:
        return f"{rtype} {_rdata(rr)}"
    return f"{rtype} {rr.rname} {_rdata(rr)}"


def _rdata(rr: dnslib.RR) -> str:
    """rdata in presentation form.  Where dnslib cannot show what its parser accepted (NAPTR
    strings that are not UTF-8, LOC or SVCB fields out of range), the generic form of RFC
    3597 §5: ``\\# length hex``."""
    try:
        return str(rr.rdata)
    except Exception:  # dnslib's __repr__ of several types raises on such values
        buffer = dnslib.DNSBuffer()
        rr.rdata.pack(buffer)
        return f"\\# {len(buffer.data)} {buffer.data.hex().upper()}"  # as dnslib writes it


class _Content:
    """Message content (DATA) or one BDAT chunk, summed up as it streams by."""

    def __init__(self) -> None:
        self.size = 0
        self.missing = 0  # octets a gap took from the capture, counted in size
        self.lines = 0
        self.first_line = b""
        self.digest = _sha256()
        self.evidence: list[int] = []

    def add(self, data: bytes, evidence: list[int]) -> None:
        if self.size == self.missing:  # the first captured bytes: a line, or a whole chunk
            self.first_line = data.partition(b"\n")[0].removesuffix(b"\r")
        self.size += len(data)
        self.lines += data.count(b"\n")
        self.digest.update(data)
        self.evidence += evidence

    def gap(self, size: int) -> None:
        self.size += size
        self.missing += size

    def text(self) -> str:
        digest, first = self.digest.hexdigest()[:16], _text(self.first_line)
        missing = f" ({self.missing} missing)" if self.missing else ""
        return f'{self.lines} lines, {self.size} bytes{missing}, sha256:{digest}, "{first}"'

    def detail(self, **extra) -> Detail:
        return detail(
            size=self.size,
            missing=self.missing or None,
            lines=self.lines,
            sha256=self.digest.hexdigest(),
            first_line=_text(self.first_line),
            **extra,
        )


class _Conn:
    """One TCP connection: its control steps, and its bytes as DNS, SMTP or nothing."""

    def __init__(self, dissector: Dissector, conn: Connection) -> None:
        self.d = dissector
        self.id = conn.id
        names = endpoint_names(dissector.hosts, conn.client[0], conn.server)
        self.ends = (names, names[::-1])  # (src, dst) by direction: CLIENT, SERVER
        port = conn.server[1]
        self.mode = "dns" if port == DNS_PORT else "sniff"
        self.smtp_port = port in dissector.smtp_ports
        self.observer: Observer | None = None
        self.midstream = conn.roles == "port"  # no handshake captured: it may start mid-session
        self.resync_warning = ""  # the one warning of this session's repaired pairing
        self.held: tuple[bytearray, bytearray] = (bytearray(), bytearray())
        self.start = [0, 0]  # stream offset of held[d][0]; then of the observer's offset 0
        # lists, not deques: an empty deque is 600 bytes, and thousands of connections may be
        # open; their heads are cut in one ``del`` per look
        self.segments: tuple[list, list] = ([], [])  # (start, end, first, last)
        self.eof = [False, False]
        self.pending: tuple[list, list] = ([], [])  # unacked (end, step index)
        self.acked = [0, 0]  # the highest offset the peer acknowledged, per direction
        self.units = 0
        self.unacked: list[int] = []
        self.fins: dict[int, int] = {}  # direction -> FIN offset, until it is acknowledged
        self.fins_acked = 0
        self.content: _Content | None = None
        self.chunk_last = False  # the BDAT chunk being read is the LAST one
        self.tls = [False, False]
        self.tls_session: TlsSession | None = None  # decrypting, with the dissector's key log
        self.tls_base: list[int | None] = [None, None]  # stream offset where TLS begins
        # (plaintext end, stream end) of the records read inside TLS: made once it is (an
        # empty deque is 600 bytes, and a capture may hold thousands of connections open)
        self.records: tuple[deque, deque] = ((), ())  # type: ignore[assignment]
        self.plain = [0, 0]  # octets of plaintext from inside TLS, per direction
        self.inside = False  # the observer reads the dialogue inside TLS

    def _rst(self, event: Event, out: list[Step]) -> None:
        info = detail(offset=event.offset)
        out.append(self._new(event, event.direction, StepKind.RST, "RST", (event.first,), info))

    def _overlap(self, event: Event, out: list[Step]) -> None:
        self.d.warnings["overlap"] += 1
        text = f"retransmission differs ({event.length} bytes)"
        self._anomaly(event, text, detail(offset=event.offset), out)

    def _bad_flags(self, event: Event, out: list[Step]) -> None:  # RST with SYN: none taken
        self.d.warnings["bad-flags"] += 1
        text = f"{flag_names(event.length)}: RST first, no SYN, FIN or data (RFC 9293 §3.10.7)"
        self._anomaly(event, text, detail(offset=event.offset, anomaly="bad-flags"), out)

    def _after_fin(self, event: Event, out: list[Step]) -> None:
        self.d.warnings["data-after-fin"] += 1
        text = f"{event.length} bytes after FIN, not part of the stream"
        self._anomaly(event, text, detail(offset=event.offset), out)

    def _anomaly(self, event: Event, text: str, info: Detail, out: list[Step]) -> None:
        out.append(self._new(event, event.direction, _ANOMALY, text, (event.first,), info))

    def _new(
        self,
        event: Event,
        d: int,
        kind: StepKind,
        text: str,
        evidence: tuple[int, ...],
        info: Detail,
    ) -> Step:
        src, dst = self.ends[d]
        return self.d.step(event.time, src, dst, kind, text, evidence, self.id, info)

    def _control(self, event: Event, out: list[Step]) -> None:
        d, (kind, text) = event.direction, _CONTROL[event.kind]
        info = (("offset", event.offset),)  # detail(offset=...), the offset being an int
        if kind is StepKind.SYN:
            text += f" to port {event.conn.server[1]}"
        if kind is StepKind.FIN:
            self.fins[d] = event.offset
            self._eof(d, event, out)
        out.append(self._new(event, d, kind, text, (event.first,), info))

    def _ack(self, event: Event, out: list[Step]) -> None:
        """Coverage of the peer's units; the ACK of a FIN is a step."""
        peer, acked = 1 - event.direction, event.offset
        self.acked[peer] = acked
        pending, done = self.pending[peer], 0
        while done < len(pending) and pending[done][0] <= acked:
            done += 1
        del pending[:done]
        fin = self.fins.get(peer)
        if fin is not None and acked > fin:
            del self.fins[peer]
            self.fins_acked += 1
            kind = StepKind.FIN_ACK if self.fins_acked == 1 else StepKind.CLOSE_ACK
            info = (("offset", acked),)
            out.append(self._new(event, event.direction, kind, "ACK of FIN", (event.first,), info))

    def _data(self, event: Event, out: list[Step]) -> None:
        d = event.direction
        if self.mode in ("sniff", "smtp") or self.tls_session is not None:
            segment = (event.offset, event.offset + event.length, event.first, event.last)
            self.segments[d].append(segment)
        if self.mode == "sniff":
            if not self.held[d]:
                self.start[d] = event.offset
            self.held[d].extend(event.data)
            self._sniff(event, out)
        elif self.mode == "smtp":
            self._feed(d, event.data, event, out)
        elif self.mode == "tls" and self.tls_session is not None:
            self._tls_feed(d, event.data, event, out)
        elif self.mode == "tls" and not self.tls[d]:
            self.tls[d] = True
            info = detail(offset=event.offset)
            out.append(self._new(event, d, StepKind.TLS, "TLS", (event.first,), info))
        elif self.mode == "dns":
            self._dns(d, event, out)

    def _sniff(self, event: Event, out: list[Step]) -> None:
        """Decide what the held bytes are, if they tell already."""
        held = (bytes(self.held[0]), bytes(self.held[1]))
        decision, skip = classify(*held, smtp_port=self.smtp_port)
        if decision == "wait" and max(map(len, held)) > SNIFF_LIMIT:
            decision = "other"
        if decision != "wait":
            self._decided(decision, skip, event, out)

    def _settle(self, event: Event, fallback: str, out: list[Step]) -> None:
        """No more bytes will come before a decision is needed (gap, FIN, close)."""
        if self.mode == "sniff":
            decision, skip = classify(*map(bytes, self.held), smtp_port=self.smtp_port)
            self._decided(fallback if decision == "wait" else decision, skip, event, out)

    def _decided(self, decision: str, skip: tuple[int, int], event: Event, out: list[Step]) -> None:
        """Switch to *decision* and replay the held bytes in it."""
        held, self.held, self.mode = self.held, (bytearray(), bytearray()), decision
        for d in (CLIENT, SERVER):
            if decision == "smtp":
                self.observer = self.observer or Observer(capture=True, midstream=self.midstream)
                self.start[d] += skip[d]
                self._evidence(d, self.start[d])
                self._feed(d, bytes(held[d][skip[d] :]), event, out)
                continue
            if decision == "tls" and self.d.keylog is not None:  # implicit TLS (RFC 8314 §3)
                self.tls_session = self.tls_session or _tls_records().TlsSession(self.d.keylog)
                self.tls_base[d] = self.start[d]
                self._tls_feed(d, bytes(held[d]), event, out)
                continue
            if decision == "tls" and held[d]:
                self.tls[d] = True
                info = detail(offset=self.start[d])
                out.append(
                    self._new(event, d, StepKind.TLS, "TLS", self._peek(d, self.start[d]), info)
                )
            self.segments[d].clear()

    def _feed(self, d: int, data: bytes, event: Event, out: list[Step]) -> None:
        """Bytes (b"": the end of the stream) to the SMTP core; the steps they complete."""
        if self.observer is None or (not data and not self.eof[d]):
            return
        if data and self.tls_session is not None and self.tls_base[d] is not None:
            self._tls_feed(d, data, event, out)
            return
        self._steps(self.observer.feed(_SMTP_DIRECTION[d], data), event, out)

    def _steps(self, events: list[smtp.Event], event: Event, out: list[Step]) -> None:
        for smtp_event in events:
            step = self._smtp(smtp_event, event)
            if step is not None:
                out.append(
                    replace(step, detail=(*step.detail, ("tls", True))) if self.inside else step
                )

    # --- inside TLS, with a key log

    def _tls_started(self, d: int, offset: int) -> None:
        """The 220 to STARTTLS: *d* carries TLS records from stream *offset* on."""
        self.tls_base[d] = offset
        if self.d.keylog is None and d == CLIENT:
            warning = f"TLS after STARTTLS on connection {self.d.conn_label(self.id)}: no key log, "
            self.d.warnings[warning + "the dialogue inside is not seen"] += 1
        # with no key log too: the handshake is read in the clear (version, cipher, SNI)
        self.tls_session = self.tls_session or _tls_records().TlsSession(self.d.keylog)

    def _tls_feed(self, d: int, data: bytes, event: Event, out: list[Step]) -> None:
        """TLS bytes: to the record layer; before the handshake is done also to the core,
        which counts them (an opaque ``tls`` step if the records cannot be read)."""
        session, records = self.tls_session, _tls_records()
        found = session.feed(d, data)
        if self.observer is not None and not self.inside:
            self._steps(self.observer.feed(_SMTP_DIRECTION[d], data), event, out)
        elif session.failed and not self.inside and not self.tls[d]:  # implicit TLS
            self.tls[d] = True
            info = detail(offset=event.offset)
            out.append(self._new(event, d, StepKind.TLS, "TLS", (event.first,), info))
        for item in found:
            if isinstance(item, records.Established):
                out.append(self._handshake(item, event))
            elif isinstance(item, records.Plaintext) and self.inside:
                self._plaintext(item, event, out)
            elif isinstance(item, records.Problem):
                self._tls_problem(item)

    def _tls_problem(self, problem: Problem) -> None:
        if self.d.keylog is None:
            return  # said once already: no key log
        warning = f"TLS on connection {self.d.conn_label(self.id)}: {problem.reason}; "
        self.d.warnings[warning + "the records after it are not read"] += 1

    def _handshake(self, item: Established, event: Event) -> Step:
        """The handshake as one step; once decrypted, the core reads the dialogue inside from
        here on (read in the clear only, the records after it stay opaque)."""
        if item.decrypted:
            self._secured()
        server_end = self.tls_base[SERVER] + self.tls_session.sides[SERVER].offset
        evidence = self._evidence(CLIENT, self.tls_base[CLIENT] + item.end)
        evidence += self._evidence(SERVER, server_end)
        info = detail(
            version=item.version,
            cipher=item.cipher,
            sni=item.sni,
            subject=item.subject,
            issuer=item.issuer,
            not_before=item.not_before,
            not_after=item.not_after,
            decrypted=None if item.decrypted else False,
        )
        text = f"{item.version} {item.cipher}" + (f" SNI {item.sni}" if item.sni else "")
        text += "" if item.decrypted else " (read in the clear, not decrypted)"
        return self._new(event, CLIENT, StepKind.TLS_HANDSHAKE, text, _unique(evidence), info)

    def _secured(self) -> None:
        self.inside, self.records = True, (deque(), deque())
        if self.observer is None:  # implicit TLS: inside, the session starts with a greeting
            self.observer, self.mode = Observer(capture=True), "smtp"
        else:
            self.observer.secured()

    def _plaintext(self, item: Plaintext, event: Event, out: list[Step]) -> None:
        d = item.direction
        self.plain[d] += len(item.data)
        self.records[d].append((self.plain[d], self.tls_base[d] + item.end))
        self._steps(self.observer.feed(_SMTP_DIRECTION[d], item.data), event, out)

    def _at(self, d: int, offset: int) -> int:
        """The stream offset of the core's *offset*; inside TLS, where the record carrying
        the octet before it ends (records before it are forgotten: the core reads forward)."""
        if not self.inside:
            return self.start[d] + offset
        records = self.records[d]
        while len(records) > 1 and records[0][0] < offset:
            records.popleft()
        return records[0][1] if records else self.tls_base[d]

    def _gap(self, event: Event, out: list[Step]) -> None:
        d = event.direction
        text = f"{event.length} bytes missing from the capture"
        out.append(
            self._new(event, d, StepKind.GAP, text, (event.first,), detail(offset=event.offset))
        )
        self._settle(event, "smtp" if self.smtp_port else "other", out)
        if self.tls_session is not None and self.tls_base[d] is not None:
            for problem in self.tls_session.skip(d, event.length):
                self._tls_problem(problem)
            if self.inside:
                return  # the core reads no more of the dialogue inside
        if self.mode == "smtp" and self.observer is not None:
            self._steps(self.observer.skip(_SMTP_DIRECTION[d], event.length), event, out)

    def _eof(self, d: int, event: Event, out: list[Step]) -> None:
        if d == SERVER:
            self._settle(event, "other", out)
        if not self.eof[d]:
            self.eof[d] = True
            self._feed(d, b"", event, out)

    def _dns(self, d: int, event: Event, out: list[Step]) -> None:
        buf = self.held[d]
        buf.extend(event.data)
        while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
            size = int.from_bytes(buf[:2], "big")
            message = bytes(buf[2 : 2 + size])
            del buf[: 2 + size]
            step = self.d.dns_step(
                message, event.time, self.ends[d], (event.first,), self.id, "tcp"
            )
            if step is not None:
                out.append(step)

    def _close(self, event: Event, out: list[Step]) -> None:
        self._settle(event, "other", out)
        for d in (CLIENT, SERVER):
            self._eof(d, event, out)
            if self.observer and self.observer.paused(_SMTP_DIRECTION[d]) and self.segments[d]:
                out.append(self._unparsed(d, event))
        for pending in self.pending:
            self.unacked += [index for _, index in pending]
            pending.clear()

    def _unparsed(self, d: int, event: Event) -> Step:
        """Bytes the core held back for a reply that was never captured (DATA, STARTTLS,
        AUTH), and that nothing let it infer."""
        first = self.segments[d][0]
        size = sum(stop - start for start, stop, _, _ in self.segments[d])
        text = f"{size} bytes never parsed: the reply they waited for was not captured"
        evidence = _unique(self._evidence(d, self.segments[d][-1][1]))
        return self._new(event, d, _ANOMALY, text, evidence, detail(offset=first[0]))

    def coverage(self) -> Coverage:
        return Coverage(self.id, self.units, tuple(sorted(self.unacked)))

    # --- SMTP events to steps

    def _smtp(self, e: smtp.Event, event: Event) -> Step | None:
        d = CLIENT if e.direction is Direction.CLIENT else SERVER  # no Enum hashing
        match e:  # where a unit ends, or (first: _at forgets the records before) it begins
            case smtp.Command():
                if e.chunk_size is not None:
                    self.chunk_last = e.last
                info = detail(
                    verb=_clean(e.verb), error=_clean(e.syntax_error), in_order=e.in_order
                )
                return self._unit(
                    d, event, _COMMAND, _lines(e.raw), self._at(d, e.offset + len(e.raw)), info
                )
            case smtp.Reply():
                if e.inferred:
                    return self._inferred(d, event, e)
                text = _lines(e.raw)
                info = detail(
                    code=e.code,
                    lines=len(e.lines),
                    error=_clean(e.error),
                    answers=_clean(e.answers),
                )
                return self._unit(d, event, _REPLY, text, self._at(d, e.offset + len(e.raw)), info)
            case smtp.Content():
                self.content = self.content or _Content()
                self.content.add(e.data, self._evidence(d, self._at(d, e.offset + len(e.data))))
            case smtp.Gap(content=True):
                self.content = self.content or _Content()
                self.content.gap(e.size)
            case smtp.EndOfData():
                return self._content(d, event, StepKind.CONTENT, self._at(d, e.offset + 3))
            case smtp.EndOfChunk():
                return self._content(d, event, StepKind.BDAT, self._at(d, e.offset), last=e.last)
            case smtp.TlsStarted():
                self._tls_started(d, self._at(d, e.offset))
            case smtp.Opaque():
                offset = self._at(d, e.offset)
                if self.tls_session is not None and not self.tls_session.failed:
                    return None  # the records are read: the handshake step cites them
                evidence = _unique(self._evidence(d, self._at(d, e.offset + e.size)))
                if not self.tls[d]:
                    self.tls[d] = True
                    return self._new(event, d, StepKind.TLS, "TLS", evidence, detail(offset=offset))
            case smtp.Anomaly():
                offset = self._at(d, e.offset)
                text = e.kind.value + (f": {_clean(e.detail)}" if e.detail else "")
                info = detail(offset=offset, anomaly=e.kind.value)
                return self._new(event, d, _ANOMALY, text, self._peek(d, offset), info)
            case smtp.Unfinished():
                return self._unfinished(d, event, e, self._at(d, e.offset + len(e.raw)))
            case smtp.AuthResponse():
                info = detail(cancel=e.cancel or None)
                return self._unit(
                    d, event, _AUTH, _lines(e.raw), self._at(d, e.offset + len(e.raw)), info
                )
            case smtp.Resync():
                self._warn_resync(e, self._at(d, e.offset))
        return None

    def _inferred(self, d: int, event: Event, e: smtp.Reply) -> Step:
        """A reply the capture lacks (core rule 9): no bytes, so no evidence, nothing acked."""
        info = detail(code=e.code, lines=0, answers=e.answers, inferred=True)
        return self._new(event, d, _REPLY, f"{e.code}{INFERRED}", (), info)

    def _unfinished(self, d: int, event: Event, e: smtp.Unfinished, end: int) -> Step:
        """The unit the stream ended inside, as a step of its kind marked incomplete."""
        if e.unit in (smtp.UnitKind.CONTENT, smtp.UnitKind.CHUNK):
            self.content = self.content or _Content()
            self.content.add(e.raw, self._evidence(d, end))
            if e.unit is smtp.UnitKind.CONTENT:
                return self._content(d, event, StepKind.CONTENT, end, incomplete=True)
            return self._content(
                d, event, StepKind.BDAT, end, last=self.chunk_last, incomplete=True
            )
        text = _lines(e.raw)
        if e.unit is smtp.UnitKind.COMMAND:
            kind, info = _COMMAND, detail(verb=_clean(parse_command(e.raw.rstrip(b"\r")).verb))
        elif e.unit is smtp.UnitKind.AUTH_RESPONSE:
            kind, info = _AUTH, ()
        else:
            kind, info = _REPLY, detail(code=e.code, lines=text.count("\n") + 1)
        return self._unit(d, event, kind, text + INCOMPLETE, end, (*info, ("incomplete", True)))

    def _warn_resync(self, e: smtp.Resync, offset: int) -> None:
        """One warning per session, of its first repair, counted each time (core rule 9)."""
        if not self.resync_warning:
            conn = self.d.conn_label(self.id)
            text = f"conn {conn}: SMTP replies resynchronised at server offset {offset}: "
            text += f"the {e.code} answers {_clean(e.answers)}"
            if e.assumed:
                text += f"; no reply captured for {', '.join(map(str, map(_clean, e.assumed)))}"
            if e.inferred:
                text += f"; the {e.code} itself inferred from the client's bytes"
            self.resync_warning = text
        self.d.warnings[self.resync_warning] += 1

    def _content(self, d: int, event: Event, kind: StepKind, end: int, **extra) -> Step:
        content, self.content = self.content or _Content(), None
        evidence = [*content.evidence, *self._evidence(d, end)]
        text = content.text() + (" LAST" if extra.get("last") else "")
        text += INCOMPLETE if extra.get("incomplete") else ""
        step = self._new(event, d, kind, text, _unique(evidence), content.detail(**extra))
        self._track(d, end, step)
        return step

    def _unit(
        self, d: int, event: Event, kind: StepKind, text: str, end: int, info: Detail
    ) -> Step:
        step = self._new(event, d, kind, text, _unique(self._evidence(d, end)), info)
        self._track(d, end, step)
        return step

    def _track(self, d: int, end: int, step: Step) -> None:
        """Wait for the peer to acknowledge the unit ending at stream offset *end* (unless it
        has already: an unfinished unit becomes a step only at the end of its stream)."""
        self.units += 1
        if end > self.acked[d]:
            self.pending[d].append((end, step.index))

    def _evidence(self, d: int, end: int) -> list[int]:
        """The packets carrying bytes before *end*; those wholly before it are dropped."""
        segments, numbers, done = self.segments[d], [], 0
        for start, stop, first, last in segments:
            if start >= end:
                break
            numbers += (first, last)
            if stop > end:
                break
            done += 1
        del segments[:done]
        return numbers

    def _peek(self, d: int, offset: int) -> tuple[int, ...]:
        for start, stop, first, last in self.segments[d]:
            if start <= offset < stop:
                return _unique([first, last])
        return ()


_HANDLERS = {  # reassembler event kind -> the handler appending the steps it completes
    **dict.fromkeys(_CONTROL, _Conn._control),
    "rst": _Conn._rst,
    "ack": _Conn._ack,
    "data": _Conn._data,
    "gap": _Conn._gap,
    "overlap": _Conn._overlap,
    "bad-flags": _Conn._bad_flags,
    "after-fin": _Conn._after_fin,
    "close": _Conn._close,
}


def classify(client: bytes, server: bytes, *, smtp_port: bool) -> tuple[str, tuple[int, int]]:
    """What a connection carries, from its first bytes: (decision, bytes to skip per side).

    The decision is "smtp", "tls", "other" or "wait" (more bytes needed)."""
    if client.startswith(_TLS_RECORD):
        return ("tls" if smtp_port else "other"), (0, 0)
    if smtp_port and (client or server):
        return "smtp", (0, 0)
    if len(server) < 3:
        return "wait", (0, 0)
    if server.startswith(b"220"):
        return "smtp", (0, 0)
    if client.startswith(b"CONNECT ") and server.startswith(b"HTTP/"):
        return _tunnel(client, server)
    return "other", (0, 0)


def _tunnel(client: bytes, server: bytes) -> tuple[str, tuple[int, int]]:
    """SMTP behind an HTTP CONNECT: skip both HTTP heads, then look for the greeting."""
    client_end, server_end = client.find(b"\r\n\r\n"), server.find(b"\r\n\r\n")
    if client_end < 0 or server_end < 0:
        return "wait", (0, 0)
    status = server.split(b" ", 2)[1:2]
    rest = server[server_end + 4 :]
    if status != [b"200"]:
        return "other", (0, 0)
    if len(rest) < 3:
        return "wait", (0, 0)
    return ("smtp" if rest.startswith(b"220") else "other"), (client_end + 4, server_end + 4)


def _lines(raw: bytes) -> str:
    """Lines without their CRLF (or LF), as text joined by LF; bad bytes escaped."""
    if raw.find(b"\n") == len(raw) - 1 and raw.endswith(b"\r\n"):
        return _text(raw[:-2])  # one CRLF line, the common unit
    lines = raw.split(b"\n")
    if len(lines) > 1 and not lines[-1]:
        lines.pop()
    return "\n".join(_text(x[:-1] if x.endswith(b"\r") else x) for x in lines)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def _clean(text: str | None) -> str | None:
    """Text from the core (bytes decoded with ``surrogateescape``) as valid UTF-8, each byte
    that is not escaped as ``_text`` escapes it: the same bytes read the same in ``text``."""
    if text is None or text.isascii():
        return text
    return _text(text.encode("utf-8", "surrogateescape"))


def _unique(numbers: list[int]) -> tuple[int, ...]:
    if len(numbers) == 2:  # one segment's (first, last), the common evidence
        first, last = numbers
        return (first,) if first == last else (first, last) if first < last else (last, first)
    return tuple(sorted(set(numbers)))


def _sha256() -> Hash:
    """A new SHA-256 of content, ``hashlib`` imported with the first: it loads OpenSSL's
    libcrypto, 3.7 MiB resident in each process, which a capture without message content
    never needs (``tests/test_lean.py`` holds it out of such a run)."""
    return signals.imported("hashlib").sha256()


def _tls_records() -> ModuleType:
    """``harness.tls.records``, imported when a connection first carries TLS: it loads
    ``cryptography`` (a third of the dissector's resident memory), which a capture without
    TLS never needs (``tests/test_lean.py`` holds it out of such a run)."""
    return signals.imported("harness.tls.records")
