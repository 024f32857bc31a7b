"""Abusive SMTP sessions against the scripted receiver, over real TCP (``tools/torture.py``).

Rules kept here:

1. Each kind of abuse is one generator in ``abuses()``: from a ``random.Random`` it makes a
   ``Plan``, the abusive command lines a session sends and the messages it sends after
   them.  Every kind appears at least once; the rest are drawn by weight.  The kinds:
   overlong command lines, NUL, bare CR and bare LF in commands and in DATA (lone dots
   between odd line breaks too: the smuggling shapes), overlong DATA lines, a 10 MB DATA,
   a slow drip (every byte of the session on its own, with a pause after it).  They run
   ``CONCURRENT`` at a time, held at a barrier once greeted, so that many are open at
   once, against the receiver the seed scenario configures (its PTR lookup at HELO goes
   to the lab's DNS server).
2. A client does not guess how many replies an abusive line earns (a bare LF ends a unit,
   so ``NOOP\\nNOOP`` gets two): after each abusive line it sends ``VRFY <marker>`` and
   reads replies until the one naming its marker.
3. A message is ``MAIL``/``RCPT`` to c3po and r2d2/``DATA``, the body dot-stuffed as a
   sender must (``framing.dot_stuff``), then ``.``.  What must be stored, for a 250 to
   the final dot, is the body as sent before stuffing (with the CRLF that ends the last
   line: RFC 5321 §4.1.1.4): one byte-exact copy per accepted recipient, in memory and in
   the maildir file.  A copy with no 250 is as wrong as a 250 with no copy.
4. A session ends cleanly when its QUIT gets 221 and the receiver then closes (the
   receiver closes first, seed steps 29-33) and nothing else went wrong on the way.
5. The receiver's own faults are ``Receiver.internal_faults``: client garbage must add none.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import NamedTuple

from torture_figure import Figure, detail, noted

from harness.lab import Lab
from harness.runner import resolver_for
from harness.scenario import Scenario
from harness.smtp.framing import COMMAND_LINE_LIMIT, TEXT_LINE_LIMIT, dot_stuff
from harness.smtp.receiver import Receiver
from harness.smtp.replies import ReplyBuilder, parse_reply_line

ROOT = Path(__file__).resolve().parent.parent
SEED_MESSAGE = (ROOT / "fixtures" / "messages" / "seed.eml").read_bytes()
RECIPIENTS = ("c3po@receiver.com", "r2d2@receiver.com")
CONCURRENT = 200
GIANT = 10_000_000  # octets: "a 10 MB DATA", under the receiver's SIZE 10240000
REPLY_S = 120.0  # a reply later than this is no reply (a 10 MB DATA takes seconds)
_COMMANDS = (
    b"NOOP",
    b"HELO mail.sender.com",
    b"MAIL FROM:<luke@sender.com>",
    b"RCPT TO:<c3po@receiver.com>",
    b"VRFY c3po",
    b"RSET",
    b"DATA",
    b"QUIT",
)
_ODD_IN_DATA = (
    b"\x00",
    b"\r",
    b"\n",
    b".",
    b"\n.\n",
    b"\r\n.\n",
    b"\n.\r\n",
    b"\r.\r",
    b"\r\n.\r\r\n",
    b"\r\n.\r\n",
    b"\r\n..\r\n",
    b"\xff\xfe",
)


class Plan(NamedTuple):
    """What one session sends: abusive command lines, then messages (rule 1)."""

    commands: tuple[bytes, ...] = ()
    bodies: tuple[bytes, ...] = (SEED_MESSAGE,)
    pause: float = 0.0  # seconds after every byte: the slow drip


def overlong_command(rng: random.Random) -> Plan:
    verb = rng.choice((b"NOOP ", b"HELO ", b"MAIL FROM:<", b"RCPT TO:<", b"VRFY ", b""))
    size = rng.choice((COMMAND_LINE_LIMIT, COMMAND_LINE_LIMIT + 1, 1001, 65536, 1 << 20))
    return Plan(commands=(verb + b"x" * (size - len(verb) - 2) + b"\r\n",))


def _odd_in_command(odd: bytes, rng: random.Random) -> Plan:
    """``odd`` anywhere in a command line; a bare LF not first, or what follows it would be
    a whole, valid command of its own."""
    line = rng.choice(_COMMANDS)
    at = rng.randint(odd == b"\n", len(line))
    return Plan(commands=(line[:at] + odd + line[at:] + b"\r\n",))


def odd_bytes_in_data(rng: random.Random) -> Plan:
    body = bytearray(SEED_MESSAGE)
    for _ in range(rng.randint(1, 8)):
        at = rng.randint(0, len(body))
        body[at:at] = rng.choice(_ODD_IN_DATA)
    return Plan(bodies=(bytes(body),))


def overlong_data_line(rng: random.Random) -> Plan:
    size = rng.choice((TEXT_LINE_LIMIT - 1, TEXT_LINE_LIMIT, TEXT_LINE_LIMIT + 1, 65536, 1 << 20))
    line = rng.choice((b"", b".")) + b"y" * (size - 2) + b"\r\n"
    at = SEED_MESSAGE.index(b"\r\n\r\n") + 4  # the first body line
    return Plan(bodies=(SEED_MESSAGE[:at] + line + SEED_MESSAGE[at:],))


def giant_data(rng: random.Random) -> Plan:
    return Plan(bodies=(_giant(),))


def slow_drip(rng: random.Random, pause: float) -> Plan:
    return Plan(commands=(b"NOOP\r\n",), pause=pause)


_GIANT: list[bytes] = []


def _giant() -> bytes:
    """``GIANT`` octets: the seed message, then 79-octet lines, every 100th opening with a
    dot (stuffed on the wire), then one shorter line to make the count exact."""
    if not _GIANT:
        count = (GIANT - len(SEED_MESSAGE) - 2) // 79
        lines = [b"%s%076d\r\n" % (b"." if n % 100 == 0 else b"y", n) for n in range(count)]
        body = SEED_MESSAGE + b"".join(lines)
        _GIANT.append(body + b"z" * (GIANT - len(body) - 2) + b"\r\n")
    return _GIANT[0]


def abuses(drip_pause: float) -> dict[str, tuple[Callable[[random.Random], Plan], float]]:
    """Each kind of abusive session and its weight in the draw (rule 1)."""
    return {
        "overlong command line": (overlong_command, 10),
        "NUL in a command": (partial(_odd_in_command, b"\x00"), 10),
        "bare CR in a command": (partial(_odd_in_command, b"\r"), 10),
        "bare LF in a command": (partial(_odd_in_command, b"\n"), 10),
        "NUL, bare CR, bare LF, lone dots in DATA": (odd_bytes_in_data, 20),
        "overlong DATA line": (overlong_data_line, 10),
        "10 MB DATA": (giant_data, 0.5),
        "slow drip, a byte at a time": (partial(slow_drip, pause=drip_pause), 2),
    }


@dataclass
class Sent:
    """A message as the client sent it, and the receiver's reply to its final dot."""

    mail_from: str
    recipients: tuple[str, ...]  # those the receiver accepted (250 to RCPT)
    stored_form: bytes  # what a 250 obliges the receiver to store (rule 3)
    code: int | None = None


