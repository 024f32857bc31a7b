"""Dissection: a crafted seed exchange gives exactly the seed's ladder, however it is cut."""

from __future__ import annotations

import hashlib
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ladder_pcaps import (
    CORPUS,
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
from harness.ladder.model import Ladder


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


@pytest.fixture(scope="module")
def seed_bytes(tmp_path_factory) -> bytes:
    return seed_capture(tmp_path_factory.mktemp("fuzz") / "seed.pcap", cut=9).read_bytes()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=12),
    cut=st.integers(0, 10**6),
)
def test_mutated_captures_give_a_ladder_or_a_pcap_error(tmp_path, seed_bytes, flips, cut):
    data = bytearray(seed_bytes)
    for position, value in flips:
        data[position % len(data)] = value
    path = tmp_path / "mutant.pcap"
    path.write_bytes(bytes(data[: max(24, cut % (len(data) + 1))]))
    start = time.monotonic()
    try:
        ladder = dissect(path)
    except PcapError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
    else:
        assert all(s.index == i for i, s in enumerate(ladder.steps, 1))
        assert Ladder.from_json(ladder.to_json()) == ladder
    assert time.monotonic() - start < 2


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
