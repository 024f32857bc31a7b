"""The grammars every scenario string is held to on load: one table, one check.

Rules kept here:

1. Every grammar refuses control characters (Unicode Cc: C0, DEL and C1, so CR, LF, NUL
   and HT too), surrogates and the line/paragraph separators U+2028/U+2029: nothing read
   from a scenario can end a line, in a configuration file, a command line or on the wire.
   Raw bytes are not a grammar: only the scenario keys that are raw by definition
   (``sender.script.raw``, ``receiver.replies.raw``) take them, and the loader keeps those
   out of everything but the scripted peers' sockets.
2. The grammars that reach the wire or an MTA's configuration are ASCII (RFC 5321 is; the
   scripted peers do not speak SMTPUTF8) and each has a length limit: the RFC's where it
   gives one, else a bound that keeps every line and file sane.
3. One table, ``RULES``: per grammar what it is called, the RFC section that defines it, its
   longest value, whether it is ASCII, and the function that finds the first thing wrong.
   ``problem`` returns that as text (with the character offset); ``require`` raises it as
   a one-line ``HarnessError`` naming the key: ``receiver.users[1]: "c3\\npo" is not a
   local part (RFC 5321 §4.1.2): control character U+000A at offset 2``.
4. The grammars (what the RFC allows, minus what the harness refuses on purpose):

   - domain (RFC 1123 §2.1, RFC 1035 §2.3.1): dot-separated labels of letters, digits and
     hyphens, 1-63 octets each, no hyphen first or last, at most 253 octets, no trailing
     dot, the last label not all digits (so a dotted quad is never a host name).
   - DNS name: a domain that may also hold ``_`` (service labels), may end in a dot and
     may end in digits (``2.0.192.in-addr.arpa`` style names are domains anyway).
   - local part (RFC 5321 §4.1.2): Dot-string, atoms of atext (RFC 5322 §3.2.3) joined by
     single dots, at most 64 octets (§4.5.3.1.1).  Quoted strings are refused.  Note that
     ``${run{x}}`` *is* a Dot-string (``$ { } /`` are atext): the MTA adapters quote.
   - mailbox (§4.1.2): local-part "@" domain, at most 254 octets (the 256-octet path of
     §4.5.3.1.3 less its angle brackets).  Address literals are refused: the harness
     routes mail by MX.  The reverse path is a mailbox or "" (the null path, §4.5.5).
   - HELO name (§4.1.1.1, §4.1.3): a domain or an address literal, ``[192.0.2.10]`` or
     ``[IPv6:2001:db8::10]``, holding a documentation address (rule 5).
   - lab host name: ``[a-z]`` then ``[a-z0-9-]``, no hyphen last, at most 15 characters,
     not ``lan``: it becomes the namespace name ``<lab id>-<host>``, and ``<lab id>-lan``
     is the lab's bridge (harness/lab/lab.py).  iproute2 would take 255 characters; 15
     keeps ``ip netns list`` and ``lab up`` readable (interfaces are ``p<i>``/``eth0``).
   - EHLO line (§4.1.1.1): ehlo-keyword (ALPHA / DIGIT, then also "-") followed by
     SP-separated ehlo-params of %d33-126, at most 506 octets (a 512-octet reply line,
     §4.5.3.1.5, less ``250-`` and CRLF).
   - DNS question: ``NAME TYPE`` with one space, NAME a DNS name without the trailing dot
     (the form the runner compares), TYPE a type mnemonic dnslib knows.
   - reply text (§4.2 textstring, without HT): printable ASCII, at most 506 octets.
   - command line (for ``sender.script.send``): printable ASCII, 1 to 4096 octets: enough
     for overlong-line probes (§4.5.3.1.4 says 512 with CRLF); beyond that, ``raw``.
   - argument (a script step's or reply rule's ``argument``), zone-file line: printable
     ASCII with their own bounds; prose (a description): any printable Unicode.
   - scenario name: ``[A-Za-z0-9]`` then ``[A-Za-z0-9._-]``, at most 64: it names the run
     folder (``runs/<name>-<time>``), so it can hold no ``/`` and cannot start with a dot.
   - path: any printable characters, at most 4096 (PATH_MAX).
   - enhanced status code (RFC 3463 §2): class "." subject "." detail, class 2, 4 or 5,
     subject and detail 1-3 digits; a prefix (``5``, ``5.1``) stands for a class or a
     subject.
5. Every IP address anywhere in a scenario is a documentation address, RFC 5737
   (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24) or RFC 3849 (2001:db8::/32):
   ``documentation_address`` is the one check, for hosts, glue, records, HELO literals and
   expectations alike, so nothing a lab host sends can be meant for the real internet.
"""

