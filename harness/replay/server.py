"""``--as server``: the captured server side as the scripted receiver, the live client judged.

Rules kept here:

- The captured server becomes a ``ReceiverConfig``: its greeting's host name and text,
  and one ``ReplyRule`` per captured reply, ``on`` the command it answered and ``nth`` its
  occurrence in the session (the second RCPT answered otherwise than the first), with
  the captured code and lines; a server that reset the connection where a reply was due
  (the client's last unit unanswered) resets it there (``raw=b""``, ``reset``: an RST
  instead of the reply).  Every reply is scripted, so the receiver's own policy
  decides only what a reply commits the session to (``policy`` rule 4); each captured
  RCPT address is one of its users and domains, so a recipient the captured server
  accepted has a mailbox to be stored in.
- The live client is the scripted sender, configured from the captured client: its
  HELO/EHLO name and verb, whether it verified (VRFY: each user verified and never a
  RCPT's is a recipient too, at the address the VRFY or its reply named, else at the
  RCPTs' domain), MAIL FROM, every RCPT TO and the message (the captured content,
  dot-unstuffed as a receiver stores it), each address
  through the ``Mapping``, and its close (``half_close`` when the captured client's FIN
  came before the 221).  Content the sender would not send so from the stored message
  (a look-alike ending, bare line endings: not dot-stuffed CRLF lines) is sent instead as
  captured, byte for byte, by a raw script step at ``<message>`` (up to the scenario's
  ``MAX_RAW``).  A captured command the sender would not send itself (a VRFY of
  another form, NOOP, RSET, an unknown verb; one of its own written otherwise) is a raw
  script step at the place it was sent (``_not_its_own``).  What the capture does not
  show (a session refused at its greeting: no HELO, MAIL or RCPT) is the given
  sender's.  Its own dialogue then runs (harness/smtp/sender.py rule 3) and the ladders
  say where it differs from the captured client.
- A captured reply with no readable code, or to a command the receiver cannot be scripted
  for, is refused (``HarnessError``) before a lab exists; but a reply to an unknown verb
  that is the receiver's own refusal of it (``policy.refusal``: 500 5.5.1) needs no rule.
"""

from __future__ import annotations

import dataclasses
import itertools
import re

from harness.errors import HarnessError
from harness.replay.script import Mapping
from harness.replay.session import CapturedReply, Session, Unit
from harness.scenario import MAX_RAW, REPLY_ON
from harness.smtp.commands import parse_command, path_argument
from harness.smtp.events import Content, Direction
from harness.smtp.framing import ReceiveBuffer, dot_stuff
from harness.smtp.policy import ReceiverConfig, ReplyRule, refusal, reply_texts
from harness.smtp.readers import DataReader
from harness.smtp.sender import MESSAGE, ScriptStep, SenderConfig
from harness.smtp.state import END_OF_DATA

_MAILBOX = re.compile(r"<([^<>@\s]+@[^<>@\s]+)>")  # a VRFY reply's mailbox (RFC 5321 §3.5.1)


def receiver_config(session: Session, base: ReceiverConfig) -> ReceiverConfig:
    """The scripted receiver answering as the captured server did (rules above)."""
    seen: dict[str, int] = {}
    rules = []
    where = f"{session.path}: session {session.number}"
    for unit, reply in _answered(session):
        key = _key(reply.answers)
        if key is None and _its_own(unit, reply, base):
            continue
        if key is None or reply.code is None:
            raise HarnessError(
                f"{where}: step {reply.step}: a reply to {reply.answers or 'nothing'} "
                "cannot be scripted"
            )
        seen[key] = seen.get(key, 0) + 1
        rules.append(ReplyRule(on=key, nth=seen[key], code=reply.code, text=reply.lines))
    reset = _reset_at(session)
    if reset is not None:
        rules.append(ReplyRule(on=reset, nth=seen.get(reset, 0) + 1, raw=b"", reset=True))
    host, _, text = session.turns[0].replies[0].lines[0].partition(" ")
    rcpts = [u.argument for u in session.commands if u.verb == "RCPT" and u.argument]
    users = _more(base.users, [r.rpartition("@")[0] for r in rcpts])
    domains = _more(base.domains, [r.rpartition("@")[2] for r in rcpts])
    return dataclasses.replace(
        base, hostname=host, greeting=text, rules=rules, users=users, domains=domains
    )


