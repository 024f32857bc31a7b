"""The scripted receiver and sender, talking real SMTP over loopback TCP.

DNS is an injected in-process resolver function built with dnslib (the peers take a
``resolve`` callable); the SMTP traffic itself is real, on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dnslib import MX, PTR, QTYPE, RCODE, RR, A, DNSRecord

from harness.smtp import ClientConnection, ConnectionClosed, Reply, policy
from harness.smtp import sender as sender_module
from harness.smtp.receiver import HOLD_LIMIT, Receiver, ReceiverConfig, ReplyRule
from harness.smtp.sender import ScriptStep, Sender, SenderConfig

ROOT = Path(__file__).resolve().parent.parent
SEED = (ROOT / "fixtures/messages/seed.eml").read_bytes()
RECIPIENTS = ("aibo@receiver.com", "c3po@receiver.com", "r2d2@receiver.com")


class FakeDns:
    """Answers from a table, like an authoritative server would; records every query."""

    def __init__(self, ptr: str = "mail.sender.com", rcode: dict | None = None) -> None:
        self.queries: list[tuple[str, str]] = []
        self.answers = {
            ("receiver.com", "MX"): [
                RR("receiver.com", QTYPE.MX, rdata=MX("mail.receiver.com", 10))
            ],
            ("1.0.0.127.in-addr.arpa", "PTR"): [
                RR("1.0.0.127.in-addr.arpa", QTYPE.PTR, rdata=PTR(ptr))
            ],
            ("mail.receiver.com", "A"): [RR("mail.receiver.com", QTYPE.A, rdata=A("127.0.0.1"))],
        }
        self.glue = {("receiver.com", "MX"): self.answers[("mail.receiver.com", "A")]}
        self.rcode = rcode or {}

    async def __call__(self, qname: str, qtype: str) -> DNSRecord:
        self.queries.append((qname, qtype))
        reply = DNSRecord.question(qname, qtype).reply()
        for rr in self.answers.get((qname, qtype), []):
            reply.add_answer(rr)
        for rr in self.glue.get((qname, qtype), []):
            reply.add_ar(rr)
        known = {name for name, _ in self.answers}
        reply.header.rcode = self.rcode.get(
            qname, RCODE.NOERROR if qname in known else RCODE.NXDOMAIN
        )
        return reply


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def exchange(tmp_path, *, dns=None, receiver=None, sender=None, senders=1, faults=False):
    """Start a receiver on 127.0.0.1:0, run ``senders`` seed senders at it, wait for all.
    Unless ``faults``, neither side may record a fault of ours: whatever the replies and
    outcomes, a protocol outcome is never one."""
    dns = dns or FakeDns()
    rconfig = receiver or ReceiverConfig(maildir=tmp_path / "mail", log_path=tmp_path / "log.jsonl")
    async with Receiver(rconfig, resolve=dns) as rx:
        _, port = await rx.start("127.0.0.1", 0)
        sconfig = sender or SenderConfig(recipients=RECIPIENTS, message=SEED)
        sconfig.port = port
        peers = [Sender(sconfig, resolve=dns) for _ in range(senders)]
        reports = await asyncio.gather(*(peer.send() for peer in peers))
        await rx.idle()
    if not faults:
        assert rx.internal_faults == [] and [p.internal_faults for p in peers] == [[]] * senders
    return (reports[0] if senders == 1 else reports), rx


def kinds(entries, *wanted):
    return [e for e in entries if e["kind"] in wanted]


def test_seed_exchange(tmp_path):
    report, rx = run(exchange(tmp_path))
    assert {r: o.status for r, o in report.outcomes.items()} == {
        "aibo@receiver.com": "rejected",
        "c3po@receiver.com": "delivered",
        "r2d2@receiver.com": "delivered",
    }
    assert (
        report.outcomes["aibo@receiver.com"].stage,
        report.outcomes["aibo@receiver.com"].code,
    ) == ("VRFY", 550)
    sent = [e["lines"][0] for e in kinds(report.transcript, "sent")]
    assert sent == [
        "HELO mail.sender.com",
        "VRFY aibo",
        "VRFY c3po",
        "VRFY r2d2",
        "MAIL FROM:<luke@sender.com>",
        "RCPT TO:<c3po@receiver.com>",
        "RCPT TO:<r2d2@receiver.com>",
        "DATA",
        "QUIT",
    ]
    replies = [e["code"] for e in kinds(report.transcript, "reply")]
    assert replies == [220, 250, 550, 250, 250, 250, 250, 250, 354, 250, 221]
    # the receiver closes first: the sender sees EOF after 221, and only then closes
    assert [e["kind"] for e in report.transcript[-3:]] == ["reply", "eof", "close"]
    # stored byte-exact, one file per recipient
    assert sorted(m.recipient for m in rx.stored) == ["c3po@receiver.com", "r2d2@receiver.com"]
    for message in rx.stored:
        assert message.data == SEED and message.path.read_bytes() == SEED
        assert message.path.parent == tmp_path / "mail" / message.recipient / "new"
    # the receiver's log: HELO, then the PTR query and answer, then 250
    log = [
        (e["kind"], e.get("line") or e.get("qtype") or e.get("lines", [""])[0])
        for e in rx.log.entries
    ]
    helo = log.index(("command", "HELO mail.sender.com"))
    assert log[helo + 1 : helo + 4] == [
        ("dns-query", "PTR"),
        ("dns-answer", ""),
        ("reply", "250 mail.receiver.com Hello mail.sender.com"),
    ]
    assert (tmp_path / "log.jsonl").read_text().count("\n") == len(rx.log.entries)


STAGES = ["<greeting>", "HELO", "MAIL", "RCPT", "DATA", "<end-of-data>"]


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize(
    ("code", "status"), [(421, "deferred"), (451, "deferred"), (554, "rejected")]
)
def test_reply_class_decides_the_outcome(tmp_path, stage, code, status):
    config = ReceiverConfig(maildir=tmp_path / "mail", rules=[ReplyRule(stage, code=code)])
    report, rx = run(exchange(tmp_path, receiver=config))
    delivered = {r for r, o in report.outcomes.items() if o.status == "delivered"}
    assert report.status("c3po@receiver.com") == status and not delivered
    assert report.outcomes["c3po@receiver.com"].code in (code, None)
    assert rx.stored == []


def test_rcpt_rejection_is_per_recipient(tmp_path):
    rules = [ReplyRule("RCPT", argument="c3po@receiver.com", code=452, text="4.2.2 mailbox full")]
    config = ReceiverConfig(maildir=tmp_path / "mail", rules=rules)
    report, rx = run(exchange(tmp_path, receiver=config))
    outcome = report.outcomes["c3po@receiver.com"]
    assert (outcome.status, outcome.stage, outcome.code, outcome.text) == (
        "deferred",
        "RCPT",
        452,
        "4.2.2 mailbox full",
    )
    assert report.status("r2d2@receiver.com") == "delivered"
    assert [m.recipient for m in rx.stored] == ["r2d2@receiver.com"]


class Client:
    """A raw client on loopback that reads replies through the client side of the core."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = ClientConnection()

    @classmethod
    async def connect(cls, port: int) -> Client:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send(self, data: bytes) -> None:
        self.writer.write(self.conn.send_raw(data))

    async def reply(self) -> Reply:
        while not isinstance(event := self.conn.next_event(), Reply):
            if isinstance(event, ConnectionClosed):
                raise AssertionError("the server closed instead of replying")
            self.conn.receive_data(await self.reader.read(4096))
        return event

    async def eof(self) -> bytes:
        """Everything the server still sends, up to its FIN."""
        return await self.reader.read()

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()

    def reset(self) -> None:
        """Leave with an RST (SO_LINGER 0), not a FIN."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


async def chat(port: int, *sends: bytes) -> list[Reply]:
    """Send each chunk and read one reply for it."""
    client = await Client.connect(port)
    replies = [await client.reply()]
    for data in sends:
        client.send(data)
        replies.append(await client.reply())
    await client.close()
    return replies


HELO = b"HELO mail.sender.com\r\n"


@pytest.mark.parametrize(
    ("sends", "codes"),
    [
        ([HELO, b"NOOP " + b"x" * 600 + b"\r\n", b"NOOP\r\n"], [220, 250, 500, 250]),
        ([HELO, b"NO\x00OP\r\n", b"NOOP\r\n"], [220, 250, 500, 250]),
        ([HELO, b"NOOP\n", b"NOOP\r\n"], [220, 250, 500, 250]),
        ([HELO, b"NO\rOP\r\n", b"NOOP\r\n"], [220, 250, 500, 250]),
        ([HELO, b"XYZZY\r\n", b"noop\r\n"], [220, 250, 500, 250]),
        ([b"MAIL FROM:<luke@sender.com>\r\n", HELO], [220, 503, 250]),
        ([HELO, b"RCPT TO:<c3po@receiver.com>\r\n", b"DATA\r\n"], [220, 250, 503, 503]),
        ([HELO, b"MAIL FROM: <luke@sender.com>\r\n", b"MAIL FROM:<>\r\n"], [220, 250, 501, 250]),
        ([HELO, b"MAIL FROM:<a@b> SIZE=1\r\n"], [220, 250, 555]),
        (
            [b"VRFY aibo\r\n", b"VRFY C3PO\r\n", b"EXPN staff\r\n", b"HELP\r\n"],
            [220, 550, 250, 502, 214],
        ),
        ([HELO, b"QUIT\r\n"], [220, 250, 221]),
    ],
)
def test_bad_input_gets_rfc_replies(tmp_path, sends, codes):
    async def scenario():
        async with Receiver(ReceiverConfig(maildir=tmp_path / "mail")) as rx:
            _, port = await rx.start("127.0.0.1", 0)
            replies = await chat(port, *sends)
            await rx.idle()
        return replies, rx

    replies, rx = run(scenario())
    assert [r.code for r in replies] == codes
    assert rx.stored == [] and not kinds(rx.log.entries, "error")


def test_vanishing_mid_data_stores_nothing_and_others_still_work(tmp_path):
    async def scenario():
        config = ReceiverConfig(maildir=tmp_path / "mail")
        async with Receiver(config, resolve=FakeDns()) as rx:
            _, port = await rx.start("127.0.0.1", 0)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                HELO + b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c3po@receiver.com>\r\nDATA\r\n"
            )
            while b"354" not in await reader.read(4096):
                pass
            writer.write(b"Subject: half\r\n\r\nthis message never ends")
            await writer.drain()
            writer.transport.abort()  # the client vanishes (RST)
            sender = SenderConfig(recipients=RECIPIENTS, message=SEED, port=port)
            report = await Sender(sender, resolve=FakeDns()).send()
            await rx.idle()
        return report, rx

    report, rx = run(scenario())
    assert report.status("c3po@receiver.com") == "delivered"
    assert [m.data for m in rx.stored] == [SEED, SEED]
    assert kinds(rx.log.entries, "aborted")
    assert sorted(p.name for p in (tmp_path / "mail").iterdir()) == [
        "c3po@receiver.com",
        "r2d2@receiver.com",
    ]
    assert len(list((tmp_path / "mail/c3po@receiver.com/new").iterdir())) == 1


def test_concurrent_sessions(tmp_path):
    reports, rx = run(exchange(tmp_path, senders=5))
    assert all(r.status("r2d2@receiver.com") == "delivered" for r in reports)
    assert (
        len(rx.stored) == 10 and len({e["session"] for e in kinds(rx.log.entries, "connect")}) == 5
    )


def test_only_crlf_dot_crlf_ends_data_over_the_wire(tmp_path):
    smuggled = b"Subject: x\r\n\r\nhello\n.\nMAIL FROM:<evil@x>\r\n\r\n.\r\r\n.\rend\r\n.\r\n"
    probe = ScriptStep(at="<message>", position="instead", send=smuggled)
    sender = SenderConfig(recipients=("c3po@receiver.com",), message=b"", script=[probe])
    report, rx = run(exchange(tmp_path, sender=sender))
    assert report.status("c3po@receiver.com") == "delivered"
    # dots that start a CRLF line are unstuffed, the rest is stored as sent
    stored = b"Subject: x\r\n\r\nhello\n.\nMAIL FROM:<evil@x>\r\n\r\n\r\r\n\rend\r\n"
    assert [m.data for m in rx.stored] == [stored]
    assert {e["anomaly"] for e in kinds(rx.log.entries, "anomaly")} >= {
        "end-of-data look-alike",
        "bare LF",
    }


@pytest.mark.parametrize(
    ("ptr_check", "helo_code", "noted"),
    [("accept", 250, False), ("note", 250, True), ("reject", 550, True)],
)
def test_helo_ptr_mismatch_policy(tmp_path, ptr_check, helo_code, noted):
    config = ReceiverConfig(maildir=tmp_path / "mail", ptr_check=ptr_check)
    report, rx = run(exchange(tmp_path, dns=FakeDns(ptr="elsewhere.example"), receiver=config))
    assert [e["code"] for e in kinds(report.transcript, "reply")][1] == helo_code
    assert bool(kinds(rx.log.entries, "ptr-mismatch")) is noted
    assert report.status("c3po@receiver.com") == ("rejected" if helo_code == 550 else "delivered")


def test_ptr_at_connect_comes_before_the_greeting(tmp_path):
    config = ReceiverConfig(maildir=tmp_path / "mail", ptr_at="connect")
    _, rx = run(exchange(tmp_path, receiver=config))
    order = [e["kind"] for e in rx.log.entries if e["kind"] in ("dns-query", "reply", "command")]
    assert order[:2] == ["dns-query", "reply"] and order.count("dns-query") == 1


def test_vrfy_252_keeps_everyone_and_rcpt_decides(tmp_path):
    config = ReceiverConfig(maildir=tmp_path / "mail", vrfy="252")
    report, _ = run(exchange(tmp_path, receiver=config))
    assert (
        report.outcomes["aibo@receiver.com"].stage,
        report.outcomes["aibo@receiver.com"].code,
    ) == ("RCPT", 550)
    assert report.status("c3po@receiver.com") == "delivered"


def test_ehlo_multiline_greeting_delay_and_raw_probe(tmp_path):
    rules = [
        ReplyRule("<greeting>", text=["mail.receiver.com ESMTP", "second line"]),
        ReplyRule("MAIL", delay=0.3),
    ]
    config = ReceiverConfig(maildir=tmp_path / "mail", rules=rules, extensions=("PIPELINING",))
    probe = ScriptStep(at="MAIL", position="before", send=b"NOOP\n")
    sender = SenderConfig(recipients=RECIPIENTS, message=SEED, ehlo=True, script=[probe])
    report, _ = run(exchange(tmp_path, receiver=config, sender=sender))
    replies = kinds(report.transcript, "reply")
    assert replies[0]["lines"] == ["mail.receiver.com ESMTP", "second line"]
    assert replies[1]["lines"][1:] == ["PIPELINING"]
    noop = next(i for i, e in enumerate(report.transcript) if e.get("lines") == ["b'NOOP\\n'"])
    assert report.transcript[noop + 1]["code"] == 500
    mail = next(
        i for i, e in enumerate(report.transcript) if e.get("lines", [""])[0].startswith("MAIL")
    )
    assert report.transcript[mail + 1]["t"] - report.transcript[mail]["t"] >= 0.3
    assert report.status("r2d2@receiver.com") == "delivered"


def test_421_mid_session_closes_and_defers(tmp_path):
    config = ReceiverConfig(
        maildir=tmp_path / "mail", rules=[ReplyRule("VRFY", argument="c3po", code=421)]
    )
    report, _ = run(exchange(tmp_path, receiver=config))
    assert {o.status for r, o in report.outcomes.items() if r != "aibo@receiver.com"} == {
        "deferred"
    }
    assert "QUIT" not in [e["lines"][0] for e in kinds(report.transcript, "sent")]
    assert report.transcript[-2]["kind"] == "eof"


# -- sender DNS decisions (no SMTP needed for most) ----------------------------------------


def test_lowest_preference_mx_is_used(tmp_path):
    dns = FakeDns()
    dns.answers[("receiver.com", "MX")].append(
        RR("receiver.com", QTYPE.MX, rdata=MX("decoy.receiver.com", 20))
    )
    dns.answers[("receiver.com", "MX")].reverse()
    report, _ = run(exchange(tmp_path, dns=dns))
    assert [e["host"] for e in kinds(report.transcript, "connect")] == ["mail.receiver.com"]
    assert ("mail.receiver.com", "A") not in dns.queries  # the glue was used


def test_glue_ignored_when_asked(tmp_path):
    dns = FakeDns()
    sender = SenderConfig(recipients=RECIPIENTS, message=SEED, use_glue=False)
    report, _ = run(exchange(tmp_path, dns=dns, sender=sender))
    assert ("mail.receiver.com", "A") in dns.queries and report.status(
        "c3po@receiver.com"
    ) == "delivered"


async def _send_only(dns, port=25, recipients=("c3po@receiver.com",)):
    return await Sender(
        SenderConfig(recipients=recipients, message=SEED, port=port, timeout=2), resolve=dns
    ).send()


class Failing:
    async def __call__(self, qname, qtype):
        raise TimeoutError("no answer")


@pytest.mark.parametrize(
    ("dns", "status"),
    [
        (FakeDns(rcode={"receiver.com": RCODE.NXDOMAIN}), "rejected"),
        (FakeDns(rcode={"receiver.com": RCODE.SERVFAIL}), "deferred"),
        (Failing(), "deferred"),
    ],
)
def test_dns_failures(dns, status):
    report = run(_send_only(dns))
    assert (report.status("c3po@receiver.com"), report.outcomes["c3po@receiver.com"].stage) == (
        status,
        "dns",
    )


def test_null_mx_rejects_without_connecting():
    dns = FakeDns()
    dns.answers[("receiver.com", "MX")] = [RR("receiver.com", QTYPE.MX, rdata=MX(".", 0))]
    report = run(_send_only(dns))
    assert report.status("c3po@receiver.com") == "rejected" and not kinds(
        report.transcript, "connect"
    )


def test_refused_connection_defers():
    with socket.socket() as probe:  # a port that nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    report = run(_send_only(FakeDns(), port=port))
    assert report.outcomes["c3po@receiver.com"].stage == "connect"
    assert report.status("c3po@receiver.com") == "deferred"


INTERRUPTED = """
import asyncio, signal, sys
from harness.smtp.receiver import HOLD_LIMIT, Receiver, ReceiverConfig, ReplyRule