from __future__ import annotations

import ipaddress
import json
import re
import reprlib
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from harness.dns.zones import qtype_code
from harness.errors import HarnessError

DOC_NETS = tuple(
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
)
DOC_NETS_TEXT = "192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24 and 2001:db8::/32"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ATEXT = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
)
_LDH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
_SEPARATORS = frozenset("\u2028\u2029")
_HOST_NAME = re.compile(r"[a-z](?:[a-z0-9-]*[a-z0-9])?")
_RESERVED_HOSTS = frozenset({"lan"})  # <lab id>-lan is the bridge's namespace
_EHLO_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_EHLO_PARAM = re.compile(r"[\x21-\x7e]+")
_SCENARIO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_STATUS = re.compile(r"[245](?:\.[0-9]{1,3}(?:\.[0-9]{1,3})?)?")
_SHOWN = 60  # characters of a bad value quoted in an error


class Grammar(Enum):
    DOMAIN = "domain"
    DNS_NAME = "dns name"
    LOCAL_PART = "local part"
    MAILBOX = "mailbox"
    REVERSE_PATH = "reverse path"
    HELO = "helo name"
    HOST_NAME = "host name"
    EHLO_LINE = "ehlo line"
    DNS_QUESTION = "dns question"
    DNS_TYPE = "dns type"
    REPLY_TEXT = "reply text"
    COMMAND_LINE = "command line"
    ARGUMENT = "argument"
    ZONE_LINE = "zone line"
    PROSE = "prose"
    SCENARIO_NAME = "scenario name"
    PATH = "path"
    STATUS = "status"
    ADDRESS = "address"


@dataclass(frozen=True)
class Rule:
    what: str  # "a local part": the end of "... is not <what>"
    cite: str  # where the grammar is defined
    most: int  # the longest value, in characters (octets for the ASCII ones)
    check: Callable[[str], str | None]  # the first thing wrong after rule 1 and 2, or None
    ascii: bool = True


# --- the grammar functions: each returns what is wrong (with an offset) or None -----------
def _labels(value: str, *, extra: frozenset[str] = frozenset(), start: int = 0) -> str | None:
    """Dot-separated LDH labels (plus ``extra`` characters), RFC 1123 §2.1 / RFC 1035."""
    offset = start
    for label in value.split("."):
        if not label:
            return f"empty label at offset {offset}"
        if len(label) > 63:
            return f"label at offset {offset} is {len(label)} octets; at most 63"
        for i, ch in enumerate(label):
            if ch not in _LDH and ch not in extra:
                return f"{_char(ch)} at offset {offset + i} is not a letter, digit or hyphen"
        if label[0] == "-" or label[-1] == "-":
            return f"label at offset {offset} starts or ends with a hyphen"
        offset += len(label) + 1
    return None


def _domain(value: str, start: int = 0) -> str | None:
    if value.endswith("."):
        return "a trailing dot (write the name without it)"
    if len(value) > 253:
        return f"{len(value)} octets; at most 253"
    wrong = _labels(value, start=start)
    if wrong is None and value.rpartition(".")[2].isdigit():
        return "the last label is all digits (RFC 1123 §2.1: a host name is never a number)"
    return wrong


def _dns_name(value: str) -> str | None:
    name = value[:-1] if value.endswith(".") and len(value) > 1 else value
    if len(name) > 253:
        return f"{len(name)} octets; at most 253"
    return _labels(name, extra=frozenset("_"))


