"""Dissection: a crafted seed exchange gives exactly the seed's ladder, however it is cut."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random

import dnslib
import pytest
from ladder_pcaps import (
    CORPUS,
    DNS,
    FUZZ,
    HOSTS,
    MESSAGE,
    RECEIVER,
    SEED_LADDER,
    SENDER,
    Capture,
    Tcp,
    seed_capture,
)

from harness.capture.pcapfile import PcapError, read
from harness.ladder.dissect import dissect, iter_steps
from harness.ladder.model import Ladder, Step, StepKind, new_step
from harness.render import render
from harness.smtp.events import PAUSED, AuthResponse, Command, Direction, Reply, Resync
from harness.smtp.protocol import Observer, ServerConnection


def rows(ladder: Ladder) -> list[tuple]:
    return [(s.src, s.dst, s.kind, s.text) for s in ladder.steps]


def assert_seed(ladder: Ladder) -> None:
    """The seed's steps, in order; the content step's text is checked on its own."""
    actual = [(*row[:3], None if row[2] == "content" else row[3]) for row in rows(ladder)]
    assert actual == SEED_LADDER


def test_the_seed_exchange_gives_the_seed_ladder(tmp_path):
    ladder = dissect(seed_capture(tmp_path / "seed.pcap"), HOSTS)
    assert_seed(ladder)
    assert [s.index for s in ladder.steps] == list(range(1, len(SEED_LADDER) + 1))
    assert ladder.participants == ["mail.sender.com", "dns", "mail.receiver.com"]
    assert ladder.warnings == {}
    assert ladder.coverage[1].units == 21 and ladder.coverage[1].complete


def test_content_is_one_step_unstuffed_with_size_lines_and_digest(tmp_path):
    ladder = dissect(seed_capture(tmp_path / "seed.pcap"), HOSTS)
    (content,) = [s for s in ladder.steps if s.kind == "content"]
    stored = MESSAGE.replace(b"\r\n..", b"\r\n.")
    assert content.get("size") == len(stored) == len(MESSAGE) - 1
    assert content.get("lines") == 7
    assert content.get("sha256") == hashlib.sha256(stored).hexdigest()
    assert content.get("first_line") == "From: Luke <luke@sender.com>"
    assert content.text.startswith("7 lines, 140 bytes, sha256:")


def test_multi_line_reply_is_one_step(tmp_path):
    dialogue = [
        ("s", b"220 mail.receiver.com ESMTP\r\n"),
        ("c", b"EHLO mail.sender.com\r\n"),
        ("s", b"250-mail.receiver.com\r\n250-PIPELINING\r\n250 8BITMIME\r\n"),
    ]
    ladder = dissect(seed_capture(tmp_path / "e.pcap", dialogue=dialogue, cut=7), HOSTS)
    (ehlo,) = [s for s in ladder.steps if s.kind == "reply" and s.get("code") == 250]
    assert ehlo.text == "250-mail.receiver.com\n250-PIPELINING\n250 8BITMIME"
    assert ehlo.get("lines") == 3
    assert len(ehlo.evidence) == 8  # 57 bytes in 7-byte segments


@pytest.mark.parametrize("cut", [1, 5, 13])
def test_lines_cut_across_segments_give_the_same_ladder(tmp_path, cut):
    whole = dissect(seed_capture(tmp_path / "whole.pcap"), HOSTS)
    cut_up = dissect(seed_capture(tmp_path / "cut.pcap", cut=cut), HOSTS)
    assert rows(cut_up) == rows(whole)
    helo = next(s for s in cut_up.steps if s.text == "HELO mail.sender.com")
    assert len(helo.evidence) == -(-len(b"HELO mail.sender.com\r\n") // cut)


def test_several_lines_per_segment_give_one_step_each(tmp_path):
    dialogue = [
        ("s", b"220 mail.receiver.com ESMTP\r\n"),
        ("c", b"EHLO a\r\n"),
        ("s", b"250 mail.receiver.com\r\n"),
        ("c", b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nRCPT TO:<e@f.example>\r\n"),
        ("s", b"250 OK\r\n250 OK\r\n550 no\r\n"),
    ]
    ladder = dissect(seed_capture(tmp_path / "p.pcap", dialogue=dialogue), HOSTS)
    smtp = [(s.kind, s.text, s.evidence) for s in ladder.steps if s.kind in ("command", "reply")]
    pipelined, replies = smtp[3:6], smtp[6:9]
    assert [t for _, t, _ in pipelined] == [
        "MAIL FROM:<a@b.example>",
        "RCPT TO:<c@d.example>",
        "RCPT TO:<e@f.example>",
    ]
    assert len({e for _, _, e in pipelined}) == 1  # one packet carried all three
    assert [t for _, t, _ in replies] == ["250 OK", "250 OK", "550 no"]


def test_retransmissions_are_not_doubled(tmp_path):
    once = dissect(seed_capture(tmp_path / "once.pcap"), HOSTS)
    twice = dissect(seed_capture(tmp_path / "twice.pcap", retransmit=True), HOSTS)
    assert rows(twice) == rows(once)
    assert twice.warnings == {}


def test_starttls_gives_opaque_tls_steps(tmp_path):
    hello = b"\x16\x03\x01\x00\x05hello"
    dialogue = [
        ("s", b"220 mail.receiver.com ESMTP\r\n"),
        ("c", b"EHLO a\r\n"),
        ("s", b"250-mail.receiver.com\r\n250 STARTTLS\r\n"),
        ("c", b"STARTTLS\r\n"),
        ("s", b"220 go ahead\r\n"),
        ("c", hello),
        ("s", b"\x16\x03\x03\x00\x02hi"),
        ("c", b"QUIT\r\n"),  # inside TLS: must not become a command
    ]
    ladder = dissect(seed_capture(tmp_path / "tls.pcap", dialogue=dialogue), HOSTS)
    tail = [(s.src, s.kind, s.text) for s in ladder.steps if s.kind in ("command", "reply", "tls")]
    assert tail[-4:] == [
        ("mail.sender.com", "command", "STARTTLS"),
        ("mail.receiver.com", "reply", "220 go ahead"),
        ("mail.sender.com", "tls", "TLS"),
        ("mail.receiver.com", "tls", "TLS"),
    ]


def test_bdat_chunk_is_one_step(tmp_path):
    chunk = b"Subject: x\r\n\r\nhi\r\n"
    dialogue = [
        ("s", b"220 mail.receiver.com ESMTP\r\n"),
        ("c", b"EHLO a\r\n"),
        ("s", b"250 CHUNKING\r\n"),
        ("c", b"MAIL FROM:<a@b.example>\r\n"),
        ("s", b"250 OK\r\n"),
        ("c", b"RCPT TO:<c@d.example>\r\n"),
        ("s", b"250 OK\r\n"),
        ("c", b"BDAT %d LAST\r\n" % len(chunk) + chunk),
        ("s", b"250 queued\r\n"),
    ]
    ladder = dissect(seed_capture(tmp_path / "bdat.pcap", dialogue=dialogue, cut=6), HOSTS)
    kinds = [(s.kind, s.text.split(",")[0]) for s in ladder.steps if s.conn]
    assert ("command", "BDAT 18 LAST") in kinds
    bdat = next(s for s in ladder.steps if s.kind == "bdat")
    assert (bdat.get("size"), bdat.get("lines"), bdat.get("last")) == (len(chunk), 3, True)
    assert kinds[kinds.index(("bdat", "3 lines")) + 1] == ("reply", "250 queued")


def test_rst_and_sender_first_close(tmp_path):
    ladder = dissect(seed_capture(tmp_path / "rst.pcap", close="rst"), HOSTS)
    assert [(s.src, s.kind) for s in ladder.steps[-2:]] == [
        ("mail.sender.com", "fin"),
        ("mail.sender.com", "rst"),
    ]


def test_foreign_capture_keeps_addresses_and_infers_roles_without_handshake(tmp_path):
    cap = Capture()
    tcp = Tcp(cap, SENDER, RECEIVER, port=2525)
    tcp.send("s", b"220 hi\r\n")
    tcp.send("c", b"QUIT\r\n")
    ladder = dissect(cap.write(tmp_path / "f.pcap"))
    assert rows(ladder) == [
        (RECEIVER, SENDER, "reply", "220 hi"),
        (SENDER, RECEIVER, "command", "QUIT"),
    ]


def test_smtp_on_another_port_is_found_by_its_greeting(tmp_path):
    cap = Capture()
    for port, greeting in ((8025, b"220 hi\r\n"), (8080, b"HTTP/1.1 200 OK\r\n")):
        tcp = Tcp(cap, SENDER, RECEIVER, port=port)
        tcp.handshake()
        tcp.send("s", greeting)
        tcp.send("c", b"QUIT\r\n")
    ladder = dissect(cap.write(tmp_path / "ports.pcap"))
    assert [(s.conn, s.kind) for s in ladder.steps if s.kind in ("reply", "command")] == [
        (1, "reply"),
        (1, "command"),
    ]
    assert sum(s.kind == "syn" for s in ladder.steps) == 2


def test_iter_steps_streams(tmp_path):
    path = seed_capture(tmp_path / "seed.pcap")
    steps = iter_steps(path, HOSTS)
    first = next(steps)
    assert (first.index, first.kind) == (1, "dns-query")
    assert len(list(steps)) == len(SEED_LADDER) - 1


def test_bad_files_raise_one_line_pcap_errors(tmp_path):
    missing = tmp_path / "missing.pcap"
    with pytest.raises(PcapError, match=r"missing\.pcap: cannot read"):
        dissect(missing)
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"not a capture at all")
    with pytest.raises(PcapError, match=r"junk.pcap: offset 0: not a pcap"):
        dissect(junk)


def test_garbage_inside_packets_is_skipped_and_counted(tmp_path):
    clean = seed_capture(tmp_path / "seed.pcap")
    cap = Capture([record.data for record in read(str(clean))])
    rng = random.Random(7)
    for _ in range(30):  # truncated IP headers among the real frames
        at = rng.randrange(len(cap.frames))
        cap.frames.insert(at, cap.frames[at][:14] + bytes([0x45, rng.randrange(256)]))
    ladder = dissect(cap.write(tmp_path / "garbage.pcap"), HOSTS)
    assert rows(ladder) == rows(dissect(clean, HOSTS))
    assert sum(ladder.warnings.values()) == 30


OPENING = [("s", b"220 hi\r\n"), ("c", b"EHLO a\r\n"), ("s", b"250 CHUNKING\r\n")]
OPENING += [("c", b"MAIL FROM:<a@b.example>\r\n"), ("s", b"250 OK\r\n")]
OPENING += [("c", b"RCPT TO:<c@d.example>\r\n"), ("s", b"250 OK\r\n")]


@pytest.mark.parametrize(
    ("dialogue", "expected"),
    [
        pytest.param(
            [
                ("c", b"BDAT 12 LAST\r\nabcd"),
                ("lost", b"efgh"),
                ("c", b"ijkl"),
                ("s", b"250 queued\r\n"),
                ("c", b"QUIT\r\n"),
            ],
            [
                ("gap", "4 bytes missing from the capture"),
                ("bdat", "12 bytes (4 missing)"),
                ("reply", "250 queued"),
                ("command", "QUIT"),
            ],
            id="bdat",
        ),
        pytest.param(
            [
                ("c", b"DATA\r\n"),
                ("s", b"354 go\r\n"),
                ("c", b"Subject: x\r\n"),
                ("lost", b"hello\r\n"),
                ("c", b".\r\n"),
                ("s", b"250 OK\r\n"),
            ],
            [
                ("gap", "7 bytes missing from the capture"),
                ("content", "19 bytes (7 missing)"),
                ("reply", "250 OK"),
            ],
            id="data",
        ),
        pytest.param(
            [("c", b"NOOP\r\nNO"), ("lost", b"OP\r\nNO"), ("c", b"OP\r\nQUIT\r\n")],
            [
                ("gap", "6 bytes missing from the capture"),
                ("anomaly", "line cut by a gap: 2 octets dropped"),
                ("anomaly", "line cut by a gap: 4 octets dropped"),
                ("command", "QUIT"),
            ],
            id="commands",
        ),
    ],
)
def test_gaps_are_placed_by_the_core(tmp_path, dialogue, expected):
    cap = Capture()
    tcp = Tcp(cap, SENDER, RECEIVER)
    tcp.handshake()
    for side, data in [*OPENING, *dialogue]:
        if side == "lost":
            tcp.lose("c", data)
        else:
            tcp.send(side, data)
    ladder = dissect(cap.write(tmp_path / "gap.pcap"))
    gap = next(i for i, s in enumerate(ladder.steps) if s.kind == "gap")
    kinds = {kind for kind, _ in expected}
    seen = [(s.kind, s.text) for s in ladder.steps[gap:] if s.kind in kinds]
    assert [kind for kind, _ in seen] == [kind for kind, _ in expected]
    assert all(want in text for (_, text), (_, want) in zip(seen, expected, strict=True))


def test_a_354_after_data_in_bdat_state_starts_content():
    """smtp-bdat-gap.pcap: DATA after a BDAT chunk; the server's 354 is the truth."""
    ladder = dissect(CORPUS / "smtp-bdat-gap.pcap")
    steps = [(s.kind, s.get("verb") or s.get("code")) for s in ladder.steps if s.conn]
    smtp = [step for step in steps if step[0] in ("command", "reply", "content", "bdat")]
    assert smtp[-6:] == [
        ("command", "DATA"),
        ("reply", 354),
        ("content", None),
        ("reply", 250),
        ("command", "QUIT"),
        ("reply", 221),
    ]
    (content,) = [s for s in ladder.steps if s.kind == "content"]
    assert (content.get("lines"), content.get("first_line")) == (5, "From: sender@example.com")
    (bdat,) = [s for s in ladder.steps if s.kind == "bdat"]
    assert (bdat.get("size"), bdat.get("missing")) == (200, 100)


