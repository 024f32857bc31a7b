"""What the SMTP core reports: small records of what one side sent.

Rules kept here:

1. Every event names the ``direction`` of the bytes it came from (who sent them) and the
   ``offset``, in that direction's byte stream, where those bytes begin.  Offsets count every
   byte received, including the skipped tail of an overlong line, so a dissector can map an
   event back to a TCP sequence number, and the octets a capture lost (``Observer.skip``):
   each gap is reported once, as a ``Gap``, where it begins.
2. Events report, they never judge and the core never raises on what a peer sent: a
   malformed command is a ``Command`` with ``syntax_error`` set, an odd byte is an
   ``Anomaly``, a malformed reply is a ``Reply`` with ``error`` set.
3. Text is decoded as UTF-8 with ``surrogateescape``, so ``text.encode("utf-8",
   "surrogateescape")`` gives back the exact bytes; message content stays ``bytes``.
4. A direction's EOF ends every unit: one the stream ended inside (a line without its
   line ending, a multi-line reply without its last line, content without its end, a
   chunk short of its size, an AUTH response line) is reported as ``Unfinished``, just
   before the ``ConnectionClosed``.  It changes no session state: no peer acts on half a
   unit.
5. Only a capture's observer infers (protocol.py rule 9): an ``inferred`` reply carries no
   bytes (``raw`` is empty) and a ``Resync`` says which commands' replies it took as not
   captured.  A peer's own events are never inferred.
6. An event is a value: made once, never changed (``dataclasses.replace`` makes a changed
   copy), equal and hashed by its fields.  It is a slotted dataclass, not a frozen one: a
   frozen dataclass sets each field through ``object.__setattr__``, which tripled the cost
   of making one, and the core makes one for every line it reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

_record = dataclass(slots=True, kw_only=True, unsafe_hash=True)  # rule 6: a value, made cheaply


class Direction(Enum):
    """Who sent the bytes: the SMTP client (sender) or the SMTP server (receiver)."""

    CLIENT = "client"
    SERVER = "server"


class Status(Enum):
    """What ``next_event`` returns when it has no event to give."""

    NEED_DATA = "need data"  # feed more bytes (or b"" for EOF)
    PAUSED = "paused"  # the peer's bytes wait for our reply to DATA or STARTTLS


NEED_DATA = Status.NEED_DATA
PAUSED = Status.PAUSED


class AnomalyKind(Enum):
    BARE_CR = "bare CR"  # a CR not followed by LF (RFC 5321 §2.3.8)
    BARE_LF = "bare LF"  # an LF not preceded by CR (RFC 5321 §2.3.8)
    NUL = "NUL"  # a NUL octet
    LINE_TOO_LONG = "line too long"  # over RFC 5321 §4.5.3.1.4-.6 limits (512 / 1000 octets)
    SMUGGLING = "end-of-data look-alike"  # a dot between line breaks other than CRLF.CRLF
    PLAINTEXT_AFTER_STARTTLS = "plaintext after STARTTLS"  # RFC 3207 §4.2, CVE-2011-0411
    CUT_BY_GAP = "line cut by a gap"  # a command or reply line partly lost: dropped


@_record
class Event:
    direction: Direction
    offset: int


@_record
class Anomaly(Event):
    """An odd byte sequence at ``offset``; it is reported before the event that contains it."""

    kind: AnomalyKind
    detail: str = ""


@_record
class Command(Event):
    """One command line.  ``flaws`` are the line-level anomalies found in it (NUL, bare CR or
    LF, too long): a server answers those with 500, a ``syntax_error`` with 501 and a
    command that is not ``in_order`` with 503."""

    verb: str  # upper-cased; "" for an empty line
    argument: str | None  # the text after the first SP, case kept; None when there is no SP
    known: bool
    raw: bytes  # the line as received, with its line ending (cut at the limit if overlong)
    address: str | None = None  # MAIL/RCPT path without <> and source route ("" = null path)
    params: dict[str, str | None] = field(default_factory=dict)  # ESMTP parameters, keys upper
    chunk_size: int | None = None  # BDAT
    last: bool = False  # BDAT ... LAST
    syntax_error: str | None = None
    flaws: frozenset[AnomalyKind] = frozenset()
    in_order: bool = True  # legal in the session state it arrived in (see state.py)

    @property
    def key(self) -> str:
        """The name the session state table knows this command by."""
        return "BDAT LAST" if self.last else self.verb


@_record
class Reply(Event):
    """A complete reply, single or multi-line; ``code`` is None when unreadable."""

    code: int | None
    lines: tuple[str, ...]  # the text of each line, after the code and separator
    raw: bytes
    error: str | None = None
    flaws: frozenset[AnomalyKind] = frozenset()
    answers: str | None = None  # the command key it answers, e.g. "EHLO", "<greeting>"
    inferred: bool = False  # not captured: the client's bytes show it was sent (rule 5)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def positive(self) -> bool:
        """2yz or 3yz (RFC 5321 §4.2.1)."""
        return self.code is not None and 200 <= self.code < 400

    @property
    def transient(self) -> bool:
        """4yz: try again later."""
        return self.code is not None and 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        """5yz, or a reply with no readable code (RFC 5321 §4.2.1, §4.3.2)."""
        return self.code is None or self.code >= 500


@_record
class AuthResponse(Event):
    """A line the client sent in answer to a 334 challenge (RFC 4954 §4): base64 as sent, or
    ``*`` to cancel the exchange.  Never upper-cased, never parsed as a command."""

    raw: bytes  # the line as received, with its line ending

    @property
    def cancel(self) -> bool:
        return self.raw.rstrip(b"\r\n") == b"*"


@_record
class Resync(Event):
    """A capture's reply ``code`` answers ``answers``, not the older commands ``assumed``
    (rule 5): their replies are taken as not captured.  ``inferred``: the reply itself was
    not captured either (a 354 the client's bytes show was sent).  Reported just before
    the ``Reply``, at the offset where it begins."""

    code: int
    answers: str
    assumed: tuple[str, ...]
    inferred: bool = False


@_record
class Content(Event):
    """A piece of message content, exactly as stored: dot-unstuffed, line endings kept.  A
    peer's is one line (or a piece of an overlong one); a capture's may be a run of plain
    lines (readers.py rule 1)."""

    data: bytes


@_record
class EndOfData(Event):
    """The CRLF.CRLF marker ending DATA; ``size`` is the unstuffed content length."""

    size: int


@_record
class EndOfChunk(Event):
    """The end of a BDAT chunk (RFC 3030)."""

    size: int
    last: bool


@_record
class Gap(Event):
    """``size`` octets missing from a capture, from ``offset`` on.  ``content``: they were
    message content (DATA or a BDAT chunk) and count towards its size."""

    size: int
    content: bool = False


@_record
class TlsStarted(Event):
    """From here on this direction carries TLS records; the core no longer parses it."""


@_record
class Opaque(Event):
    """``size`` bytes of TLS (or other unparsed) traffic."""

    size: int


class UnitKind(Enum):
    """What an ``Unfinished`` event was part of."""

    COMMAND = "command"
    REPLY = "reply"
    CONTENT = "content"  # DATA content
    CHUNK = "chunk"  # a BDAT chunk
    AUTH_RESPONSE = "auth-response"  # a line answering a 334 (RFC 4954 §4)


@_record
class Unfinished(Event):
    """A unit the stream ended inside (rule 4).  For a command or a reply, ``offset`` and
    ``raw`` are the whole unit as received (every line of a reply begun, the kept head of
    an overlong line); ``code`` is a reply's, when its first line has one.  For content and
    chunks, whose earlier bytes came as ``Content``, they are the bytes after the last
    complete unit, as received (perhaps the start of the end marker: it never came)."""

    unit: UnitKind
    raw: bytes
    code: int | None = None


@_record
class ConnectionClosed(Event):
    """EOF in this direction; ``partial`` holds bytes that never formed a complete unit."""

    partial: bytes = b""