def _key(answers: str | None) -> str | None:
    """The reply rule key of what a reply answers (``REPLY_ON``), None when none is."""
    return next((k for k in REPLY_ON if k.upper() == (answers or "").upper()), None)


def _pairs(session: Session) -> list[tuple[Unit | None, CapturedReply | None]]:
    """Each unit with its reply (a turn's replies answer its units in order; the first
    turn's greeting answers none)."""
    turns = (itertools.zip_longest(t.units, t.replies) for t in session.turns)
    return [pair for turn in turns for pair in turn]


def _answered(session: Session) -> list[tuple[Unit | None, CapturedReply]]:
    """Each captured reply with the unit it answers (None: the greeting, or nothing)."""
    return [(u, r) for u, r in _pairs(session) if r is not None]


def _its_own(unit: Unit | None, reply: CapturedReply, base: ReceiverConfig) -> bool:
    """Whether the receiver answers the captured command (one no rule can key: an unknown
    verb) as the captured server did, by its own refusal (``policy.refusal``)."""
    if unit is None or not unit.verb or reply.code is None:
        return False
    decision = refusal(base, parse_command(unit.raw.rstrip(b"\r\n")))
    return decision is not None and (decision.code, reply_texts(decision.code, decision.text)) == (
        reply.code,
        reply.lines,
    )


def _reset_at(session: Session) -> str | None:
    """The key of the unit whose reply the server's RST took the place of, if any."""
    last = session.turns[-1]
    if not session.server_reset or len(last.units) <= len(last.replies):
        return None
    pending = last.units[len(last.replies)]
    return _key(pending.verb) if pending.verb else END_OF_DATA


def _more(given, added: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*given, *(a for a in added if a)]))


def sender_config(session: Session, mapping: Mapping, base: SenderConfig) -> SenderConfig:
    """The scripted sender sending what the captured client sent (rules above)."""
    commands = session.commands
    hello = next((u for u in commands if u.verb in ("HELO", "EHLO")), None)
    mail = next((u for u in commands if u.verb == "MAIL"), None)
    recipients = [mapping.name(a) for a in _recipients(session)]
    content = next((u for t in session.turns for u in t.units if not u.verb), None)
    message = _stored(content.raw) if content else base.message
    config = dataclasses.replace(
        base,
        recipients=tuple(recipients) or base.recipients,
        message=message,
        mail_from=mapping.name(mail.argument or "") if mail else base.mail_from,
        helo_name=mapping.name(hello.argument or "") if hello else base.helo_name,
        ehlo=hello.verb == "EHLO" if hello else base.ehlo,
        vrfy=any(u.verb == "VRFY" for u in commands) or (base.vrfy and hello is None),
        half_close=session.half_closed,
    )
    steps = _as_captured(content.raw, message) if content else []
    return dataclasses.replace(config, script=[*_not_its_own(session, mapping, config), *steps])


Anchor = tuple[str, str | None]  # (verb, argument): a command as a script step names it


def _own_lines(config: SenderConfig) -> dict[Anchor, list[tuple[str, Anchor]]]:
    """The commands the sender sends itself (harness/smtp/sender.py rule 3), by anchor
    (its argument lower-case), each line as it sends it and its anchor as given: its HELO
    (or EHLO, and HELO as its fallback), STARTTLS unless its policy is "never", VRFY for
    each recipient, MAIL, RCPT for each, DATA and QUIT."""
    name, mail_from = config.helo_name, config.mail_from
    own: list[tuple[Anchor, str]] = [(("HELO", name), f"HELO {name}")]
    if config.ehlo:
        own.append((("EHLO", name), f"EHLO {name}"))
    if config.vrfy:
        users = (r.partition("@")[0] for r in config.recipients)
        own += [(("VRFY", u), f"VRFY {u}") for u in users]
    own.append((("MAIL", mail_from), f"MAIL {path_argument('FROM', mail_from)}"))
    own += [(("RCPT", r), f"RCPT {path_argument('TO', r)}") for r in config.recipients]
    if config.starttls != "never":
        own.append((("STARTTLS", None), "STARTTLS"))
    own += [(("DATA", None), "DATA"), (("QUIT", None), "QUIT")]
    lines: dict[Anchor, list[tuple[str, Anchor]]] = {}
    for anchor, line in own:
        verb, argument = anchor
        lines.setdefault((verb, argument and argument.lower()), []).append((line, anchor))
    return lines


