"""The scripted receiver and sender, talking real SMTP over loopback TCP.

DNS is an injected in-process resolver function built with dnslib (the peers take a
``resolve`` callable); the SMTP traffic itself is real, on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dnslib import MX, PTR, QTYPE, RCODE, RR, A, DNSRecord

from harness.smtp import ClientConnection, Reply
from harness.smtp.receiver import Receiver, ReceiverConfig, ReplyRule
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


async def exchange(tmp_path, *, dns=None, receiver=None, sender=None, senders=1):
    """Start a receiver on 127.0.0.1:0, run ``senders`` seed senders at it, wait for all."""
    dns = dns or FakeDns()
    rconfig = receiver or ReceiverConfig(maildir=tmp_path / "mail", log_path=tmp_path / "log.jsonl")
    async with Receiver(rconfig, resolve=dns) as rx:
        _, port = await rx.start("127.0.0.1", 0)
        sconfig = sender or SenderConfig(recipients=RECIPIENTS, message=SEED)
        sconfig.port = port
        reports = await asyncio.gather(
            *(Sender(sconfig, resolve=dns).send() for _ in range(senders))
        )
        await rx.idle()
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


async def chat(port: int, *sends: bytes) -> list[Reply]:
    """Send each chunk and read one reply for it, through the client side of the core."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = ClientConnection()

    async def reply() -> Reply:
        while not isinstance(event := conn.next_event(), Reply):
            conn.receive_data(await reader.read(4096))
        return event

    replies = [await reply()]
    for data in sends:
        writer.write(conn.send_raw(data))
        replies.append(await reply())
    writer.close()
    await writer.wait_closed()
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
from harness.smtp.receiver import Receiver, ReceiverConfig, ReplyRule

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