@dataclass
class Session:
    number: int
    kind: str
    plan: Plan
    sent: list[Sent] = field(default_factory=list)
    replies_to_abuse: int = 0
    problems: list[str] = field(default_factory=list)
    clean: bool = False


class _Wave:
    """Sessions held once greeted until all of the wave are (rule 1), for at most ``hold``
    seconds: half the receiver's idle timeout, which would otherwise end them first."""

    def __init__(self, size: int, hold: float) -> None:
        self.size = size
        self.hold = hold
        self.arrived = 0
        self.greeted = 0
        self.peak = 0
        self.all_in = asyncio.Event()

    async def meet(self, greeted: bool) -> None:
        self.arrived += 1
        self.greeted += greeted
        self.peak = max(self.peak, self.greeted)
        if self.arrived == self.size:
            self.all_in.set()
        with contextlib.suppress(TimeoutError):  # the peak figure shows it
            await asyncio.wait_for(self.all_in.wait(), self.hold)


class _Client:
    """One TCP connection to the receiver: write (or drip) bytes, read whole replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pause: float):
        self.reader, self.writer, self.pause = reader, writer, pause

    async def send(self, data: bytes) -> None:
        if not self.pause:
            self.writer.write(data)
            await self.writer.drain()
            return
        for i in range(len(data)):
            self.writer.write(data[i : i + 1])
            await self.writer.drain()
            await asyncio.sleep(self.pause)

    async def reply(self) -> tuple[int | None, tuple[str, ...]]:
        builder = ReplyBuilder()
        while True:
            line = await asyncio.wait_for(self.reader.readline(), REPLY_S)
            if not line:
                raise ConnectionError("the receiver closed the connection")
            done = builder.add(parse_reply_line(line.rstrip(b"\r\n")))
            if done is not None:
                return done[0], done[1]

    async def command(self, line: bytes) -> int | None:
        await self.send(line)
        return (await self.reply())[0]

    async def closed_by_peer(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), REPLY_S) == b""


async def _run_session(
    session: Session, wave: _Wave, connect: Callable[[], socket.socket], address: tuple
) -> None:
    sock = connect()
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, address)
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
    except OSError as exc:
        sock.close()
        session.problems.append(f"connect: {exc}")
        await wave.meet(False)
        return
    client = _Client(reader, writer, session.plan.pause)
    try:
        greeted = await _greeted(session, client)
        await wave.meet(greeted)
        if greeted:
            await _converse(session, client)
    except (OSError, TimeoutError) as exc:  # ConnectionError is an OSError
        session.problems.append(f"{type(exc).__name__}: {exc}")
    finally:
        writer.close()


async def _greeted(session: Session, client: _Client) -> bool:
    try:
        return _expect(session, "greeting", (await client.reply())[0], 220)
    except (OSError, TimeoutError) as exc:
        session.problems.append(f"greeting: {type(exc).__name__}: {exc}")
        return False


async def _converse(session: Session, client: _Client) -> None:
    _expect(session, "EHLO", await client.command(b"EHLO mail.sender.com\r\n"), 250)
    for k, line in enumerate(session.plan.commands):
        marker = f"torture-{session.number}-{k}"
        await client.send(line + f"VRFY {marker}\r\n".encode())
        while not any(marker in text for text in (await client.reply())[1]):
            session.replies_to_abuse += 1
    for k, body in enumerate(session.plan.bodies):
        mail_from = f"s{session.number}m{k}@sender.com"
        session.sent.append(await _message(session, client, mail_from, body))
    _expect(session, "QUIT", await client.command(b"QUIT\r\n"), 221)
    if not await client.closed_by_peer():
        session.problems.append("bytes after 221 instead of the receiver's close")
    session.clean = not session.problems


async def _message(session: Session, client: _Client, mail_from: str, body: bytes) -> Sent:
    _expect(session, "MAIL", await client.command(f"MAIL FROM:<{mail_from}>\r\n".encode()), 250)
    accepted = []
    for rcpt in RECIPIENTS:
        if await client.command(f"RCPT TO:<{rcpt}>\r\n".encode()) == 250:
            accepted.append(rcpt)
    sent = Sent(mail_from, tuple(accepted), _stored_form(body))
    if _expect(session, "DATA", await client.command(b"DATA\r\n"), 354):
        sent.code = await client.command(dot_stuff(body) + b".\r\n")
    if not accepted:
        session.problems.append(f"{mail_from}: no recipient accepted")
    return sent


def _expect(session: Session, what: str, code: int | None, want: int) -> bool:
    if code != want:
        session.problems.append(f"{what}: {code}, expected {want}")
    return code == want


def _stored_form(body: bytes) -> bytes:
    """The body as the receiver must store it: with a final CRLF (as ``dot_stuff`` sends)."""
    return body if not body or body.endswith(b"\r\n") else body + b"\r\n"


def _plans(count: int, rng: random.Random, drip_pause: float) -> list[tuple[str, Plan]]:
    kinds = abuses(drip_pause)
    names = list(kinds) + rng.choices(
        list(kinds), [weight for _, weight in kinds.values()], k=max(0, count - len(kinds))
    )
    return [(name, kinds[name][0](rng)) for name in names[:count]]


async def _torture(lab: Lab, scenario: Scenario, sessions: list[Session], folder: Path):
    """Serve ``sessions`` in waves; (the receiver, the most sessions open at once)."""
    host = lab.host(scenario.receiver_host)
    config = dataclasses.replace(scenario.receiver, maildir=folder / "maildir")
    receiver = Receiver(
        config,
        resolve=resolver_for(lab, host.name),
        socket_factory=lab.socket_factory(host.name),
    )
    peak = 0
    async with receiver:
        address = await receiver.start(host.ipv4, scenario.receiver_port)
        client = lab.socket_factory(scenario.sender_host)
        connect = partial(client, socket.AF_INET, socket.SOCK_STREAM)
        for start in range(0, len(sessions), CONCURRENT):
            wave_sessions = sessions[start : start + CONCURRENT]
            wave = _Wave(len(wave_sessions), config.timeout / 2)
            await asyncio.gather(*(_run_session(s, wave, connect, address) for s in wave_sessions))
            peak = max(peak, wave.peak)
        await receiver.idle()
    return receiver, peak


def smtp_abuse(
    lab: Lab, scenario: Scenario, count: int, rng: random.Random, folder: Path, drip_pause: float
) -> Iterator[Figure]:
    """The figures of ``count`` abusive sessions from the scenario's sender host to its
    receiver, configured as the scenario says (rules 1-5)."""
    plans = _plans(count, rng, drip_pause)
    sessions = [Session(n, kind, plan) for n, (kind, plan) in enumerate(plans, 1)]
    began = time.monotonic()
    receiver, peak = asyncio.run(_torture(lab, scenario, sessions, folder))
    yield noted(f"SMTP abusive sessions, in {time.monotonic() - began:.0f} s", len(sessions))
    for kind, n in sorted(Counter(s.kind for s in sessions).items()):
        yield noted(f"SMTP sessions: {kind}", n)
    want_peak = min(CONCURRENT, len(sessions))
    yield Figure("SMTP sessions open at once (each held once greeted)", peak, want_peak)
    clean = sum(s.clean for s in sessions)
    yield Figure(
        "SMTP sessions ended cleanly (221, then the receiver closed)", clean, len(sessions)
    )
    yield noted("SMTP replies to abusive command lines", sum(s.replies_to_abuse for s in sessions))
    for s in sessions:
        for problem in s.problems[:3]:
            detail(f"SMTP session {s.number} ({s.kind}): {problem}")
    yield from _storage_figures(sessions, receiver)


def _storage_figures(sessions: list[Session], receiver: Receiver) -> Iterator[Figure]:
    sent = [m for s in sessions for m in s.sent]
    accepted = [m for m in sent if m.code == 250]
    copies: dict[tuple[str, str], list[tuple[bytes, bytes | None]]] = {}
    for copy in receiver.stored:  # in memory, and in the maildir file
        on_disk = copy.path.read_bytes() if copy.path else None
        copies.setdefault((copy.mail_from, copy.recipient), []).append((copy.data, on_disk))
    owed = [(m, rcpt) for m in accepted for rcpt in m.recipients]
    fates = Counter(_fate(copies.get((m.mail_from, r)), m.stored_form) for m, r in owed)
    for m, r in owed:
        fate = _fate(copies.get((m.mail_from, r)), m.stored_form)
        if fate != "exact":
            detail(f"SMTP {m.mail_from} -> {r}: a 250 to its final dot, and the copy is {fate}")
    unasked = len(receiver.stored) - sum(len(copies.get((m.mail_from, r), [])) for m, r in owed)
    yield noted("SMTP messages sent", len(sent))
    yield noted("SMTP messages given 250 to the final dot", len(accepted))
    yield noted("SMTP messages refused at the final dot", len(sent) - len(accepted))
    yield noted("SMTP copies owed (one per accepted recipient of a 250)", len(owed))
    yield Figure(
        "SMTP copies stored byte-exact, in memory and in the maildir", fates["exact"], len(owed)
    )
    yield Figure("SMTP copies lost (a 250, no copy)", fates["lost"])
    yield Figure("SMTP copies corrupted (not byte-exact)", fates["corrupted"])
    yield Figure("SMTP copies doubled (stored more than once)", fates["doubled"])
    yield Figure("SMTP copies stored without a 250 to their final dot", unasked)
    yield Figure("SMTP internal faults the receiver recorded", len(receiver.internal_faults))


def _fate(copies: list[tuple[bytes, bytes | None]] | None, sent: bytes) -> str:
    """What became of one owed copy: each copy is (in memory, in the maildir file)."""
    if not copies:
        return "lost"
    if len(copies) > 1:
        return "doubled"
    return "exact" if copies[0] == (sent, sent) else "corrupted"
