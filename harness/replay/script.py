"""From a captured session to what the replay sends in the lab: the mapping and the writes.

Rules kept here:

- Captured addresses are always mapped: the client's onto the lab's sender host, the
  server's (and its port) onto the target.  The HELO/EHLO name, the MAIL FROM and the
  RCPT TO addresses are kept unless ``--map old=new`` rewrites them; every mapping, kept
  or rewritten, is a ``Mapped`` line of the output.
- ``--map`` is untrusted input: ``old=new``, ``old`` one of the session's HELO names or
  envelope addresses (case-insensitive), ``new`` in the grammar of what it replaces
  (``harness.grammar``); anything else is a ``HarnessError``.
- A rewrite touches only the argument of the commands that carry it; every other byte,
  message content included, goes out as captured.  For the comparison the captured
  commands and the replies to them (which may echo the name) are rewritten the same way;
  other replies (a VRFY's, whose argument is not mapped) are not.
- A turn's writes are its bytes cut where the capture's segments ended (a pipelined group
  in one segment is one write); a cut inside a rewritten command moves to its end.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.errors import HarnessError
from harness.grammar import Grammar, require
from harness.replay.session import Session, Turn, Unit

_ROLE_OF_VERB = {"HELO": "helo", "EHLO": "helo", "MAIL": "mail-from", "RCPT": "rcpt-to"}
MAPPED_VERBS = frozenset(_ROLE_OF_VERB)  # the commands a mapping rewrites, and their replies
_GRAMMAR = {"helo": Grammar.HELO, "mail-from": Grammar.REVERSE_PATH, "rcpt-to": Grammar.MAILBOX}


@dataclass(frozen=True)
class Mapped:
    role: str  # "client", "server", "helo", "mail-from", "rcpt-to"
    old: str
    new: str

    def line(self) -> str:
        if self.old == self.new:
            return f"{self.role:<10} {self.old} (kept)"
        return f"{self.role:<10} {self.old} -> {self.new}"


@dataclass(frozen=True)
class Write:
    data: bytes
    time: int  # ns: when the capture's segment that ended here was sent


class Mapping:
    """The session's names, kept or rewritten (rules above)."""

    def __init__(self, session: Session, maps: tuple[str, ...] = ()) -> None:
        self.names: dict[str, tuple[str, str]] = {}  # lower-case old -> (role, new)
        for unit in session.commands:
            role = _ROLE_OF_VERB.get(unit.verb)
            if role and unit.argument is not None:
                self.names.setdefault(unit.argument.lower(), (role, unit.argument))
        self._originals = {k: new for k, (_, new) in self.names.items()}
        for given in maps:
            self._rewrite(session, given)

    def _rewrite(self, session: Session, given: str) -> None:
        old, sep, new = given.partition("=")
        if not sep or not old or not new:
            raise HarnessError(f"--map {given!r}: expected old=new")
        found = self.names.get(old.lower())
        if found is None:
            known = ", ".join(sorted(self._originals.values())) or "none"
            raise HarnessError(
                f"--map {given!r}: {old!r} is no HELO name, MAIL FROM or RCPT TO address of "
                f"session {session.number} (those: {known})"
            )
        role = found[0]
        require(_GRAMMAR[role], new, f"--map {old}")
        self.names[old.lower()] = (role, new)

    def lines(
        self, session: Session, client: tuple[str, str], server: tuple[str, str]
    ) -> list[Mapped]:
        """Every mapping: addresses (to ``(address, host)``), then the names."""
        out = [
            Mapped("client", session.client, f"{client[0]} ({client[1]})"),
            Mapped(
                "server", f"{session.server[0]}:{session.server[1]}", f"{server[0]} ({server[1]})"
            ),
        ]
        for old, (role, new) in self.names.items():
            out.append(Mapped(role, self._originals[old], new))
        return out

    def name(self, old: str) -> str:
        """What a captured HELO name or address becomes in the lab."""
        return self.names.get(old.lower(), ("", old))[1]

    def rewritten(self, text: str) -> str:
        """``text`` (a captured command or reply) with every rewritten name replaced."""
        for old, (_, new) in self.names.items():
            original = self._originals[old]
            if original != new:
                text = re.sub(re.escape(original), lambda _m, new=new: new, text, flags=re.I)
        return text

    def unit(self, unit: Unit) -> bytes:
        if not unit.verb or unit.argument is None:
            return unit.raw
        _, new = self.names.get(unit.argument.lower(), ("", unit.argument))
        if new == unit.argument:
            return unit.raw
        old = re.escape(unit.argument.encode("utf-8", "surrogateescape"))
        return re.sub(old, lambda _m: new.encode(), unit.raw, count=1, flags=re.I)


def writes(turn: Turn, mapping: Mapping) -> list[Write]:
    """The turn's bytes, mapped, cut where the capture cut them (rules above)."""
    out, cuts = bytearray(), []
    for unit in turn.units:
        data = mapping.unit(unit)
        start = len(out)
        out += data
        for offset, time in turn.cuts:
            if unit.start < offset <= unit.end:
                moved = offset - unit.start if data is unit.raw else len(data)
                cuts.append((start + moved, time))
    ends = sorted(dict(cuts).items())
    pieces, begin = [], 0
    for end, time in ends:
        if end > begin:
            pieces.append(Write(bytes(out[begin:end]), time))
            begin = end
    if begin < len(out):
        pieces.append(Write(bytes(out[begin:]), ends[-1][1] if ends else 0))
    return pieces
