"""Differential check for refactors of the SMTP core: the committed core (``git show
HEAD:harness/smtp/...``) and the working tree's give the same events for thousands of
random sessions.  A developer tool, not part of ``make test`` (once committed, HEAD *is*
the working tree): run it before committing a core change that must not change behaviour,

    .venv/bin/pytest -q -p no:cacheprovider tools/test_core_differential.py

Rules kept here:

1. Sessions are random but seeded (pipelining, DATA with dot lines, BDAT, STARTTLS, raw
   bytes, bare CR / LF, NUL, overlong lines, EOF anywhere), cut into random segments and
   fed to a ``ServerConnection`` that answers as a legal server would, and to an
   ``Observer`` fed both directions as they were exchanged (client bytes first, so its
   pipelined view may differ from the server's).
2. Events are compared as digests that do not depend on how an event class is built:
   its class name and its public fields, enums by value.
3. It needs a git checkout.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import random
import shutil
import subprocess
import sys
from enum import Enum
from pathlib import Path
from types import ModuleType

import pytest

import harness.smtp.protocol as new_protocol

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("events", "framing", "readers", "state", "protocol", "commands", "replies")
SESSIONS = 3000
PACKAGE = "_smtp_core_at_head"


@pytest.fixture(scope="module")
def old_protocol(tmp_path_factory) -> ModuleType:
    assert shutil.which("git") and (ROOT / ".git").exists(), "needs a git checkout"
    folder = tmp_path_factory.mktemp("head") / PACKAGE
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    for name in MODULES:
        source = subprocess.run(
            ["git", "show", f"HEAD:harness/smtp/{name}.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (folder / f"{name}.py").write_text(source.replace("harness.smtp.", f"{PACKAGE}."))
    sys.path.insert(0, str(folder.parent))
    try:
        yield importlib.import_module(f"{PACKAGE}.protocol")
    finally:
        sys.path.remove(str(folder.parent))
        for name in [m for m in sys.modules if m.startswith(PACKAGE)]:
            del sys.modules[name]


# -- random sessions --------------------------------------------------------------------

ODD = [b"\r", b"\n", b"\x00", b"\r\r\n", b"\n.\n", b"\r\n.\n", b"\r.\r", b".\r\n"]


def _text(rng: random.Random) -> bytes:
    words = [b"a", b"..", b".", b"Subject: x", b"\xff\xfe", b" ", b"x" * rng.choice([10, 999])]
    return b"".join(rng.choice(words + ODD) for _ in range(rng.randrange(8)))


def _line(rng: random.Random) -> bytes:
    """One client unit: a command (good, bad, odd or overlong), a chunk, or raw bytes."""
    pick = rng.randrange(16)
    if pick < 9:
        return rng.choice(
            [
                b"EHLO a.example",
                b"HELO a",
                b"ehlo",
                b"MAIL FROM:<a@b.example> SIZE=10",
                b"MAIL FROM: <a@b>",
                b"MAIL FROM:<>",
                b"RCPT TO:<c@d.example>",
                b"RCPT TO:<Postmaster>",
                b"RCPT TO:<>",
                b"DATA",
                b"RSET",
                b"NOOP x",
                b"VRFY c3po",
                b"STARTTLS",
                b"QUIT",
                b"XYZZY",
                b"",
            ]
        ) + rng.choice([b"\r\n"] * 6 + [b"\n", b"\r\r\n", b"\x00\r\n"])
    if pick < 11:
        return b"Subject: x\r\n" + _text(rng) + rng.choice([b"\r\n.\r\n", b".\r\n", b"\n.\n"])
    if pick < 13:
        chunk = _text(rng)
        last = rng.choice([b"", b" LAST", b" last"])
        return b"BDAT %d%s\r\n%s" % (len(chunk) + rng.choice([0, 0, 0, 3]), last, chunk)
    if pick < 14:
        return b"RCPT TO:<" + b"y" * rng.choice([500, 600, 5000]) + b">\r\n"
    if pick < 15:
        return b"\x16\x03\x01" + _text(rng)
    return _text(rng)


def session(rng: random.Random) -> tuple[bytes, list[int]]:
    """The client's bytes and where to cut them into segments."""
    data = b"".join(_line(rng) for _ in range(rng.randrange(1, 25)))
    if rng.random() < 0.2:
        data = data[: rng.randrange(len(data) + 1)]  # the client vanishes anywhere
    cuts = sorted(rng.sample(range(1, max(2, len(data))), min(len(data) // 3, 6)))
    return data, cuts


# -- running a session through one core ------------------------------------------------


def digest(event: object) -> tuple:
    if dataclasses.is_dataclass(event):
        names = [f.name for f in dataclasses.fields(event)]
    else:
        names = [n for cls in type(event).__mro__ for n in getattr(cls, "__slots__", ())]
    values = [getattr(event, n) for n in sorted(names)]
    return (type(event).__name__, *[_plain(v) for v in values])


def _plain(value: object) -> object:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, frozenset):
        return sorted(_plain(v) for v in value)
    if isinstance(value, dict):
        return sorted(value.items())
    return value


def _reply(core: ModuleType, event: object) -> bytes | None:
    """What a legal, accepting server answers (test_smtp_protocol.answer, plus STARTTLS)."""
    name = type(event).__name__
    if name in ("EndOfData", "EndOfChunk"):
        return b"250 ok\r\n"
    if name != "Command":
        return None
    if event.flaws or not event.known:
        return b"500 bad line\r\n"
    if event.syntax_error:
        return b"501 syntax\r\n"
    if not event.in_order:
        return b"503 bad sequence\r\n"
    codes = {"DATA": b"354", "QUIT": b"221", "STARTTLS": b"220"}
    return None if event.verb == "BDAT" else codes.get(event.verb, b"250") + b" ok\r\n"


def run(core: ModuleType, data: bytes, cuts: list[int]) -> tuple[list[tuple], list[tuple]]:
    """(the server's events, an observer's events) for one session."""
    conn, observer = core.ServerConnection(), core.Observer()
    client, server = core.CLIENT, core.SERVER
    served, observed = [], []

    def send(reply: bytes) -> None:
        conn.send_raw(reply)
        observed.extend(map(digest, observer.feed(server, reply)))

    send(b"220 hi\r\n")
    bounds = [0, *cuts, len(data)]
    for piece in [*(data[a:b] for a, b in itertools.pairwise(bounds)), b""]:
        conn.receive_data(piece)
        observed.extend(map(digest, observer.feed(client, piece)))
        while not isinstance(event := conn.next_event(), core.Status):
            served.append(digest(event))
            reply = _reply(core, event)
            if reply:
                send(reply)
    return served, observed


def test_the_core_gives_the_events_it_gave_at_head(old_protocol):
    rng = random.Random(5321)
    for number in range(SESSIONS):
        data, cuts = session(rng)
        before, after = run(old_protocol, data, cuts), run(new_protocol, data, cuts)
        assert after == before, f"session {number}: {data!r} at {cuts}"