# --- issue 9 finding 6: a gap after the FIN crashed the dissector


def test_a_segment_moved_past_the_fin_is_an_anomaly_not_a_crash():
    """pcaps/seed.pcap with byte 1675 XORed with 0x04: VRFY aibo's sequence number moves
    64 MiB ahead, so the reassembler held it until the end, past the sender's FIN."""
    ladder = dissect(FUZZ / "seed-1675-xor-04.pcap")
    texts = [(s.kind, s.text) for s in ladder.steps]
    assert ("gap", "11 bytes missing from the capture") in texts
    after = [s for s in ladder.steps if s.text == "11 bytes after FIN, not part of the stream"]
    assert [(s.kind, s.evidence) for s in after] == [("anomaly", (19,))]
    fins = [i for i, s in enumerate(ladder.steps) if s.kind == "fin" and s.src == "192.0.2.10"]
    assert ladder.steps.index(after[0]) < fins[0]  # reported when the FIN was seen
    assert ladder.warnings == {"data-after-fin": 1}


# --- issue 9 finding 7: raw bytes in the JSON ladder


def test_binary_commands_and_replies_give_valid_utf8_escaped_like_the_text(tmp_path):
    dialogue = [
        ("s", b"220 hi\r\n"),
        ("c", b"\xff\xfeHLO x\r\n"),
        ("s", b"500 \xc3\x28 what\r\n"),
        ("c", b"VRFY \xe9t\xe9\r\n"),
        ("s", b"252 \xff\r\n"),
    ]
    ladder = dissect(seed_capture(tmp_path / "bin.pcap", dialogue=dialogue), HOSTS)
    document = render(ladder, "json")
    document.encode("utf-8")  # raised UnicodeEncodeError: surrogates not allowed
    commands = [s for s in ladder.steps if s.kind == "command"]
    assert [(s.text, s.get("verb")) for s in commands] == [
        ("\\xff\\xfeHLO x", "\\xff\\xfeHLO"),
        ("VRFY \\xe9t\\xe9", "VRFY"),
    ]
    replies = [s for s in ladder.steps if s.kind == "reply"]
    assert [s.text for s in replies[1:]] == ["500 \\xc3( what", "252 \\xff"]
    assert replies[1].get("answers") == "\\xff\\xfeHLO"
    assert Ladder.from_json(document) == ladder