def _exit(signum, frame):
    raise SystemExit(128 + signum)  # as harness.lab does while a lab is up

async def main():
    rules = [ReplyRule("RCPT", delay={delay})]
    async with Receiver(ReceiverConfig(rules=rules)) as rx:
        _, port = await rx.start("127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"HELO a.example\\r\\nMAIL FROM:<a@b.example>\\r\\n")
        writer.write(b"RCPT TO:<c3po@receiver.com>\\r\\nDATA\\r\\nSubject: half\\r\\n")
        print("sent", flush=True)
        await asyncio.sleep(60)

signal.signal(signal.SIGTERM, _exit)
asyncio.run(main())
"""


@pytest.mark.parametrize("delay", [0.0, 30.0], ids=["mid-data", "reply-delayed"])
def test_a_session_interrupted_at_shutdown_logs_nothing(delay):
    """SIGTERM (turned into SystemExit) cancels the sessions quietly: no traceback."""
    script = INTERRUPTED.replace("{delay}", str(delay))
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout.readline() == b"sent\n"
        time.sleep(0.3)  # the receiver reads the client's bytes (or waits to answer them)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM
    assert b"Traceback" not in stderr and b"Exception in callback" not in stderr, stderr.decode()
    assert stderr == b""


# -- typed records: what the receiver answered, what the sender put on the wire ------------


def test_answered_records_every_reply_as_sent(tmp_path):
    rules = [
        ReplyRule("RCPT", argument="r2d2@receiver.com", raw=b"452-mailbox\r\n452 4.2.2 full\r\n")
    ]
    config = ReceiverConfig(maildir=tmp_path / "mail", rules=rules)
    report, rx = run(exchange(tmp_path, receiver=config))
    assert [(a.session, a.key, a.argument, a.address, a.code) for a in rx.answered] == [
        (1, "<greeting>", None, None, 220),
        (1, "HELO", "mail.sender.com", None, 250),
        (1, "VRFY", "aibo", None, 550),
        (1, "VRFY", "c3po", None, 250),
        (1, "VRFY", "r2d2", None, 250),
        (1, "MAIL", "FROM:<luke@sender.com>", "luke@sender.com", 250),
        (1, "RCPT", "TO:<c3po@receiver.com>", "c3po@receiver.com", 250),
        (1, "RCPT", "TO:<r2d2@receiver.com>", "r2d2@receiver.com", 452),
        (1, "DATA", None, None, 354),
        (1, "<end-of-data>", None, None, 250),
        (1, "QUIT", None, None, 221),
    ]
    assert rx.answered[7].lines == ("mailbox", "4.2.2 full")  # the raw reply, as sent
    assert rx.answered[0].lines == ("mail.receiver.com ESMTP smtp-harness",)
    # the same replies the sender read, in the same order
    assert [a.code for a in rx.answered] == [e["code"] for e in kinds(report.transcript, "reply")]
    assert [m.recipient for m in rx.stored] == ["c3po@receiver.com"]


def test_a_rule_that_refuses_commits_nothing(tmp_path):
    """The policy accepted the RCPT (250), the rule sent 550: the reply as sent decides."""
    rules = [ReplyRule("RCPT", argument="c3po@receiver.com", code=550)]
    config = ReceiverConfig(maildir=tmp_path / "mail", rules=rules)
    _, rx = run(exchange(tmp_path, receiver=config))
    rcpt = [(a.address, a.code, a.lines) for a in rx.answered if a.key == "RCPT"]
    assert rcpt == [
        ("c3po@receiver.com", 550, ("Scripted reply",)),
        ("r2d2@receiver.com", 250, ("OK",)),
    ]
    assert [m.recipient for m in rx.stored] == ["r2d2@receiver.com"]


@pytest.mark.parametrize(
    ("message", "content"),
    [
        (SEED, SEED),
        (b"Subject: x\r\n\r\nno final line break", b"Subject: x\r\n\r\nno final line break\r\n"),
        (b"Subject: dots\r\n\r\n.\r\n..two\r\n.", b"Subject: dots\r\n\r\n.\r\n..two\r\n.\r\n"),
    ],
    ids=["seed", "crlf-added", "dot-stuffed"],
)
def test_send_report_contents_are_what_a_receiver_stores(tmp_path, message, content):
    sender = SenderConfig(recipients=("c3po@receiver.com",), message=message)
    report, rx = run(exchange(tmp_path, sender=sender))
    assert report.contents == [content]
    assert [m.data for m in rx.stored] == report.contents


def test_send_report_contents_include_script_steps(tmp_path):
    """An ``instead`` raw message is the content up to its first CRLF.CRLF; bytes a
    ``before`` step sends after 354 are part of it."""
    smuggled = b"Subject: x\r\n\r\nhello\n.\nMAIL FROM:<evil@x>\r\n..dot\r\n.\r\nNOOP\r\n"
    script = [
        ScriptStep(at="<message>", position="before", send=b"X-Early: 1\r\n", reply=False),
        ScriptStep(at="<message>", position="instead", send=smuggled),
    ]
    sender = SenderConfig(recipients=("c3po@receiver.com",), message=b"unsent", script=script)
    report, rx = run(exchange(tmp_path, sender=sender))
    content = b"X-Early: 1\r\nSubject: x\r\n\r\nhello\n.\nMAIL FROM:<evil@x>\r\n.dot\r\n"
    assert report.contents == [content]
    assert [m.data for m in rx.stored] == [content]


def test_no_content_without_354(tmp_path):
    config = ReceiverConfig(maildir=tmp_path / "mail", rules=[ReplyRule("DATA", code=451)])
    report, _ = run(exchange(tmp_path, receiver=config))
    assert report.contents == [] and report.status("c3po@receiver.com") == "deferred"


# -- our faults are records ---------------------------------------------------------------


def test_a_reply_that_cannot_be_formatted_is_our_fault(tmp_path):
    """Issue 8 finding 3, for real: a CR LF in the hostname makes every greeting fail to
    format; each session records the fault, and the sender's outcome is a protocol one."""
    config = ReceiverConfig(maildir=tmp_path / "mail", hostname="mail.receiver.com\r\n250 x")
    reports, rx = run(exchange(tmp_path, receiver=config, senders=2, faults=True))
    assert sorted(f.where for f in rx.internal_faults) == [
        "receiver session 1",
        "receiver session 2",
    ]
    fault = rx.internal_faults[0]
    assert (
        fault.summary.startswith("HarnessError: reply text") and "format_reply" in fault.traceback
    )
    assert [e["summary"] for e in kinds(rx.log.entries, "fault")] == [
        f.summary for f in rx.internal_faults
    ]
    assert {r.status("c3po@receiver.com") for r in reports} == {"deferred"}
    assert rx.stored == [] and rx.answered == []


def test_stopping_the_receiver_mid_data_is_our_fault(tmp_path):
    async def scenario():
        rx = Receiver(ReceiverConfig(maildir=tmp_path / "mail"))
        _, port = await rx.start("127.0.0.1", 0)
        client = await Client.connect(port)
        await client.reply()
        client.send(HELO + b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c3po@receiver.com>\r\n")
        client.send(b"DATA\r\n")
        codes = [(await client.reply()).code for _ in range(4)]
        await rx.stop()  # after 354: the content is owed (none sent, so none unread: a FIN)
        return codes, await client.eof(), rx

    codes, rest, rx = run(scenario())
    assert codes == [250, 250, 250, 354] and rest == b""  # our FIN, nothing more
    assert [f.line() for f in rx.internal_faults] == [
        "receiver session 1: session cut short: the receiver stopped (receiving DATA content)"
    ]
    assert rx.stored == []


def test_a_client_that_quits_leaves_nothing_to_cut_short(tmp_path):
    async def scenario():
        rx = Receiver(ReceiverConfig(maildir=tmp_path / "mail"))
        _, port = await rx.start("127.0.0.1", 0)
        replies = await chat(port, HELO, b"QUIT\r\n")
        await rx.idle()
        await rx.stop()
        return replies, rx

    replies, rx = run(scenario())
    assert [r.code for r in replies] == [220, 250, 221] and rx.internal_faults == []


def test_a_bug_in_a_verb_is_our_fault_and_ends_that_session_only(tmp_path, monkeypatch):
    """A genuine bug cannot be provoked without one: this test *injects* it, replacing the
    policy's NOOP handler with one that raises.  The session that meets it records the
    fault with its traceback and closes; the next session still delivers."""

    def broken(config, facts, cmd):
        raise KeyError("injected")

    monkeypatch.setitem(policy.VERBS, "NOOP", broken)

    async def scenario():
        config = ReceiverConfig(maildir=tmp_path / "mail")
        async with Receiver(config, resolve=FakeDns()) as rx:
            _, port = await rx.start("127.0.0.1", 0)
            client = await Client.connect(port)
            await client.reply()
            client.send(b"NOOP\r\n")
            rest = await client.eof()
            sender = SenderConfig(recipients=("c3po@receiver.com",), message=SEED, port=port)
            report = await Sender(sender, resolve=FakeDns()).send()
            await rx.idle()
        return rest, report, rx

    rest, report, rx = run(scenario())
    assert rest == b"" and report.status("c3po@receiver.com") == "delivered"
    assert [f.line() for f in rx.internal_faults] == ["receiver session 1: KeyError: 'injected'"]
    assert "broken" in rx.internal_faults[0].traceback


def test_a_sender_command_that_cannot_be_formatted_is_our_fault(tmp_path):
    """For real: a CR LF in the HELO name (the loader refuses it; the Sender alone does
    not) cannot be formatted.  Our fault, no outcome invented for it; the receiver saw a
    client leave, which is never its fault."""
    sender = SenderConfig(recipients=("c3po@receiver.com",), message=SEED, helo_name="a\r\nb")
    report, rx = run(exchange(tmp_path, sender=sender, faults=True))
    assert rx.internal_faults == [] and report.outcomes == {}
    assert [e["summary"] for e in kinds(report.transcript, "fault")] == [
        "HarnessError: command 'HELO a\\r\\nb' contains CR or LF; send it as raw bytes"
    ]


def test_a_bug_in_the_sender_is_our_fault_and_other_domains_still_go(tmp_path, monkeypatch):
    """*Injected* bug (none can be provoked without one): ``_Dialogue._verify`` raises.
    The domain it hit records the fault; the other domain still gets its outcome."""

    async def broken(self):
        raise ZeroDivisionError("injected")

    monkeypatch.setattr(sender_module._Dialogue, "_verify", broken)

    async def scenario():
        async with Receiver(ReceiverConfig(maildir=tmp_path / "mail")) as rx:
            _, port = await rx.start("127.0.0.1", 0)
            recipients = ("c3po@receiver.com", "x@nosuch.example")
            peer = Sender(SenderConfig(recipients, SEED, port=port), resolve=FakeDns())
            report = await peer.send()
            await rx.idle()
        return peer, report, rx

    peer, report, rx = run(scenario())
    assert [f.line() for f in peer.internal_faults] == [
        "sender, delivery to 'receiver.com': ZeroDivisionError: injected"
    ]
    assert "broken" in peer.internal_faults[0].traceback
    assert {r: o.status for r, o in report.outcomes.items()} == {"x@nosuch.example": "rejected"}
    assert rx.internal_faults == []


# -- waits that notice a close, timeouts, replies line by line ------------------------------


async def logged(rx: Receiver, kind: str, **fields) -> dict:
    """The first entry of ``kind`` with ``fields`` in the receiver's log, once there (a
    wait on an event, bounded by ``run``'s timeout)."""
    while True:
        for entry in rx.log.entries:
            if entry["kind"] == kind and all(entry.get(k) == v for k, v in fields.items()):
                return entry
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("how", ["close", "reset"])
@pytest.mark.parametrize(
    ("rule", "pending"),
    [
        (ReplyRule("MAIL", delay=10.0), ("command", {"line": "MAIL FROM:<a@b.example>"})),
        (
            ReplyRule("EHLO", line_pause=10.0),
            ("reply-line", {"line": "250-mail.receiver.com Hello a.example"}),
        ),
    ],
    ids=["delay", "line-pause"],
)
def test_a_close_during_a_wait_ends_the_session_at_once(tmp_path, rule, pending, how):
    """Issue 9 finding 3: the client leaves while a 10 s wait is pending; the session ends
    without waiting it out (a bounded wait of 5 s would time out otherwise)."""

    async def scenario():
        config = ReceiverConfig(maildir=tmp_path / "mail", rules=[rule])
        async with Receiver(config) as rx:
            _, port = await rx.start("127.0.0.1", 0)
            client = await Client.connect(port)
            await client.reply()
            client.send(b"EHLO a.example\r\nMAIL FROM:<a@b.example>\r\n")
            await logged(rx, pending[0], **pending[1])
            if how == "close":
                await client.close()
            else:
                client.reset()
            await asyncio.wait_for(rx.idle(), 5)
        return rx

    rx = run(scenario())
    entries = [e["kind"] for e in rx.log.entries]
    assert entries[-2:] == (
        ["client-closed", "close"] if how == "close" else ["connection-lost", "close"]
    )
    if how == "close":
        assert (
            rx.log.entries[-2]["waiting"]
            == f"the {'delay before MAIL' if rule.delay else 'pause between the lines of EHLO'}"
        )
    assert [a.key for a in rx.answered] == ["<greeting>", *(["EHLO"] if rule.delay else [])]
    assert rx.internal_faults == []


def test_pipelined_commands_wait_for_a_delayed_reply_and_are_judged_after_it(tmp_path):
    """RFC 2920 order while the reading goes on: the RCPT pipelined behind a delayed MAIL
    that the rule refuses is judged after that refusal (503)."""

    async def scenario():
        rules = [ReplyRule("MAIL", code=550, delay=1.0)]
        async with Receiver(ReceiverConfig(maildir=tmp_path / "mail", rules=rules)) as rx:
            _, port = await rx.start("127.0.0.1", 0)
            client = await Client.connect(port)
            await client.reply()
            client.send(HELO)
            await client.reply()
            client.send(b"MAIL FROM:<a@b.example>\r\n")
            await logged(rx, "command", line="MAIL FROM:<a@b.example>")
            client.send(b"RCPT TO:<c3po@receiver.com>\r\nDATA\r\n")
            codes = [(await client.reply()).code for _ in range(3)]
            await client.close()
            await rx.idle()
        return codes, rx

    codes, rx = run(scenario())
    assert codes == [550, 503, 503]
    order = [e["kind"] for e in rx.log.entries if e["kind"] in ("received", "reply", "command")]
    assert order[-7:] == ["command", "received", "reply", "command", "reply", "command", "reply"]


@pytest.mark.parametrize(
    "sends",
    [
        b"",
        b"HELO a.example\r\nMAIL FR",
        b"HELO a.example\r\nMAIL FROM:<a@b.example>\r\n"
        b"RCPT TO:<c3po@receiver.com>\r\nDATA\r\nSubject: half\r\n",
    ],
    ids=["after-greeting", "mid-line", "mid-data"],
)
def test_an_idle_client_gets_421_and_the_close(tmp_path, sends):
    """RFC 5321 §4.5.3.2.7 and §3.8, with a short ``timeout``: a timeout, not a fault."""

    async def scenario():
        config = ReceiverConfig(maildir=tmp_path / "mail", timeout=1.0)
        async with Receiver(config) as rx:
            _, port = await rx.start("127.0.0.1", 0)
            client = await Client.connect(port)
            await client.reply()
            client.send(sends)
            replies = [
                await client.reply() for _ in range(sends.count(b"\r\n") - sends.count(b"Subject"))
            ]
            timeout = await client.reply()
            rest = await client.eof()
            await rx.idle()
        return replies, timeout, rest, rx

    replies, timeout, rest, rx = run(scenario())
    assert all(r.positive for r in replies)
    assert (timeout.code, timeout.lines) == (
        421,
        ("4.4.2 mail.receiver.com Error: timeout exceeded",),
    )
    assert rest == b"" and rx.stored == [] and rx.internal_faults == []
    assert [e["kind"] for e in rx.log.entries][-3:] == ["timeout", "reply", "close"]
    assert rx.answered[-1][1:5] == ("<timeout>", None, None, 421)


def test_a_reply_written_line_by_line_shows_a_client_that_speaks_early(tmp_path):
    """Issue 8: greeting ``220-``, a pause, ``220 ``.  The client sends EHLO after the
    first line: the log shows it arriving before the last line, and it is answered only
    after the greeting is complete."""
    lines = ["mail.receiver.com ESMTP", "still greeting"]
    rules = [ReplyRule("<greeting>", text=lines, line_pause=2.0)]

    async def scenario():
        async with Receiver(ReceiverConfig(maildir=tmp_path / "mail", rules=rules)) as rx:
            _, port = await rx.start("127.0.0.1", 0)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            first = await reader.readline()
            writer.write(b"EHLO early.example\r\n")
            rest = [await reader.readline() for _ in range(5)]
            writer.close()
            await rx.idle()
        return first, rest, rx

    first, rest, rx = run(scenario())
    assert first == b"220-mail.receiver.com ESMTP\r\n"
    assert rest[0] == b"220 still greeting\r\n" and rest[1].startswith(b"250-mail.receiver.com")
    trail = [
        (e["kind"], e.get("line") or e.get("data") or e.get("lines", [""])[0])
        for e in rx.log.entries
        if e["kind"] in ("reply-line", "received", "reply", "command")
    ]
    assert trail[:5] == [
        ("reply-line", "220-mail.receiver.com ESMTP"),
        ("received", "EHLO early.example\r\n"),
        ("reply-line", "220 still greeting"),
        ("reply", "220-mail.receiver.com ESMTP"),
        ("command", "EHLO early.example"),
    ]
    assert [a.key for a in rx.answered][:2] == ["<greeting>", "EHLO"]


def test_reading_stops_once_a_waiting_reply_has_held_enough(tmp_path):
    """While a reply waits the client's bytes are still read, but only up to HOLD_LIMIT:
    then reading pauses (memory stays bounded), and resumes when the reply has gone out.
    The pipelined message behind a delayed 354 is still stored byte-exact."""
    body = b"Subject: big\r\n\r\n" + b"0123456789" * 150_000 + b"\r\n"

    async def scenario():
        rules = [ReplyRule("DATA", delay=2.0)]
        async with Receiver(ReceiverConfig(maildir=tmp_path / "mail", rules=rules)) as rx:
            _, port = await rx.start("127.0.0.1", 0)
            client = await Client.connect(port)
            await client.reply()
            client.send(HELO + b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c3po@receiver.com>\r\n")
            codes = [(await client.reply()).code for _ in range(3)]
            client.writer.write(b"DATA\r\n" + body + b".\r\nQUIT\r\n")
            while sum(e["size"] for e in kinds(rx.log.entries, "received")) <= HOLD_LIMIT:
                await asyncio.sleep(0.005)
            (session,) = rx._sessions
            reading = session.transport.is_reading()
            codes += [(await client.reply()).code for _ in range(3)]
            await client.eof()
            await rx.idle()
        return codes, reading, rx

    codes, reading, rx = run(scenario())
    assert codes == [250, 250, 250, 354, 250, 221] and reading is False
    assert [m.data for m in rx.stored] == [body] and rx.internal_faults == []
