"""The scripted receiver's reply policy: which reply to which event in which session state.

Rules kept here:

1. Pure and sans-IO: every decision is a function of the configuration, the session's
   ``Facts`` and the event (the greeting, a command, the end of a message, the idle
   timeout); nothing here reads a socket, a clock or the DNS.  A PTR lookup is a fact
   handed in (``with_ptr``), a rule's delay a number handed out.  The receiver's protocol
   (receiver.py) moves the bytes, waits and stores.
2. Replies follow RFC 5321 unless a ``ReplyRule`` overrides them (rule 6): a line with
   NUL, bare CR or bare LF gets 500 (``bad_lines="accept"`` lets it through), an overlong
   line 500 always, an unknown verb 500, a syntax error 501, a command out of sequence 503
   (§4.2.4, §4.3.2), an unadvertised MAIL/RCPT parameter 555 (§4.1.1.11), a declared or
   received size over the advertised SIZE 552 (RFC 1870 §6); VRFY answers from the user
   table, or 252 / 502 by policy (§3.5.3, §7.3).  One verb, one function (``VERBS``).
3. HELO/EHLO against the PTR of the client's address (the seed, steps 7-10): a mismatch
   is accepted, noted, or refused with 550 (``ptr_check``).  ``ptr_wanted`` says when the
   PTR must be looked up first: before the greeting (``ptr_at="connect"``, as real MTAs
   do) or before answering each HELO/EHLO that is not refused anyway (``ptr_at="helo"``).
4. A decision names what a positive reply commits the session to (``Effect``); ``settle``
   applies it only when the reply *as sent* is 2yz or 3yz (a rule that turns a 250 into a
   550 commits nothing).  The reply to the end of a message ends the transaction whatever
   it says (``Decision.ends_transaction``; RFC 5321 §4.1.1.4, RFC 3030 §2).
5. STARTTLS (RFC 3207): with ``tls="offer"`` the EHLO reply lists STARTTLS (unless the
   extensions already do) and STARTTLS gets 220, whose effect is the handshake; inside TLS
   (``Facts.tls``) STARTTLS is not listed (§4.2: "A server MUST NOT return the STARTTLS
   extension in response to an EHLO command received after a TLS handshake has completed";
   an extension given in ``extensions`` is sent as given: a probe) and a second STARTTLS
   gets 503 (RFC 5321 §4.2.4 "Bad sequence of commands": RFC 3207 §4.2, "A client MUST NOT
   attempt to start a TLS session if a TLS session is already active", makes it a command
   out of sequence, which is what 503 answers here).  With ``tls="off"`` STARTTLS is 502.
   Once the handshake is done the session starts afresh (``after_tls``): nothing the
   client said before is kept (§4.2, "The server MUST discard any knowledge obtained from
   the client"); the PTR of its address, which it did not say, is.
6. Reply rules: the first ``ReplyRule`` whose ``on`` (and ``argument``, and ``nth``: the
   how-manieth time ``on`` is answered in the session) matches replaces
   the reply: its code and text (``scripted``), or raw bytes whose code is read from their
   first line (``raw_reply``).  The idle timeout's 421 answers no command and no rule
   replaces it (RFC 5321 §3.8, §4.5.3.2.7).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from harness.errors import HarnessError
from harness.smtp.events import AnomalyKind, Command
from harness.smtp.replies import parse_reply_line

if TYPE_CHECKING:
    from harness.tls.pki import ServerCredentials

Text = str | Sequence[str]
TIMEOUT = "<timeout>"  # the key the idle timeout's 421 is recorded under (rule 6)

# MAIL/RCPT parameter -> the EHLO keyword that must have been advertised for it
_PARAM_EXTENSION = {
    "SIZE": "SIZE",
    "BODY": "8BITMIME",
    "SMTPUTF8": "SMTPUTF8",
    "RET": "DSN",
    "ENVID": "DSN",
    "NOTIFY": "DSN",
    "ORCPT": "DSN",
}
CHOICES = {
    "vrfy": ("check", "252", "disabled"),
    "ptr_check": ("accept", "note", "reject"),
    "ptr_at": ("helo", "connect", "never"),
    "bad_lines": ("reject", "accept"),
    "tls": ("off", "offer"),
    "starttls_plaintext": ("discard", "answer"),
}


@dataclass(frozen=True)
class ReplyRule:
    """Replace the reply to ``on`` (a verb, ``<greeting>`` or ``<end-of-data>``).

    ``argument`` narrows it to one argument (the address for MAIL/RCPT), case-insensitive;
    ``nth`` to the nth time ``on`` is answered in a session, from 1 (the second RCPT).
    ``code``/``text`` replace the reply's (None keeps it), ``raw`` sends bytes as they are
    (malformed replies), ``delay`` waits first, ``line_pause`` waits between the lines of a
    multi-line reply (each line its own write), ``close`` closes the connection after it
    (``raw=b"", close=True`` drops the connection without a reply), ``reset`` resets it
    (an RST, SO_LINGER 0) once the reply is acknowledged (``raw=b"", reset=True``: an RST
    instead of the reply), ``stop_reading`` stops reading after it (the client's bytes
    fill our receive window: a zero window) until the idle timeout ends the session."""

    on: str
    argument: str | None = None
    code: int | None = None
    text: Text | None = None
    raw: bytes | None = None
    delay: float = 0.0
    line_pause: float = 0.0
    close: bool = False
    reset: bool = False
    stop_reading: bool = False
    nth: int | None = None

    def matches(self, key: str, command: Command | None, seen: int = 1) -> bool:
        """Does the rule answer ``key`` (``command``), answered for the ``seen``-th time?"""
        if self.on.upper() != key.upper() or self.nth not in (None, seen):
            return False
        if self.argument is None:
            return True
        seen = command and (command.address if command.address is not None else command.argument)
        return (seen or "").lower() == self.argument.lower()


@dataclass
class ReceiverConfig:
    hostname: str = "mail.receiver.com"
    greeting: str = "ESMTP smtp-harness"
    domains: tuple[str, ...] = ("receiver.com",)
    users: tuple[str, ...] = ("c3po", "r2d2")
    vrfy: str = "check"  # check: 250/550 from users; 252: never verify; disabled: 502
    ptr_check: str = "accept"  # on a HELO/PTR mismatch: accept, note (log), reject (550)
    ptr_at: str = "helo"  # helo, connect (before 220), never
    extensions: tuple[str, ...] = ("PIPELINING", "8BITMIME", "SIZE 10240000")
    bad_lines: str = "reject"  # NUL / bare CR / bare LF in a command: reject (500), accept
    rules: list[ReplyRule] = field(default_factory=list)
    maildir: Path | None = None
    log_path: Path | None = None
    timeout: float = 300.0  # RFC 5321 §4.5.3.2.7: the server waits at least 5 minutes
    tls: str = "off"  # offer: STARTTLS (rule 5)
    certificate: str = "good"  # the harness.tls.pki.CertVariant the runner serves
    starttls_inject: bytes | None = None  # a probe: raw bytes behind the 220, in its write
    # "answer": the plaintext pipelined behind STARTTLS is answered inside TLS (a receiver
    # built to fail the injection check, CVE-2011-0411); "discard" (RFC 3207 §4.2)
    starttls_plaintext: str = "discard"
    credentials: ServerCredentials | None = None  # the chain and key served (tls="offer")
    keylog: Path | None = None  # where the TLS secrets go (NSS key log format)

    def __post_init__(self) -> None:
        for name, options in CHOICES.items():
            if getattr(self, name) not in options:
                value = getattr(self, name)
                raise HarnessError(f"receiver {name} = {value!r}: expected one of {options}")

    # computed once: a receiver's configuration does not change while it serves
    @cached_property
    def advertised(self) -> frozenset[str]:
        return frozenset(ext.split()[0].upper() for ext in self.extensions)

    @cached_property
    def size_limit(self) -> int | None:
        for ext in self.extensions:
            name, _, value = ext.partition(" ")
            if name.upper() == "SIZE" and value.strip().isdigit() and int(value) > 0:
                return int(value)
        return None


class Effect(StrEnum):  # str hashing: it keys a table consulted on most replies
    """What a positive reply commits the session to (rule 4)."""

    GREET = "greet"  # HELO/EHLO: the client's name, a new transaction
    MAIL = "mail"  # the reverse-path
    RCPT = "rcpt"  # one more recipient
    DATA = "data"  # message content follows (after 354, or the octets of a BDAT chunk)
    RESET = "reset"  # RSET: a new transaction
    STARTTLS = "starttls"  # the TLS handshake follows the 220 (rule 5)
    DELIVER = "deliver"  # store the content, once per recipient


class Note(NamedTuple):
    """A log entry a decision asks for (``kind`` and its fields)."""

    kind: str
    fields: dict[str, object]


class Decision(NamedTuple):  # a tuple: one is made per command, and tuples are cheap
    code: int
    text: Text
    effect: Effect | None = None
    ends_transaction: bool = False
    note: Note | None = None


class Facts(NamedTuple):
    """What the policy knows of one session."""

    ptr: tuple[str, ...] | None = None  # the PTR names of the client, once looked up
    helo: str | None = None
    esmtp: bool = False
    mail_from: str | None = None
    recipients: tuple[str, ...] = ()
    tls: bool = False  # the session runs inside TLS (rule 5)


# --- the greeting, the end of a message, the timeout --------------------------------------
def greeting(config: ReceiverConfig) -> Decision:
    return Decision(220, f"{config.hostname} {config.greeting}")


def end_of_message(config: ReceiverConfig, size: int) -> Decision:
    """The reply to CRLF.CRLF (or BDAT LAST): storing waits for it (rule 4)."""
    limit = config.size_limit
    if limit and size > limit:
        return Decision(552, "5.3.4 Message size exceeds fixed maximum message size", None, True)
    return _ACCEPTED


def end_of_chunk(config: ReceiverConfig, pending: Decision, size: int, last: bool) -> Decision:
    """The reply a BDAT command's ``pending`` decision owes once its chunk has arrived;
    ``size``: the message so far (RFC 3030 §2)."""
    if last and 200 <= pending.code < 300:
        return end_of_message(config, size)
    return Decision(pending.code, pending.text, None, last)


def timeout_reply(config: ReceiverConfig) -> Decision:
    """421 after ``config.timeout`` seconds without a byte from the client (RFC 5321 §3.8:
    the server may close "after a timeout ... occurs waiting for the client to send a
    command or data")."""
    return Decision(421, f"4.4.2 {config.hostname} Error: timeout exceeded")


# --- commands ---------------------------------------------------------------------------
def answer(config: ReceiverConfig, facts: Facts, cmd: Command) -> Decision:
    """The reply to ``cmd`` (rule 2)."""
    return refusal(config, cmd) or VERBS[cmd.verb](config, facts, cmd)


def refusal(config: ReceiverConfig, cmd: Command) -> Decision | None:
    """The 5yz a command gets whatever its verb: a flawed line, an unknown verb, bad
    syntax, out of sequence (rule 2)."""
    if cmd.flaws:
        if AnomalyKind.LINE_TOO_LONG in cmd.flaws:
            return Decision(500, "5.5.2 Line too long")
        if config.bad_lines == "reject":
            return Decision(500, "5.5.2 NUL, bare CR or bare LF in command line")
    if not cmd.known:
        return Decision(500, "5.5.1 Command unrecognized")
    if cmd.syntax_error:
        return Decision(501, f"5.5.4 Syntax error: {cmd.syntax_error}")
    if not cmd.in_order:
        return Decision(503, "5.5.1 Bad sequence of commands")
    return None


def ptr_wanted(config: ReceiverConfig, cmd: Command | None) -> bool:
    """Whether the client's PTR must be looked up before deciding: at connect (``cmd``
    None) or before a HELO/EHLO (rule 3)."""
    if cmd is None:
        return config.ptr_at == "connect"
    return config.ptr_at == "helo" and cmd.verb in _HELLO and refusal(config, cmd) is None


def after_tls(facts: Facts) -> Facts:
    """The facts of the session a completed TLS handshake starts: nothing the client said
    before, only the PTR of its address, which it did not say (rule 5)."""
    return Facts(facts.ptr, tls=True)


def with_ptr(facts: Facts, names: Sequence[str]) -> Facts:
    """The facts once the PTR lookup gave ``names`` (none: it failed)."""
    return facts._replace(ptr=tuple(names))


def _hello(config: ReceiverConfig, facts: Facts, cmd: Command) -> Decision:
    name = (cmd.argument or "").rstrip(".").lower()
    note = None
    if facts.ptr is not None and name not in facts.ptr:
        if config.ptr_check != "accept":
            note = Note("ptr-mismatch", {"helo": cmd.argument, "ptr": list(facts.ptr)})
        if config.ptr_check == "reject":
            return Decision(
                550, "5.7.1 HELO name does not match the name of your address", note=note
            )
    hello = f"{config.hostname} Hello {cmd.argument}"
    text = [hello, *_extensions(config, facts)] if cmd.verb == "EHLO" else hello
    return Decision(250, text, Effect.GREET, False, note)


def _extensions(config: ReceiverConfig, facts: Facts) -> tuple[str, ...]:
    """The EHLO keywords: STARTTLS added before TLS when offered (rule 5)."""
    if config.tls == "offer" and not facts.tls and "STARTTLS" not in config.advertised:
        return (*config.extensions, "STARTTLS")
    return config.extensions


def _starttls(config: ReceiverConfig, facts: Facts, cmd: Command) -> Decision:
    if config.tls != "offer":
        return _FIXED["STARTTLS"]
    if facts.tls:
        return Decision(503, "5.5.1 TLS already active")
    return _READY_FOR_TLS


def _mail(config: ReceiverConfig, facts: Facts, cmd: Command) -> Decision:
    refused = _unadvertised(config, facts, cmd) if cmd.params else None
    if refused:
        return refused
    limit, declared = config.size_limit, cmd.params.get("SIZE") or "0"
    if limit and declared.isdigit() and int(declared) > limit:
        return Decision(552, "5.3.4 Message size exceeds fixed maximum message size")
    return _MAIL_OK


def _rcpt(config: ReceiverConfig, facts: Facts, cmd: Command) -> Decision:
    refused = _unadvertised(config, facts, cmd) if cmd.params else None
    if refused:
        return refused
    if not _known(config, cmd.address or ""):
        return Decision(550, f"5.1.1 <{cmd.address}>: Recipient address rejected: User unknown")
    return _RCPT_OK


def _data(config: ReceiverConfig, facts: Facts, cmd: Command) -> Decision:
    return _GO_AHEAD


def _bdat(config: ReceiverConfig, facts: Facts, cmd: Command) -> Decision:
    if "CHUNKING" not in config.advertised:
        return Decision(502, "5.5.1 BDAT not implemented")
    return Decision(250, f"2.0.0 {cmd.chunk_size} octets received", Effect.DATA)


def _vrfy(config: ReceiverConfig, facts: Facts, cmd: Command) -> Decision:
    if config.vrfy == "disabled":
        return Decision(502, "5.5.1 VRFY command is disabled")
    if config.vrfy == "252":
        return Decision(252, "2.5.2 Cannot VRFY user, but will accept message and attempt delivery")
    user = (cmd.argument or "").strip("<>")
    if _known(config, user):
        return Decision(250, f"<{user.partition('@')[0]}@{config.domains[0]}>")
    return Decision(550, f"5.1.1 <{user}>: Recipient address rejected: User unknown")


def _rset(config: ReceiverConfig, facts: Facts, cmd: Command) -> Decision:
    return _RESET


def _quit(config: ReceiverConfig, facts: Facts, cmd: Command) -> Decision:
    return Decision(221, f"2.0.0 {config.hostname} closing connection")


def _fixed(config: ReceiverConfig, facts: Facts, cmd: Command) -> Decision:
    return _FIXED[cmd.verb]


def _unadvertised(config: ReceiverConfig, facts: Facts, cmd: Command) -> Decision | None:
    extensions = config.advertised if facts.esmtp else frozenset()
    for name in cmd.params:
        if _PARAM_EXTENSION.get(name) not in extensions:
            return Decision(555, f"5.5.4 {name} parameter not recognized or not implemented")
    return None


def _known(config: ReceiverConfig, address: str) -> bool:
    local, at, domain = address.partition("@")
    in_domain = not at or domain.lower() in {d.lower() for d in config.domains}
    return in_domain and local.lower() in {u.lower() for u in config.users}


_HELLO = frozenset({"HELO", "EHLO"})
_MAIL_OK = Decision(250, "OK", Effect.MAIL)
_RCPT_OK = Decision(250, "OK", Effect.RCPT)
_GO_AHEAD = Decision(354, "End data with <CR><LF>.<CR><LF>", Effect.DATA)
_RESET = Decision(250, "2.0.0 OK", Effect.RESET)
_ACCEPTED = Decision(250, "OK Mail accepted", Effect.DELIVER, True)
_READY_FOR_TLS = Decision(220, "2.0.0 Ready to start TLS", Effect.STARTTLS)
_FIXED: dict[str, Decision] = {
    "NOOP": Decision(250, "2.0.0 OK"),
    "HELP": Decision(214, "2.0.0 See RFC 5321"),
    "EXPN": Decision(502, "5.5.1 EXPN not available"),
    "STARTTLS": Decision(502, "5.5.1 STARTTLS not available"),
}
Verb = Callable[[ReceiverConfig, Facts, Command], Decision]
VERBS: dict[str, Verb] = {
    "HELO": _hello,
    "EHLO": _hello,
    "MAIL": _mail,
    "RCPT": _rcpt,
    "DATA": _data,
    "BDAT": _bdat,
    "VRFY": _vrfy,
    "RSET": _rset,
    "QUIT": _quit,
    **dict.fromkeys(_FIXED, _fixed),
    "STARTTLS": _starttls,
}


# --- committing (rule 4) ----------------------------------------------------------------
# (the facts after the reply, what it committed to or None, whether the transaction ended:
# content received for it is dropped); a plain tuple, made on most replies
Settled = tuple[Facts, Effect | None, bool]


def settle(facts: Facts, decision: Decision, cmd: Command | None, code: int | None) -> Settled:
    """What ``decision``'s reply, sent with ``code``, commits to (rule 4)."""
    effect = decision.effect if code is not None and 200 <= code < 400 else None
    if effect is not None:
        facts = _COMMIT[effect](facts, cmd)
    if decision.ends_transaction:
        facts = _new_transaction(facts, cmd)
    return facts, effect, decision.ends_transaction or effect in _NEW_TRANSACTION


def _greeted(facts: Facts, cmd: Command | None) -> Facts:
    assert cmd is not None  # GREET is the effect of HELO/EHLO
    return Facts(facts.ptr, cmd.argument, cmd.verb == "EHLO", tls=facts.tls)


def _mail_from(facts: Facts, cmd: Command | None) -> Facts:
    assert cmd is not None  # MAIL is the effect of a command
    return Facts(facts.ptr, facts.helo, facts.esmtp, cmd.address, tls=facts.tls)


def _recipient(facts: Facts, cmd: Command | None) -> Facts:
    assert cmd is not None  # RCPT is the effect of a command
    recipients = (*facts.recipients, cmd.address or "")
    return Facts(facts.ptr, facts.helo, facts.esmtp, facts.mail_from, recipients, facts.tls)


def _new_transaction(facts: Facts, cmd: Command | None) -> Facts:
    return Facts(facts.ptr, facts.helo, facts.esmtp, tls=facts.tls)


def _unchanged(facts: Facts, cmd: Command | None) -> Facts:
    return facts


_COMMIT: dict[Effect, Callable[[Facts, Command | None], Facts]] = {
    Effect.GREET: _greeted,
    Effect.MAIL: _mail_from,
    Effect.RCPT: _recipient,
    Effect.DATA: _unchanged,
    Effect.RESET: _new_transaction,
    Effect.DELIVER: _unchanged,  # the transaction ends with the reply (ends_transaction)
    Effect.STARTTLS: _unchanged,  # the facts are forgotten once the handshake is done
}
_NEW_TRANSACTION = frozenset({Effect.GREET, Effect.RESET})


# --- reply rules (rule 6) -----------------------------------------------------------------
def rule_for(
    rules: Sequence[ReplyRule], key: str, cmd: Command | None, seen: int = 1
) -> ReplyRule | None:
    return next((r for r in rules if r.matches(key, cmd, seen)), None)


def scripted(rule: ReplyRule, decision: Decision) -> tuple[int, Text]:
    """The code and text a (non-raw) rule puts in the place of ``decision``'s."""
    code, text = decision.code, decision.text
    if rule.code is not None:
        code, text = rule.code, "Scripted reply"
    if rule.text is not None:
        text = rule.text
    return code, text


def reply_texts(code: int, text: Text) -> tuple[str, ...]:
    """The text of each line of ``format_reply(code, text)`` (as ``Reply.lines``)."""
    if isinstance(text, str):
        return (text,)
    return tuple(text) or ("",)


def raw_reply(data: bytes) -> tuple[int | None, tuple[str, ...]]:
    """The code of raw reply bytes (their first line's; None: unreadable) and the text of
    each line, a last line without CRLF included."""
    lines = data.split(b"\r\n")
    if lines[-1] == b"":
        lines.pop()
    parsed = [parse_reply_line(line) for line in lines]
    return (parsed[0].code if parsed else None), tuple(p.text for p in parsed)