def _local_part(value: str, start: int = 0) -> str | None:
    if value.startswith('"'):
        return "a quoted string (only the Dot-string form is accepted)"
    if len(value) > 64:
        return f"{len(value)} octets; at most 64 (RFC 5321 §4.5.3.1.1)"
    offset = start
    for atom in value.split("."):
        if not atom:
            return f"empty atom at offset {offset} (a dot first, last or twice)"
        for i, ch in enumerate(atom):
            if ch not in ATEXT:
                return f"{_char(ch)} at offset {offset + i} is not atext"
        offset += len(atom) + 1
    return None


def _mailbox(value: str) -> str | None:
    local, at, domain = value.rpartition("@")
    if not at:
        return "no @ (a mailbox is local-part@domain)"
    if not local:
        return "an empty local part"
    if domain.startswith("["):
        return "an address literal (mail is routed by MX here: give a domain)"
    return _local_part(local) or _domain(domain, start=len(local) + 1)


def _reverse_path(value: str) -> str | None:
    return None if value == "" else _mailbox(value)


def _helo(value: str) -> str | None:
    if not value.startswith("["):
        return _domain(value)
    if not value.endswith("]"):
        return "an address literal without its closing ]"
    inner = value[1:-1]
    tag, colon, v6 = inner.partition(":")
    try:
        if colon and tag.lower() == "ipv6":
            address: IPAddress = ipaddress.IPv6Address(v6)
        else:
            address = ipaddress.IPv4Address(inner)
    except ValueError:
        return "not an address literal ([192.0.2.10] or [IPv6:2001:db8::10], §4.1.3)"
    return _not_documentation(address)


def _host_name(value: str) -> str | None:
    if not _HOST_NAME.fullmatch(value):
        return "not [a-z] then lower-case letters, digits and hyphens (no hyphen last)"
    if value in _RESERVED_HOSTS:
        return f"{value!r} is reserved (the lab's bridge namespace is <lab id>-{value})"
    return None


def _ehlo_line(value: str) -> str | None:
    keyword, *params = value.split(" ")
    if not _EHLO_KEYWORD.fullmatch(keyword):
        return f"the keyword {keyword!r} is not ALPHA/DIGIT then ALPHA/DIGIT/-"
    offset = len(keyword) + 1
    for param in params:
        if not _EHLO_PARAM.fullmatch(param):
            return f"empty parameter at offset {offset} (one space between parameters)"
        offset += len(param) + 1
    return None


def _dns_type(value: str) -> str | None:
    try:
        qtype_code(value)
    except HarnessError:
        return "not a DNS type dnslib knows"
    return None


def _dns_question(value: str) -> str | None:
    name, space, qtype = value.partition(" ")
    if not space or " " in qtype or not qtype:
        return "not NAME TYPE (one space between)"
    if name.endswith("."):
        return "the name ends in a dot (write it without: the form the questions are compared in)"
    return _dns_name(name) or _dns_type(qtype)


def _printable(value: str) -> str | None:
    return None  # rules 1 and 2 are the whole grammar


def _command_line(value: str) -> str | None:
    return "empty (send a bare CRLF with raw)" if not value else None


def _scenario_name(value: str) -> str | None:
    if not _SCENARIO_NAME.fullmatch(value):
        return "not a letter or digit, then letters, digits, '.', '_' or '-'"
    return None


def _status(value: str) -> str | None:
    if not _STATUS.fullmatch(value):
        return "not class[.subject[.detail]] with class 2, 4 or 5 and 1-3 digits each"
    return None


def _address(value: str) -> str | None:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return "not an IP address"
    return _not_documentation(address)


def _not_documentation(address: IPAddress) -> str | None:
    if any(address in net for net in DOC_NETS):
        return None
    return f"{address} is outside the documentation networks {DOC_NETS_TEXT}"


