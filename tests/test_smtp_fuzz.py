"""Fuzzing the scripted receiver's input (issue 9): arbitrary byte streams, cut into
arbitrary segments, sent to a real receiver over loopback TCP.

For every stream: no fault of ours is recorded, the session ends (after the client's EOF,
or, without one, after QUIT or the receiver's idle timeout), and a
well-formed session on the same receiver afterwards still stores its message byte-exact.
The receiver runs with its waits on (a PTR lookup at HELO, a delayed reply, a reply
written line by line) and CHUNKING and a small SIZE advertised, so the fuzzed bytes reach
BDAT, the size limit and the close-during-a-wait paths.  ``SMTP_FUZZ_EXAMPLES`` raises the
bounded budget of the normal run; every crash found is kept below as an ``@example``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket

from dnslib import MX, PTR, QTYPE, RR, A, DNSRecord
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from harness.smtp.receiver import Receiver, ReceiverConfig, ReplyRule
from harness.smtp.sender import Sender, SenderConfig

EXAMPLES = int(os.environ.get("SMTP_FUZZ_EXAMPLES", "50"))
IDLE = 0.1  # the receiver's timeout: a client that sent no EOF is closed after it
MESSAGE = b"Subject: after the fuzz\r\n\r\n.leading dot\r\nbody\r\n"
TOKENS = [
    b"HELO a.example\r\n",
    b"EHLO a.example\r\n",
    b"MAIL FROM:<a@b.example>\r\n",
    b"MAIL FROM:<a@b.example> SIZE=99999 BODY=8BITMIME\r\n",
    b"RCPT TO:<c3po@receiver.com>\r\n",
    b"RCPT TO:<r2d2@receiver.com> NOTIFY=NEVER\r\n",
    b"DATA\r\n",
    b"BDAT 5\r\n",
    b"BDAT 3 LAST\r\n",
    b"BDAT 0 LAST\r\n",
    b"BDAT 99999999999999999999\r\n",
    b".\r\n",
    b"\r\n.\r\n",
    b"\n.\n",
    b"..\r\n",
    b"RSET\r\n",
    b"VRFY c3po\r\n",
    b"NOOP\r\n",
    b"QUIT\r\n",
    b"STARTTLS\r\n",
    b"\r",
    b"\n",
    b"\x00",
    b"\xff\xfe",
    b"x" * 700,
    b"Subject: fuzz\r\n\r\n",
    b"a line of content\r\n",
    b"BDAT 4\r\nabcd",
    b"BDAT 2 LAST\r\nef",
]
RULES = [
    ReplyRule("VRFY", delay=0.002),
    ReplyRule("EHLO", line_pause=0.001),
    ReplyRule("<end-of-data>", text=["first", "last"], line_pause=0.001),
]
ENVELOPE = b"EHLO a.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c3po@receiver.com>\r\n"
MESSAGE_SENT = b"DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n"
PREFIXES = [
    b"",
    b"HELO a.example\r\n",
    ENVELOPE,
    ENVELOPE + b"DATA\r\n",
    ENVELOPE + b"BDAT 4\r\n",
    ENVELOPE + MESSAGE_SENT,
]
token = st.sampled_from(TOKENS)
pieces = st.lists(st.one_of(token, token, token, st.binary(max_size=40)), max_size=25)
streams = st.builds(lambda prefix, rest: prefix + b"".join(rest), st.sampled_from(PREFIXES), pieces)


async def resolve(qname: str, qtype: str) -> DNSRecord:
    reply = DNSRecord.question(qname, qtype).reply()
    reply.add_answer(RR(qname, QTYPE.PTR, rdata=PTR("a.example")))
    return reply


def segments(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    return [stream[a:b] for a, b in itertools.pairwise(points)]


async def throw(port: int, pieces: list[bytes], eof: bool) -> None:
    """Send the pieces, then (``eof``) our EOF, and read until the receiver closes: after
    our EOF, or after what we sent (QUIT, a 421 to an idle client)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
        if eof:
            writer.write_eof()
        while await reader.read(65536):
            pass
    except OSError:  # reset, broken pipe, not connected: the receiver closed first (QUIT,
        pass  # a 421, a rule's close); writing on is the client's business
    finally:
        writer.close()