def test_a_non_utf8_file_name_and_host_name_stay_valid_utf8(tmp_path):
    path = seed_capture(tmp_path / "seed.pcap")
    odd = path.rename(tmp_path / os.fsdecode(b"s\xffeed.pcap"))
    ladder = dissect(odd, {SENDER: os.fsdecode(b"mail.\xff.com")})
    render(ladder, "json").encode("utf-8")
    assert ladder.source.endswith("s\\xffeed.pcap")
    assert ladder.steps[0].src == "mail.\\xff.com"


# --- issue 8 finding 10: a stream that ends inside a unit


def _session(tmp_path, dialogue, *, end: str = "capture"):
    """A connection with *dialogue* after the handshake, ended by *end*: "capture" (the
    capture stops), "fin" (each side's FIN, the server first) or "rst" (the server's)."""
    cap = Capture()
    tcp = Tcp(cap, SENDER, RECEIVER)
    tcp.handshake()
    for side, data in dialogue:
        tcp.send(side, data)
    if end == "fin":
        tcp.fin("s")
        tcp.ack("c")
        tcp.fin("c")
        tcp.ack("s")
    elif end == "rst":
        tcp.rst("s")
    return dissect(cap.write(tmp_path / f"{end}.pcap"), HOSTS)


@pytest.mark.parametrize("end", ["capture", "fin", "rst"])
def test_a_reply_that_never_completes_is_an_incomplete_reply_step(tmp_path, end):
    """A server sends ``220-first line`` and stalls: the step was missing altogether."""
    ladder = _session(tmp_path, [("s", b"220-first line\r\n")], end=end)
    (reply,) = [s for s in ladder.steps if s.kind == "reply"]
    assert (reply.src, reply.text) == ("mail.receiver.com", "220-first line (incomplete)")
    assert (reply.get("code"), reply.get("lines"), reply.get("incomplete")) == (220, 1, True)
    assert reply.evidence == (4,)
    assert "(incomplete)" in render(ladder, "text")


