"""Sendmail 8.17 from Debian's packages in real lab namespaces, as sender and as receiver.

Each exchange runs REPEAT times, each time in a fresh lab.  What Sendmail does on the wire
is asserted step by step: these are the facts the conformance checks build on.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

import pytest

from harness.lab import Lab
from harness.ladder.dissect import dissect
from harness.ladder.model import Ladder
from harness.mta.base import MtaUnavailable, Site
from harness.mta.sendmail import Adapter, processes_of
from harness.runner import host_names
from harness.scenario import FIXTURES

pytestmark = pytest.mark.lab

REPEAT = range(10)
SEED = (FIXTURES / "messages" / "seed.eml").read_bytes()
RX = "192.0.2.25"  # the receiver host: its own PTR queries are not the sender's
GLUE = (  # the MX answer carries the exchanger's addresses in its additional section
    "MX 10 mail.receiver.com. + A mail.receiver.com. 192.0.2.25"
    " + AAAA mail.receiver.com. 2001:db8::25"
)
RECIPIENTS = ["aibo@receiver.com", "c3po@receiver.com", "r2d2@receiver.com"]
VERSION = rb"\(8\.17\.1\.9/8\.17\.1\.9\)"
DATE = rb"[A-Z][a-z]{2}, \d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT"
# what Sendmail adds to the seed when submitted by root with -odi (it has Date, Message-ID)
SUBMITTED = re.compile(
    rb"Received: \(from root@localhost\)\r\n\tby mail\.sender\.com " + VERSION
    + rb" id \w{14};\r\n\t" + DATE + rb"\r\n"
)  # fmt: skip
# what the local mailer prepends to a message received over SMTP after HELO
DELIVERED = re.compile(
    rb"Return-Path: <luke@sender\.com>\r\n"
    rb"Received: from mail\.sender\.com \(mail\.sender\.com \[192\.0\.2\.10\]\)\r\n"
    rb"\tby mail\.receiver\.com " + VERSION + rb" with SMTP id \w{14};\r\n\t" + DATE + rb"\r\n"
)  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def prepared() -> None:
    """Unpacked and runnable here, or ``MtaUnavailable`` with the reason: a failure, never
    a skip."""
    Adapter.prepare()


def test_prepare_is_idempotent_and_version_comes_from_the_package() -> None:
    Adapter.prepare()
    assert Adapter.version() == "8.17.1.9"


def test_prepare_names_what_is_missing(monkeypatch) -> None:
    """Without libwrap0 unpacked, the reason is the library: the way it fails on a machine
    where a package cannot be fetched or a library is missing."""
    monkeypatch.setattr(Adapter, "packages", ("sendmail-bin", "sendmail-cf", "m4"))
    with pytest.raises(MtaUnavailable, match=r"^sendmail: libraries not found: libwrap\.so\.0$"):
        Adapter.prepare()


# --- sender role --------------------------------------------------------------------------
def sender_site(lab: Lab, folder: Path) -> Site:
    return Site(lab, "sender", folder, "mail.sender.com", "sender.com", ("luke",))


@pytest.mark.parametrize("repeat", REPEAT)
def test_sendmail_delivers_luke_s_message_by_mx(
    lab, dns, smtp_receiver, capture, tmp_path, repeat
) -> None:
    mta = Adapter(sender_site(lab, tmp_path / "sendmail"), "sender")
    receiver = smtp_receiver()  # the seed's: c3po and r2d2, on 192.0.2.25 only (no IPv6)

    async def exchange() -> None:
        async with receiver:
            await receiver.start("192.0.2.25", 25)
            await asyncio.to_thread(mta.submit, "luke@sender.com", RECIPIENTS, SEED)
            await receiver.idle()

    with mta:
        asyncio.run(exchange())
        assert mta.idle()
        (bounce,) = mta.mailbox("luke")
    assert processes_of(mta.binary) == []
    capture.stop()

    stored = {m.recipient: m.data for m in receiver.stored}
    assert sorted(stored) == ["c3po@receiver.com", "r2d2@receiver.com"]
    for data in stored.values():
        added = SUBMITTED.match(data)
        assert added, data[:200]
        assert data[added.end() :] == SEED  # only Received: is added
        assert mta.as_sent(data) == SEED

    assert _dialogue(receiver.log.entries) == [
        ("EHLO mail.sender.com", "250"),
        ("MAIL From:<luke@sender.com> SIZE=273", "250"),
        ("RCPT To:<r2d2@receiver.com>", "250"),  # the reverse of the command line's order
        ("RCPT To:<c3po@receiver.com>", "250"),
        ("RCPT To:<aibo@receiver.com>", "550"),
        ("DATA", "354"),
        ("<end-of-data>", "250"),
        ("QUIT", "221"),
    ]

    assert bounce.startswith(b"Return-Path: <MAILER-DAEMON>\r\n")
    for line in (b"Final-Recipient: RFC822; aibo@receiver.com", b"Status: 5.1.1"):
        assert line in bounce

    asked = [(e.qname.rstrip("."), e.qtype) for e in dns.log.entries() if e.client[0] != RX]
    assert asked == [
        ("sender.com", "AAAA"), ("sender.com", "A"), ("sender.com", "MX"),  # canonify
        ("receiver.com", "AAAA"), ("receiver.com", "A"), ("receiver.com", "MX"),
        ("receiver.com", "MX"),  # delivery
        ("mail.receiver.com", "AAAA"), ("mail.receiver.com", "A"),
    ]  # fmt: skip

    ladder = dissect(str(capture.path), host_names(lab.topology))
    assert _delivery_steps(ladder) == [
        ("sender", "dns-query", "receiver.com IN MX"),
        ("dns", "dns-answer", GLUE),
        ("sender", "dns-query", "mail.receiver.com IN AAAA"),  # the glue did not do
        ("dns", "dns-answer", "AAAA 2001:db8::25"),
        ("sender", "syn", "SYN to port 25"),  # IPv6 first: nothing listens there
        ("receiver", "rst", "RST"),
        ("sender", "dns-query", "mail.receiver.com IN A"),
        ("dns", "dns-answer", "A 192.0.2.25"),
        ("sender", "syn", "SYN to port 25"),
        ("receiver", "syn-ack", "SYN-ACK"),
        ("sender", "ack", "ACK"),
        ("receiver", "reply", "220 mail.receiver.com ESMTP smtp-harness"),
        ("sender", "command", "EHLO mail.sender.com"),
    ]
    quit, reply, *fins = _closing(ladder)
    assert (quit, reply) == (("sender", "command", "QUIT"), ("receiver", "reply", "221"))
    # Sendmail closes as soon as it has read the 221, without waiting for the server's FIN;
    # the seed receiver closes right after sending it: either FIN may come first (a race)
    assert sorted(fins) == [("receiver", "fin"), ("sender", "fin")]


def test_submit_with_nobody_listening_defers_and_idles(lab, dns, tmp_path) -> None:
    with Adapter(sender_site(lab, tmp_path / "sendmail"), "sender") as mta:
        mta.submit("luke@sender.com", ["c3po@receiver.com"], SEED)
        assert mta.idle()  # deferred: waits for a queue run that nobody starts
        assert len(list(mta.spool.glob("qf*"))) == 1
        assert mta.mailbox("luke") == []
    assert b"Deferred: Connection refused by mail.receiver.com." in mta.log_path.read_bytes()


def test_a_reset_while_sendmail_writes_the_message_defers_it(scenario_run, tmp_path) -> None:
    """The receiver stops reading at its 354 and resets: Sendmail, blocked writing an 8 MB
    body, fails writing it and exits EX_OSERR (71) or EX_IOERR (74) with the message queued.
    That exit was taken for a failed submission (an error cell of tcp.reset-after-354)."""
    message = tmp_path / "large.eml"
    message.write_bytes(SEED + (b"x" * 76 + b"\r\n") * 110_000)
    rule = {"on": "DATA", "stop_reading": True, "reset": True}
    result = scenario_run(
        {
            "sender": {"mta": "sendmail", "recipients": ["c3po@receiver.com"]}
            | {"message": str(message)},
            "receiver": {"replies": [rule]},
        }
    )
    assert result.report.status("c3po@receiver.com") == "deferred"
    (queued,) = result.report.outcomes.values()  # the queue's reason: the write failed
    assert "Connection reset by mail.receiver.com" in queued.text, queued


# --- receiver role ------------------------------------------------------------------------
def receiver_site(lab: Lab, folder: Path) -> Site:
    return Site(lab, "receiver", folder, "mail.receiver.com", "receiver.com", ("c3po", "r2d2"))


@pytest.mark.parametrize("repeat", REPEAT)
def test_sendmail_receives_the_seed(lab, dns, smtp_sender, capture, tmp_path, repeat) -> None:
    mta = Adapter(receiver_site(lab, tmp_path / "sendmail"), "receiver")
    with mta:
        seed = asyncio.run(smtp_sender().send())
        unverified = asyncio.run(smtp_sender(recipients=("aibo@receiver.com",), vrfy=False).send())
        boxes = {user: mta.mailbox(user) for user in ("c3po", "r2d2", "aibo")}
    assert processes_of(mta.binary) == []
    capture.stop()

    assert {r: o.status for r, o in seed.outcomes.items()} == {
        "aibo@receiver.com": "rejected",
        "c3po@receiver.com": "delivered",
        "r2d2@receiver.com": "delivered",
    }
    replies = _replies(seed.transcript)
    assert re.fullmatch(
        r"220 mail\.receiver\.com ESMTP Sendmail 8\.17\.1\.9/8\.17\.1\.9; .* GMT",
        replies.pop("<greeting>"),
    )
    assert re.fullmatch(
        r"250 2\.0\.0 \w{14} Message accepted for delivery", replies.pop("<message>")
    )
    assert replies == {
        "HELO mail.sender.com": (
            "250 mail.receiver.com Hello mail.sender.com [192.0.2.10], pleased to meet you"
        ),
        "VRFY aibo": "550 5.1.1 aibo... User unknown",
        "VRFY c3po": "250 2.1.5 <c3po@mail.receiver.com>",
        "VRFY r2d2": "250 2.1.5 <r2d2@mail.receiver.com>",
        "MAIL FROM:<luke@sender.com>": "250 2.1.0 <luke@sender.com>... Sender ok",
        "RCPT TO:<c3po@receiver.com>": "250 2.1.5 <c3po@receiver.com>... Recipient ok",
        "RCPT TO:<r2d2@receiver.com>": "250 2.1.5 <r2d2@receiver.com>... Recipient ok",
        "DATA": "354 End data with <CR><LF>.<CR><LF>",
        "QUIT": "221 2.0.0 mail.receiver.com closing connection",
    }
    rcpt = unverified.outcomes["aibo@receiver.com"]
    assert (rcpt.status, rcpt.stage, rcpt.code) == ("rejected", "RCPT", 550)
    assert rcpt.text == "5.1.1 <aibo@receiver.com>... User unknown"

    assert boxes["aibo"] == []
    for user in ("c3po", "r2d2"):
        (message,) = boxes[user]
        added = DELIVERED.match(message)
        assert added, message[:300]
        assert message[added.end() :] == SEED
        assert mta.as_sent(message) == SEED
    assert mta.as_sent(SEED) == SEED  # no trace fields first: left as it is

    asked = [(e.qname.rstrip("."), e.qtype) for e in dns.log.entries() if e.client[0] == RX]
    session = [
        ("10.2.0.192.in-addr.arpa", "PTR"), ("mail.sender.com", "A"),  # at connect
        ("sender.com", "AAAA"), ("sender.com", "A"), ("sender.com", "MX"),  # MAIL FROM
        ("receiver.com", "AAAA"), ("receiver.com", "A"), ("receiver.com", "MX"),  # RCPT
    ]  # fmt: skip
    assert asked == session + session  # each session is a new process: no cache

    ladder = dissect(str(capture.path), host_names(lab.topology))
    steps = [(s.src, s.kind, s.text) for s in ladder.steps]
    first = steps[steps.index(("sender", "syn", "SYN to port 25")) :][:8]
    assert first == [
        ("sender", "syn", "SYN to port 25"),
        ("receiver", "syn-ack", "SYN-ACK"),
        ("sender", "ack", "ACK"),
        ("receiver", "dns-query", "10.2.0.192.in-addr.arpa IN PTR"),  # at connect, before 220
        ("dns", "dns-answer", "PTR mail.sender.com."),
        ("receiver", "dns-query", "mail.sender.com IN A"),
        ("dns", "dns-answer", "A 192.0.2.10"),
        ("receiver", "reply", first[7][2]),
    ]
    assert first[7][2].startswith("220 mail.receiver.com ESMTP Sendmail")


# --- nothing left behind ------------------------------------------------------------------
def test_stop_ends_every_process_even_mid_session(tmp_path) -> None:
    with Lab() as lab:
        mta = Adapter(receiver_site(lab, tmp_path / "sendmail"), "receiver")
        mta.start()
        make = lab.socket_factory("sender")
        with make() as held:  # a session left open: its child must go too
            held.connect(("192.0.2.25", 25))
            assert held.recv(512).startswith(b"220 ")
            assert len(processes_of(mta.binary)) >= 2  # the daemon and this session
            mta.stop()
            mta.stop()  # safe twice
        assert processes_of(mta.binary) == []
        namespaces = [lab.ns(h.name) for h in lab.topology.hosts]
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [ns for ns in namespaces if ns in listed]


# --- helpers ------------------------------------------------------------------------------
def _dialogue(entries: list[dict]) -> list[tuple[str, str]]:
    """(command, reply code) pairs from the scripted receiver's log, greeting left out."""
    out, last = [], None
    for entry in entries:
        if entry["kind"] == "command":
            last = entry["line"]
        elif entry["kind"] == "reply" and entry["to"] != "<greeting>":
            said = "<end-of-data>" if entry["to"] == "<end-of-data>" else last
            out.append((said, entry["lines"][-1][:3]))
    return out