async def fuzz_session(pieces: list[bytes], eof: bool) -> Receiver:
    extensions = ("PIPELINING", "8BITMIME", "CHUNKING", "DSN", "SIZE 4000")
    config = ReceiverConfig(extensions=extensions, rules=RULES, timeout=IDLE)
    async with Receiver(config, resolve=resolve) as rx:
        _, port = await rx.start("127.0.0.1", 0)
        await asyncio.wait_for(throw(port, pieces, eof), 10)
        await asyncio.wait_for(rx.idle(), 10)
        assert rx.internal_faults == []
        rx.config.timeout = 30.0  # the short idle bound was for the fuzzed client only
        before = len(rx.stored)
        sender = SenderConfig(recipients=("c3po@receiver.com",), message=MESSAGE, port=port)
        report = await Sender(sender, resolve=_mx).send()
        await asyncio.wait_for(rx.idle(), 10)
        assert report.status("c3po@receiver.com") == "delivered"
        assert [m.data for m in rx.stored[before:]] == [MESSAGE]
    assert rx.internal_faults == []
    return rx


async def _mx(qname: str, qtype: str) -> DNSRecord:
    """The sender's DNS: receiver.com is served on 127.0.0.1 (by glue)."""
    reply = DNSRecord.question(qname, qtype).reply()
    if qtype == "MX":
        reply.add_answer(RR(qname, QTYPE.MX, rdata=MX("mail.receiver.com", 10)))
        reply.add_ar(RR("mail.receiver.com", QTYPE.A, rdata=A("127.0.0.1")))
    return reply


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=streams, cuts=st.lists(st.integers(0, 2000), max_size=8), eof=st.booleans())
def test_any_input_leaves_the_receiver_whole(stream, cuts, eof):
    asyncio.run(asyncio.wait_for(fuzz_session(segments(stream, cuts), eof), 60))


KEYS = ["<greeting>", "HELO", "EHLO", "MAIL", "RCPT", "DATA", "<end-of-data>", "BDAT", "QUIT"]
RAW = [b"", b"250 ok\r\n", b"354 go\r\n", b"garbage\r\n", b"250-unfinished\r\n", b"220 x\n"]
rules = st.lists(
    st.builds(
        ReplyRule,
        st.sampled_from(KEYS),
        code=st.one_of(st.none(), st.sampled_from([220, 250, 354, 421, 451, 550, 221])),
        text=st.one_of(st.none(), st.just(["a", "b"]), st.just("x")),
        raw=st.one_of(st.none(), st.sampled_from(RAW)),
        delay=st.sampled_from([0.0, 0.001]),
        line_pause=st.sampled_from([0.0, 0.001]),
        close=st.booleans(),
    ),
    max_size=4,
)


async def ruled_session(pieces: list[bytes], eof: bool, rules: list[ReplyRule]) -> Receiver:
    config = ReceiverConfig(extensions=("PIPELINING", "CHUNKING"), rules=rules, timeout=IDLE)
    async with Receiver(config, resolve=resolve) as rx:
        _, port = await rx.start("127.0.0.1", 0)
        await asyncio.wait_for(throw(port, pieces, eof), 10)
        await asyncio.wait_for(rx.idle(), 10)
    assert rx.internal_faults == []
    return rx


@settings(max_examples=EXAMPLES // 2, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=streams, cuts=st.lists(st.integers(0, 2000), max_size=8), eof=st.booleans(), rules=rules
)
# found: after a raw reply that never ends (250-...), the core read the timeout's 421 as its
# last line, so the session did not close and hung
@example(b"HELO a.example\r\n", [], False, [ReplyRule("HELO", raw=b"250-a\r\n")])
# found: an empty raw reply (no reply at all) was fed to the core as our EOF, so the next
# reply raised "data received after EOF"
@example(
    b"EHLO a.example\r\nMAIL FROM:<a@b.example>\r\n",
    [],
    False,
    [ReplyRule("EHLO", raw=b""), ReplyRule("MAIL", raw=b"250 ok\r\n")],
)
def test_any_input_under_any_reply_rules_ends_cleanly(stream, cuts, eof, rules):
    """Scripted replies (malformed, unfinished, closing, delayed) do not change it: no
    fault of ours, and the session ends."""
    asyncio.run(asyncio.wait_for(ruled_session(segments(stream, cuts), eof, rules), 60))