def test_a_reply_cut_inside_its_second_line_keeps_both(tmp_path):
    dialogue = [("s", b"220 hi\r\n"), ("c", b"EHLO a\r\n"), ("s", b"250-mail\r\n250-PIPE")]
    ladder = _session(tmp_path, dialogue, end="fin")
    reply = [s for s in ladder.steps if s.kind == "reply"][-1]
    assert reply.text == "250-mail\n250-PIPE (incomplete)"
    assert (reply.get("code"), reply.get("lines"), reply.get("incomplete")) == (250, 2, True)
    assert ladder.steps[ladder.steps.index(reply) + 1].kind == "fin"  # before the FIN


def test_an_unterminated_command_is_an_incomplete_command_step(tmp_path):
    dialogue = [("s", b"220 hi\r\n"), ("c", b"EHLO a\r\n"), ("s", b"250 ok\r\n")]
    ladder = _session(tmp_path, [*dialogue, ("c", b"MAIL FROM:<a@b.example>")], end="fin")
    command = [s for s in ladder.steps if s.kind == "command"][-1]
    assert command.text == "MAIL FROM:<a@b.example> (incomplete)"
    assert (command.get("verb"), command.get("incomplete")) == ("MAIL", True)
    assert not [s for s in ladder.steps if s.kind == "anomaly"]  # no "unterminated line"
    assert ladder.coverage[1].units == 4 and ladder.coverage[1].complete  # it was ACKed


