"""Replay without a lab: reading a captured session, its turns and writes, the mapping, the
per-reply judgement, and bad input (exit 2, one line, before any lab)."""

from __future__ import annotations

import re
import subprocess

import pytest
from conftest import CLI, ROOT
from ladder_pcaps import CORPUS, MESSAGE, seed_capture

from harness.errors import HarnessError
from harness.replay.judge import Judged, reply_differences
from harness.replay.script import Mapping, writes
from harness.replay.session import CapturedReply, _tcp_events, read_session
from harness.smtp.events import Direction, Reply

SEED = str(ROOT / "pcaps" / "seed.pcap")
PIPELINED = [
    ("s", b"220 mail.receiver.com ESMTP\r\n"),
    ("c", b"EHLO mail.sender.com\r\n"),
    ("s", b"250-mail.receiver.com\r\n250 PIPELINING\r\n"),
    ("c", b"MAIL FROM:<luke@sender.com>\r\nRCPT TO:<c3po@receiver.com>\r\nDATA\r\n"),
    ("s", b"250 OK\r\n"),
    ("s", b"250 OK\r\n"),
    ("s", b"354 go ahead\r\n"),
    ("c", b"Subject: x\r\n\r\nbare\n.\nnot the end\r\n.\r\n"),  # a look-alike ending
    ("s", b"250 OK\r\n"),
    ("c", b"QUIT\r\n"),
    ("s", b"221 bye\r\n"),
]


def _client_stream(path: str) -> bytes:
    return b"".join(e.data for e in _tcp_events(path) if e.kind == "data" and e.direction == 0)


def test_the_seed_session_is_its_turns_and_its_units_are_the_client_bytes_exactly():
    session = read_session(SEED)
    assert [len(t.replies) for t in session.turns] == [1] * 11
    assert session.turns[0].units == []  # the first turn waits for the greeting
    sent = b"".join(u.raw for t in session.turns for u in t.units)
    assert sent == _client_stream(SEED)
    assert [u.verb for u in session.commands][:2] == ["HELO", "VRFY"]
    assert not session.client_closes_first  # seed 29-33: the receiver closes first
    replies = [r.step for t in session.turns for r in t.replies]
    assert replies == [s.index for s in session.steps if s.kind == "reply"]


def test_a_pipelined_group_is_one_turn_and_one_write_where_the_capture_had_one_segment(
    tmp_path,
):
    path = str(seed_capture(tmp_path / "p.pcap", dialogue=PIPELINED))
    session = read_session(path)
    group = session.turns[2]
    assert [u.verb for u in group.units] == ["MAIL", "RCPT", "DATA"]
    assert len(group.replies) == 3
    assert [w.data for w in writes(group, Mapping(session))] == [PIPELINED[3][1]]
    content = session.turns[3]
    assert b"".join(w.data for w in writes(content, Mapping(session))) == PIPELINED[7][1]


def test_writes_follow_the_captured_segments(tmp_path):
    path = str(seed_capture(tmp_path / "cut.pcap", cut=7))
    session = read_session(path)
    mapping = Mapping(session)
    for turn in session.turns[1:]:
        data = b"".join(u.raw for u in turn.units)
        pieces = [w.data for w in writes(turn, mapping)]
        assert pieces == [data[i : i + 7] for i in range(0, len(data), 7)]


def test_a_mapping_rewrites_only_the_arguments_and_is_reported(tmp_path):
    path = str(seed_capture(tmp_path / "s.pcap"))
    session = read_session(path)
    mapping = Mapping(session, ("mail.sender.com=relay.example.org", "C3PO@receiver.com=x@y.org"))
    sent = b"".join(w.data for t in session.turns for w in writes(t, mapping))
    original = _client_stream(path)
    assert sent == original.replace(b"HELO mail.sender.com", b"HELO relay.example.org").replace(
        b"RCPT TO:<c3po@receiver.com>", b"RCPT TO:<x@y.org>"
    )
    assert MESSAGE in sent  # the content is not touched (its To: header names c3po)
    lines = [m.line() for m in mapping.lines(session, ("192.0.2.10", "s"), ("192.0.2.25", "r"))]
    assert "helo       mail.sender.com -> relay.example.org" in lines
    assert "rcpt-to    c3po@receiver.com -> x@y.org" in lines
    assert "rcpt-to    r2d2@receiver.com (kept)" in lines
    assert mapping.rewritten("250 mail.receiver.com Hello mail.sender.com") == (
        "250 mail.receiver.com Hello relay.example.org"
    )


