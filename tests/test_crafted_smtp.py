"""The crafted SMTP corpus (tests/crafted/smtp/): each capture gives its hand-written ladder.

Each ``NAME.ladder`` names the defect class, the RFC section that decides and where tshark
differs.  Its lines are ``side | kind | text [| key=value ...]`` for each step in order
(side ``c``: client to server, ``s``: server to client; ``\\n`` in a text is a line
break; the detail keys given must match, the others are not compared) and ``warning |
text | count`` for each warning of the ladder.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from ladder_pcaps import HOSTS, RECEIVER, SENDER, Capture, Tcp

from harness.ladder import tcpstream
from harness.ladder.dissect import dissect
from harness.ladder.model import Ladder
from harness.smtp.events import Direction, Reply
from harness.smtp.framing import ReceiveBuffer
from harness.smtp.readers import ReplyReader

CRAFTED = Path(__file__).resolve().parent / "crafted" / "smtp"
_SPEC = importlib.util.spec_from_file_location("crafted_smtp_build", CRAFTED / "build.py")
build = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(build)  # tests/crafted/smtp/build.py, under a name of its own

NAMES = sorted(build.CAPTURES)
ENDS = {"c": (HOSTS[SENDER], HOSTS[RECEIVER]), "s": (HOSTS[RECEIVER], HOSTS[SENDER])}


def expected(name: str, folder: Path = CRAFTED) -> tuple[list[tuple], dict[str, int]]:
    """The steps (src, dst, kind, text, detail) and the warnings of ``NAME.ladder``."""
    steps, warnings = [], {}
    for line in (folder / f"{name}.ladder").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        side, *fields = line.split(" | ")
        if side == "warning":
            warnings[fields[0]] = int(fields[1])
            continue
        kind, text, *info = fields
        pairs = (item.split("=", 1) for item in " ".join(info).split())
        steps.append((*ENDS[side], kind, text.replace("\\n", "\n"), dict(pairs)))
    return steps, warnings


def actual(ladder: Ladder, keys_of: list[dict]) -> list[tuple]:
    """Our steps in the form of ``expected``, with the detail keys it names."""
    return [
        (s.src, s.dst, s.kind, s.text, {k: str(s.get(k)) for k in keys})
        for s, keys in zip(ladder.steps, keys_of + [{}] * len(ladder.steps), strict=False)
    ]


def test_the_builder_gives_the_committed_captures(tmp_path):
    for path in build.build(tmp_path):
        assert path.read_bytes() == (CRAFTED / path.name).read_bytes(), path.name


@pytest.mark.parametrize("name", NAMES)
def test_a_crafted_capture_gives_its_hand_written_ladder(name):
    steps, warnings = expected(name)
    ladder = dissect(str(CRAFTED / f"{name}.pcap"), HOSTS)
    assert actual(ladder, [detail for *_, detail in steps]) == steps
    assert ladder.warnings == warnings


@pytest.mark.parametrize("name", NAMES)
def test_steps_stay_in_capture_order(name):
    """Each step comes after the packets of the steps before it (an inferred one has none)."""
    ladder = dissect(str(CRAFTED / f"{name}.pcap"), HOSTS)
    completed = [max(s.evidence) for s in ladder.steps if s.evidence]
    assert completed == sorted(completed)
    assert [s.index for s in ladder.steps] == list(range(1, len(ladder.steps) + 1))


def test_auth_responses_are_kept_as_sent_never_parsed_as_commands():
    """RFC 4954 §4: base64 is case-sensitive; a response is no command (no verb)."""
    ladder = dissect(str(CRAFTED / "d7-auth.pcap"), HOSTS)
    responses = [s for s in ladder.steps if s.kind == "auth-response"]
    assert [s.text for s in responses] == ["*", "bHVrZQ==", "d3Jvbmc=", "AGx1a2UAZm9yY2U="]
    assert all(s.get("verb") is None for s in responses)
    assert [s.get("cancel") for s in responses] == [True, None, None, None]
    covered = ladder.coverage[1]
    assert covered.complete and covered.units == 27  # 8 commands, 4 responses, 14 replies, content


def test_an_inferred_reply_has_no_evidence_and_is_not_waited_for():
    ladder = dissect(str(CRAFTED / "one-sided.pcap"), HOSTS)
    inferred = [s for s in ladder.steps if s.get("inferred")]
    assert [(s.text, s.evidence) for s in inferred] == [("354 (inferred)", ())] * 2
    assert not set(ladder.coverage[1].unacked) & {s.index for s in inferred}


class _Counted(bytes):
    """Bytes that count the octets every concatenation with them copies."""

    copied = 0

    def __add__(self, other: bytes) -> bytes:
        _Counted.copied += len(self) + len(other)
        return bytes(self) + bytes(other)

    def __radd__(self, other: bytes) -> bytes:
        _Counted.copied += len(self) + len(other)
        return bytes(other) + bytes(self)


@pytest.mark.parametrize("lines", [3600, 14400])
def test_a_long_multi_line_reply_costs_linear_copying(monkeypatch, lines):
    """D3: a reply's lines were concatenated one by one, copying every line read so far
    for each new one (quadratic in the lines held until the reply, or the stream, ends).
    Every line the buffer hands out is counted; the copies must stay within a few times
    the reply's size."""
    take = ReceiveBuffer.take
    monkeypatch.setattr(ReceiveBuffer, "take", lambda self, n: _Counted(take(self, n)))
    monkeypatch.setattr(_Counted, "copied", 0)
    line = b"250-" + b"x" * 60 + b"\r\n"
    buf, reader = ReceiveBuffer(), ReplyReader()
    buf.feed(line * (lines - 1) + b"250 end\r\n")
    events = []
    while (read := reader.read(buf, Direction.SERVER)) is not None:
        events += read
    (reply,) = [e for e in events if isinstance(e, Reply)]
    assert len(reply.lines) == lines
    assert _Counted.copied <= 2 * len(reply.raw)


def _held_until_the_close(path: Path, segments: int) -> Path:
    """DATA content whose first segment the capture lost: the rest waits behind the hole
    (never acknowledged) until the connection closes, then is flushed."""
    cap = Capture()
    tcp = Tcp(cap, SENDER, RECEIVER)
    tcp.handshake()
    for side, data in [("s", b"220 hi\r\n"), ("c", b"DATA\r\n"), ("s", b"354 go\r\n")]:
        tcp.send(side, data)
    tcp.lose("c", b"lost\r\n")
    for _ in range(segments):
        tcp.send("c", b"x" * 60 + b"\r\n", acked=False)
    tcp.fin("c")
    return cap.write(path)


@pytest.mark.parametrize("segments", [900, 3600])
def test_segments_held_until_the_close_cost_linear_comparisons(tmp_path, monkeypatch, segments):
    """D3: each segment held behind a hole was compared with every one held before it, so
    flushing them at the close was quadratic (3,600 / 7,200 / 14,400 lines: 1.2 / 5.9 /
    13.9 s here before, 0.18 / 0.41 / 0.84 s after).  The comparisons are counted."""
    calls = []
    overlap = tcpstream._overlap
    monkeypatch.setattr(tcpstream, "_overlap", lambda *a: calls.append(1) or overlap(*a))
    ladder = dissect(str(_held_until_the_close(tmp_path / "held.pcap", segments)))
    (content,) = [s for s in ladder.steps if s.kind == "content"]
    assert content.get("lines") == segments and content.get("missing") == 6
    assert len(calls) <= 2 * segments