def _replies(transcript: list[dict]) -> dict[str, str]:
    """What the scripted sender sent (a command line or <message>) -> the reply's last line."""
    out, last = {}, "<greeting>"
    for entry in transcript:
        if entry["kind"] == "sent":
            last = entry["lines"][0]
        elif entry["kind"] == "message":
            last = "<message>"
        elif entry["kind"] == "reply":
            out[last] = f"{entry['code']} {entry['lines'][-1]}"
    return out


def _delivery_steps(ladder: Ladder) -> list[tuple[str, str, str]]:
    """From the last MX query before the first SYN to the first command."""
    steps = [(s.src, s.kind, s.text) for s in ladder.steps]
    syn = next(i for i, s in enumerate(steps) if s[1] == "syn")
    start = max(i for i, s in enumerate(steps[:syn]) if s[2].endswith("IN MX"))
    end = next(i for i, s in enumerate(steps) if s[1] == "command")
    return steps[start : end + 1]


def _closing(ladder: Ladder) -> list[tuple[str, ...]]:
    """From QUIT on: the command, the reply's code, the FINs, in the capture's order."""
    steps = ladder.steps
    start = next(i for i, s in enumerate(steps) if (s.kind, s.text) == ("command", "QUIT"))
    out: list[tuple[str, ...]] = []
    for step in steps[start:]:
        if step.kind in ("command", "reply"):
            out.append((step.src, step.kind, step.text[:3] if step.kind == "reply" else step.text))
        elif step.kind == "fin":
            out.append((step.src, step.kind))
    return out
