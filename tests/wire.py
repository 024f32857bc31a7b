"""Crafted runs for the check tests: an exchange written as packets, judged as a run.

A ``Wire`` writes what a run's capture would hold (scapy frames with real sequence numbers,
via ``tests/ladder_pcaps.py``), the real dissector turns it into a ladder, and ``run_of``
wraps that ladder in a ``RunResult`` with the check's own scenario and the outcomes and
stored copies a run would report.  Nothing here judges: it only says what happened.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import count
from pathlib import Path

import dnslib
from ladder_pcaps import Capture, Tcp

from harness.checks.base import REFERENCE, Check
from harness.ladder.dissect import dissect
from harness.ladder.model import Ladder
from harness.outcome import Dsn, Outcome, OutcomeStatus, SendReport
from harness.runner import RunResult, host_names
from harness.scenario import Scenario
from harness.smtp.receiver import StoredMessage

SENDER, DNS, RECEIVER = "192.0.2.10", "192.0.2.53", "192.0.2.25"
TRAP = "192.0.2.99"
SILENT = "192.0.2.26"  # harness.checks.tcp's MX 10 that never answers
EHLO_LINES = ("mail.receiver.com Hello", "PIPELINING", "8BITMIME", "SIZE 10240000")


class Wire:
    """The packets of one run, in the order they crossed the bridge."""

    def __init__(self) -> None:
        self.cap = Capture()
        self._ids = count(1000)
        self._ports = count(40000)

    # --- DNS ------------------------------------------------------------------------------
    def dns(
        self,
        qname: str,
        qtype: str,
        *answers: str,
        client: str = SENDER,
        additional: Iterable[str] = (),
        rcode: str = "NOERROR",
        tc: bool = False,
        answered: bool = True,
        tcp: bool = False,
    ) -> Wire:
        """A question from ``client`` and (unless ``answered=False``) its answer; records
        are zone-file lines ("receiver.com. MX 10 mail.receiver.com.")."""
        query = dnslib.DNSRecord.question(qname, qtype)
        query.header.id = next(self._ids)
        reply = query.reply()
        reply.header.rcode = getattr(dnslib.RCODE, rcode)
        reply.header.tc = int(tc)
        for line in answers:
            reply.add_answer(*dnslib.RR.fromZone(line))
        for line in additional:
            reply.add_ar(*dnslib.RR.fromZone(line))
        if tcp:
            conn = Tcp(self.cap, client, DNS, next(self._ports), 53)
            conn.handshake()
            conn.send("c", _framed(query))
            if answered:
                conn.send("s", _framed(reply))
            _close(conn, "sender-first")
            return self
        self.cap.dns(client, DNS, query, reply=False)
        if answered:
            self.cap.dns(client, DNS, reply, reply=True)
        return self

    def mx(self, *answers: str, qname: str = "receiver.com", **kw: object) -> Wire:
        return self.dns(qname, "MX", *answers, **kw)  # type: ignore[arg-type]

    def seed_mx(self) -> Wire:
        return self.mx(
            "receiver.com. MX 10 mail.receiver.com.",
            additional=["mail.receiver.com. A 192.0.2.25"],
        )

    # --- TCP and SMTP ---------------------------------------------------------------------
    def refused(self, server: str) -> Wire:
        """A SYN to ``server`` answered with RST (nothing listens)."""
        conn = Tcp(self.cap, SENDER, server, next(self._ports))
        conn._send("c", "S")
        conn._advance("c", 1)
        conn._send("s", "RA")
        return self

    def syn(self, server: str) -> Wire:
        """A SYN nobody answers."""
        conn = Tcp(self.cap, SENDER, server, next(self._ports))
        conn._send("c", "S")
        return self

    def pause(self, seconds: float) -> Wire:
        """Nothing crosses the bridge for ``seconds``."""
        self.cap.pause(seconds)
        return self

    def smtp(
        self, server: str = RECEIVER, greeting: str | None = "220 mail.receiver.com ESMTP"
    ) -> Smtp:
        session = Smtp(self, Tcp(self.cap, SENDER, server, next(self._ports)))
        session.conn.handshake()
        if greeting is not None:
            session.server(greeting)
        return session

    def write(self, path: Path) -> Path:
        return self.cap.write(path)


class Smtp:
    """One SMTP connection: the sender's lines and the receiver's, in order."""

    def __init__(self, wire: Wire, conn: Tcp) -> None:
        self.wire, self.conn = wire, conn

    def server(self, *lines: str) -> Smtp:
        """One reply (its lines joined, in one segment), e.g. ``server("250 OK")``."""
        self.conn.send("s", b"".join(f"{line}\r\n".encode() for line in lines))
        return self

    def client(self, *lines: str | bytes) -> Smtp:
        """Lines the sender sends in one segment (pipelined when several)."""
        data = b"".join(x if isinstance(x, bytes) else f"{x}\r\n".encode() for x in lines)
        self.conn.send("c", data)
        return self

    def say(self, line: str, *reply: str) -> Smtp:
        """A command and its reply."""
        return self.client(line).server(*reply)

    def ehlo(self, *extensions: str, name: str = "mail.sender.com") -> Smtp:
        lines = ["mail.receiver.com Hello", *extensions]
        reply = [f"250-{x}" for x in lines[:-1]] + [f"250 {lines[-1]}"]
        return self.say(f"EHLO {name}", *reply)

    def data(self, message: bytes, *reply: str) -> Smtp:
        """DATA, 354, the message dot-stuffed with its end marker, and the reply to it."""
        self.say("DATA", "354 End data with <CR><LF>.<CR><LF>")
        self.conn.send("c", stuffed(message) + b".\r\n")
        return self.server(*(reply or ("250 OK",)))

    def raw_data(self, wire: bytes, *reply: str) -> Smtp:
        """DATA, 354, then ``wire`` sent as it is (it carries its own end)."""
        self.say("DATA", "354 End data with <CR><LF>.<CR><LF>")
        self.conn.send("c", wire)
        return self.server(*(reply or ("250 OK",)))

    def transaction(
        self, rcpts: Iterable[str] = ("c3po@receiver.com",), message: bytes | None = None
    ) -> Smtp:
        """MAIL, RCPT for each, DATA and the message, everything accepted."""
        self.say("MAIL FROM:<luke@sender.com>", "250 OK")
        for rcpt in rcpts:
            self.say(f"RCPT TO:<{rcpt}>", "250 OK")
        return self.data(MESSAGE if message is None else message)

    def quit(self, close: str = "receiver-first", reply: str = "221 2.0.0 bye") -> Wire:
        self.say("QUIT", reply)
        return self.close(close)

    def close(self, how: str = "receiver-first") -> Wire:
        _close(self.conn, how)
        return self.wire


MESSAGE = b"From: luke@sender.com\r\nTo: c3po@receiver.com\r\nSubject: hi\r\n\r\nHello\r\n"


def stuffed(message: bytes) -> bytes:
    """``message`` as DATA carries it: leading dots doubled, a final CRLF."""
    lines = message.split(b"\r\n")
    if lines[-1] == b"":
        lines.pop()
    return b"".join((b"." + x if x.startswith(b".") else x) + b"\r\n" for x in lines)


def _framed(record: dnslib.DNSRecord) -> bytes:
    data = record.pack()
    return len(data).to_bytes(2, "big") + data


def _close(conn: Tcp, how: str) -> None:
    """receiver-first, sender-first, sender-rst (the sender resets), sender-fin-rst (the
    sender closes, then resets when the 221 comes), none."""
    if how == "none":
        return
    if how == "sender-rst":
        conn.rst("c")
        return
    first, second = ("s", "c") if how == "receiver-first" else ("c", "s")
    conn.fin(first)
    conn.ack(second)
    conn.fin(second)
    conn.ack(first)


# --- runs ---------------------------------------------------------------------------------
def scenario_of(check: Check, role: str, setup: int = 0) -> Scenario:
    """The scenario the check's setup runs in the reference column, with ``role`` tested."""
    return check.setups[setup].scenario(REFERENCE, role)


def run_of(
    scenario: Scenario,
    wire: Wire | Path | None,
    folder: Path,
    outcomes: dict[str, OutcomeStatus | Outcome] | None = None,
    stored: dict[str, list[bytes]] | None = None,
    dsns: Iterable[Dsn] = (),
) -> RunResult:
    """A run whose capture is ``wire`` (a capture file, or None: nothing crossed the bridge)."""
    folder.mkdir(parents=True, exist_ok=True)
    if wire is None:
        ladder = Ladder([])
    else:
        pcap = wire if isinstance(wire, Path) else wire.write(folder / "capture.pcap")
        ladder = dissect(str(pcap), host_names(scenario.topology))
    report = SendReport({r: _outcome(r, o) for r, o in (outcomes or {}).items()}, dsns=list(dsns))
    messages = [
        StoredMessage(rcpt, "luke@sender.com", None, data)
        for rcpt, copies in (stored or {}).items()
        for data in copies
    ]
    return RunResult(scenario, folder, report, messages, [], [], ladder)


def _outcome(rcpt: str, given: OutcomeStatus | Outcome) -> Outcome:
    if isinstance(given, Outcome):
        return given
    return Outcome(rcpt, given, "crafted", evidence=(f"crafted: {given}",))