@pytest.mark.parametrize(
    ("tail", "kind", "text"),
    [
        (b"DATA\r\n", "content", "2 lines, 22 bytes, sha256:"),
        (b"BDAT 100 LAST\r\n", "bdat", "2 lines, 22 bytes, sha256:"),
    ],
)
def test_content_the_stream_ended_inside_is_an_incomplete_step(tmp_path, tail, kind, text):
    dialogue = [*OPENING, ("c", tail)]
    if tail == b"DATA\r\n":
        dialogue.append(("s", b"354 go\r\n"))
    dialogue.append(("c", b"Subject: x\r\n\r\nunfinish"))
    ladder = _session(tmp_path, dialogue)
    step = ladder.steps[-1]
    assert step.kind == kind and step.text.startswith(text)
    assert step.text.endswith(" (incomplete)")
    assert (step.get("size"), step.get("incomplete")) == (22, True)
    assert step.get("first_line") == "Subject: x"
    assert step.get("sha256") == hashlib.sha256(b"Subject: x\r\n\r\nunfinish").hexdigest()


# --- issue 8, "a vocabulary, typed": DNS steps carry their structure


def _dns_ladder(tmp_path, answer: dnslib.DNSRecord) -> Ladder:
    cap = Capture()
    query = dnslib.DNSRecord(q=answer.q, header=dnslib.DNSHeader(id=answer.header.id, rd=1))
    cap.dns(SENDER, DNS, query, reply=False)
    cap.dns(SENDER, DNS, answer, reply=True)
    return dissect(cap.write(tmp_path / "dns.pcap"), HOSTS)


