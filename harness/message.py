"""Comparing a message with a later copy of it, within what each hop may change.

Rules kept here:
- Two comparisons, each with its own allowances.  ``ORIGINATING``: the message file a real
  MTA was given against the content it put on the wire (it may prepend trace fields, add
  ``Date:`` and ``Message-ID:`` when absent, and convert an 8-bit body to 7 bit for a
  server without 8BITMIME).  ``RECEIVING``: the content on the wire against each copy the
  receiving side stored (it may prepend trace and delivery fields, RFC 5321 §4.4).  Each
  allowance names the field and the RFC words that allow it.
- Line ends are compared as lines (a mailbox may store LF where the wire had CRLF); a
  missing final line break counts as one (RFC 5321 §4.1.1.4: the client adds it).  Every
  other byte counts: the header fields not allowed must be the same fields, in the same
  order, byte for byte; the bodies must be equal.
- The result of a comparison is ``None`` (the same, within the allowances) or a
  ``Difference`` with a one-line summary, the allowances used, and a unified diff.
"""

from __future__ import annotations

import difflib
import email
import email.policy
from collections.abc import Iterable
from dataclasses import dataclass

Field = tuple[str, bytes]  # (lower-case name, the field's lines with their CRLFs)


@dataclass(frozen=True)
class Allowance:
    field: str  # lower-case header field name
    reason: str
    only_if_absent: bool = False  # allowed only where the original has no such field


ORIGINATING = (
    Allowance("received", "RFC 5321 §4.4: every SMTP server that relays it prepends Received"),
    Allowance("date", "RFC 6409 §8.2: a submission server MAY add Date", only_if_absent=True),
    Allowance(
        "message-id", "RFC 6409 §8.3: a submission server MAY add Message-ID", only_if_absent=True
    ),
)
RECEIVING = (
    Allowance("return-path", "RFC 5321 §4.4: final delivery inserts Return-Path"),
    Allowance("received", "RFC 5321 §4.4: the receiving server prepends Received"),
    Allowance("delivered-to", "delivery agents record the final recipient (Postfix, OpenSMTPD)"),
    Allowance("x-original-to", "Postfix records the original recipient at delivery"),
    Allowance("envelope-to", "Exim's Maildir transport records the envelope recipients"),
    Allowance("delivery-date", "Exim's Maildir transport records the delivery time"),
)
CONVERSION = (  # only when an 8-bit body came out converted to 7 bit
    Allowance("content-transfer-encoding", "RFC 6152 §3, RFC 6409 §8.4: an 8-bit body converted"),
    Allowance("mime-version", "RFC 6152 §3 with RFC 2045: the conversion makes it MIME"),
    Allowance("x-mime-autoconverted", "Sendmail names its 8-bit to 7-bit conversion"),
)


_KNOWN = {a.field: a for a in (*ORIGINATING, *RECEIVING)}


def prepended(fields: Iterable[str]) -> tuple[Allowance, ...]:
    """The allowances for the header fields an MTA declares it prepends, each with the
    reason it may (a field with no known reason is allowed as that MTA's own trace field)."""
    return tuple(
        _KNOWN.get(f.lower(), Allowance(f.lower(), "a trace field this MTA prepends"))
        for f in fields
    )


def originating(fields: Iterable[str]) -> tuple[Allowance, ...]:
    """What a real MTA sending a message may change: the fields it prepends, and Date and
    Message-ID where the message has none (RFC 6409 §8.2-8.3)."""
    added = tuple(a for a in ORIGINATING if a.only_if_absent)
    return (*prepended(fields), *added)


@dataclass(frozen=True)
class Difference:
    summary: str
    diff: str  # unified diff, original -> copy

    def lines(self, indent: str = "    ") -> list[str]:
        return [self.summary, *(indent + line for line in self.diff.splitlines())]


def compare(
    original: bytes, copy: bytes, allowances: Iterable[Allowance], names: tuple[str, str]
) -> Difference | None:
    """``copy`` against ``original``, allowing ``allowances``; ``names`` label the diff."""
    allowed = {a.field: a for a in allowances}
    head, text = _split(_crlf(original))
    copy_head, copy_text = _split(_crlf(copy))
    extra = _extra_fields(head, copy_head, allowed)
    kept = [f for f in copy_head if f not in extra]
    if text != copy_text and _converted(original, copy):
        extra += [f for f in kept if f[0] in {a.field for a in CONVERSION}]
        kept = [f for f in kept if f not in extra]
        head = [f for f in head if f[0] not in {a.field for a in CONVERSION}]
        copy_text = text
    if kept == head and text == copy_text:
        return None
    what = "header fields" if kept != head else "body"
    if kept != head and text != copy_text:
        what = "header fields and body"
    diff = difflib.unified_diff(
        _shown(original),
        _shown(copy),
        fromfile=names[0],
        tofile=names[1],
        lineterm="",
    )
    return Difference(f"{names[1]} differs from {names[0]} in its {what}", "\n".join(diff))


def _crlf(data: bytes) -> bytes:
    data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def _split(message: bytes) -> tuple[list[Field], bytes]:
    """The header fields (each with its continuation lines) and the body."""
    head, found, text = message.partition(b"\r\n\r\n")
    if found:
        return _fields(head + b"\r\n"), text
    first = message.partition(b"\r\n")[0]
    return (_fields(message), b"") if b":" in first else ([], message)


def _fields(head: bytes) -> list[Field]:
    fields: list[Field] = []
    for line in head.split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t") and fields:
            name, raw = fields[-1]
            fields[-1] = (name, raw + line + b"\r\n")
        else:
            name = line.partition(b":")[0].decode("ascii", "replace").strip().lower()
            fields.append((name, line + b"\r\n"))
    return fields


def _extra_fields(
    head: list[Field], copy_head: list[Field], allowed: dict[str, Allowance]
) -> list[Field]:
    """The copy's fields an allowance covers and the original does not have."""
    present = {name for name, _ in head}
    extra = []
    for field in copy_head:
        allowance = allowed.get(field[0])
        if allowance is None or field in head:
            continue
        if allowance.only_if_absent and field[0] in present:
            continue
        extra.append(field)
    return extra


def _converted(original: bytes, copy: bytes) -> bool:
    """The original body had 8-bit octets and the copy's body decodes to the same text."""
    if not any(b >= 0x80 for b in _split(_crlf(original))[1]):
        return False
    parsed = email.message_from_bytes(copy, policy=email.policy.compat32)
    encoding = str(parsed.get("Content-Transfer-Encoding", "")).strip().lower()
    if encoding not in ("quoted-printable", "base64") or parsed.is_multipart():
        return False
    decoded = parsed.get_payload(decode=True)
    return isinstance(decoded, bytes) and _lines(decoded) == _lines(_split(_crlf(original))[1])


def _lines(data: bytes) -> list[bytes]:
    return data.replace(b"\r\n", b"\n").rstrip(b"\n").split(b"\n")


def _shown(data: bytes) -> list[str]:
    return [line.decode("utf-8", "backslashreplace") for line in _lines(data)]
