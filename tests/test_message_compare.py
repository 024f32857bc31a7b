"""The two message comparisons and their allowances (harness/message.py)."""

from __future__ import annotations

import pytest

from harness.message import ORIGINATING, RECEIVING, compare

SENT = b"From: luke@sender.com\r\nTo: c3po@receiver.com\r\nSubject: hi\r\n\r\nHello\r\n.dot\r\n"
NAMES = ("message", "wire")


def test_the_same_message_is_the_same() -> None:
    assert compare(SENT, SENT, ORIGINATING, NAMES) is None


def test_an_originating_mta_may_add_received_date_and_message_id() -> None:
    """Issue 8 finding 4: Postfix adds Date and Message-ID to a message that has neither."""
    relayed = (
        b"Received: by mail.sender.com (Postfix, from userid 0)\r\n\tid 4F; Tue, 1 Dec 2026\r\n"
        + SENT.replace(b"Subject: hi\r\n", b"Subject: hi\r\nMessage-Id: <1@x>\r\nDate: now\r\n")
    )
    assert compare(SENT, relayed, ORIGINATING, NAMES) is None


def test_a_date_it_replaces_is_a_difference_with_a_diff() -> None:
    with_date = SENT.replace(b"\r\n\r\n", b"\r\nDate: then\r\n\r\n")
    changed = SENT.replace(b"\r\n\r\n", b"\r\nDate: now\r\n\r\n")
    found = compare(with_date, changed, ORIGINATING, NAMES)
    assert found is not None and "header fields" in found.summary
    assert "-Date: then" in found.diff and "+Date: now" in found.diff


def test_a_changed_body_is_named_and_shown() -> None:
    found = compare(SENT, SENT.replace(b"Hello", b"Hullo"), ORIGINATING, NAMES)
    assert found is not None
    assert found.summary == "wire differs from message in its body"
    assert "-Hello" in found.diff and "+Hullo" in found.diff


def test_line_ends_are_lines_and_a_missing_final_crlf_is_added() -> None:
    assert compare(SENT.rstrip(b"\r\n"), SENT.replace(b"\r\n", b"\n"), (), NAMES) is None


@pytest.mark.parametrize(
    "prepended",
    [
        b"Return-Path: <luke@sender.com>\r\nDelivered-To: c3po@receiver.com\r\n",
        b"Return-path: <luke@sender.com>\r\nEnvelope-to: c3po@receiver.com\r\n"
        b"Delivery-date: Tue, 01 Dec 2026\r\nReceived: from mail.sender.com\r\n\tby x\r\n",
    ],
)
def test_a_receiving_mta_may_prepend_trace_fields(prepended: bytes) -> None:
    assert compare(SENT, prepended + SENT, RECEIVING, ("wire", "stored")) is None


def test_the_receiving_side_may_not_add_a_date() -> None:
    stored = SENT.replace(b"\r\n\r\n", b"\r\nDate: now\r\n\r\n")
    assert compare(SENT, stored, RECEIVING, ("wire", "stored")) is not None


def test_an_8bit_body_converted_to_7bit_is_allowed_only_when_it_decodes_back() -> None:
    eight = "From: a\r\nSubject: x\r\n\r\nh\u00e9llo\r\n".encode()
    qp = (
        b"From: a\r\nSubject: x\r\nMIME-Version: 1.0\r\nContent-Transfer-Encoding: quoted-printable"
    )
    assert compare(eight, qp + b"\r\n\r\nh=C3=A9llo\r\n", ORIGINATING, NAMES) is None
    assert compare(eight, qp + b"\r\n\r\nh=C3=A9lla\r\n", ORIGINATING, NAMES) is not None
