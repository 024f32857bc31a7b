"""A capture's observer reads DATA content as runs of plain lines (readers.py rule 1): the
same content bytes, anomalies, offsets, sizes and unfinished rest as a peer's line-by-line
reading, however the bytes are segmented; fewer ``Content`` events."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from harness.smtp import Content, Direction, Observer

C, S = Direction.CLIENT, Direction.SERVER
_OPENING = [(S, b"220 mx\r\n"), (C, b"EHLO c\r\n"), (S, b"250 mx\r\n")]
_OPENING += [(C, b"MAIL FROM:<a@example.org>\r\n"), (S, b"250 ok\r\n")]
_OPENING += [(C, b"RCPT TO:<b@example.net>\r\n"), (S, b"250 ok\r\n")]
_OPENING += [(C, b"DATA\r\n"), (S, b"354 go\r\n")]
_PIECES = [b"x" * 60 + b"\r\n", b"\r\n", b".", b"..", b"\r", b"\n", b"\x00", b"y" * 997]
_PIECES += [b".\r\n", b"\r\n.\r\n", b"\n.\n", b"z" * 1500, b"abc"]


def _events(observer: Observer, body: bytes, cuts: list[int]) -> list:
    events = []
    for direction, data in _OPENING:
        events += observer.feed(direction, data)
    bounds = [0, *sorted(c % (len(body) + 1) for c in cuts), len(body)]
    for start, stop in pairwise(bounds):
        if stop > start:  # b"" is the EOF
            events += observer.feed(C, body[start:stop])
    return events + observer.feed(C, b"") + observer.feed(S, b"")


def _per_line(events: list) -> list:
    """Content events merged where they touch: what a run of them holds, and where."""
    merged: list = []
    for event in events:
        last = merged[-1] if merged else None
        if isinstance(last, Content) and _touching(last, event):
            merged[-1] = Content(direction=C, offset=last.offset, data=last.data + event.data)
        else:
            merged.append(event)
    return merged


def _touching(last: Content, event: object) -> bool:
    return isinstance(event, Content) and last.offset + len(last.data) == event.offset


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(_PIECES), max_size=40),
    st.lists(st.integers(min_value=0, max_value=10**6), max_size=6),
)
def test_capture_runs_hold_what_the_lines_hold(pieces, cuts):
    body = b"".join(pieces)
    peer = _events(Observer(), body, cuts)
    capture = _events(Observer(capture=True), body, cuts)
    assert _per_line(capture) == _per_line(peer)
    assert len([e for e in capture if isinstance(e, Content)]) <= len(
        [e for e in peer if isinstance(e, Content)]
    )


def test_plain_lines_in_one_segment_are_one_event():
    lines = b"".join(b"line %d\r\n" % i for i in range(60))
    capture = _events(Observer(capture=True), lines + b".\r\n", [])
    peer = _events(Observer(), lines + b".\r\n", [])
    assert [e.data for e in capture if isinstance(e, Content)] == [lines]
    assert len([e for e in peer if isinstance(e, Content)]) == 60
