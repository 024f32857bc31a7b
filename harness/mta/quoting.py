"""Scenario names into MTA configuration languages: what each language can carry, and how.

Rules kept here (each measured against the real program: tests/test_mta_injection.py):
1. A scenario value (host name, HELO name, domain, user) reaches an MTA's configuration
   only through this module: checked against what that MTA's language can carry
   (``Carrier``; ``require`` refuses anything else with a one-line ``HarnessError`` naming
   the MTA, the kind of value, the value and why), then quoted for the place it lands in
   by the function named after that language.  Quoting a value that its carrier refused is
   our own bug: ``InternalError``.
2. Every language refuses control characters (C0 and DEL): a CR or LF starts a new
   directive in each of them, and a new line on the wire.  Lengths: RFC 5321 §4.5.3.1
   (a local part 64 octets, a domain 255), a host name 253 characters (RFC 1035 §2.3.4).
3. The languages:
   - m4 (Sendmail's sendmail.mc) rescans a macro's value every time it is expanded, so no
     quoting holds at every depth: no scenario value ever enters m4.  The m4 source holds
     placeholders (``cf_placeholders``), replaced in the generated sendmail.cf (``cf_fill``),
     where the values may hold no ``$`` (a macro reference) and no blank (a word break):
     host names, and user names of letters, digits, ``_`` and ``-`` between dots.
   - Exim replaces its builtin macros (``_HAVE_TLS``, ...) anywhere in a configuration line
     before the line is parsed, and expands ``$``, ``\\`` and ``${...}`` in expanded
     options and lists.  A value is written only into options that are not expanded and
     into lsearch keys, always double-quoted (``exim_string``): ``\\`` and ``"`` escaped,
     ``_`` written ``\\x5F`` so no macro name can match; lists and expansions refer to the
     values (``$primary_hostname``, ``lsearch;$config_dir/users``), never contain them.
   - Postfix expands ``$name``, ``${name}``, ``$(name)`` in main.cf values: ``$`` is
     written ``$$`` (``postfix_value``).  Postfix itself requires host names for myhostname
     and mydomain.  A table key ends at a blank, and a line starting with ``#`` is a
     comment.
   - OpenSMTPD: every value in smtpd.conf is a double-quoted string (``smtpd_string``):
     there ``\\"`` is a quote, and a backslash before a quote, blank or newline is dropped,
     so a value with a backslash is refused.  Its ``for domain`` strings match wildcards,
     so a domain must be a host name; the kernel hostname (64 octets) is its host name.
     A file-table key ends at a blank or ``:``; ``#`` first makes the line a comment.
4. Folders are never named by a user name: ``mailbox_folder`` gives one path component,
   the same for names equal but for case, distinct otherwise, whatever the name holds.
   Our own paths (the run folder, the unpacked trees) must be plain (``require_plain``):
   letters, digits and ``/._+-``, which need no quoting in the languages above but Exim's
   (its macros may start with ``_``: there a path is quoted, or named by ``$config_dir``).
5. A timeout (the ``timeouts`` knob) is one of our own numbers, never a scenario value:
   ``duration`` writes whole seconds as every one of these languages reads them ("5s").
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from harness.errors import HarnessError, InternalError

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = rf"{_LABEL}(?:\.{_LABEL})*"
_PLAIN = re.compile(r"/[A-Za-z0-9/._+-]*")
_CF_WORDS = re.compile(r"(?:[A-Za-z0-9/._+:-]+(?: [A-Za-z0-9/._+:-]+)*)?")  # rule 3
_FOLDER = re.compile(r"[a-z0-9][a-z0-9_+-]*(?:\.[a-z0-9_+-]+)*")
MAX_LENGTH = {"user": 64, "domain": 255, "host name": 253, "HELO name": 253}


@dataclass(frozen=True)
class Carrier:
    """What one configuration language can carry for one kind of value."""

    pattern: re.Pattern[str]
    why: str  # said of a value that does not match

    def refusal(self, value: str) -> str | None:
        return None if self.pattern.fullmatch(value) else self.why


def host_names(max_length: int = 253) -> Carrier:
    pattern = re.compile(rf"(?=.{{1,{max_length}}}$){_HOST_NAME}", re.DOTALL)
    return Carrier(pattern, f"only an RFC 1123 host name of at most {max_length} characters")


HOST_NAME = host_names()
ANY = Carrier(re.compile(r".+", re.DOTALL), "empty")  # what rule 2 leaves
CF_WORD = Carrier(
    re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*"),
    "only letters, digits, '_' and '-' between dots, a letter or digit first",
)
POSTFIX_KEY = Carrier(re.compile(r"[^\s#]\S*"), "a table key cannot hold a blank or start with #")
SMTPD_KEY = Carrier(
    re.compile(r"[^\s#:][^\s:]*"), "a table key cannot hold a blank or ':' or start with #"
)


def require(mta: str, kind: str, value: str, carrier: Carrier) -> None:
    """Rules 1 and 2: ``HarnessError`` unless ``mta``'s language can carry ``value``."""
    octets = len(value.encode())
    if _CONTROL.search(value):
        why = "a control character (CR, LF, NUL, ...) has a meaning in every configuration"
    elif octets > MAX_LENGTH[kind]:
        why = f"{octets} octets, more than {MAX_LENGTH[kind]}"
    else:
        why = carrier.refusal(value)
    if why:
        raise HarnessError(f"{mta}: {kind} {value!r}: {why}")