RFC5321 = "RFC 5321"
RULES: dict[Grammar, Rule] = {
    Grammar.DOMAIN: Rule("a domain", "RFC 1123 §2.1", 253, _domain),
    Grammar.DNS_NAME: Rule("a DNS name", "RFC 1035 §2.3.1, RFC 2181 §11", 254, _dns_name),
    Grammar.LOCAL_PART: Rule("a local part", f"{RFC5321} §4.1.2", 64, _local_part),
    Grammar.MAILBOX: Rule("a mailbox", f"{RFC5321} §4.1.2", 254, _mailbox),
    Grammar.REVERSE_PATH: Rule("a reverse path", f"{RFC5321} §4.1.2", 254, _reverse_path),
    Grammar.HELO: Rule("a HELO name", f"{RFC5321} §4.1.1.1, §4.1.3", 253, _helo),
    Grammar.HOST_NAME: Rule("a lab host name", "harness/lab/lab.py namespaces", 15, _host_name),
    Grammar.EHLO_LINE: Rule("an EHLO line", f"{RFC5321} §4.1.1.1", 506, _ehlo_line),
    Grammar.DNS_QUESTION: Rule("a DNS question", "NAME TYPE", 270, _dns_question),
    Grammar.DNS_TYPE: Rule("a DNS type", "RFC 1035 §3.2.2", 16, _dns_type),
    Grammar.REPLY_TEXT: Rule("reply text", f"{RFC5321} §4.2", 506, _printable),
    Grammar.COMMAND_LINE: Rule("a command line", f"{RFC5321} §4.1.1", 4096, _command_line),
    Grammar.ARGUMENT: Rule("an argument", f"{RFC5321} §4.1.1", 512, _printable),
    Grammar.ZONE_LINE: Rule("a zone-file line", "RFC 1035 §5.1", 4096, _printable),
    Grammar.PROSE: Rule("text", "printable Unicode", 2000, _printable, ascii=False),
    Grammar.SCENARIO_NAME: Rule("a scenario name", "runs/<name>-<time>", 64, _scenario_name),
    Grammar.PATH: Rule("a path", "PATH_MAX", 4096, _printable, ascii=False),
    Grammar.STATUS: Rule("an enhanced status code", "RFC 3463 §2", 11, _status),
    Grammar.ADDRESS: Rule("a documentation address", "RFC 5737, RFC 3849", 64, _address),
}


def problem(grammar: Grammar, value: str) -> str | None:
    """What is wrong with ``value`` as ``grammar`` (the first thing, with its offset)."""
    rule = RULES[grammar]
    for i, ch in enumerate(value):
        if _is_control(ch):
            return f"control character U+{ord(ch):04X} at offset {i}"
        if rule.ascii and ord(ch) > 0x7E:
            return f"{_char(ch)} at offset {i} is not printable ASCII"
    if len(value) > rule.most:
        unit = "octets" if rule.ascii else "characters"
        return f"{len(value)} {unit}; at most {rule.most}"
    return rule.check(value)


def require(grammar: Grammar, value: str, where: str) -> str:
    """``value`` if it is in ``grammar``; else a ``HarnessError`` naming ``where``."""
    wrong = problem(grammar, value)
    if wrong is not None:
        rule = RULES[grammar]
        raise HarnessError(f"{where}: {shown(value)} is not {rule.what} ({rule.cite}): {wrong}")
    return value


def documentation_address(value: str, where: str, version: int | None = None) -> IPAddress:
    """The address ``value``, if it is a documentation address (of IP ``version``)."""
    require(Grammar.ADDRESS, value, where)
    address = ipaddress.ip_address(value)
    if version is not None and address.version != version:
        raise HarnessError(f"{where}: {shown(value)} is not an IPv{version} address")
    return address


def shown(value: object) -> str:
    """A value as it appears in an error: quoted, escaped to one line, cut short."""
    text = json.dumps(value) if isinstance(value, str) else _REPR.repr(value)
    if len(text) <= _SHOWN:
        return text
    return text[: _SHOWN - 4] + ('..."' if isinstance(value, str) else "...")


_REPR = reprlib.Repr()  # nested values: two levels deep, a few items each
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 2, _SHOWN, _SHOWN


def _is_control(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Cs") or ch in _SEPARATORS


def _char(ch: str) -> str:
    return f"{ch!r}" if ch.isprintable() and ord(ch) < 0x7F else f"U+{ord(ch):04X}"
