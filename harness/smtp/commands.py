"""The command grammar of RFC 5321 §4.1 (and BDAT, RFC 3030): parse one line, format one.

Rules kept here:

1. Verbs are case-insensitive (§2.4) and reported upper-cased; arguments keep their case.
2. The verb ends at the first SP; the argument is everything after it, ``None`` if there is
   no SP.  Each verb has one argument shape (``VERBS``), and each shape one parser.
3. Grammar is strict and errors are data: a parser returns what it could read *and* the
   first rule broken, so a strict server answers 501 while a lenient one, or an observer,
   still sees the address of ``MAIL FROM: <a@b>`` (a space after the colon, §3.3).
4. ``MAIL FROM:<>`` is the valid null reverse-path (§4.5.5); ``RCPT TO:<Postmaster>`` is a
   valid forward-path without a domain (§4.5.1); a source route ``<@a,@b:x@y>`` is
   accepted and dropped (§4.1.1.3, appendix C).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import Enum

from harness.errors import HarnessError
from harness.smtp.events import AnomalyKind, Command, Direction


class Shape(Enum):
    NONE = "no argument"
    OPTIONAL = "optional string"
    STRING = "string"
    DOMAIN = "domain"
    REVERSE_PATH = "FROM:<reverse-path>"
    FORWARD_PATH = "TO:<forward-path>"
    CHUNK = "chunk-size [LAST]"


VERBS: dict[str, Shape] = {
    "HELO": Shape.DOMAIN,
    "EHLO": Shape.DOMAIN,
    "MAIL": Shape.REVERSE_PATH,
    "RCPT": Shape.FORWARD_PATH,
    "DATA": Shape.NONE,
    "BDAT": Shape.CHUNK,
    "RSET": Shape.NONE,
    "VRFY": Shape.STRING,
    "EXPN": Shape.STRING,
    "HELP": Shape.OPTIONAL,
    "NOOP": Shape.OPTIONAL,
    "QUIT": Shape.NONE,
    "STARTTLS": Shape.NONE,
}

_ESMTP_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_ESMTP_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e]+")  # RFC 5321 §4.1.2: no "=", SP or controls
_CHUNK = re.compile(r"([0-9]+)( LAST)?", re.IGNORECASE)

Fields = dict[str, object]  # keyword arguments for Command: what a parser read
Parsed = tuple[Fields, str | None]  # (fields, first syntax error or None)


def parse_command(
    line: bytes,
    *,
    direction: Direction = Direction.CLIENT,
    offset: int = 0,
    raw: bytes | None = None,
    flaws: frozenset[AnomalyKind] = frozenset(),
) -> Command:
    """Parse one command line given without its line ending."""
    text = line.decode("utf-8", "surrogateescape")
    verb, sep, rest = text.partition(" ")
    verb = verb.upper()
    argument = rest if sep else None
    parser = _VERB_PARSERS.get(verb)
    fields, error = parser(verb, argument) if parser else ({}, None)
    return Command(
        direction=direction,
        offset=offset,
        verb=verb,
        argument=argument,
        known=parser is not None,
        raw=line if raw is None else raw,
        syntax_error=error,
        flaws=flaws,
        **fields,
    )


def format_command(verb: str, argument: str | None = None) -> bytes:
    """A command line with its CRLF; raw bytes (probes) go through ``send_raw`` instead."""
    line = verb if argument is None else f"{verb} {argument}"
    if "\r" in line or "\n" in line:
        raise HarnessError(f"command {line!r} contains CR or LF; send it as raw bytes")
    return line.encode("utf-8", "surrogateescape") + b"\r\n"


def path_argument(keyword: str, address: str, params: dict[str, str | None] | None = None) -> str:
    """``FROM:<a@b> SIZE=10`` for MAIL (keyword FROM) or RCPT (keyword TO)."""
    words = [f"{keyword}:<{address}>"]
    words += [k if v is None else f"{k}={v}" for k, v in (params or {}).items()]
    return " ".join(words)


def _no_argument(verb: str, argument: str | None) -> Parsed:
    return {}, None if argument is None else f"{verb} takes no argument"


def _optional(verb: str, argument: str | None) -> Parsed:
    return {}, None


def _string(verb: str, argument: str | None) -> Parsed:
    return {}, None if argument else f"{verb} needs an argument"


def _domain(verb: str, argument: str | None) -> Parsed:
    if not argument:
        return {}, f"{verb} needs a domain"
    return {}, f"{verb} takes one domain" if " " in argument else None


def _chunk(verb: str, argument: str | None) -> Parsed:
    m = _CHUNK.fullmatch(argument or "")
    if not m:
        return {}, "BDAT needs a chunk size, optionally followed by LAST"
    return {"chunk_size": int(m.group(1)), "last": m.group(2) is not None}, None


def _path(keyword: str, null_ok: bool) -> Callable[[str, str | None], Parsed]:
    def parse(verb: str, argument: str | None) -> Parsed:
        errors: list[str] = []
        head, colon, rest = (argument or "").partition(":")
        if not colon or head.strip().upper() != keyword:
            return {}, f"{verb} needs {keyword}:<address>"
        if head.upper() != keyword:
            errors.append(f"space before the colon of {keyword}: (RFC 5321 §3.3)")
        if rest.startswith(" "):
            errors.append(f"space after {keyword}: (RFC 5321 §3.3)")
        address, tail = _split_path(rest.lstrip(" "), errors)
        address = _drop_source_route(address)
        errors += _address_errors(address, null_ok)
        params = _parse_params(tail, errors)
        return {"address": address, "params": params}, errors[0] if errors else None

    return parse


def _split_path(text: str, errors: list[str]) -> tuple[str, str]:
    """(address, parameter text) from ``<address> params``; quotes may hide a ``>``."""
    if not text.startswith("<"):
        errors.append("the address is not in angle brackets")
        address, _, tail = text.partition(" ")
        return address, " " + tail if tail else ""
    if '"' not in text:  # the common case: no quoted local part, the first > closes
        close = text.find(">")
        if close > 0:
            return text[1:close], text[close + 1 :]
    quoted = False
    for i, ch in enumerate(text[1:], start=1):
        if ch == '"' and text[i - 1] != "\\":
            quoted = not quoted
        elif ch == ">" and not quoted:
            return text[1:i], text[i + 1 :]
    errors.append("no closing > after the address")
    return text[1:], ""


def _drop_source_route(address: str) -> str:
    if address.startswith("@") and ":" in address:
        return address.split(":", 1)[1]
    return address


def _address_errors(address: str, null_ok: bool) -> list[str]:
    if not address:
        return [] if null_ok else ["the null path <> is not a valid recipient"]
    if address.lower() == "postmaster" and not null_ok:
        return []
    local, at, domain = address.rpartition("@")
    return [] if at and local and domain else [f"{address!r} is not local-part@domain"]


def _parse_params(tail: str, errors: list[str]) -> dict[str, str | None]:
    """ESMTP parameters (RFC 5321 §4.1.2), keywords upper-cased, values kept."""
    if not tail:
        return {}
    if not tail.startswith(" "):
        errors.append("no space between the address and its parameters")
    params: dict[str, str | None] = {}
    for word in tail.lstrip(" ").split(" "):
        keyword, eq, value = word.partition("=")
        if not _ESMTP_KEYWORD.fullmatch(keyword) or (eq and not _ESMTP_VALUE.fullmatch(value)):
            errors.append(f"bad ESMTP parameter {word!r}")
            continue
        if keyword.upper() in params:
            errors.append(f"ESMTP parameter {keyword.upper()} given twice")
        params[keyword.upper()] = value if eq else None
    return params


_PARSERS: dict[Shape, Callable[[str, str | None], Parsed]] = {
    Shape.NONE: _no_argument,
    Shape.OPTIONAL: _optional,
    Shape.STRING: _string,
    Shape.DOMAIN: _domain,
    Shape.REVERSE_PATH: _path("FROM", null_ok=True),
    Shape.FORWARD_PATH: _path("TO", null_ok=False),
    Shape.CHUNK: _chunk,
}
_VERB_PARSERS = {verb: _PARSERS[shape] for verb, shape in VERBS.items()}  # one lookup a line