def require_plain(mta: str, path: object) -> None:
    """Rule 4: one of our own paths, usable unquoted everywhere."""
    if not _PLAIN.fullmatch(str(path)):
        raise HarnessError(
            f"{mta}: path {str(path)!r}: only an absolute path of letters, digits and "
            "'/._+-' can go into its configuration"
        )


def mailbox_folder(user: str) -> str:
    """Rule 4: the folder name for ``user``'s mailbox: the user name in lower case when it
    is a plain name, else ``=`` and its UTF-8 in hex (``=`` is never in a plain name)."""
    folded = user.lower()
    if _FOLDER.fullmatch(folded):
        return folded
    return "=" + folded.encode().hex()


# --- the languages (rule 3) -----------------------------------------------------------------
_EXIM_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "_": "\\x5F"})


def exim_string(value: str) -> str:
    """A double-quoted Exim string: not expanded where it is used (see rule 3)."""
    _refuse_control(value)
    return '"' + value.translate(_EXIM_ESCAPES) + '"'


def postfix_value(value: str) -> str:
    """A main.cf value that expands to exactly ``value``."""
    _refuse_control(value)
    return value.replace("$", "$$")


def smtpd_string(value: str) -> str:
    """A double-quoted smtpd.conf string."""
    _refuse_control(value)
    if "\\" in value:
        raise InternalError(f"smtpd.conf cannot carry a backslash: {value!r}")
    return '"' + value.replace('"', '\\"') + '"'


def duration(seconds: int) -> str:
    """A time in whole seconds as Postfix, Exim and sendmail.cf all read it ("5s"); only
    our own constants come here, so anything but 1 to 3600 is our bug."""
    if type(seconds) is not int or not 1 <= seconds <= 3600:
        raise InternalError(f"a timeout of {seconds!r} seconds")
    return f"{seconds}s"


def cf_placeholders(names: Iterable[str]) -> dict[str, str]:
    """Name -> a token that m4 passes through untouched: digits between ``@@``, so no m4
    word (a letter or ``_`` first) is in it, hence no macro; ``cf_fill`` replaces it."""
    return {name: f"@@{index}@@" for index, name in enumerate(names)}


def cf_fill(cf: str, tokens: dict[str, str], values: dict[str, str]) -> str:
    """``cf`` with each token replaced by its value, which must be sendmail.cf words
    (``_CF_WORDS``: no ``$``, no blank inside a word); a token m4 did not pass through, or
    a value that is not such words, is our own bug (rule 1)."""
    for name, value in values.items():
        if not _CF_WORDS.fullmatch(value):
            raise InternalError(f"sendmail.cf cannot carry {value!r} for {name}")
        if tokens[name] not in cf:
            raise InternalError(f"sendmail.cf: m4 did not pass {tokens[name]} through")
        cf = cf.replace(tokens[name], value)
    return cf


def _refuse_control(value: str) -> None:
    if _CONTROL.search(value):
        raise InternalError(f"a configuration value with a control character: {value!r}")
