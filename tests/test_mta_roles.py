"""harness.mta.roles without a lab: DSNs as the four MTAs write them, and how the scripted
receiver's replies and the DSNs decide an MTA sender's outcomes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.mta.base import Site
from harness.mta.roles import dsn_outcomes, mta_outcomes
from harness.scenario import FIXTURES
from harness.smtp.receiver import StoredMessage
from harness.smtp.sender import Outcome

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
def test_each_mtas_bounce_is_a_failed_recipient(name, recipient, status) -> None:
    found = dsn_outcomes([(DSNS / f"{name}.eml").read_bytes()])
    assert list(found) == [recipient]
    outcome = found[recipient]
    assert (outcome.status, outcome.stage) == ("rejected", "dsn")
    assert outcome.text.startswith(f"DSN failed {status}")


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


def test_delayed_is_deferred_failed_wins_and_delivered_is_no_outcome() -> None:
    first = _dsn(("C3PO@receiver.com", "delayed"), ("r2d2@receiver.com", "delayed"))
    later = _dsn(("c3po@receiver.com", "failed"), ("aibo@receiver.com", "delivered"))
    found = dsn_outcomes([first, later, b"Subject: not a DSN\n\nhello\n"])
    assert {r: o.status for r, o in found.items()} == {
        "c3po@receiver.com": "rejected",
        "r2d2@receiver.com": "deferred",
    }


def _log(session: int, *turns: tuple[str, str]) -> list[dict]:
    """(command line, reply) pairs as the scripted receiver logs them: each command, then
    its reply (pipelined commands too: it reads and answers them one at a time)."""
    log = []
    for line, reply in turns:
        log.append({"kind": "command", "session": session, "line": line})
        log.append({"kind": "reply", "session": session, "to": line.split()[0], "lines": [reply]})
    return log


PIPELINED = [
    ("MAIL FROM:<luke@sender.com>", "451 4.3.0 try later"),
    ("RCPT TO:<c3po@receiver.com>", "503 5.5.1 need MAIL first"),
    ("RCPT TO:<r2d2@receiver.com>", "503 5.5.1 need MAIL first"),
    ("DATA", "503 5.5.1 need RCPT first"),
]


def test_503s_after_a_refused_mail_decide_nothing() -> None:
    got = mta_outcomes(TWO, _log(1, *PIPELINED), [], {})
    assert {r: (o.status, o.stage) for r, o in got.items()} == {
        "c3po@receiver.com": ("deferred", "queue"),
        "r2d2@receiver.com": ("deferred", "queue"),
    }
    permanent = [("MAIL FROM:<luke@sender.com>", "550 5.7.1 no"), *PIPELINED[1:]]
    got = mta_outcomes(TWO, _log(1, *permanent), [], {})
    assert {o.status for o in got.values()} == {"rejected"}
    assert {o.stage for o in got.values()} == {"MAIL"}


def test_stored_then_dsn_then_session_then_queue() -> None:
    turns = [
        ("MAIL FROM:<luke@sender.com>", "250 ok"),
        ("RCPT TO:<c3po@receiver.com>", "550 5.1.1 unknown"),
        ("RCPT TO:<r2d2@receiver.com>", "250 ok"),
    ]
    stored = [StoredMessage("r2d2@receiver.com", "luke@sender.com", None, b"x")]
    three = (*TWO, "bb8@receiver.com")
    got = mta_outcomes(three, _log(1, *turns), stored, {})
    assert [o.status for o in got.values()] == ["rejected", "delivered", "deferred"]
    bounced = {r: Outcome(r, "rejected", "dsn") for r in ("c3po@receiver.com", "bb8@receiver.com")}
    got = mta_outcomes(three, _log(1, *turns), stored, bounced)
    assert [(o.status, o.stage) for o in got.values()] == [
        ("rejected", "RCPT"),  # the DSN agrees: the reply is the better evidence
        ("delivered", "<end-of-data>"),
        ("rejected", "dsn"),
    ]
    delayed = {"c3po@receiver.com": Outcome("c3po@receiver.com", "deferred", "dsn")}
    got = mta_outcomes(three, _log(1, *turns), stored, delayed)
    assert (got["c3po@receiver.com"].status, got["c3po@receiver.com"].stage) == ("deferred", "dsn")


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ({"inet": "4"}, "site knob 'inet': expected one of ['family', 'vrfy']"),
        ({"family": "ipv6"}, "site knob family = 'ipv6': expected one of ('ipv4', 'any')"),
    ],
)
def test_site_knobs_are_validated(extra, error) -> None:
    with pytest.raises(HarnessError, match=re.escape(error)):
        Site(None, "sender", Path("/nonexistent"), "mail.sender.com", "sender.com", extra=extra)


def test_site_knob_defaults() -> None:
    site = Site(None, "sender", Path("/nonexistent"), "mail.sender.com", "sender.com")
    assert (site.knob("vrfy"), site.knob("family")) == ("check", "ipv4")
