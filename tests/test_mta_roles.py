"""harness.mta.roles without a lab: DSNs as the four MTAs write them, and how the scripted
receiver's replies, the DSNs and the MTA's queue decide an MTA sender's outcomes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.mta.base import QueuedRecipient, Site
from harness.mta.roles import dsns_in, mta_outcomes
from harness.outcome import Dsn
from harness.scenario import FIXTURES
from harness.smtp.receiver import Answered, StoredMessage

DSNS = FIXTURES / "dsn"
TWO = ("c3po@receiver.com", "r2d2@receiver.com")


@pytest.mark.parametrize(
    ("name", "recipient", "status"),
    [
        ("postfix-null-mx", "c3po@receiver.com", "5.1.0"),
        ("exim-null-mx", "c3po@receiver.com", "5.0.0"),
        ("opensmtpd-nxdomain", "c3po@nosuch.receiver.com", "5.0.0"),
        ("sendmail-null-mx", "c3po@receiver.com", "5.1.10"),
    ],
)
def test_each_mtas_bounce_is_a_failed_dsn_with_its_status(name, recipient, status) -> None:
    (dsn,) = dsns_in([(DSNS / f"{name}.eml").read_bytes()])
    assert (dsn.recipient, dsn.action, dsn.status) == (recipient, "failed", status)
    got = mta_outcomes((recipient,), [], [], [dsn], [])[recipient]
    assert (got.status, got.stage, got.status_code) == ("rejected", "dsn", status)
    assert got.evidence[0].startswith(f"DSN failed {status}")


def _dsn(*groups: tuple[str, str]) -> bytes:
    per_recipient = "".join(
        f"Final-Recipient: RFC822; <{rcpt}>\nAction: {action}\nStatus: 4.4.7\n\n"
        for rcpt, action in groups
    )
    return (
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n\n'
        "--b\nContent-Type: text/plain\n\nnotice\n\n"
        "--b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mail.sender.com\n\n"
        f"{per_recipient}--b--\n"
    ).encode()


def test_every_dsn_group_is_read_and_failed_wins_over_delayed() -> None:
    first = _dsn(("C3PO@receiver.com", "delayed"), ("r2d2@receiver.com", "delayed"))
    later = _dsn(("c3po@receiver.com", "failed"), ("aibo@receiver.com", "delivered"))
    dsns = dsns_in([first, later, b"Subject: not a DSN\n\nhello\n"])
    assert [(d.recipient, d.action) for d in dsns] == [
        ("C3PO@receiver.com", "delayed"),
        ("r2d2@receiver.com", "delayed"),
        ("c3po@receiver.com", "failed"),
        ("aibo@receiver.com", "delivered"),
    ]
    queued = [QueuedRecipient("r2d2@receiver.com", "Q1", "Deferred: 451 4.3.0 later", "4.3.0")]
    got = mta_outcomes(TWO, [], [], dsns, queued)
    assert {r: o.status for r, o in got.items()} == {
        "c3po@receiver.com": "rejected",
        "r2d2@receiver.com": "deferred",
    }
    assert got["r2d2@receiver.com"].status_code == "4.3.0"


def _answered(session: int, *turns: tuple[str, str]) -> list[Answered]:
    """(command line, reply) pairs as the scripted receiver records them."""
    out = []
    for line, reply in turns:
        verb, _, argument = line.partition(" ")
        address = argument.partition("<")[2].partition(">")[0] if "<" in argument else None
        out.append(Answered(session, verb, argument or None, address, int(reply[:3]), (reply[4:],)))
    return out


PIPELINED = [
    ("MAIL FROM:<luke@sender.com>", "451 4.3.0 try later"),
    ("RCPT TO:<c3po@receiver.com>", "503 5.5.1 need MAIL first"),
    ("RCPT TO:<r2d2@receiver.com>", "503 5.5.1 need MAIL first"),
    ("DATA", "503 5.5.1 need RCPT first"),
]
QUEUED = [QueuedRecipient(r, "Q1", "451 4.3.0 try later", "4.3.0") for r in TWO]


def test_503s_after_a_refused_mail_decide_nothing() -> None:
    got = mta_outcomes(TWO, _answered(1, *PIPELINED), [], [], QUEUED)
    assert {r: (o.status, o.stage) for r, o in got.items()} == {
        "c3po@receiver.com": ("deferred", "queue"),
        "r2d2@receiver.com": ("deferred", "queue"),
    }
    permanent = [("MAIL FROM:<luke@sender.com>", "550 5.7.1 no"), *PIPELINED[1:]]
    got = mta_outcomes(TWO, _answered(1, *permanent), [], [], [])
    assert {(o.status, o.stage, o.status_code) for o in got.values()} == {
        ("rejected", "MAIL", "5.7.1")
    }


def test_a_message_neither_stored_bounced_nor_queued_is_lost() -> None:
    """Issue 8 finding 2: an MTA that drops the mail silently was reported "deferred"
    without anyone reading its queue; read and empty, it is lost (a fail of the run)."""
    got = mta_outcomes(TWO, _answered(1, *PIPELINED), [], [], [])
    assert {o.status for o in got.values()} == {"lost"}
    assert all("the queue was read" in o.text for o in got.values())


def test_stored_then_dsn_then_reply_then_queue_then_lost() -> None:
    turns = [
        ("MAIL FROM:<luke@sender.com>", "250 ok"),
        ("RCPT TO:<c3po@receiver.com>", "550 5.1.1 unknown"),
        ("RCPT TO:<r2d2@receiver.com>", "250 ok"),
    ]
    stored = [StoredMessage("r2d2@receiver.com", "luke@sender.com", None, b"x")]
    four = (*TWO, "bb8@receiver.com", "wall-e@receiver.com")
    bounced = [Dsn("bb8@receiver.com", "failed", "5.1.1", "550 unknown")]
    queued = [QueuedRecipient("wall-e@receiver.com", "Q9", "host said 451", None)]
    got = mta_outcomes(four, _answered(1, *turns), stored, bounced, queued)
    assert [(o.status, o.stage) for o in got.values()] == [
        ("rejected", "RCPT"),
        ("delivered", "<end-of-data>"),
        ("rejected", "dsn"),
        ("deferred", "queue"),
    ]
    assert mta_outcomes(("x@receiver.com",), [], [], [], [])["x@receiver.com"].status == "lost"


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        (
            {"inet": "4"},
            "site knob 'inet': expected one of "
            "['certificate', 'family', 'starttls', 'timeouts', 'tls', 'vrfy']",
        ),
        ({"family": "ipv6"}, "site knob family = 'ipv6': expected one of ('ipv4', 'any')"),
    ],
)
def test_site_knobs_are_validated(extra, error) -> None:
    with pytest.raises(HarnessError, match=re.escape(error)):
        Site(None, "sender", Path("/nonexistent"), "mail.sender.com", "sender.com", extra=extra)


def test_site_knob_defaults() -> None:
    site = Site(None, "sender", Path("/nonexistent"), "mail.sender.com", "sender.com")
    knobs = (site.knob("vrfy"), site.knob("family"), site.knob("timeouts"))
    assert knobs == ("check", "ipv4", "default")


def test_a_503_to_data_after_every_rcpt_was_refused_decides_nothing() -> None:
    """Postfix pipelines MAIL, RCPT, DATA: RCPT 451, then DATA 503 (no valid recipients).
    The recipient's fate is its RCPT reply's: deferred, in the queue; never the 503's."""
    turns = [
        ("MAIL FROM:<luke@sender.com>", "250 ok"),
        ("RCPT TO:<c3po@receiver.com>", "451 4.3.0 try later"),
        ("DATA", "503 5.5.1 no valid recipients"),
    ]
    queued = [QueuedRecipient("c3po@receiver.com", "Q1", "said: 451 4.3.0 try later", "4.3.0")]
    got = mta_outcomes(("c3po@receiver.com",), _answered(1, *turns), [], [], queued)
    assert (got["c3po@receiver.com"].status, got["c3po@receiver.com"].stage) == (
        "deferred",
        "queue",
    )