def test_dns_steps_carry_question_rcode_and_records(tmp_path):
    ladder = dissect(seed_capture(tmp_path / "seed.pcap"), HOSTS)
    query, answer = ladder.steps[:2]
    for step in (query, answer):
        assert (step.get("qname"), step.get("qtype"), step.get("qclass")) == (
            "receiver.com",
            "MX",
            "IN",
        )
    assert query.get("records") is None
    assert (answer.get("rcode"), answer.get("tc")) == ("NOERROR", False)
    assert answer.get("records") == (
        ("answer", "receiver.com", "MX", "10 mail.receiver.com."),
        ("additional", "mail.receiver.com", "A", "192.0.2.25"),
    )
    assert answer.text == "MX 10 mail.receiver.com. + A mail.receiver.com. 192.0.2.25"
    assert Ladder.from_json(ladder.to_json()) == ladder


def test_dns_null_mx_root_name_authority_and_unknown_types(tmp_path):
    answer = dnslib.DNSRecord.question("Receiver.COM.", "MX").reply()
    answer.add_answer(dnslib.RR("receiver.com", dnslib.QTYPE.MX, rdata=dnslib.MX(".", 0)))
    answer.add_auth(dnslib.RR(".", dnslib.QTYPE.NS, rdata=dnslib.NS("a.root.example")))
    answer.add_ar(dnslib.RR("x.receiver.com", 65000, rdata=dnslib.RD(b"\x01\xff")))
    answer.add_ar(dnslib.EDNS0())
    (_, step) = _dns_ladder(tmp_path, answer).steps
    assert step.get("qname") == "receiver.com"
    assert step.get("records") == (
        ("answer", "receiver.com", "MX", "0 ."),
        ("authority", ".", "NS", "a.root.example."),
        ("additional", "x.receiver.com", "TYPE65000", "\\# 2 01FF"),
    )
    assert step.get("additional") == 2  # the OPT record is counted, not listed


def test_dns_rcode_without_a_name_and_rdata_dnslib_cannot_show(tmp_path):
    answer = dnslib.DNSRecord.question("receiver.com", "NAPTR").reply()
    rdata = dnslib.NAPTR(1, 2, b"\xff", b"s", b"r", dnslib.DNSLabel("a."))
    answer.add_answer(dnslib.RR("receiver.com", dnslib.QTYPE.NAPTR, rdata=rdata))
    answer.header.rcode = 12
    (_, step) = _dns_ladder(tmp_path, answer).steps
    assert step.get("rcode") == "RCODE12"
    ((section, name, rtype, shown),) = step.get("records")
    assert (section, name, rtype) == ("answer", "receiver.com", "NAPTR")
    assert shown == "\\# 13 0001000201FF01730172016100"  # dnslib's own str() raises here


# --- issue 10: a capture's observer repairs pairing and infers a missing 354 (core rule 9)

SHIFTED = [  # the reply to EHLO was lost: every reply after it answers one command early
    (Direction.SERVER, b"220 hi\r\n"),
    (Direction.CLIENT, b"EHLO a\r\n"),
    (Direction.CLIENT, b"MAIL FROM:<a@b.example>\r\n"),
    (Direction.SERVER, b"250 OK\r\n"),
    (Direction.CLIENT, b"RCPT TO:<c@d.example>\r\n"),
    (Direction.SERVER, b"250 OK\r\n"),
    (Direction.CLIENT, b"DATA\r\n"),
    (Direction.SERVER, b"354 go\r\n"),
    (Direction.CLIENT, b"Hi\r\n.\r\n"),
    (Direction.SERVER, b"250 queued\r\n"),
]


def observe(observer: Observer, feeds: list[tuple[Direction, bytes]]) -> list:
    return [event for direction, data in feeds for event in observer.feed(direction, data)]


def test_a_capture_observer_pairs_a_354_with_the_data_a_peer_pairs_in_order():
    """RFC 5321 §4.3.2: a 354 answers only DATA.  A peer's observer knows its own bytes and
    pairs in order (unchanged); a capture's re-pairs and says which replies it passed."""
    capture = observe(Observer(capture=True), SHIFTED)
    replies = [(e.code, e.answers) for e in capture if isinstance(e, Reply)]
    assert replies[-2:] == [(354, "DATA"), (250, "<end-of-data>")]
    (resync,) = [e for e in capture if isinstance(e, Resync)]
    assert (resync.code, resync.answers, resync.assumed) == (354, "DATA", ("RCPT",))
    peer = observe(Observer(), SHIFTED)
    assert [(e.code, e.answers) for e in peer if isinstance(e, Reply)][-2:] == [
        (354, "RCPT"),
        (250, "DATA"),
    ]
    assert not [e for e in peer if isinstance(e, Resync)]


