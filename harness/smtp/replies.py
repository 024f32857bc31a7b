"""The reply grammar of RFC 5321 §4.2: reply lines, multi-line replies, formatting.

Rules kept here:

1. A reply line is three digits, then ``-`` (more lines follow), SP or nothing (the last
   line), then text (§4.2.1).  The code's first digit is 2-5 and its second 0-5 (§4.2);
   other codes are kept but reported.
2. Every line of a multi-line reply carries the same code (§4.2.1); a differing code is
   reported on the reply, whose ``code`` is that of its first line.
3. A line that is not a reply line ends the reply in progress, and is reported in it:
   the core never waits forever for a last line that cannot come.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

from harness.errors import HarnessError

_VALID_CODE = re.compile(r"[2-5][0-5][0-9]")
_SEPARATORS = (b" ", b"-", b"")  # the 4th octet of a reply line; "" when it is the code alone
_FIRST_DIGITS, _SECOND_DIGITS = b"2345", b"012345"  # rule 1


class ReplyLine(NamedTuple):  # a tuple: one is made per reply line, and tuples are cheap
    code: int | None  # None: not a reply line
    final: bool
    text: str
    error: str | None


def parse_reply_line(line: bytes) -> ReplyLine:
    """Parse one reply line given without its line ending."""
    digits, separator = line[:3], line[3:4]
    if len(digits) < 3 or not digits.isdigit() or separator not in _SEPARATORS:
        return ReplyLine(None, True, line.decode("utf-8", "surrogateescape"), "not a reply line")
    valid = digits[0] in _FIRST_DIGITS and digits[1] in _SECOND_DIGITS
    error = None if valid else f"reply code {digits.decode()} out of range"
    text = line[4:].decode("utf-8", "surrogateescape")
    return ReplyLine(int(digits), separator != b"-", text, error)


class ReplyBuilder:
    """Collects reply lines until the last one; ``add`` returns the finished reply's parts."""

    def __init__(self) -> None:
        self._lines: list[ReplyLine] = []

    @property
    def started(self) -> bool:
        return bool(self._lines)

    @property
    def code(self) -> int | None:
        """The code of the reply begun (that of its first line); None if none is."""
        return self._lines[0].code if self._lines else None

    def add(self, line: ReplyLine) -> tuple[int | None, tuple[str, ...], str | None] | None:
        self._lines.append(line)
        if not line.final:
            return None
        lines, self._lines = self._lines, []
        if len(lines) == 1:  # most replies: one code, its error the only one
            return line.code, (line.text,), line.error
        code = lines[0].code
        errors = [x.error for x in lines if x.error]
        codes = sorted({x.code for x in lines if x.code is not None})
        if len(codes) > 1:
            errors.append(f"inconsistent codes {'/'.join(map(str, codes))} in a multi-line reply")
        return code, tuple(x.text for x in lines), errors[0] if errors else None


def format_reply(code: int, text: str | Sequence[str] = "") -> bytes:
    """A reply with CRLF line endings; ``text`` is one line, or a list for a multi-line reply."""
    if not _VALID_CODE.fullmatch(str(code)):
        raise HarnessError(f"reply code {code!r} is not a valid SMTP code (200-559)")
    if isinstance(text, str) and "\r" not in text and "\n" not in text:  # most replies
        line = f"{code} {text}" if text else str(code)
        return f"{line}\r\n".encode("utf-8", "surrogateescape")
    lines = [text] if isinstance(text, str) else list(text) or [""]
    if any("\r" in t or "\n" in t for t in lines):
        raise HarnessError(f"reply text {lines!r} contains CR or LF")
    out = [f"{code}-{t}" for t in lines[:-1]]
    out.append(f"{code} {lines[-1]}" if lines[-1] else str(code))
    return "".join(f"{line}\r\n" for line in out).encode("utf-8", "surrogateescape")
