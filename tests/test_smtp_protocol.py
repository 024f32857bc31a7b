"""The sans-IO SMTP core: grammar, framing, DATA/BDAT content, state, segmentation."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import harness.smtp.state as state_module
from harness.errors import HarnessError
from harness.smtp import (
    NEED_DATA,
    PAUSED,
    Anomaly,
    AnomalyKind,
    ClientConnection,
    Command,
    ConnectionClosed,
    Content,
    Direction,
    EndOfChunk,
    EndOfData,
    Event,
    Gap,
    Observer,
    Opaque,
    Reply,
    ServerConnection,
    State,
    TlsStarted,
    dot_stuff,
    format_reply,
    parse_command,
)
from harness.smtp.events import Unfinished, UnitKind
from harness.smtp.state import LEGAL

C, S = Direction.CLIENT, Direction.SERVER
PRELUDE = b"EHLO a.example\r\nMAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nDATA\r\n"
# STARTTLS is declined: whether plaintext arrived before a 220 depends on timing, on purpose
AUTO_REPLY = {"DATA": 354, "QUIT": 221, "STARTTLS": 454}


def answer(conn: ServerConnection, event: Event) -> None:
    """An accepting server: 500/501/503 for bad commands, 354 to DATA, 250 mostly."""
    if isinstance(event, Command):
        if event.flaws or not event.known:
            conn.send_reply(500, "bad line")
        elif event.syntax_error:
            conn.send_reply(501, event.syntax_error)
        elif not event.in_order:
            conn.send_reply(503, "bad sequence")
        elif event.verb != "BDAT":
            conn.send_reply(AUTO_REPLY.get(event.verb, 250), "ok")
    elif isinstance(event, EndOfData | EndOfChunk):
        conn.send_reply(250, "ok")


def serve(data: bytes, cuts: list[int] | None = None) -> list[Event]:
    """All events an accepting server sees for ``data``, split at ``cuts``."""
    conn = ServerConnection()
    conn.send_reply(220, "test")
    bounds = [0, *sorted({c for c in cuts or [] if 0 < c < len(data)}), len(data)]
    events: list[Event] = []
    for piece in [data[a:b] for a, b in itertools.pairwise(bounds)] + [b""]:
        conn.receive_data(piece)
        while (event := conn.next_event()) not in (NEED_DATA, PAUSED):
            events.append(event)
            answer(conn, event)
    return events


def of(kind: type, events: list[Event]) -> list:
    return [e for e in events if isinstance(e, kind)]


def content(events: list[Event]) -> bytes:
    return b"".join(e.data for e in of(Content, events))


def anomalies(events: list[Event]) -> list[AnomalyKind]:
    return [e.kind for e in of(Anomaly, events)]


# -- commands ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "verb", "argument", "address", "params", "error"),
    [
        (b"HELO mail.sender.com", "HELO", "mail.sender.com", None, {}, None),
        (b"ehlo Mail.Sender.COM", "EHLO", "Mail.Sender.COM", None, {}, None),
        (b"HELO", "HELO", None, None, {}, "needs a domain"),
        (b"HELO a b", "HELO", "a b", None, {}, "one domain"),
        (
            b"MAIL FROM:<luke@sender.com>",
            "MAIL",
            "FROM:<luke@sender.com>",
            "luke@sender.com",
            {},
            None,
        ),
        (
            b"mail from:<Luke@Sender.com>",
            "MAIL",
            "from:<Luke@Sender.com>",
            "Luke@Sender.com",
            {},
            None,
        ),
        (b"MAIL FROM:<>", "MAIL", "FROM:<>", "", {}, None),
        (b"MAIL FROM: <x@y>", "MAIL", "FROM: <x@y>", "x@y", {}, "space after FROM:"),
        (b"MAIL FROM :<x@y>", "MAIL", "FROM :<x@y>", "x@y", {}, "space before the colon"),
        (b"MAIL FROM:x@y", "MAIL", "FROM:x@y", "x@y", {}, "angle brackets"),
        (b"MAIL FROM:<x@y", "MAIL", "FROM:<x@y", "x@y", {}, "no closing >"),
        (b"MAIL TO:<x@y>", "MAIL", "TO:<x@y>", None, {}, "needs FROM:"),
        (b"MAIL", "MAIL", None, None, {}, "needs FROM:"),
        (b"MAIL FROM:<nobody>", "MAIL", "FROM:<nobody>", "nobody", {}, "local-part@domain"),
        (b'MAIL FROM:<"a>b"@y>', "MAIL", 'FROM:<"a>b"@y>', '"a>b"@y', {}, None),
        (b"MAIL FROM:<@r1,@r2:x@y>", "MAIL", "FROM:<@r1,@r2:x@y>", "x@y", {}, None),
        (
            b"MAIL FROM:<x@y> SIZE=1000 body=8BITMIME SMTPUTF8",
            "MAIL",
            "FROM:<x@y> SIZE=1000 body=8BITMIME SMTPUTF8",
            "x@y",
            {"SIZE": "1000", "BODY": "8BITMIME", "SMTPUTF8": None},
            None,
        ),
        (b"MAIL FROM:<x@y>SIZE=1", "MAIL", "FROM:<x@y>SIZE=1", "x@y", {"SIZE": "1"}, "no space"),
        (b"MAIL FROM:<x@y> SIZE=1 SIZE=2", "MAIL", None, "x@y", {"SIZE": "2"}, "given twice"),
        (b"MAIL FROM:<x@y> =1", "MAIL", None, "x@y", {}, "bad ESMTP parameter"),
        (
            b"RCPT TO:<c3po@receiver.com>",
            "RCPT",
            "TO:<c3po@receiver.com>",
            "c3po@receiver.com",
            {},
            None,
        ),
        (b"RCPT TO:<Postmaster>", "RCPT", "TO:<Postmaster>", "Postmaster", {}, None),
        (b"RCPT TO:<>", "RCPT", "TO:<>", "", {}, "null path"),
        (b"RCPT TO:<a@b> NOTIFY=NEVER", "RCPT", None, "a@b", {"NOTIFY": "NEVER"}, None),
        (b"DATA", "DATA", None, None, {}, None),
        (b"DATA now", "DATA", "now", None, {}, "no argument"),
        (b"QUIT ", "QUIT", "", None, {}, "no argument"),
        (b"RSET", "RSET", None, None, {}, None),
        (b"NOOP", "NOOP", None, None, {}, None),
        (b"NOOP anything", "NOOP", "anything", None, {}, None),
        (b"HELP MAIL", "HELP", "MAIL", None, {}, None),
        (b"VRFY aibo", "VRFY", "aibo", None, {}, None),
        (b"VRFY", "VRFY", None, None, {}, "needs an argument"),
        (b"EXPN staff", "EXPN", "staff", None, {}, None),
        (b"STARTTLS", "STARTTLS", None, None, {}, None),
        (b"BDAT 12", "BDAT", "12", None, {}, None),
        (b"BDAT x", "BDAT", "x", None, {}, "chunk size"),
    ],
)
def test_parse_command(line, verb, argument, address, params, error):
    cmd = parse_command(line)
    assert (cmd.verb, cmd.address, cmd.params, cmd.known) == (verb, address, params, True)
    if argument is not None:
        assert cmd.argument == argument
    if error is None:
        assert cmd.syntax_error is None
    else:
        assert error in cmd.syntax_error


@pytest.mark.parametrize(
    ("line", "size", "last"),
    [(b"BDAT 0 LAST", 0, True), (b"bdat 7 last", 7, True), (b"BDAT 9", 9, False)],
)
def test_parse_bdat(line, size, last):
    cmd = parse_command(line)
    assert (cmd.chunk_size, cmd.last, cmd.syntax_error) == (size, last, None)


@pytest.mark.parametrize("line", [b"TURN", b"XYZZY arg", b"", b"MAILFROM:<a@b>"])
def test_unknown_verbs_are_events(line):
    cmd = parse_command(line)
    assert not cmd.known and cmd.syntax_error is None


# -- replies -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "code", "lines", "error"),
    [
        (b"250 OK\r\n", 250, ("OK",), None),
        (b"250\r\n", 250, ("",), None),
        (
            b"250-mail.receiver.com\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
            250,
            ("mail.receiver.com", "PIPELINING", "8BITMIME"),
            None,
        ),
        (b"250-a\r\n251 b\r\n", 250, ("a", "b"), "inconsistent codes 250/251"),
        (b"hello\r\n", None, ("hello",), "not a reply line"),
        (b"250x\r\n", None, ("250x",), "not a reply line"),
        (b"250-a\r\nbroken\r\n", 250, ("a", "broken"), "not a reply line"),
        (b"199 odd\r\n", 199, ("odd",), "out of range"),
        (b"260 odd\r\n", 260, ("odd",), "out of range"),
    ],
)
def test_replies(wire, code, lines, error):
    (reply,) = of(Reply, Observer().feed(S, wire))
    assert (reply.code, reply.lines, reply.raw) == (code, lines, wire)
    assert (reply.error is None) if error is None else (error in reply.error)


@pytest.mark.parametrize(
    ("code", "text", "wire"),
    [
        (250, "OK", b"250 OK\r\n"),
        (250, "", b"250\r\n"),
        (250, ["a", "b", "c"], b"250-a\r\n250-b\r\n250 c\r\n"),
        (221, ["bye"], b"221 bye\r\n"),
    ],
)
def test_format_reply(code, text, wire):
    assert format_reply(code, text) == wire


@pytest.mark.parametrize(("code", "text"), [(99, "x"), (600, "x"), (250, "a\r\nb")])
def test_format_reply_rejects_bad_input(code, text):
    with pytest.raises(HarnessError):
        format_reply(code, text)


def test_reply_kinds():
    kinds = {
        code: (r.positive, r.transient, r.permanent)
        for code in (220, 354, 421, 550)
        for r in of(Reply, Observer().feed(S, b"%d x\r\n" % code))
    }
    assert kinds == {
        220: (True, False, False),
        354: (True, False, False),
        421: (False, True, False),
        550: (False, False, True),
    }


# -- dot-stuffing and the end of DATA ------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "wire"),
    [
        (b"", b""),
        (b".\r\n", b"..\r\n"),
        (b"..\r\n", b"...\r\n"),
        (b".x\r\n", b"..x\r\n"),
        (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n"),
        (b"a\r\n.", b"a\r\n..\r\n"),
        (b"no final CRLF", b"no final CRLF\r\n"),
        (b"bare\n.lf\r\n", b"bare\n.lf\r\n"),
    ],
)
def test_dot_stuff(body, wire):
    assert dot_stuff(body) == wire


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b".\r\n",
        b"..\r\n",
        b".x\r\n",
        b"a\r\n.\r\n",
        b"\r\n.\r\n.\r\n",
        b"no final CRLF",
        b"x\r\n.",
    ],
)
def test_dot_stuffing_round_trip(body):
    events = serve(PRELUDE + dot_stuff(body) + b".\r\n")
    expected = body if not body or body.endswith(b"\r\n") else body + b"\r\n"
    assert content(events) == expected
    assert [e.size for e in of(EndOfData, events)] == [len(expected)]
    assert not anomalies(events)


@pytest.mark.parametrize(
    ("variant", "stored"),
    [
        (b"\n.\n", b"\n.\n"),
        (b"\r.\r", b"\r.\r"),
        (b"\n.\r\n", b"\n.\r\n"),
        (b"\r\n.\n", b"\r\n\n"),  # the dot starts a CRLF line: unstuffed, not an end
        (b"\r\n.\r\r\n", b"\r\n\r\r\n"),
    ],
)
def test_only_crlf_dot_crlf_ends_data(variant, stored):
    events = serve(PRELUDE + b"a" + variant + b"b\r\n.\r\nQUIT\r\n")
    assert content(events) == b"a" + stored + b"b\r\n"
    assert len(of(EndOfData, events)) == 1
    assert AnomalyKind.SMUGGLING in anomalies(events)
    assert [c.verb for c in of(Command, events)][-1] == "QUIT"


def test_empty_message_ends_at_once():
    events = serve(PRELUDE + b".\r\n")
    assert [e.size for e in of(EndOfData, events)] == [0]


# -- line limits and odd bytes -------------------------------------------------------------


@pytest.mark.parametrize(("length", "too_long"), [(512, False), (513, True), (2000, True)])
def test_command_line_limit(length, too_long):
    line = b"NOOP " + b"x" * (length - 7) + b"\r\n"
    events = serve(line + b"NOOP\r\n")
    first, second = of(Command, events)
    assert (AnomalyKind.LINE_TOO_LONG in first.flaws) is too_long
    assert len(first.raw) <= 512 and not second.flaws
    assert first.raw == line[: len(first.raw)]
    assert (anomalies(events) == [AnomalyKind.LINE_TOO_LONG]) is too_long


@pytest.mark.parametrize(("length", "too_long"), [(1000, False), (1001, True), (5000, True)])
def test_text_line_limit(length, too_long):
    line = b"y" * (length - 2) + b"\r\n"
    events = serve(PRELUDE + line + b".\r\n")
    assert content(events) == line
    assert anomalies(events) == ([AnomalyKind.LINE_TOO_LONG] if too_long else [])


@pytest.mark.parametrize(("length", "too_long"), [(512, False), (513, True)])
def test_reply_line_limit(length, too_long):
    events = Observer().feed(S, b"220 " + b"z" * (length - 6) + b"\r\n")
    (reply,) = of(Reply, events)
    assert reply.code == 220 and (AnomalyKind.LINE_TOO_LONG in reply.flaws) is too_long


@pytest.mark.parametrize(
    ("line", "kind", "offset"),
    [
        (b"NO\x00OP\r\n", AnomalyKind.NUL, 2),
        (b"NOOP\n", AnomalyKind.BARE_LF, 4),
        (b"NO\rOP\r\n", AnomalyKind.BARE_CR, 2),
        (b"NOOP\r\r\n", AnomalyKind.BARE_CR, 4),
    ],
)
def test_odd_bytes_in_commands(line, kind, offset):
    events = serve(line)
    (anomaly,) = of(Anomaly, events)
    (command,) = of(Command, events)
    assert (anomaly.kind, anomaly.offset, command.flaws) == (kind, offset, {kind})
    assert events.index(anomaly) < events.index(command)


def test_odd_bytes_in_content_are_kept_and_located():
    events = serve(PRELUDE + b"a\x00b\nc\rd\r\n.\r\n")
    assert content(events) == b"a\x00b\nc\rd\r\n"
    start = len(PRELUDE)
    located = [(e.kind, e.offset - start) for e in of(Anomaly, events)]
    assert located == [(AnomalyKind.NUL, 1), (AnomalyKind.BARE_LF, 3), (AnomalyKind.BARE_CR, 5)]


# -- segmentation --------------------------------------------------------------------------

TOKENS = [
    b"\r",
    b"\n",
    b".",
    b"a",
    b"\x00",
    b"\r\n",
    b"\r\n.\r\n",
    b"\n.\n",
    b"DATA\r\n",
    b"EHLO x\r\n",
    b"MAIL FROM:<a@b>\r\n",
    b"RCPT TO:<c@d>\r\n",
    b"BDAT 3\r\n",
    b"BDAT 2 LAST\r\n",
    b"RSET\r\n",
    b"y" * 700,
    b"STARTTLS\r\n",
]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(TOKENS), max_size=40).map(b"".join),
    st.lists(st.integers(min_value=0, max_value=4000), max_size=30),
)
def test_segmentation_never_changes_events(data, cuts):
    whole = serve(data)
    assert serve(data, cuts) == whole
    assert serve(data, list(range(len(data)))) == whole


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=200), max_size=20))
def test_observer_segmentation(cuts):
    client = PRELUDE + b"Subject: x\r\n\r\n..hi\n.\n\r\n.\r\nQUIT\r\n"
    server = (
        b"220-a\r\n220 b\r\n250-x\r\n250 PIPELINING\r\n"
        b"250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n221 bye\r\n"
    )

    def run(split: bool) -> list[Event]:
        obs, events = Observer(), []
        for direction, data in ((S, server[:14]), (C, client), (S, server[14:])):
            bounds = [
                0,
                *sorted({c for c in cuts if 0 < c < len(data)} if split else set()),
                len(data),
            ]
            for a, b in itertools.pairwise(bounds):
                events += obs.feed(direction, data[a:b])
        return events

    assert run(split=True) == run(split=False)


# -- session state -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "verb", "legal"),
    [
        (State.GREETING, "EHLO", False),
        (State.HELLO, "EHLO", True),
        (State.HELLO, "MAIL", False),
        (State.HELLO, "VRFY", True),
        (State.HELLO, "NOOP", True),
        (State.READY, "MAIL", True),
        (State.READY, "RCPT", False),
        (State.READY, "DATA", False),
        (State.READY, "STARTTLS", True),
        (State.MAIL, "MAIL", False),
        (State.MAIL, "RCPT", True),
        (State.MAIL, "DATA", False),
        (State.MAIL, "STARTTLS", False),
        (State.RCPT, "DATA", True),
        (State.RCPT, "BDAT", True),
        (State.RCPT, "RSET", True),
        (State.BDAT, "DATA", False),
        (State.BDAT, "BDAT LAST", True),
        (State.REFUSED, "EHLO", False),
        (State.REFUSED, "QUIT", True),
        (State.CLOSED, "NOOP", False),
    ],
)
def test_legality_table(state, verb, legal):
    assert (verb in LEGAL[state]) is legal


@pytest.mark.parametrize(
    ("script", "in_order"),
    [
        (b"MAIL FROM:<a@b>\r\n", [False]),
        (b"NOOP\r\nVRFY x\r\nRSET\r\nEHLO x\r\n", [True] * 4),
        (b"EHLO x\r\nRCPT TO:<a@b>\r\n", [True, False]),
        (b"EHLO x\r\nMAIL FROM:<a@b>\r\nMAIL FROM:<a@b>\r\n", [True, True, False]),
        (b"EHLO x\r\nMAIL FROM:<a@b>\r\nDATA\r\n", [True, True, False]),
        (b"EHLO x\r\nMAIL FROM:<a@b>\r\nRSET\r\nRCPT TO:<c@d>\r\n", [True, True, True, False]),
        (
            b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 1\r\nxDATA\r\n",
            [True] * 4 + [False],
        ),
        (b"QUIT\r\nNOOP\r\n", [True, False]),
    ],
)
def test_order_as_a_server_judges_it(script, in_order):
    assert [c.in_order for c in of(Command, serve(script))] == in_order


def test_pipelined_command_is_judged_after_the_earlier_reply():
    conn = ServerConnection()
    conn.send_reply(220, "hi")
    conn.receive_data(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
    assert conn.next_event().verb == "EHLO"
    conn.send_reply(250, "ok")
    assert conn.next_event().verb == "MAIL"
    conn.send_reply(550, "no")
    rcpt = conn.next_event()
    assert rcpt.verb == "RCPT" and not rcpt.in_order


def test_observer_flags_early_talker_and_pipelining_is_in_order():
    obs = Observer()
    (early,) = obs.feed(C, b"EHLO x\r\n")
    assert not early.in_order
    obs.feed(S, b"220 hi\r\n250 ok\r\n")
    cmds = obs.feed(C, b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n")
    assert [c.in_order for c in cmds] == [True, True, True]


def test_refused_greeting_allows_only_quit():
    obs = Observer()
    obs.feed(S, b"554 go away\r\n")
    assert obs.state is State.REFUSED
    assert [c.in_order for c in obs.feed(C, b"EHLO x\r\nQUIT\r\n")] == [False, True]


@pytest.mark.parametrize(
    ("server", "state"),
    [
        (b"220 a\r\n", State.HELLO),
        (b"220 a\r\n250 b\r\n", State.READY),
        (b"220 a\r\n250 b\r\n250 c\r\n", State.MAIL),
        (b"220 a\r\n250 b\r\n550 c\r\n", State.READY),
        (b"220 a\r\n250 b\r\n421 c\r\n", State.CLOSED),
        (b"421 busy\r\n", State.CLOSED),
    ],
)
def test_replies_drive_the_state(server, state):
    obs = Observer()
    obs.feed(C, b"EHLO x\r\nMAIL FROM:<a@b>\r\n")
    obs.feed(S, server)
    assert obs.state is state


def test_data_waits_for_the_reply():
    conn = ServerConnection()
    conn.send_reply(220, "hi")
    conn.receive_data(PRELUDE + b"QUIT\r\n")
    for _ in range(3):
        assert isinstance(conn.next_event(), Command)
        conn.send_reply(250, "ok")
    assert conn.next_event().verb == "DATA"
    assert conn.next_event() is PAUSED
    conn.send_reply(554, "no valid recipients")
    quit_ = conn.next_event()
    assert quit_.verb == "QUIT" and conn.state is State.RCPT


def test_vanishing_mid_data_reports_the_partial_line():
    events = serve(PRELUDE + b"Subject: x\r\npartial")
    assert not of(EndOfData, events)
    assert events[-1] == ConnectionClosed(direction=C, offset=len(PRELUDE) + 12, partial=b"partial")


# -- BDAT ----------------------------------------------------------------------------------


def test_bdat_chunks_are_counted_not_framed():
    body = b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n"
    events = serve(body + b"BDAT 7\r\nQUIT\r\n.BDAT 5 LAST\r\n\r\n.\r\nQUIT\r\n")
    assert content(events) == b"QUIT\r\n.\r\n.\r\n"
    assert [(e.size, e.last) for e in of(EndOfChunk, events)] == [(7, False), (5, True)]
    assert [c.verb for c in of(Command, events)] == ["EHLO", "MAIL", "RCPT", "BDAT", "BDAT", "QUIT"]
    assert not anomalies(events)


def test_bdat_zero_last_and_big_chunk():
    events = serve(b"BDAT 0 LAST\r\nBDAT 70000\r\n" + b"z" * 70000 + b"NOOP\r\n")
    assert [len(c.data) for c in of(Content, events)] == [65536, 70000 - 65536]
    assert [(e.size, e.last) for e in of(EndOfChunk, events)] == [(0, True), (70000, False)]
    assert of(Command, events)[-1].verb == "NOOP"


# -- STARTTLS and the client side ----------------------------------------------------------


def test_starttls_makes_the_stream_opaque_and_drops_injected_plaintext():
    obs = Observer()
    obs.feed(S, b"220 hi\r\n")
    obs.feed(C, b"EHLO x\r\n")
    obs.feed(S, b"250 STARTTLS\r\n")
    assert obs.feed(C, b"STARTTLS\r\nMAIL FROM:<evil@x>\r\n")[0].verb == "STARTTLS"
    events = obs.feed(S, b"220 go ahead\r\n")
    assert [type(e) for e in events] == [Reply, Anomaly, TlsStarted, TlsStarted]
    assert events[1].kind is AnomalyKind.PLAINTEXT_AFTER_STARTTLS and events[1].direction is C
    assert obs.feed(C, b"\x16\x03\x01binary") == [Opaque(direction=C, offset=38, size=9)]
    assert obs.state is State.TLS


def test_secured_reads_the_plaintext_inside_tls_as_a_new_session():
    """RFC 3207 §4.2: after the handshake both ends forget what they knew; the session
    inside TLS has no greeting, awaits EHLO, and what was injected before it stays dropped."""
    obs = Observer()
    for direction, data in ((S, b"220 hi\r\n"), (C, b"EHLO x\r\n"), (S, b"250 STARTTLS\r\n")):
        obs.feed(direction, data)
    obs.feed(C, b"STARTTLS\r\nRSET\r\n")
    obs.feed(S, b"220 go ahead\r\n")
    assert not obs.in_tls
    obs.secured()
    assert obs.in_tls and obs.state is State.HELLO
    assert obs.feed(C, b"MAIL FROM:<a@b>\r\n")[0].verb == "MAIL"
    assert not obs.session.allows("MAIL")  # before the new EHLO: out of sequence
    (reply,) = obs.feed(S, b"503 EHLO first\r\n")
    assert reply.answers == "MAIL"  # nothing else waited: the injected RSET was dropped
    obs.feed(C, b"EHLO y\r\n")
    assert obs.feed(S, b"250 ok\r\n")[0].answers == "EHLO" and obs.state is State.READY


def test_secured_before_a_220_to_starttls_is_a_bug_of_the_caller():
    obs = Observer()
    obs.feed(S, b"220 hi\r\n")
    with pytest.raises(RuntimeError, match="no TLS began"):
        obs.secured()


def test_peers_read_each_other_inside_tls():
    server, client = ServerConnection(), ClientConnection()
    client.receive_data(server.send_reply(220, "hi"))
    assert client.next_event().code == 220
    for verb, code in (("EHLO", 250), ("STARTTLS", 220)):
        server.receive_data(client.send_command(verb, "x" if verb == "EHLO" else None))
        assert server.next_event().verb == verb
        client.receive_data(server.send_reply(code, "ok"))
        assert client.next_event().answers == verb
    # each end is told TLS starts (its cue for the handshake), then says when it is done
    assert isinstance(server.next_event(), TlsStarted)
    assert isinstance(client.next_event(), TlsStarted)
    server.secured(), client.secured()
    server.receive_data(client.send_command("EHLO", "inside"))
    assert server.next_event().argument == "inside" and server.in_tls and client.in_tls


def test_client_connection_tracks_its_own_commands():
    conn = ClientConnection()
    conn.receive_data(b"220 mail.receiver.com ESMTP\r\n")
    greeting = conn.next_event()
    assert (greeting.code, greeting.answers) == (220, "<greeting>")
    assert conn.send_command("HELO", "mail.sender.com") == b"HELO mail.sender.com\r\n"
    conn.receive_data(b"250 hi\r\n")
    assert conn.next_event().answers == "HELO"
    conn.send_command("MAIL", "FROM:<a@b>")
    conn.send_command("RCPT", "TO:<c@d>")
    conn.send_command("DATA")
    conn.receive_data(b"250 ok\r\n250 ok\r\n354 go\r\n")
    assert [conn.next_event().answers for _ in range(3)] == ["MAIL", "RCPT", "DATA"]
    assert conn.send_data(b".hello") == b"..hello\r\n.\r\n"
    conn.receive_data(b"250 OK Mail accepted\r\n")
    assert conn.next_event().answers == "<end-of-data>"
    assert conn.state is State.READY
    assert conn.next_event() is NEED_DATA


def test_client_send_bdat():
    conn = ClientConnection()
    assert conn.send_bdat(b"abc", last=True) == b"BDAT 3 LAST\r\nabc"
    with pytest.raises(HarnessError):
        conn.send_command("NOOP", "a\r\nQUIT")


# -- the reply decides what follows DATA and STARTTLS (state.py rule 4) --------------------

HELLO = b"EHLO x\r\n"
TRANSACTION = b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n"


@pytest.mark.parametrize(
    ("before", "command", "reply", "follows"),
    [
        (TRANSACTION, b"DATA", b"354 go", Content),
        (TRANSACTION + b"BDAT 1\r\nz", b"DATA", b"354 go", Content),  # smtp-bdat-gap.pcap
        (HELLO, b"DATA", b"354 go", Content),  # no transaction, but the server said go
        (TRANSACTION, b"DATA", b"250 odd", Command),  # a client sends content after 3yz only
        (TRANSACTION, b"DATA", b"554 no", Command),
        (b"", b"STARTTLS", b"220 go", TlsStarted),  # before EHLO, but the server said go
        (HELLO, b"STARTTLS", b"454 no", Command),
    ],
)
def test_the_reply_to_data_or_starttls_decides_what_follows(before, command, reply, follows):
    obs = Observer()
    obs.feed(S, b"220 hi\r\n")
    if before:  # b"" would be an EOF
        obs.feed(C, before)
        obs.feed(S, b"250 ok\r\n" * before.count(b"\r\n"))
    obs.feed(C, command + b"\r\nFrom: x\r\n")
    events = obs.feed(S, reply + b"\r\n")
    assert [type(e) for e in events if e.direction is C][-1:] == [follows]


def test_a_354_outside_a_transaction_leads_back_to_commands_after_the_data():
    obs = Observer()
    obs.feed(S, b"220 hi\r\n")
    obs.feed(C, b"DATA\r\n")
    obs.feed(S, b"354 go\r\n")
    assert obs.state is State.DATA
    events = obs.feed(C, b"x\r\n.\r\nQUIT\r\n")
    assert [type(e) for e in events] == [Content, EndOfData, Command]
    obs.feed(S, b"250 ok\r\n")
    assert obs.state is State.READY and obs.session.waiting == ("QUIT",)


# -- gaps in a capture (Observer.skip; readers rule 6) --------------------------------------

GREETED = [("s", b"220 hi\r\n"), ("c", TRANSACTION), ("s", b"250 ok\r\n" * 3)]
DATA_GO = [*GREETED, ("c", b"DATA\r\n"), ("s", b"354 go\r\n")]
CUT = AnomalyKind.CUT_BY_GAP


def brief(event: Event) -> tuple:
    match event:
        case Command():
            return ("command", event.verb)
        case Reply():
            return ("reply", event.code)
        case Content():
            return ("content", event.data)
        case Gap():
            return ("gap", event.offset, event.size, event.content)
        case Anomaly():
            return (event.kind, event.offset, event.detail)
        case EndOfData() | EndOfChunk():
            return (type(event).__name__, event.size)
        case Unfinished():
            return ("unfinished", event.unit, len(event.raw))
    return (type(event).__name__,)


@pytest.mark.parametrize(
    ("script", "direction", "expected"),
    [
        pytest.param(
            [*GREETED, ("c", b"BDAT 10\r\nabc"), ("gap", 4), ("c", b"hijNOOP\r\n")],
            C,
            [
                ("content", b"abc"),
                ("gap", 52, 4, True),
                ("content", b"hij"),
                ("EndOfChunk", 10),
                ("command", "NOOP"),
            ],
            id="bdat-gap-counts-towards-the-chunk",
        ),
        pytest.param(
            [*GREETED, ("c", b"BDAT 5\r\nab"), ("gap", 10), ("c", b"QUIT\r\n")],
            C,
            [
                ("content", b"ab"),
                ("gap", 50, 3, True),
                ("EndOfChunk", 5),
                ("gap", 53, 7, False),
                ("command", "QUIT"),
            ],
            id="bdat-gap-overflows-into-commands",
        ),
        pytest.param(
            [*DATA_GO, ("c", b"Subject: x\r\npart"), ("gap", 100), ("c", b"ial\r\n.\r\n")],
            C,
            [
                ("content", b"Subject: x\r\n"),
                ("content", b"part"),
                ("gap", 62, 100, True),
                ("content", b"ial\r\n"),
                ("EndOfData", 121),
            ],
            id="data-gap-is-a-gap-in-the-content",
        ),
        pytest.param(
            [*DATA_GO, ("c", b"Subject: x\r\n"), ("gap", 50), ("c", b".\r\nQUIT\r\n")],
            C,
            [
                ("content", b"Subject: x\r\n"),
                ("gap", 58, 50, True),
                ("EndOfData", 62),
                ("command", "QUIT"),
            ],
            id="dot-line-after-a-data-gap-ends-the-data",
        ),
        pytest.param(
            [
                *GREETED,
                ("c", b"DATA\r\nSubj"),
                ("gap", 10),
                ("c", b"ect\r\n.\r\n"),
                ("s", b"354 go\r\n"),
            ],
            C,
            [
                ("content", b"Subj"),
                ("gap", 50, 10, True),
                ("content", b"ect\r\n"),
                ("EndOfData", 19),
            ],
            id="gap-waits-behind-the-reply-to-data",
        ),
        pytest.param(
            [("s", b"220 hi\r\n"), ("c", b"MAIL FR"), ("gap", 5), ("c", b"b>\r\nQUIT\r\n")],
            C,
            [
                (CUT, 0, "7 octets dropped"),
                ("gap", 7, 5, False),
                (CUT, 12, "4 octets dropped"),
                ("command", "QUIT"),
            ],
            id="command-cut-by-a-gap-is-dropped",
        ),
        pytest.param(
            [("s", b"220 hi\r\n"), ("c", b"EHLO x\r\n"), ("gap", 20), ("c", b"QUIT\r\n")],
            C,
            [("command", "EHLO"), ("gap", 8, 20, False), ("command", "QUIT")],
            id="whole-line-after-a-gap-is-kept",
        ),
        pytest.param(
            [("c", HELLO), ("s", b"220 hi\r\n25"), ("gap", 3), ("s", b"0 ok\r\n250 ok\r\n")],
            S,
            [
                ("reply", 220),
                (CUT, 8, "2 octets dropped"),
                ("gap", 10, 3, False),
                (CUT, 13, "6 octets dropped"),
                ("reply", 250),
            ],
            id="reply-cut-by-a-gap-is-dropped",
        ),
    ],
)
def test_gaps_are_placed_by_the_mode_they_fall_in(script, direction, expected):
    obs, events = Observer(), []
    for who, what in script:
        if who == "gap":
            events += obs.skip(C if direction is C else S, what)
        else:
            events += obs.feed(C if who == "c" else S, what)
    seen = [brief(e) for e in events if e.direction is direction]
    assert seen[-len(expected) :] == expected


# -- the end of a stream inside a unit (events rule 4, readers rule 7) ----------------------


def _closed(script: list[tuple[str, bytes | int]], direction: Direction) -> list[Event]:
    """The events of *direction* after feeding *script* (``gap`` entries skip) and its EOF."""
    obs, events = Observer(), []
    for who, what in script:
        if who == "gap":
            events += obs.skip(direction, what)
        else:
            events += obs.feed(C if who == "c" else S, what)
    events += obs.feed(direction, b"")
    return [e for e in events if e.direction is direction]


GREETED = [("s", b"220 hi\r\n"), ("c", b"EHLO a\r\n"), ("s", b"250 ok\r\n")]


@pytest.mark.parametrize(
    ("script", "direction", "unfinished"),
    [
        pytest.param(
            [("s", b"220-first line\r\n")],
            S,
            Unfinished(
                direction=S, offset=0, unit=UnitKind.REPLY, raw=b"220-first line\r\n", code=220
            ),
            id="reply-without-its-last-line",
        ),
        pytest.param(
            [("s", b"220-first\r\n220 sec")],
            S,
            Unfinished(
                direction=S, offset=0, unit=UnitKind.REPLY, raw=b"220-first\r\n220 sec", code=220
            ),
            id="reply-inside-its-last-line",
        ),
        pytest.param(
            [("s", b"22")],
            S,
            Unfinished(direction=S, offset=0, unit=UnitKind.REPLY, raw=b"22", code=None),
            id="reply-without-a-code-yet",
        ),
        pytest.param(
            [*GREETED, ("c", b"MAIL FROM:<a@b.example>\r")],
            C,
            Unfinished(
                direction=C, offset=8, unit=UnitKind.COMMAND, raw=b"MAIL FROM:<a@b.example>\r"
            ),
            id="command-without-its-lf",
        ),
        pytest.param(
            [
                *GREETED,
                ("c", PRELUDE[16:]),
                ("s", b"250 ok\r\n250 ok\r\n354 go\r\n"),
                ("c", b"Hi\r\n."),
            ],
            C,
            Unfinished(
                direction=C,
                offset=len(b"EHLO a\r\n" + PRELUDE[16:] + b"Hi\r\n"),
                unit=UnitKind.CONTENT,
                raw=b".",
            ),
            id="content-without-its-end",
        ),
        pytest.param(
            [*GREETED, ("c", b"BDAT 10 LAST\r\nabc")],
            C,
            Unfinished(direction=C, offset=22, unit=UnitKind.CHUNK, raw=b"abc"),
            id="chunk-short-of-its-size",
        ),
    ],
)
def test_a_unit_the_stream_ended_inside_is_reported_unfinished(script, direction, unfinished):
    events = _closed(script, direction)
    assert events[-2:] == [
        unfinished,
        ConnectionClosed(direction=direction, offset=events[-1].offset, partial=events[-1].partial),
    ]


def test_unfinished_leaves_the_partial_bytes_and_the_session_as_they_were():
    obs = Observer()
    obs.feed(S, b"220 hi\r\n")
    obs.feed(C, b"EHLO a\r\nQUI")
    events = obs.feed(C, b"")
    assert [type(e) for e in events] == [Unfinished, ConnectionClosed]
    assert events[1] == ConnectionClosed(direction=C, offset=8, partial=b"QUI")
    replies = of(Reply, obs.feed(S, b"250 ok\r\n221 bye\r\n"))
    assert [r.answers for r in replies] == ["EHLO", None]  # the half QUIT awaits no reply
    assert obs.state is State.READY


def test_nothing_begun_is_nothing_unfinished():
    assert [type(e) for e in _closed([*GREETED], C)] == [Command, ConnectionClosed]
    data = [*GREETED, ("c", PRELUDE[16:]), ("s", b"250 ok\r\n250 ok\r\n354 go\r\n")]
    assert not of(Unfinished, _closed(data, C))  # EOF right after the 354
    assert not of(Unfinished, _closed([*GREETED, ("c", b"BDAT 10\r\n")], C))


def test_an_overlong_line_the_stream_ended_inside_keeps_its_head():
    line = b"NOOP " + b"x" * 600
    events = _closed([*GREETED, ("c", line)], C)
    assert [brief(e) for e in events[-3:-1]] == [
        (AnomalyKind.LINE_TOO_LONG, 8, "over 512 octets"),
        ("unfinished", UnitKind.COMMAND, 512),
    ]


def test_a_partial_line_after_a_gap_that_is_a_tail_is_dropped_not_unfinished():
    events = _closed([*GREETED, ("c", b"NOOP\r\n"), ("gap", 4), ("c", b"xyz")], C)
    assert of(Unfinished, events) == []
    assert brief(events[-2]) == (AnomalyKind.CUT_BY_GAP, 18, "3 octets dropped")
    events = _closed([*GREETED, ("c", b"NOOP\r\n"), ("gap", 4), ("c", b"QUIT")], C)
    assert [e.raw for e in of(Unfinished, events)] == [b"QUIT"]  # a whole line's start


def test_peers_see_unfinished_before_connection_closed():
    server = ServerConnection()
    server.send_reply(220, "hi")
    server.receive_data(b"EHLO a\r\nMAIL FR")
    assert isinstance(server.next_event(), Command)
    server.send_reply(250, "ok")
    server.receive_data(b"")
    unfinished, closed = server.next_event(), server.next_event()
    assert (unfinished.unit, unfinished.raw) == (UnitKind.COMMAND, b"MAIL FR")
    assert closed == ConnectionClosed(direction=C, offset=8, partial=b"MAIL FR")
    client = ClientConnection()
    client.receive_data(b"220-hi\r\n")
    client.receive_data(b"")
    assert [type(client.next_event()), type(client.next_event())] == [Unfinished, ConnectionClosed]


def test_unanswered_commands_cost_the_same_each(monkeypatch):
    """A capture missing the server's side queues every command unanswered; judging each
    one walked the whole queue (quadratic: a fuzzed 2,500-packet capture took 12 s).  Work
    is counted as lookups in the state table, not timed."""
    lookups = 0

    class Counting(dict):
        def __getitem__(self, state):
            nonlocal lookups
            lookups += 1
            return super().__getitem__(state)

    monkeypatch.setattr(state_module, "SUCCESS", Counting(state_module.SUCCESS))
    obs = Observer()
    obs.feed(S, b"220 hi\r\n")
    obs.feed(C, b"EHLO a\r\n" + b"NOOP\r\n" * 2000)
    assert lookups < 3 * 2001


def test_a_capture_observer_is_freed_without_the_cyclic_gc():
    """No reference cycle through its reply reader: a stream's observers go when their
    connection does, however seldom the GC collects (``ladder``'s streaming sets it so)."""
    import gc
    import weakref

    from harness.smtp.protocol import Observer

    enabled = gc.isenabled()
    gc.disable()
    try:
        observer = Observer(capture=True, midstream=True)
        observer.feed(Direction.SERVER, b"220 hi\r\n")
        gone = weakref.ref(observer)
        del observer
        assert gone() is None
    finally:
        if enabled:
            gc.enable()