@pytest.mark.parametrize(
    "given, message",
    [
        ("nothing", "expected old=new"),
        ("=x", "expected old=new"),
        ("nobody@nowhere.org=x@y.org", "is no HELO name, MAIL FROM or RCPT TO address"),
        ("c3po@receiver.com=not an address", "is not a mailbox"),
        ("mail.sender.com=bad\r\nname", "control character"),
    ],
)
def test_a_bad_map_is_refused(given, message):
    with pytest.raises(HarnessError, match=message):
        Mapping(read_session(SEED), (given,))


def _reply(code: int, *lines: str) -> Reply:
    return Reply(direction=Direction.SERVER, offset=0, code=code, lines=lines, raw=b"")


def test_only_replies_to_mapped_commands_are_rewritten_for_the_comparison():
    mapping = Mapping(read_session(SEED), ("c3po@receiver.com=x@y.org",))
    vrfy = CapturedReply(250, ("<c3po@receiver.com>",), 0, answers="VRFY")
    assert reply_differences(vrfy, _reply(250, "<c3po@receiver.com>"), mapping) == []
    rcpt = CapturedReply(250, ("2.1.5 <c3po@receiver.com> ok",), 0, answers="RCPT")
    assert reply_differences(rcpt, _reply(250, "2.1.5 <x@y.org> ok"), mapping) == []


def test_a_reply_is_judged_by_code_status_code_and_masked_text():
    mapping = Mapping(read_session(SEED))
    banner = CapturedReply(220, ("mail.receiver.com ESMTP smtp-harness",), 0)
    assert reply_differences(banner, _reply(220, "mail.receiver.com ESMTP Postfix"), mapping) == []
    queued = CapturedReply(250, ("2.0.0 Ok: queued as 4Xy1",), 0)
    assert reply_differences(queued, _reply(250, "2.0.0 Ok: queued as 9ZZ2"), mapping) == []
    status = reply_differences(queued, _reply(250, "2.6.0 Ok: queued as 4Xy1"), mapping)
    assert status == [
        "enhanced status code 2.0.0 -> 2.6.0",
        'text "2.0.0 Ok: queued as <QUEUEID-1>" -> "2.6.0 Ok: queued as <QUEUEID-1>"',
    ]
    assert not Judged(queued, _reply(250, "2.6.0 x"), status).diverges  # same code: goes on
    assert Judged(queued, _reply(450, "2.0.0 Ok"), ["code 250 -> 450"]).diverges
    assert Judged(queued, None, ["no reply"]).diverges


# --- bad input through the command line: exit 2, one line, no lab
def _replay(*args: str) -> subprocess.CompletedProcess:
    argv = [*CLI, "replay", *args]
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize(
    "args, message",
    [
        (("tests/data/zeek/COPYING", "--as", "client", "--lab"), "not a pcap or pcapng file"),
        (("no-such.pcap", "--as", "client", "--lab"), "no such capture file"),
        (("tests/data/fuzz/dns-naptr-not-utf8.pcap", "--as", "client", "--lab"), "no SMTP session"),
        ((SEED, "--as", "client", "--lab", "--session", "2"), "has 1 SMTP session(s)"),
        ((SEED, "--as", "client", "--lab", "--map", "who@x.org=y@z.org"), "--map"),
        ((SEED, "--as", "client"), "--lab or --lab-id ID --target HOST is required"),
        ((SEED, "--as", "client", "--lab", "--mta", "qmail"), "no such MTA"),
        ((SEED, "--lab"), "give one of --as client, --as server or --rerun"),
        ((SEED, "--as", "peer", "--lab"), "'peer' is not one of"),
        (
            (str(CORPUS / "smtp-starttls.pcap"), "--as", "client", "--lab"),
            "TLS after STARTTLS",
        ),
        ((str(CORPUS / "smtp-bdat-gap.pcap"), "--as", "client", "--lab"), "missing from the"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_lab(args, message):
    done = _replay(*args)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_help_documents_every_option_and_the_exit_codes():
    text = _replay("--help").stdout
    documented = set(re.findall(r"^  (--[a-z-]+)", text, re.M))
    assert documented == {
        *("--as", "--rerun", "--lab", "--lab-id", "--target", "--mta", "--scenario"),
        *("--session", "--timing", "--continue", "--map", "--emit-scenario", "--out"),
    }
    flat = " ".join(text.split())
    said = "Exit 0 when the live peer did as captured (--rerun: the ladders are equal), 1 when"
    assert f"{said} it differs" in flat
    assert (
        "2 for bad input (the capture, an option, a target outside a lab: nothing was run)" in flat
    )
    assert "3 harness error" in flat and "143 terminated (SIGTERM)" in flat
