"""The crafted TCP and capture-file corpus (tests/crafted/tcp/), one capture per defect class.

Each ``NAME.pcap`` is written by ``build.py`` from scapy frames; its ladder, ``NAME.ladder``,
was written by hand from those frames (header comments: what the bytes are, the RFC that
decides, what main did, where tshark differs and why).  A ladder line is
``kind | sender | text | packet that completed the step``; ``! key: count`` is a warning.
tshark, the second opinion, must show the same SMTP commands and replies in the same
frames, except where ``TSHARK_DIFFERS`` holds what it shows instead.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from harness.ladder.dissect import dissect
from harness.ladder.model import Ladder

CRAFTED = ROOT / "tests" / "crafted" / "tcp"
HOSTS = {
    "192.0.2.10": "client",
    "192.0.2.11": "client-gre",
    "192.0.2.25": "server",
    "2001:db8::10": "client6",
    "2001:db8::25": "server6",
}
NAMES = sorted(p.stem for p in CRAFTED.glob("*.ladder"))
SMTP_LAYER: dict[str, str] = {}  # name -> why the SMTP layer still gets it wrong (xfail)
TSHARK_DIFFERS = {  # name -> what tshark shows: (frame, command verb or reply code)
    # tshark takes the bytes after DATA as message data (a request with no command) though
    # no 354 came and the server had closed: content follows only a 354 (RFC 5321 §4.1.1.4)
    "quit-after-data-fin": [
        (4, "220"),
        (5, "EHLO"),
        (6, "250"),
        (7, "MAIL"),
        (8, "250"),
        (9, "DATA"),
        (11, ""),
    ],
    # frame 7 came after the ACK that covers it: tshark calls it a retransmission
    "late-data": [(4, "220"), (5, "EHLO"), (8, "QUIT"), (9, "221")],
    # tshark keeps the first copy of the bytes (frame 6, never acknowledged) and drops the
    # 221 (frame 9) that lies in its sequence numbers; the client's ACKs say otherwise
    "overlap-acked": [(4, "220"), (5, "EHLO"), (6, "250"), (8, "QUIT")],
}


def _known(name: str):
    reason = SMTP_LAYER.get(name)
    return (
        [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=reason))]
        if reason
        else [name]
    )


PARAMS = [param for name in NAMES for param in _known(name)]


def expected(name: str) -> tuple[list[tuple[str, str, str, int]], dict[str, int]]:
    """The hand-written ladder of *name*: its steps and its warnings."""
    steps, warnings = [], {}
    for line in (CRAFTED / f"{name}.ladder").read_text().splitlines():
        if line.startswith("!"):
            key, _, count = line[1:].strip().rpartition(": ")
            warnings[key] = int(count)
        elif line.strip() and not line.startswith("#"):
            kind, sender, text, packet = (field.strip() for field in line.split(" | "))
            steps.append((kind, sender, text, int(packet)))
    return steps, warnings


def actual(ladder: Ladder) -> tuple[list[tuple[str, str, str, int]], dict[str, int]]:
    steps = [(s.kind.value, s.src, s.text, max(s.evidence)) for s in ladder.steps]
    return steps, ladder.warnings


@pytest.mark.parametrize("name", PARAMS)
def test_ladder_is_the_one_written_by_hand(name):
    assert actual(dissect(CRAFTED / f"{name}.pcap", HOSTS)) == expected(name)


def test_every_capture_has_its_ladder_and_build_writes_them_all(tmp_path):
    """The committed captures are the bytes build.py writes (it is deterministic), and
    each has its hand-written ladder."""
    sys.path.insert(0, str(CRAFTED))
    try:
        import build
    finally:
        sys.path.remove(str(CRAFTED))
    written = build.write_all(tmp_path)
    assert sorted(p.stem for p in written) == NAMES
    for path in written:
        assert path.read_bytes() == (CRAFTED / path.name).read_bytes(), path.name


TSHARK_FIELDS = ("frame.number", "smtp.req.command", "smtp.response.code")


def _tshark_smtp(path: Path) -> list[tuple[int, str]]:
    fields = [arg for field in TSHARK_FIELDS for arg in ("-e", field)]
    out = subprocess.run(
        ["tshark", "-r", str(path), "-Y", "smtp", "-T", "fields", *fields],
        capture_output=True,
        text=True,
    ).stdout
    rows = [line.split("\t") for line in out.splitlines() if line.strip()]
    return [(int(frame), command or code) for frame, command, code in rows]


def _our_smtp(ladder: Ladder) -> list[tuple[int, str]]:
    units = [s for s in ladder.steps if s.kind in ("command", "reply")]
    return [(max(s.evidence), str(s.get("verb") or s.get("code"))) for s in units]


@pytest.mark.skipif(not shutil.which("tshark"), reason="tshark not installed")
@pytest.mark.parametrize("name", PARAMS)
def test_tshark_agrees_on_the_smtp_or_the_difference_is_known(name):
    ours = _our_smtp(dissect(CRAFTED / f"{name}.pcap", HOSTS))
    theirs = _tshark_smtp(CRAFTED / f"{name}.pcap")
    assert theirs == TSHARK_DIFFERS.get(name, ours)
    if name in TSHARK_DIFFERS:
        assert ours != theirs