def _anchors(unit: Unit, mapping: Mapping) -> list[Anchor]:
    """The sender's commands a captured one may be: itself; for ``VRFY user@domain`` the
    sender's ``VRFY user`` too (sent otherwise)."""
    if unit.verb == "VRFY":
        user = unit.raw[5:].strip().decode("utf-8", "surrogateescape").lower()
        return list(dict.fromkeys([("VRFY", user), ("VRFY", user.partition("@")[0])]))
    named = unit.verb in ("HELO", "EHLO", "MAIL", "RCPT")
    return [(unit.verb, mapping.name(unit.argument or "").lower() if named else None)]


def _not_its_own(session: Session, mapping: Mapping, config: SenderConfig) -> list[ScriptStep]:
    """Raw script steps for the captured commands the sender would not send itself (a
    VRFY of another form, NOOP, RSET, an unknown verb): each before the next command of
    its own, so at the same place, or after its last when none follows; one of its own
    sent otherwise (``mail FROM:``) is sent as captured instead of it.  A step waits for
    a reply when the captured command had one."""
    own, steps, pending = _own_lines(config), [], []
    answered = {u.start for u, r in _pairs(session) if u is not None and r is not None}
    last: Anchor | None = None
    for unit in session.commands:
        data, replied = mapping.unit(unit), unit.start in answered
        anchor = next((a for a in _anchors(unit, mapping) if own.get(a)), None)
        if anchor is None:
            pending.append((data, replied))
            continue
        line, last = own[anchor].pop(0)
        at, argument = last
        steps += [ScriptStep(at, "before", argument, send=p, reply=r) for p, r in pending]
        if data != f"{line}\r\n".encode("utf-8", "surrogateescape"):
            steps.append(ScriptStep(at, "instead", argument, send=data, reply=replied))
        pending = []
    if last is not None:
        steps += [ScriptStep(last[0], "after", last[1], send=p, reply=r) for p, r in pending]
    return steps


def _as_captured(raw: bytes, message: bytes) -> list[ScriptStep]:
    """A raw step sending the captured content when the sender would send other bytes."""
    if dot_stuff(message) + b".\r\n" == raw or len(raw) > MAX_RAW:
        return []
    return [ScriptStep(at=MESSAGE, position="instead", send=raw)]


def _recipients(session: Session) -> list[str]:
    """Every RCPT TO address, and before them each VRFY'd user that none of them names (the
    seed verifies aibo, then never sends RCPT for it)."""
    rcpts = [u.argument for u in session.commands if u.verb == "RCPT" and u.argument]
    domain = rcpts[0].rpartition("@")[2] if rcpts else ""
    by_user = {r.partition("@")[0].lower(): r for r in rcpts}
    verified = [_verified(unit, reply, by_user, domain) for unit, reply in _vrfys(session)]
    return list(dict.fromkeys([*(v for v in verified if v), *rcpts]))


def _verified(unit: Unit, reply: CapturedReply | None, by_user: dict, domain: str) -> str | None:
    """A VRFY'd address: the VRFY's own when it gave one, a RCPT's for that user, the
    mailbox its reply named (``250 <c3po@receiver.com>``), else the user at the RCPTs'
    domain; None when there is none of these."""
    user = unit.raw[5:].strip().decode("utf-8", "replace")
    named = _MAILBOX.search(reply.text) if reply else None
    if "@" in user or user.lower() in by_user:
        return by_user.get(user.lower(), user)
    if named:
        return named.group(1)
    return f"{user}@{domain}" if domain else None


def _vrfys(session: Session) -> list[tuple[Unit, CapturedReply | None]]:
    """Each VRFY with its reply."""
    return [(u, r) for u, r in _pairs(session) if u is not None and u.verb == "VRFY"]


def _stored(raw: bytes) -> bytes:
    """Captured DATA content (with its end marker) as a receiver stores it."""
    buffer, reader, out = ReceiveBuffer(), DataReader(), bytearray()
    buffer.feed(raw)
    while (events := reader.read(buffer, Direction.CLIENT)) is not None:
        out += b"".join(e.data for e in events if isinstance(e, Content))
        if not events:
            break
    return bytes(out)