def test_a_late_354_after_an_inferred_one_answers_nothing():
    """The capture point put the server's 354 after the content and the QUIT (D2): the 354
    was inferred, and the real one must not shift the replies after it."""
    feeds = [
        (Direction.SERVER, b"220 hi\r\n"),
        (Direction.CLIENT, b"EHLO a\r\n"),
        (Direction.SERVER, b"250 a\r\n"),
        (Direction.CLIENT, b"DATA\r\n"),
        (Direction.CLIENT, b"Hi\r\n.\r\nQUIT\r\n"),
        (Direction.SERVER, b"354 go\r\n250 queued\r\n221 bye\r\n"),
    ]
    events = observe(Observer(capture=True), feeds)
    replies = [(e.code, e.answers, e.inferred) for e in events if isinstance(e, Reply)]
    assert replies == [
        (220, "<greeting>", False),
        (250, "EHLO", False),
        (354, "DATA", True),
        (354, None, False),
        (250, "<end-of-data>", False),
        (221, "QUIT", False),
    ]


@pytest.mark.parametrize(
    "after_data",
    [
        pytest.param(b"Hi\r\n.\r\n", id="no-command-yet"),
        pytest.param(b"Hi\r\n.\r\nQUI", id="command-cut"),
        pytest.param(b"Hi\r\n.\r\nBOGUS x\r\n", id="not-a-command"),
        pytest.param(b"Hi\n.\nQUIT\r\n", id="bare-lf-dot"),
    ],
)
def test_no_354_is_inferred_without_crlf_dot_crlf_and_a_valid_command(after_data):
    feeds = [(Direction.CLIENT, b"EHLO a\r\nDATA\r\n"), (Direction.CLIENT, after_data)]
    observer = Observer(capture=True)
    assert not [e for e in observe(observer, feeds) if isinstance(e, Reply)]
    assert observer.paused(Direction.CLIENT)


def test_a_server_peer_never_infers_a_354():
    """A client that sends its message before the 354 still waits for the server's reply."""
    conn = ServerConnection()
    conn.send_reply(220, "hi")
    conn.receive_data(b"EHLO a\r\nDATA\r\nHi\r\n.\r\nQUIT\r\n")
    assert [conn.next_event().verb, conn.next_event().verb] == ["EHLO", "DATA"]
    assert conn.next_event() is PAUSED


def test_an_auth_exchange_is_paused_like_data_and_answers_the_auth():
    """RFC 4954 §4: a 334 makes the next client line a response; 235 ends the exchange."""
    feeds = [
        (Direction.SERVER, b"220 hi\r\n"),
        (Direction.CLIENT, b"EHLO a\r\n"),
        (Direction.SERVER, b"250 AUTH PLAIN\r\n"),
        (Direction.CLIENT, b"AUTH PLAIN\r\nAGEAYg==\r\nMAIL FROM:<a@b.example>\r\n"),
        (Direction.SERVER, b"334 \r\n235 ok\r\n250 OK\r\n"),
    ]
    events = [e for e in observe(Observer(), feeds) if not isinstance(e, Resync)]
    units = [
        (type(e).__name__, getattr(e, "verb", None) or getattr(e, "answers", None))
        for e in events
        if isinstance(e, Command | Reply | AuthResponse)
    ]
    assert units == [
        ("Reply", "<greeting>"),
        ("Command", "EHLO"),
        ("Reply", "EHLO"),
        ("Command", "AUTH"),
        ("Reply", "AUTH"),
        ("AuthResponse", None),
        ("Reply", "AUTH"),
        ("Command", "MAIL"),
        ("Reply", "MAIL"),
    ]
    (response,) = [e for e in events if isinstance(e, AuthResponse)]
    assert response.raw == b"AGEAYg==\r\n" and not response.cancel


def test_new_step_makes_the_step_the_constructor_makes():
    """The dissector's constructor (``model.new_step``): the same value, as frozen."""
    values = (7, 10**18, "client", "server", StepKind.REPLY, "250 ok", (3, 4), 2, (("code", 250),))
    made, built = new_step(*values), Step(*values)
    assert made == built and hash(made) == hash(built) and repr(made) == repr(built)
    assert Step.from_dict(made.to_dict()) == built
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.text = "changed"  # type: ignore[misc]
