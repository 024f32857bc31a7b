"""The receiver's reply policy, as pure functions: no sockets, no event loop, no DNS.

Each case is one row: the configuration, the session's facts, one command line (parsed by
the core), and the decision the policy must take.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from harness.smtp import AnomalyKind, parse_command
from harness.smtp.policy import (
    TIMEOUT,
    Decision,
    Effect,
    Facts,
    Note,
    ReceiverConfig,
    ReplyRule,
    answer,
    end_of_chunk,
    end_of_message,
    greeting,
    ptr_wanted,
    raw_reply,
    reply_texts,
    rule_for,
    scripted,
    settle,
    timeout_reply,
    with_ptr,
)

CONFIG = ReceiverConfig()
CHUNKING = ReceiverConfig(extensions=("PIPELINING", "CHUNKING", "SIZE 100"))
GREETED = Facts(helo="mail.sender.com")
ESMTP = Facts(helo="mail.sender.com", esmtp=True)
IN_MAIL = Facts(helo="mail.sender.com", esmtp=True, mail_from="luke@sender.com")
UNKNOWN = "5.1.1 <{}>: Recipient address rejected: User unknown"


def command(line: str, **changes):
    return replace(parse_command(line.encode()), **changes)


# (id, config, facts, command line, command changes, code, effect, first line of text)
ROWS = [
    ("helo", CONFIG, Facts(), "HELO mail.sender.com", {}, 250, Effect.GREET, None),
    ("ehlo", CONFIG, Facts(), "EHLO mail.sender.com", {}, 250, Effect.GREET, None),
    ("mail", CONFIG, GREETED, "MAIL FROM:<luke@sender.com>", {}, 250, Effect.MAIL, "OK"),
    ("null-path", CONFIG, GREETED, "MAIL FROM:<>", {}, 250, Effect.MAIL, "OK"),
    ("size-helo", CONFIG, GREETED, "MAIL FROM:<a@b.example> SIZE=10", {}, 555, None, None),
    ("size-ehlo", CONFIG, ESMTP, "MAIL FROM:<a@b.example> SIZE=10", {}, 250, Effect.MAIL, "OK"),
    ("size-over", CONFIG, ESMTP, "MAIL FROM:<a@b.example> SIZE=10240001", {}, 552, None, None),
    (
        "body-8bit",
        CONFIG,
        ESMTP,
        "MAIL FROM:<a@b.example> BODY=8BITMIME",
        {},
        250,
        Effect.MAIL,
        None,
    ),
    ("dsn-unadvertised", CONFIG, ESMTP, "MAIL FROM:<a@b.example> RET=HDRS", {}, 555, None, None),
    ("rcpt", CONFIG, IN_MAIL, "RCPT TO:<C3PO@Receiver.com>", {}, 250, Effect.RCPT, "OK"),
    (
        "rcpt-unknown",
        CONFIG,
        IN_MAIL,
        "RCPT TO:<bb8@receiver.com>",
        {},
        550,
        None,
        UNKNOWN.format("bb8@receiver.com"),
    ),
    ("rcpt-elsewhere", CONFIG, IN_MAIL, "RCPT TO:<c3po@other.example>", {}, 550, None, None),
    ("data", CONFIG, IN_MAIL, "DATA", {}, 354, Effect.DATA, None),
    ("bdat-off", CONFIG, IN_MAIL, "BDAT 10", {}, 502, None, "5.5.1 BDAT not implemented"),
    ("bdat-on", CHUNKING, IN_MAIL, "BDAT 10", {}, 250, Effect.DATA, "2.0.0 10 octets received"),
    ("vrfy", CONFIG, GREETED, "VRFY c3po", {}, 250, None, "<c3po@receiver.com>"),
    (
        "vrfy-qualified",
        CONFIG,
        GREETED,
        "VRFY c3po@receiver.com",
        {},
        250,
        None,
        "<c3po@receiver.com>",
    ),
    ("vrfy-unknown", CONFIG, GREETED, "VRFY aibo", {}, 550, None, UNKNOWN.format("aibo")),
    ("vrfy-252", replace(CONFIG, vrfy="252"), GREETED, "VRFY aibo", {}, 252, None, None),
    ("vrfy-disabled", replace(CONFIG, vrfy="disabled"), GREETED, "VRFY c3po", {}, 502, None, None),
    ("rset", CONFIG, IN_MAIL, "RSET", {}, 250, Effect.RESET, None),
    ("noop", CONFIG, GREETED, "NOOP", {}, 250, None, "2.0.0 OK"),
    ("help", CONFIG, GREETED, "HELP", {}, 214, None, None),
    ("expn", CONFIG, GREETED, "EXPN staff", {}, 502, None, None),
    ("starttls", CONFIG, GREETED, "STARTTLS", {}, 502, None, None),
    ("quit", CONFIG, GREETED, "QUIT", {}, 221, None, "2.0.0 mail.receiver.com closing connection"),
    ("unknown-verb", CONFIG, GREETED, "XYZZY", {}, 500, None, "5.5.1 Command unrecognized"),
    ("syntax", CONFIG, GREETED, "MAIL FROM: <a@b.example>", {}, 501, None, None),
    (
        "sequence",
        CONFIG,
        GREETED,
        "RCPT TO:<c3po@receiver.com>",
        {"in_order": False},
        503,
        None,
        None,
    ),
    ("nul", CONFIG, GREETED, "NOOP", {"flaws": frozenset({AnomalyKind.NUL})}, 500, None, None),
    (
        "bare-lf-accepted",
        replace(CONFIG, bad_lines="accept"),
        GREETED,
        "NOOP",
        {"flaws": frozenset({AnomalyKind.BARE_LF})},
        250,
        None,
        None,
    ),
    (
        "too-long-always",
        replace(CONFIG, bad_lines="accept"),
        GREETED,
        "NOOP",
        {"flaws": frozenset({AnomalyKind.LINE_TOO_LONG})},
        500,
        None,
        "5.5.2 Line too long",
    ),
]


@pytest.mark.parametrize(
    ("config", "facts", "line", "changes", "code", "effect", "first"),
    [row[1:] for row in ROWS],
    ids=[row[0] for row in ROWS],
)
def test_answer(config, facts, line, changes, code, effect, first):
    decision = answer(config, facts, command(line, **changes))
    assert (decision.code, decision.effect) == (code, effect)
    if first is not None:
        assert reply_texts(decision.code, decision.text)[0] == first
    assert answer(config, facts, command(line, **changes)) == decision  # pure: same in, same out


def test_ehlo_advertises_the_extensions_helo_does_not():
    ehlo = answer(CONFIG, Facts(), command("EHLO mail.sender.com"))
    helo = answer(CONFIG, Facts(), command("HELO mail.sender.com"))
    assert reply_texts(250, ehlo.text) == (
        "mail.receiver.com Hello mail.sender.com",
        "PIPELINING",
        "8BITMIME",
        "SIZE 10240000",
    )
    assert reply_texts(250, helo.text) == ("mail.receiver.com Hello mail.sender.com",)


@pytest.mark.parametrize(
    ("ptr_check", "ptr", "code", "noted"),
    [
        ("accept", ("elsewhere.example",), 250, False),
        ("note", ("elsewhere.example",), 250, True),
        ("reject", ("elsewhere.example",), 550, True),
        ("reject", ("mail.sender.com",), 250, False),
        ("reject", (), 550, True),  # the lookup failed: no name matches
        ("reject", None, 250, False),  # never looked up: nothing to compare
    ],
)
def test_helo_against_the_ptr(ptr_check, ptr, code, noted):
    facts = Facts() if ptr is None else with_ptr(Facts(), ptr)
    decision = answer(replace(CONFIG, ptr_check=ptr_check), facts, command("HELO Mail.Sender.com."))
    assert decision.code == code
    expected = Note("ptr-mismatch", {"helo": "Mail.Sender.com.", "ptr": list(ptr or ())})
    assert decision.note == (expected if noted else None)


@pytest.mark.parametrize(
    ("ptr_at", "line", "wanted"),
    [
        ("connect", None, True),
        ("helo", None, False),
        ("helo", "HELO a.example", True),
        ("helo", "EHLO a.example", True),
        ("helo", "HELO", False),  # refused anyway (501): no lookup
        ("helo", "NOOP", False),
        ("connect", "HELO a.example", False),
        ("never", "HELO a.example", False),
    ],
)
def test_when_the_ptr_is_looked_up(ptr_at, line, wanted):
    cmd = None if line is None else command(line)
    assert ptr_wanted(replace(CONFIG, ptr_at=ptr_at), cmd) is wanted


def test_the_greeting_the_end_of_a_message_and_the_timeout():
    assert greeting(CONFIG) == Decision(220, "mail.receiver.com ESMTP smtp-harness")
    small = ReceiverConfig(extensions=("SIZE 10",))
    assert end_of_message(small, 10) == Decision(250, "OK Mail accepted", Effect.DELIVER, True)
    assert end_of_message(small, 11)[:4] == (
        552,
        "5.3.4 Message size exceeds fixed maximum message size",
        None,
        True,
    )
    assert timeout_reply(CONFIG) == Decision(421, "4.4.2 mail.receiver.com Error: timeout exceeded")
    assert TIMEOUT == "<timeout>"


@pytest.mark.parametrize(
    ("pending", "last", "expected"),
    [
        (Decision(250, "2.0.0 3 octets received", Effect.DATA), False, (250, None, False)),
        (Decision(250, "2.0.0 3 octets received", Effect.DATA), True, (250, Effect.DELIVER, True)),
        (Decision(502, "5.5.1 BDAT not implemented"), True, (502, None, True)),
        (Decision(503, "5.5.1 Bad sequence of commands"), False, (503, None, False)),
    ],
)
def test_end_of_chunk(pending, last, expected):
    decision = end_of_chunk(CHUNKING, pending, 3, last)
    assert (decision.code, decision.effect, decision.ends_transaction) == expected


def test_settle_commits_only_what_a_positive_reply_says():
    mail = command("MAIL FROM:<luke@sender.com>")
    rcpt = command("RCPT TO:<c3po@receiver.com>")
    accepted = answer(CONFIG, GREETED, mail)
    facts, effect, over = settle(GREETED, accepted, mail, 250)
    assert (facts.mail_from, effect, over) == ("luke@sender.com", Effect.MAIL, False)
    refused_by_rule = settle(GREETED, accepted, mail, 550)
    assert refused_by_rule == (GREETED, None, False)
    assert settle(GREETED, accepted, mail, None) == (GREETED, None, False)  # raw, no code
    with_rcpt = settle(facts, answer(CONFIG, facts, rcpt), rcpt, 250)[0]
    assert with_rcpt.recipients == ("c3po@receiver.com",)
    delivered = settle(with_rcpt, end_of_message(CONFIG, 5), None, 250)
    assert delivered == (GREETED, Effect.DELIVER, True)  # stored, then a new transaction
    refused = settle(with_rcpt, end_of_message(CONFIG, 5), None, 451)
    assert refused == (GREETED, None, True)


def test_a_new_hello_or_rset_starts_a_new_transaction():
    facts = Facts(("mail.sender.com",), "old.example", False, "a@b.example", ("c3po@receiver.com",))
    ehlo = command("EHLO new.example")
    greeted = settle(facts, answer(CONFIG, facts, ehlo), ehlo, 250)
    assert greeted == (Facts(("mail.sender.com",), "new.example", True), Effect.GREET, True)
    rset = command("RSET")
    reset = settle(facts, answer(CONFIG, facts, rset), rset, 250)
    assert reset == (Facts(("mail.sender.com",), "old.example"), Effect.RESET, True)


def test_reply_rules():
    rules = [
        ReplyRule("rcpt", argument="C3PO@receiver.com", code=452),
        ReplyRule("RCPT", text="4.2.2 mailbox full"),
        ReplyRule("<greeting>", text=["first", "second"]),
    ]
    c3po, r2d2 = command("RCPT TO:<c3po@receiver.com>"), command("RCPT TO:<r2d2@receiver.com>")
    assert rule_for(rules, "RCPT", c3po) is rules[0]
    assert rule_for(rules, "RCPT", r2d2) is rules[1]
    assert rule_for(rules, "<greeting>", None) is rules[2]
    assert rule_for(rules, "MAIL", command("MAIL FROM:<>")) is None
    accepted = Decision(250, "OK", Effect.RCPT)
    assert scripted(rules[0], accepted) == (452, "Scripted reply")
    assert scripted(rules[1], accepted) == (250, "4.2.2 mailbox full")
    assert scripted(rules[2], greeting(CONFIG)) == (220, ["first", "second"])


@pytest.mark.parametrize(
    ("raw", "code", "lines"),
    [
        (b"452-mailbox\r\n452 4.2.2 full\r\n", 452, ("mailbox", "4.2.2 full")),
        (b"250 OK", 250, ("OK",)),
        (b"hello\r\n", None, ("hello",)),
        (b"", None, ()),
    ],
)
def test_raw_reply(raw, code, lines):
    assert raw_reply(raw) == (code, lines)


def test_reply_texts_match_the_core_formatting():
    assert reply_texts(250, "OK") == ("OK",)
    assert reply_texts(250, ["a", "b"]) == ("a", "b")
    assert reply_texts(250, []) == ("",)
