"""Scenario files: what a run builds, does and expects, as TOML (stdlib tomllib).

Rules kept here:
- A scenario is untrusted data, validated completely on load, before any lab exists: every
  key's type (strictly: a bool is not an integer, an array of tables holds tables), every
  string against its grammar (``harness.grammar``: no control character anywhere but in the
  raw-bytes keys), every number against its bounds, every address a documentation
  address, the zones folder, ``dns.records``, ``dns.glue``, ``dns.faults``, script points,
  reply rules and the names a real MTA is given (its adapter's ``accepts``).  Whatever is
  wrong is one ``HarnessError`` line: the file, the dotted key (TOML-quoted where needed,
  ``dns.glue."mail.receiver.com"``), what is wrong.  Nothing downstream re-validates.
- An optional top-level ``schema_version`` (before any section) names the version of this
  format the file is written in (``harness.formats``: absent, it is 1); a version this
  release does not read is one line, exit 2, before anything else is looked at.
- Every key has a default, so an empty file is the seed exchange; paths are relative to the
  scenario file.  ``load_scenario(None)`` is the embedded seed (fixtures/scenarios/seed.toml).
- The schema is the table below: one ``Key`` per key, its type, its default, the rule its
  value keeps (a grammar, a range of integers, a set of choices) and how many items an
  array may hold.  The README's table of limits is this table's numbers.

Sections: ``[scenario]`` name/description; ``[[hosts]]`` the topology (default: the
seed's three hosts; ``harness.lab.topology.HOST_KEYS``); ``[dns]`` zones, zones without
glue, extra records (each one complete record), ``[[dns.faults]]``, and ``glue``: name ->
address served as that name's only glue in MX/NS answers instead of its own A/AAAA (a trap
address: inconsistent glue); ``[receiver]`` the scripted receiver with
``[[receiver.replies]]``; ``[sender]`` the scripted sender with ``[[sender.script]]``;
``[network]`` the link faults (``[[network.faults]]``: ``harness.lab.impair.LinkFault``,
at most one per direction of a host's link) and the ``seed`` of their random choices;
``[expect]`` per-recipient outcomes, DNS questions asked and not asked, SYN targets,
contents sent, messages stored per mailbox, DSNs, the golden capture.  ``mta = "postfix"``
(any name ``harness.mta.base.adapters()`` knows) in ``[receiver]`` or ``[sender]`` puts
that real MTA in the role instead of the scripted peer: then only the keys in ``MTA_KEYS``
apply to that side, and the other side stays scripted.  ``family`` ("ipv4", the default,
or "any") is the addresses a side uses: the scripted receiver listens on IPv4 only or on
every address of its host; the scripted sender knows IPv4 only; an MTA gets it as a knob
(``harness.mta.base.KNOBS``), as does an MTA receiver's ``vrfy`` ("check" or "disabled")
and an MTA sender's ``timeouts`` ("default" or "short"; the scripted sender's one timeout
is ``timeout_ms``, and it ignores ``timeouts``).

Reply rules (``[[receiver.replies]]``) answer a verb the core knows, ``BDAT LAST``,
``<greeting>`` or ``<end-of-data>``; the first rule that matches wins, so a rule that an
earlier one always answers first (same ``on``, ``argument`` and ``nth``, or an earlier rule
for the same ``on`` without an argument or without an ``nth``) is refused.  ``nth = 2``
answers only the second time ``on`` is answered in a session (the second RCPT).  Script
steps (``[[sender.script]]``) edit a point the scripted sender reaches (``SCRIPT_POINTS``),
with an ``argument`` it really sends.
"""

from __future__ import annotations

import copy
import ipaddress
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dnslib import QTYPE, RR

from harness.dns.faults import ACTIONS, FaultRule
from harness.dns.zones import ZoneSet, parse_records, wire_problem
from harness.errors import HarnessError, Unsupported
from harness.formats import KEY as VERSION_KEY
from harness.formats import Format, version_of
from harness.grammar import RULES, Grammar, documentation_address, problem, require, shown
from harness.lab.impair import Direction, LinkFault, rate_bits
from harness.lab.topology import HOST_KEYS, Topology, default_topology, topology_from_dict
from harness.mta.base import KNOBS, adapters
from harness.smtp.commands import VERBS
from harness.smtp.policy import CHOICES as RECEIVER_CHOICES
from harness.smtp.receiver import ReceiverConfig, ReplyRule
from harness.smtp.sender import MESSAGE, POSITIONS, ScriptStep, SenderConfig
from harness.smtp.state import END_OF_DATA, GREETING

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SEED_SCENARIO = FIXTURES / "scenarios" / "seed.toml"

# --- bounds (the README's table of limits) ------------------------------------------------
PORT = range(1, 65536)
DELAY_MS = range(0, 60001)  # every delay and pause: at most a minute
TIMEOUT_MS = range(1, 600001)  # at most 10 minutes (RFC 5321 §4.5.3.2 asks up to 10 for DATA)
COUNT = range(0, 1001)  # messages, contents
COUNT_FROM_1 = range(1, 1001)  # a reply rule's nth
FAULT_TIMES = range(1, 1001)
SEED = range(0, 2**32)
MAX_LINK_FAULTS = 32
MAX_SCENARIO_FILE = 2**20  # octets of a scenario file
MAX_MESSAGE = 32 * 2**20  # octets of sender.message
MAX_RAW = 16 * 2**20  # octets of one raw probe
CAPTURE_SUFFIXES = (".pcap", ".pcapng")
PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": "pcap",
    b"\xa1\xb2\xc3\xd4": "pcap",
    b"\x4d\x3c\xb2\xa1": "pcap",
    b"\xa1\xb2\x3c\x4d": "pcap",
    b"\x0a\x0d\x0d\x0a": "pcapng",
}


@dataclass(frozen=True)
class Array:
    """A TOML array whose items are all of one type."""

    item: type


STRINGS, TABLES, NONE = Array(str), Array(dict), type(None)
REQUIRED, OMIT = "REQUIRED", "OMIT"  # no default: the key must be given / stays absent
Kind = type | Array
Check = Grammar | range | tuple | Callable[[Any], str | None] | None


@dataclass(frozen=True)
class Key:
    """One key: its TOML type(s), its default, the rule its value (each item of an array of
    strings) keeps, and how many items an array or table may hold."""

    kind: Kind | tuple[Kind, ...]
    default: Any
    rule: Check = None
    most: int | None = None
    least: int = 0


def _raw_problem(value: str) -> str | None:
    """Raw bytes as a TOML string ("\\r", "\\n", "\\u0000" escapes): latin-1 maps 1:1."""
    if len(value) > MAX_RAW:
        return f"{len(value)} octets; at most {MAX_RAW}"
    for i, ch in enumerate(value):
        if ord(ch) > 0xFF:
            return f"character U+{ord(ch):04X} at offset {i} is not a single byte"
    return None


def _fault_type_problem(value: str) -> str | None:
    """A DNS type mnemonic (RFC 1035 §3.2.2), or "*" for every type."""
    return None if value == "*" else problem(Grammar.DNS_TYPE, value)


def _fraction_problem(value: float) -> str | None:
    if 0 <= value <= 1:  # NaN and the infinities are outside too
        return None
    return f"{value} is not a fraction from 0 to 1"


def _rate_problem(value: str) -> str | None:
    bits = rate_bits(value)
    return bits if isinstance(bits, str) else None


def _reply_code_problem(code: int) -> str | None:
    """RFC 5321 §4.2: the first digit 2-5, the second 0-5 (what the core can send)."""
    if 200 <= code <= 559 and code // 10 % 10 <= 5:
        return None
    return f"{code} is not an SMTP reply code (RFC 5321 §4.2: 2-5, then 0-5, then a digit)"


SCHEMA: dict[str, dict[str, Key]] = {
    "scenario": {
        "name": Key(str, "unnamed", Grammar.SCENARIO_NAME),
        "description": Key(str, "", Grammar.PROSE),
    },
    "dns": {
        "zones": Key(str, str(FIXTURES / "zones"), Grammar.PATH),
        "no_glue": Key(STRINGS, [], Grammar.DNS_NAME, most=100),
        "records": Key(STRINGS, [], Grammar.ZONE_LINE, most=1000),
        "faults": Key(TABLES, [], most=100),
        "glue": Key(dict, {}, most=100),
    },
    "dns.faults": {
        "name": Key(str, REQUIRED, Grammar.DNS_NAME),
        "type": Key(str, REQUIRED, _fault_type_problem),  # a type mnemonic or "*"
        "action": Key(str, REQUIRED, ACTIONS),
        "ms": Key(int, OMIT, DELAY_MS),
        "times": Key(int, OMIT, FAULT_TIMES),
        "rcode": Key(str, OMIT, Grammar.ARGUMENT),
    },
    "network": {
        "faults": Key(TABLES, [], most=MAX_LINK_FAULTS),
        "seed": Key((int, NONE), None, SEED),  # None: a fresh one, recorded with the run
    },
    "network.faults": {
        "host": Key(str, REQUIRED, Grammar.HOST_NAME),
        "direction": Key(str, "both", tuple(Direction)),
        "delay_ms": Key(int, 0, DELAY_MS),
        "jitter_ms": Key(int, 0, DELAY_MS),
        "loss": Key((float, int), 0.0, _fraction_problem),
        "reorder": Key((float, int), 0.0, _fraction_problem),
        "duplicate": Key((float, int), 0.0, _fraction_problem),
        "rate": Key((str, NONE), None, _rate_problem),
    },
    "receiver": {
        "host": Key(str, "receiver", Grammar.HOST_NAME),
        "mta": Key((str, NONE), None),
        "family": Key(str, "ipv4", KNOBS["family"]),
        "port": Key(int, 25, PORT),
        "hostname": Key(str, "mail.receiver.com", Grammar.DOMAIN),
        "greeting": Key(str, "ESMTP smtp-harness", Grammar.REPLY_TEXT),
        "domains": Key(STRINGS, ["receiver.com"], Grammar.DOMAIN, most=100, least=1),
        "users": Key(STRINGS, ["c3po", "r2d2"], Grammar.LOCAL_PART, most=1000),
        "vrfy": Key(str, "check", RECEIVER_CHOICES["vrfy"]),
        "ptr_check": Key(str, "accept", RECEIVER_CHOICES["ptr_check"]),
        "ptr_at": Key(str, "helo", RECEIVER_CHOICES["ptr_at"]),
        "extensions": Key(
            STRINGS, ["PIPELINING", "8BITMIME", "SIZE 10240000"], Grammar.EHLO_LINE, most=100
        ),
        "bad_lines": Key(str, "reject", RECEIVER_CHOICES["bad_lines"]),
        # RFC 5321 §4.5.3.2 gives a server 5 minutes; a bounded, test-friendly default
        "timeout_ms": Key(int, 30000, TIMEOUT_MS),
        "replies": Key(TABLES, [], most=1000),
        "tls": Key(str, "off", KNOBS["tls"]),  # "offer": STARTTLS (RFC 3207)
        "certificate": Key(str, "good", KNOBS["certificate"]),  # what it gets wrong, if any
        # probes (RFC 3207 §4.2): raw bytes sent behind the 220 to STARTTLS, in its segment
        "starttls_inject": Key((str, NONE), None, _raw_problem),
        # what the client pipelined behind STARTTLS: "discard" (RFC 3207 §4.2) or "answer"
        # it inside TLS (the CVE-2011-0411 class: a peer built to fail the injection check)
        "starttls_plaintext": Key(str, "discard", ("discard", "answer")),
    },
    "receiver.replies": {
        "on": Key(str, REQUIRED),  # REPLY_ON, checked by _reply_on
        "argument": Key((str, NONE), None, Grammar.ARGUMENT),
        "code": Key((int, NONE), None, _reply_code_problem),
        "text": Key((str, STRINGS, NONE), None, Grammar.REPLY_TEXT, most=100),
        "raw": Key((str, NONE), None, _raw_problem),
        "delay_ms": Key(int, 0, DELAY_MS),
        "line_pause_ms": Key(int, 0, DELAY_MS),
        "close": Key(bool, False),
        "reset": Key(bool, False),  # an RST (SO_LINGER 0) once the reply was acknowledged
        "stop_reading": Key(bool, False),  # a zero window until the idle timeout
        "nth": Key((int, NONE), None, COUNT_FROM_1),
    },
    "sender": {
        "host": Key(str, "sender", Grammar.HOST_NAME),
        "mta": Key((str, NONE), None),
        "family": Key(str, "ipv4", KNOBS["family"]),
        "helo": Key((str, NONE), None, Grammar.HELO),
        "ehlo": Key(bool, False),
        "half_close": Key(bool, False),  # our FIN right after QUIT (RFC 5321 §4.1.1.10)
        "timeouts": Key(str, "default", KNOBS["timeouts"]),  # an MTA's (timeout_ms: ours)
        "vrfy": Key(bool, True),
        "mail_from": Key(str, "luke@sender.com", Grammar.REVERSE_PATH),
        "recipients": Key(
            STRINGS,
            ["aibo@receiver.com", "c3po@receiver.com", "r2d2@receiver.com"],
            Grammar.MAILBOX,
            most=1000,
            least=1,
        ),
        "message": Key(str, str(FIXTURES / "messages" / "seed.eml"), Grammar.PATH),
        "port": Key(int, 25, PORT),
        "use_glue": Key(bool, True),
        "timeout_ms": Key(int, 10000, TIMEOUT_MS),
        "script": Key(TABLES, [], most=1000),
        "starttls": Key(str, "never", KNOBS["starttls"]),  # the policy (harness.mta.base)
        "ehlo_after_tls": Key((str, NONE), None, Grammar.HELO),  # None: the helo name again
        # probes (RFC 3207 §4.2): raw bytes sent behind STARTTLS\r\n, in its segment
        "starttls_inject": Key((str, NONE), None, _raw_problem),
        # what the server sent behind its 220: "discard" (RFC 3207 §4.2) or "keep" it as
        # replies inside TLS (a peer built to fail the client-side injection check)
        "starttls_plaintext": Key(str, "discard", ("discard", "keep")),
    },
    "sender.script": {
        "at": Key(str, REQUIRED),  # SCRIPT_POINTS, checked by _script_point
        "position": Key(str, "before", POSITIONS),
        "argument": Key((str, NONE), None, Grammar.ARGUMENT),
        "send": Key((str, NONE), None, Grammar.COMMAND_LINE),
        "raw": Key((str, NONE), None, _raw_problem),
        "pause_ms": Key(int, 0, DELAY_MS),
        "reply": Key(bool, True),
    },
    "expect": {
        "delivered": Key((STRINGS, NONE), None, Grammar.MAILBOX, most=1000),
        "rejected": Key((STRINGS, NONE), None, Grammar.MAILBOX, most=1000),
        "deferred": Key((STRINGS, NONE), None, Grammar.MAILBOX, most=1000),
        "dns_questions": Key((STRINGS, NONE), None, Grammar.DNS_QUESTION, most=1000),
        "golden": Key((str, NONE), None, Grammar.PATH),
        "syns_only_to": Key((STRINGS, NONE), None, Grammar.ADDRESS, most=100),
        "dns_not_asked": Key((STRINGS, NONE), None, Grammar.DNS_QUESTION, most=1000),
        "contents_sent": Key((int, NONE), None, COUNT),
        "stored": Key((dict, NONE), None, most=1000),  # mailbox -> count, by _stored
        "dsns": Key((TABLES, NONE), None, most=1000),
    },
    "expect.dsns": {
        "recipient": Key(str, REQUIRED, Grammar.MAILBOX),
        "action": Key(str, REQUIRED, ("failed", "delayed")),
        "status": Key(str, REQUIRED, Grammar.STATUS),
    },
}
TOP_LEVEL = ("scenario", "hosts", "dns", "receiver", "sender", "expect", "network")
OUTCOMES = ("delivered", "rejected", "deferred")
# the keys that still mean something when a real MTA plays the role
MTA_KEYS = {
    "receiver": {
        *("host", "mta", "port", "hostname", "domains", "users", "vrfy", "family"),
        *("tls", "certificate"),
    },
    "sender": {
        *("host", "mta", "helo", "mail_from", "recipients", "message", "family"),
        *("starttls", "timeouts"),
    },
}
KNOB_KEYS = {
    "receiver": ("vrfy", "family", "tls", "certificate"),
    "sender": ("family", "starttls", "timeouts"),
}  # -> Site.extra
# what a reply rule can answer: the core's verbs (harness/smtp/commands.py), the last BDAT
# chunk (Command.key) and the two events (harness/smtp/state.py)
REPLY_ON = (*VERBS, "BDAT LAST", GREETING, END_OF_DATA)
EVENTS = (GREETING, END_OF_DATA)
# where the scripted sender can be edited (harness/smtp/sender.py: each _command and the
# message) -> the [sender] switch it needs, or None: reached in every session that gets there
SCRIPT_POINTS: dict[str, str | None] = {
    "HELO": None,  # HELO, or the fallback after EHLO's 500/502
    "EHLO": "ehlo",
    "VRFY": "vrfy",
    "MAIL": None,
    "RCPT": None,
    "DATA": None,
    "QUIT": None,
    MESSAGE: None,
}
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class ExpectedDsn:
    """A DSN the sender's MTA must produce (RFC 3464): for whom, what, with which status
    (an RFC 3463 code, or a class / class.subject prefix of one)."""

    recipient: str
    action: str  # "failed" or "delayed"
    status: str  # "5", "5.1", "5.1.10"


@dataclass
class Expectations:
    """What must hold after the run; None means "not checked"."""

    delivered: list[str] | None = None
    rejected: list[str] | None = None
    deferred: list[str] | None = None
    dns_questions: list[str] | None = None  # "NAME TYPE", in this order, as a subsequence
    golden: Path | None = None  # the capture whose ladder the run's must match
    syns_only_to: list[str] | None = None  # the only addresses SYNs may go to; []: none
    dns_not_asked: list[str] | None = None  # "NAME TYPE" questions that must not be asked
    contents_sent: int | None = None  # message contents on the wire
    stored: dict[str, int] | None = None  # mailbox -> messages; unlisted ones stay empty
    dsns: list[ExpectedDsn] | None = None


@dataclass
class Scenario:
    path: Path | None
    name: str
    description: str
    topology: Topology
    zones_dir: Path
    no_glue: list[str]
    dns_records: list[str]
    dns_faults: list[dict]
    dns_glue: dict[str, str]  # name -> the only address its glue gives
    receiver_host: str
    receiver_port: int
    receiver: ReceiverConfig
    sender_host: str
    sender: SenderConfig
    expect: Expectations = field(default_factory=Expectations)
    receiver_mta: str | None = None  # a real MTA instead of the scripted receiver
    sender_mta: str | None = None  # a real MTA instead of the scripted sender
    families: dict[str, str] = field(default_factory=dict)  # role -> "ipv4" or "any"
    mta_knobs: dict[str, dict[str, str]] = field(default_factory=dict)  # role -> Site.extra
    data: dict = field(default_factory=dict)  # the TOML-shaped data it was built from
    text: bytes | None = None  # the file's octets, when it was loaded from a file
    link_faults: list[LinkFault] = field(default_factory=list)  # [[network.faults]]
    network_seed: int | None = None  # None: the run draws one (and records it)


def load_scenario(path: Path | str | None) -> Scenario:
    """The scenario file at ``path`` (None: the embedded seed), validated."""
    path = Path(path) if path is not None else SEED_SCENARIO
    data = _file_octets(path)
    scenario = scenario_from_data(_toml(data, str(path)), path)
    scenario.text = data
    return scenario


def scenario_data(path: Path) -> dict:
    """The TOML document of the scenario file at ``path``, parsed but not yet validated
    (``scenario_from_data`` does that), or one line saying why there is none."""
    return _toml(_file_octets(path), str(path))


def scenario_from_text(text: str, path: Path) -> Scenario:
    """A scenario from TOML text, validated as a file's would be; ``path`` anchors relative
    paths and names the scenario in errors (the pytest plugin gives the test's file)."""
    data = text.encode("utf-8", "surrogatepass")
    scenario = scenario_from_data(_toml(data, str(path)), path)
    scenario.text = data
    return scenario


def _file_octets(path: Path) -> bytes:
    """The first octets of the scenario file at ``path`` (one more than a scenario may
    have, so ``_toml`` can refuse a larger one), or one line saying why there are none."""
    where = str(path)
    try:
        with path.open("rb") as f:
            return f.read(MAX_SCENARIO_FILE + 1)
    except FileNotFoundError:
        raise HarnessError(f"{where}: no such scenario file") from None
    except OSError as exc:
        raise HarnessError(f"{where}: cannot read: {exc.strerror or exc}") from None


def _toml(data: bytes, where: str) -> dict:
    """The TOML document in ``data``, or one line saying why it is none."""
    capture = PCAP_MAGIC.get(data[:4])
    if capture:
        raise HarnessError(
            f"{where}: not a scenario (TOML text): it looks like a capture ({capture}); "
            f"to read it: smtp-harness ladder {where}"
        )
    if len(data) > MAX_SCENARIO_FILE:
        raise HarnessError(f"{where}: not a scenario: larger than {MAX_SCENARIO_FILE} octets")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HarnessError(
            f"{where}: not a scenario (TOML text): byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start} is not UTF-8"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise HarnessError(f"{where}: not valid TOML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise HarnessError(f"{where}: not valid TOML: nested too deeply") from None


def scenario_from_data(data: dict, path: Path) -> Scenario:
    """A scenario from already-parsed TOML data; ``path`` anchors relative paths and names
    the scenario in errors (checks build their scenarios this way)."""
    if isinstance(data, dict):
        version_of(data, Format.SCENARIO, str(path))
    try:
        return _build(path, data)
    except Unsupported as exc:
        raise exc.within(str(path)) from None
    except HarnessError as exc:
        raise HarnessError(f"{path}: {exc}") from None


def _build(path: Path, data: dict) -> Scenario:
    if not isinstance(data, dict):
        raise HarnessError(f"(document): expected a table of sections, got {shown(data)}")
    unknown = sorted((k for k in data if k not in (*TOP_LEVEL, VERSION_KEY)), key=str)
    if unknown:
        known = ", ".join(TOP_LEVEL)
        raise HarnessError(
            f"{_key('', unknown[0])}: unknown section (known: {known}; and the key {VERSION_KEY})"
        )
    meta = _table(data.get("scenario", {}), "scenario")
    topology = _topology(data)
    network = _table(data.get("network", {}), "network")
    dns = _table(data.get("dns", {}), "dns")
    zones_dir = _existing(path, dns["zones"], "dns.zones", directory=True)
    zones = _zones(zones_dir)
    given = {role: data.get(role, {}) for role in ("receiver", "sender")}
    sides = {role: _table(section, role) for role, section in given.items()}
    for role, section in sides.items():
        if section["host"] not in {h.name for h in topology.hosts}:
            raise HarnessError(f"{role}.host: no host named {section['host']!r} in the topology")
    mtas = {role: _mta(given[role], role) for role in sides}
    _check_families(sides, mtas)
    _check_starttls(sides, mtas)
    recv, send = sides["receiver"], sides["sender"]
    sender = _sender_config(path, send, topology.host(send["host"]).fqdn)
    scenario = Scenario(
        path=path,
        name=meta["name"],
        description=meta["description"],
        topology=topology,
        zones_dir=zones_dir,
        no_glue=_no_glue(dns["no_glue"], zones),
        dns_records=_records(dns["records"], zones),
        dns_faults=[_fault(f, i) for i, f in enumerate(dns["faults"])],
        dns_glue=_glue(dns["glue"], zones),
        receiver_host=recv["host"],
        receiver_port=recv["port"],
        receiver=_receiver_config(recv),
        sender_host=send["host"],
        sender=sender,
        expect=_expectations(path, _table(data.get("expect", {}), "expect"), sender),
        receiver_mta=mtas["receiver"],
        sender_mta=mtas["sender"],
        families={role: section["family"] for role, section in sides.items()},
        mta_knobs={role: _knobs(sides[role], role, name) for role, name in mtas.items() if name},
        data=data,
        link_faults=_link_faults(network["faults"], topology),
        network_seed=network["seed"],
    )
    check_mta_sides(scenario)
    return scenario


# --- the schema, applied --------------------------------------------------------------------
def _table(given: Any, name: str, where: str | None = None) -> dict:
    """Validate one table against SCHEMA[name]; return it with defaults filled in."""
    where = where or name
    if not isinstance(given, dict):
        raise HarnessError(f"{where}: expected a table, got {shown(given)}")
    schema = SCHEMA[name]
    unknown = sorted((k for k in given if k not in schema), key=str)
    if unknown:
        raise HarnessError(f"{_key(where, unknown[0])}: unknown key (known: {', '.join(schema)})")
    out = {}
    for key, spec in schema.items():
        here = f"{where}.{key}"
        if key in given:
            _value(given[key], spec, here)
            out[key] = given[key]
        elif spec.default == REQUIRED:
            raise HarnessError(f"{here}: required")
        elif spec.default != OMIT:
            out[key] = copy.copy(spec.default)
    return out


def _value(value: Any, spec: Key, where: str) -> None:
    """The type of ``value``, its size, then its rule (each item's, for an array)."""
    _typed(value, spec.kind, where)
    if isinstance(value, list | dict):
        most = spec.most if spec.most is not None else len(value)
        if not spec.least <= len(value) <= most:
            raise HarnessError(f"{where}: {len(value)} items; give {spec.least} to {most}")
    if value is None or spec.rule is None or isinstance(value, dict):
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _rule(item, spec.rule, f"{where}[{i}]")
    else:
        _rule(value, spec.rule, where)


def _typed(value: Any, kind: Kind | tuple[Kind, ...], where: str) -> None:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    for k in kinds:
        if isinstance(k, Array) and isinstance(value, list):
            for i, item in enumerate(value):
                if not _is_a(item, k.item):
                    raise HarnessError(
                        f"{where}[{i}]: expected {_NAMES[k.item]}, got {shown(item)}"
                    )
            return
        if not isinstance(k, Array) and _is_a(value, k):
            return
    wanted = " or ".join(_kind_name(k) for k in kinds)
    raise HarnessError(f"{where}: expected {wanted}, got {shown(value)}")


def _is_a(value: Any, kind: type) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    dict: "a table",
    NONE: "none",
}
_ARRAY_NAMES = {str: "an array of strings", dict: "an array of tables"}


def _kind_name(kind: Kind) -> str:
    return _ARRAY_NAMES[kind.item] if isinstance(kind, Array) else _NAMES[kind]


def _rule(value: Any, rule: Check, where: str) -> None:
    if isinstance(rule, Grammar):
        require(rule, value, where)
    elif isinstance(rule, range):
        if value not in rule:
            raise HarnessError(f"{where}: {value} is not in {rule.start}..{rule.stop - 1}")
    elif isinstance(rule, tuple):
        _one_of(value, rule, where)
    elif rule is not None:
        wrong = rule(value)
        if wrong is not None:
            raise HarnessError(f"{where}: {wrong}")


def _one_of(value: str, allowed: tuple[str, ...], where: str, why: str = "") -> None:
    if value not in allowed:
        wanted = " or ".join(f'"{a}"' for a in allowed)
        raise HarnessError(f"{where}: {shown(value)}{why}: expected {wanted}")


def _key(where: str, name: Any) -> str:
    """``where`` and one more key, the way TOML writes it (quoted unless bare)."""
    bare = isinstance(name, str) and _BARE_KEY.fullmatch(name)
    part = name if bare else shown(name if isinstance(name, str) else str(name))
    return f"{where}.{part}" if where else part


def _existing(path: Path, value: str, where: str, directory: bool = False) -> Path:
    p = Path(value)
    try:
        p = p if p.is_absolute() else (path.parent / p).resolve()
        found = p.is_dir() if directory else p.is_file()
    except (OSError, RuntimeError) as exc:
        raise HarnessError(f"{where}: {shown(str(p))}: cannot be used: {exc}") from None
    if not found:
        raise HarnessError(f"{where}: {p}: {'is not a directory' if directory else 'no such file'}")
    return p


# --- link faults ------------------------------------------------------------------------
_IMPAIRMENTS = ("delay_ms", "jitter_ms", "loss", "reorder", "duplicate", "rate")


def _link_faults(tables: list, topology: Topology) -> list[LinkFault]:
    """``[[network.faults]]``: each one a fault on one host's link, at most one fault for
    each direction of a link."""
    faults, taken = [], {}
    for i, given in enumerate(tables):
        where = f"network.faults[{i}]"
        fault = _link_fault(_table(given, "network.faults", where), where, topology)
        for direction in fault.directions:
            if (fault.host, direction) in taken:
                earlier = taken[fault.host, direction]
                raise HarnessError(
                    f"{where}: direction {str(direction)!r} of host {fault.host!r} already has "
                    f"a fault (network.faults[{earlier}]); give one fault a direction"
                )
            taken[fault.host, direction] = i
        faults.append(fault)
    return faults


def _link_fault(t: dict, where: str, topology: Topology) -> LinkFault:
    if t["host"] not in {h.name for h in topology.hosts}:
        raise HarnessError(f"{where}.host: no host named {t['host']!r} in the topology")
    if not any(t[k] for k in _IMPAIRMENTS):
        raise HarnessError(f"{where}: no impairment: give one of {', '.join(_IMPAIRMENTS)}")
    if t["jitter_ms"] > t["delay_ms"]:
        raise HarnessError(f"{where}.jitter_ms: {t['jitter_ms']} exceeds delay_ms {t['delay_ms']}")
    if t["reorder"] and not t["delay_ms"]:
        raise HarnessError(
            f"{where}.reorder: needs delay_ms (a reordered packet skips the delay the others wait)"
        )
    if t["duplicate"] and t["direction"] != "out":
        raise HarnessError(
            f'{where}.duplicate: only with direction "out" (copies are made as a packet '
            "leaves its host, where the capture on the bridge sees them)"
        )
    numbers = {k: float(t[k]) for k in ("loss", "reorder", "duplicate")}
    rate = None if t["rate"] is None else rate_bits(t["rate"])
    return LinkFault(
        t["host"], Direction(t["direction"]), t["delay_ms"], t["jitter_ms"], **numbers,
        rate_bits=rate,
    )  # fmt: skip


# --- hosts and DNS ----------------------------------------------------------------------
def _topology(data: dict) -> Topology:
    if "hosts" not in data:
        return default_topology()
    return topology_from_dict({"hosts": data["hosts"]}, where="hosts")


def _zones(directory: Path) -> ZoneSet:
    """The zones folder, loaded as the DNS server will load it (each record checked)."""
    zones = ZoneSet()
    try:
        zones.load_dir(directory, check=_record_check)
    except HarnessError as exc:
        raise HarnessError(f"dns.zones: {exc}") from None
    return zones


def _record_check(where: str, rr: RR) -> None:
    """A record can be served, and its address (A/AAAA) is a documentation address."""
    wrong = wire_problem(rr)
    if wrong is not None:
        raise HarnessError(f"{where}: {rr.rname} {QTYPE.get(rr.rtype)}: {wrong}")
    if rr.rtype in (QTYPE.A, QTYPE.AAAA):
        documentation_address(str(rr.rdata), where)


def _records(entries: list[str], zones: ZoneSet) -> list[str]:
    """``dns.records``: each one complete record inside a zone of ``dns.zones``; together
    they must load as the runner loads them (one text, replacing the RRsets they name)."""
    records = [_record(text, f"dns.records[{i}]", zones) for i, text in enumerate(entries)]
    if not records:
        return entries
    together = parse_records("\n".join(entries), source="dns.records")
    if together != records:
        raise HarnessError("dns.records: the entries do not stand alone (a parenthesis left open)")
    try:
        zones.add(together, replace=True)
    except HarnessError as exc:  # ZoneSet.add names its source "<records>": the key says it
        raise HarnessError(f"dns.records: {str(exc).removeprefix('<records>: ')}") from None
    return entries


def _record(text: str, where: str, zones: ZoneSet) -> RR:
    if text.lstrip().startswith("$"):
        raise HarnessError(f"{where}: {shown(text)}: directives belong in zone files")
    try:
        found = parse_records(text, source=where)
    except HarnessError as exc:  # "<where>:1: ...": an entry is one line
        raise HarnessError(str(exc).replace(f"{where}:1:", f"{where}:", 1)) from None
    if len(found) != 1:
        raise HarnessError(f"{where}: {shown(text)} holds {len(found)} records; give one")
    rr = found[0]
    _record_check(where, rr)
    if rr.rtype == QTYPE.SOA:
        raise HarnessError(f"{where}: an SOA record can only change in its zone file")
    if zones.find(rr.rname) is None:
        raise HarnessError(f"{where}: {rr.rname} is outside every zone in dns.zones")
    return rr


def _no_glue(origins: list[str], zones: ZoneSet) -> list[str]:
    for i, origin in enumerate(origins):
        try:
            zones.set_glue(origin, False)
        except HarnessError as exc:
            raise HarnessError(f"dns.no_glue[{i}]: {exc} (from dns.zones)") from None
    return list(origins)


def _glue(table: dict, zones: ZoneSet) -> dict[str, str]:
    """``[dns] glue``: each name and the one address its glue gives instead of its own."""
    for name, address in table.items():
        where = _key("dns.glue", name)
        require(Grammar.DNS_NAME, name, where)
        _typed(address, str, where)
        documentation_address(address, where)
        try:
            zones.serve_glue(name, address)
        except HarnessError as exc:
            raise HarnessError(f"{where}: {exc}") from None
    return dict(table)


def _fault(table: Any, index: int) -> dict:
    where = f"dns.faults[{index}]"
    _table(table, "dns.faults", where)
    FaultRule.from_dict(table, where=where)  # validate now; the runner builds it again
    return table


# --- the two sides ----------------------------------------------------------------------
def _check_families(sides: dict[str, dict], mtas: dict[str, str | None]) -> None:
    if not mtas["sender"] and sides["sender"]["family"] != "ipv4":
        raise HarnessError("sender.family: the scripted sender knows IPv4 only (A records)")


# keys that act only once STARTTLS is answered 220: (role, key, its default)
_TLS_ONLY = (
    ("receiver", "starttls_inject", None),
    ("receiver", "starttls_plaintext", "discard"),
    ("sender", "ehlo_after_tls", None),
    ("sender", "starttls_inject", None),
    ("sender", "starttls_plaintext", "discard"),
)


def _check_starttls(sides: dict[str, dict], mtas: dict[str, str | None]) -> None:
    """The scripted peers' STARTTLS keys: the sender's policy needs EHLO (STARTTLS is an
    EHLO extension, RFC 3207 §4), and a key that acts inside TLS needs TLS on its side."""
    send = sides["sender"]
    if not mtas["sender"] and send["starttls"] != "never" and not send["ehlo"]:
        raise HarnessError(
            f"sender.starttls: {shown(send['starttls'])} needs EHLO (STARTTLS is offered in "
            "the EHLO reply, RFC 3207 §4): set sender.ehlo = true"
        )
    off = {"receiver": sides["receiver"]["tls"] == "off", "sender": send["starttls"] == "never"}
    switch = {"receiver": 'receiver.tls is "off"', "sender": 'sender.starttls is "never"'}
    for role, key, default in _TLS_ONLY:
        if not mtas[role] and off[role] and sides[role][key] != default:
            raise HarnessError(f"{role}.{key}: never acts: {switch[role]}")


def _knobs(section: dict, role: str, mta: str) -> dict[str, str]:
    """The MTA's knobs (``Site.extra``) from the side's keys, each checked for ``mta``."""
    knobs = {key: section[key] for key in KNOB_KEYS[role]}
    for key, value in knobs.items():
        _one_of(value, KNOBS[key], f"{role}.{key}", f" for {mta}")
    return knobs


def _mta(given: dict, role: str) -> str | None:
    """The MTA named by ``[role] mta``, with only the keys that apply to it."""
    name = given.get("mta")
    if name is None:
        return None
    known = adapters()
    if name not in known:
        raise HarnessError(
            f"{role}.mta: no adapter named {shown(name)} (known: {', '.join(known)})"
        )
    extra = sorted(set(given) - MTA_KEYS[role])
    if extra:
        raise HarnessError(f"{role}.{extra[0]}: applies to the scripted {role}, not to {name}")
    return name


def check_mta_sides(scenario: Scenario) -> None:
    """A scenario's real MTAs (at most one side), each able to take its names (a replay
    that puts one in a loaded scenario checks it here too)."""
    if scenario.receiver_mta and scenario.sender_mta:
        raise HarnessError("receiver.mta and sender.mta: one side must be a scripted peer")
    if scenario.sender_mta:
        _check_mta_sender(scenario.sender_mta, scenario)
    for role, name in (("receiver", scenario.receiver_mta), ("sender", scenario.sender_mta)):
        if name is None:
            continue
        try:
            knobs, offers = scenario.mta_knobs[role], _scripted_receiver_offers_tls(scenario)
            adapters()[name].accepts(role, *site_names(scenario, role), knobs, offers)
        except Unsupported as exc:
            raise exc.within(f"{role}.mta") from None
        except HarnessError as exc:
            raise HarnessError(f"{role}.mta: {name} cannot take these names: {exc}") from None


def _scripted_receiver_offers_tls(scenario: Scenario) -> bool:
    """Whether the scripted receiver (the MTA sender's peer) offers STARTTLS."""
    return scenario.receiver_mta is None and scenario.receiver.tls == "offer"


def _check_mta_sender(mta: str, scenario: Scenario) -> None:
    if scenario.receiver_port != 25:
        raise HarnessError(f"receiver.port: {mta} as sender delivers to port 25")
    if not scenario.sender.mail_from:
        raise HarnessError(
            f"sender.mail_from: {mta} as sender needs a mailbox (luke's: its bounces go "
            "there), not the null path"
        )
    if scenario.sender.helo_name.startswith("["):
        raise HarnessError(f"sender.helo: {mta} takes it as its host name: give a domain")


def site_names(scenario: Scenario, role: str) -> tuple[str, str, tuple[str, ...]]:
    """(hostname, domain, users) an MTA in ``role`` is given: the receiver's hostname, first
    domain and users; the sender's HELO name and the domain and local part of its
    reverse path (its bounces stay in that mailbox)."""
    if role == "receiver":
        conf = scenario.receiver
        return conf.hostname, conf.domains[0], conf.users
    local, _, domain = scenario.sender.mail_from.rpartition("@")
    return scenario.sender.helo_name, domain, (local,)


def _receiver_config(t: dict) -> ReceiverConfig:
    line = f"220 {t['hostname']} {t['greeting']}"
    if len(line) > 510:
        raise HarnessError(
            f"receiver.greeting: the greeting line {shown(line)} is {len(line)} octets; "
            "at most 510 with its CRLF 512 (RFC 5321 §4.5.3.1.5)"
        )
    return ReceiverConfig(
        hostname=t["hostname"],
        greeting=t["greeting"],
        domains=tuple(t["domains"]),
        users=tuple(t["users"]),
        vrfy=t["vrfy"],
        ptr_check=t["ptr_check"],
        ptr_at=t["ptr_at"],
        extensions=tuple(t["extensions"]),
        bad_lines=t["bad_lines"],
        rules=_reply_rules(t["replies"]),
        timeout=t["timeout_ms"] / 1000,
        tls=t["tls"],
        certificate=t["certificate"],
        starttls_inject=_raw(t["starttls_inject"]),
        starttls_plaintext=t["starttls_plaintext"],
    )


def _reply_rules(tables: list) -> list[ReplyRule]:
    """Every rule, each one able to fire: the first rule that matches wins (``ReplyRule``
    order in ``Receiver._rule``), so one that an earlier rule always beats is refused."""
    rules: list[ReplyRule] = []
    first: dict[tuple[str, str | None, int | None], int] = {}
    for i, table in enumerate(tables):
        where = f"receiver.replies[{i}]"
        rule = _reply_rule(table, where)
        argument = None if rule.argument is None else rule.argument.lower()
        beats = [(rule.on, a, n) for a in (None, argument) for n in (None, rule.nth)]
        earlier = next((first[k] for k in beats if k in first), None)
        if earlier is not None:
            raise HarnessError(
                f"{where}: never fires: receiver.replies[{earlier}] answers every {rule.on} "
                f"{'with this argument ' if argument else ''}"
                f"{f'the {rule.nth}. time ' if rule.nth else ''}first (the first match wins)"
            )
        first.setdefault((rule.on, argument, rule.nth), i)
        rules.append(rule)
    return rules


def _reply_rule(given: Any, where: str) -> ReplyRule:
    t = _table(given, "receiver.replies", where)
    on = _reply_on(t["on"], f"{where}.on")
    text = t["text"]
    if on in EVENTS and t["argument"] is not None:
        raise HarnessError(f"{where}.argument: {on} has no argument: the rule could never fire")
    if t["reset"] and t["close"]:
        raise HarnessError(f"{where}.reset: give close (a FIN) or reset (an RST), not both")
    if t["raw"] is not None and (t["code"] is not None or text is not None):
        raise HarnessError(f"{where}.raw: give raw, or code and text, not both")
    if t["line_pause_ms"] and not (isinstance(text, list) and len(text) >= 2):
        raise HarnessError(
            f"{where}.line_pause_ms: pauses go between the lines of a multi-line reply: "
            "give text as a list of 2 or more lines"
        )
    return ReplyRule(
        on=on,
        argument=t["argument"],
        code=t["code"],
        text=tuple(text) if isinstance(text, list) else text,
        raw=_raw(t["raw"]),
        delay=t["delay_ms"] / 1000,
        line_pause=t["line_pause_ms"] / 1000,
        close=t["close"],
        reset=t["reset"],
        stop_reading=t["stop_reading"],
        nth=t["nth"],
    )


def _reply_on(value: str, where: str) -> str:
    for known in REPLY_ON:
        if known.upper() == value.upper():
            return known
    event = f"<{value.lower()}>"
    hint = f' (did you mean "{event}"?)' if event in EVENTS else ""
    raise HarnessError(
        f"{where}: {shown(value)} is no command or event the receiver answers{hint}; expected "
        f"a verb ({', '.join(VERBS)}), BDAT LAST, {GREETING} or {END_OF_DATA}"
    )


def _sender_config(path: Path, t: dict, fqdn: str | None) -> SenderConfig:
    recipients = t["recipients"]
    _unique(recipients, "sender.recipients")
    config = SenderConfig(
        recipients=tuple(recipients),
        message=_message(path, t["message"]),
        mail_from=t["mail_from"],
        helo_name=t["helo"] if t["helo"] is not None else fqdn or "localhost",
        ehlo=t["ehlo"],
        vrfy=t["vrfy"],
        port=t["port"],
        use_glue=t["use_glue"],
        timeout=t["timeout_ms"] / 1000,
        half_close=t["half_close"],
        starttls=t["starttls"],
        ehlo_after_tls=t["ehlo_after_tls"],
        starttls_inject=_raw(t["starttls_inject"]),
        starttls_plaintext=t["starttls_plaintext"],
    )
    # steps are checked against what this sender sends (an MTA as sender has none: MTA_KEYS)
    config.script = [_script_step(s, i, config) for i, s in enumerate(t["script"])]
    return config


def _message(path: Path, value: str) -> bytes:
    message = _existing(path, value, "sender.message")
    try:
        size = message.stat().st_size
        if size > MAX_MESSAGE:
            raise HarnessError(f"sender.message: {message} is {size} octets; at most {MAX_MESSAGE}")
        return message.read_bytes()
    except OSError as exc:
        raise HarnessError(f"sender.message: {message}: cannot read: {exc.strerror}") from None


def _unique(addresses: list[str], where: str) -> None:
    seen: dict[str, int] = {}
    for i, address in enumerate(addresses):
        first = seen.setdefault(address.lower(), i)
        if first != i:
            raise HarnessError(f"{where}[{i}]: {shown(address)} is {where}[{first}] again")


def _script_step(given: Any, index: int, config: SenderConfig) -> ScriptStep:
    where = f"sender.script[{index}]"
    t = _table(given, "sender.script", where)
    at = _script_point(t["at"], f"{where}.at", config)
    if t["argument"] is not None:
        _script_argument(at, t["argument"], f"{where}.argument", config)
    if t["send"] is not None and t["raw"] is not None:
        raise HarnessError(f"{where}: give send or raw, not both")
    return ScriptStep(
        at=at,
        position=t["position"],
        argument=t["argument"],
        send=_raw(t["raw"]) if t["raw"] is not None else t["send"],
        pause=t["pause_ms"] / 1000,
        reply=t["reply"],
    )


def _script_point(value: str, where: str, config: SenderConfig) -> str:
    point = next((p for p in SCRIPT_POINTS if p.upper() == value.upper()), None)
    if point is None:
        raise HarnessError(
            f"{where}: {shown(value)} is no point the scripted sender reaches; expected one "
            f"of {', '.join(SCRIPT_POINTS)}"
        )
    switch = SCRIPT_POINTS[point]
    if switch is not None and not getattr(config, switch):
        raise HarnessError(f"{where}: the sender never sends {point}: sender.{switch} is false")
    return point


def _script_argument(point: str, argument: str, where: str, config: SenderConfig) -> None:
    """The argument must be one the sender sends at ``point``, or the step never fires."""
    sends = {
        "HELO": [config.helo_name],
        "EHLO": [config.helo_name, *filter(None, [config.ehlo_after_tls])],
        "VRFY": [r.partition("@")[0] for r in config.recipients],
        # the null path is matched by the whole argument (Sender._command: match or argument)
        "MAIL": [config.mail_from or "FROM:<>"],
        "RCPT": list(config.recipients),
    }.get(point)
    if sends is None:
        raise HarnessError(f"{where}: {point} has no argument: the step could never fire")
    if argument.lower() not in {s.lower() for s in sends}:
        raise HarnessError(
            f"{where}: {shown(argument)} never fires: the sender's {point} arguments are "
            f"{', '.join(sends)}"
        )


def _raw(value: str | None) -> bytes | None:
    """A raw key's bytes (checked by ``_raw_problem``)."""
    return None if value is None else value.encode("latin-1")


# --- expectations -------------------------------------------------------------------------
def _expectations(path: Path, t: dict, sender: SenderConfig) -> Expectations:
    recipients = {r.lower() for r in sender.recipients}
    expected: dict[str, str] = {}
    for status in OUTCOMES:
        for i, rcpt in enumerate(t[status] or []):
            where = f"expect.{status}[{i}]"
            if rcpt.lower() not in recipients:
                raise HarnessError(f"{where}: {shown(rcpt)} is not one of sender.recipients")
            other = expected.setdefault(rcpt.lower(), status)
            if other != status:
                raise HarnessError(f"{where}: {shown(rcpt)} is expected {other} too")
    if t["golden"] is not None:
        golden = Path(t["golden"])
        if golden.suffix not in CAPTURE_SUFFIXES:  # `run --update-golden` writes this file
            wanted = " or ".join(CAPTURE_SUFFIXES)
            raise HarnessError(f"expect.golden: {shown(t['golden'])} is not a {wanted} file")
        t["golden"] = golden if golden.is_absolute() else (path.parent / golden).resolve()
    if t["syns_only_to"] is not None:
        t["syns_only_to"] = [str(ipaddress.ip_address(a)) for a in t["syns_only_to"]]
    if t["stored"] is not None:
        t["stored"] = _stored(t["stored"])
    if t["dsns"] is not None:
        t["dsns"] = [_dsn(d, f"expect.dsns[{i}]", recipients) for i, d in enumerate(t["dsns"])]
    return Expectations(**t)


def _stored(table: dict) -> dict[str, int]:
    seen: dict[str, str] = {}
    for mailbox, count in table.items():
        where = _key("expect.stored", mailbox)
        require(Grammar.MAILBOX, mailbox, where)
        _value(count, Key(int, 0, COUNT), where)
        first = seen.setdefault(mailbox.lower(), mailbox)
        if first != mailbox:
            raise HarnessError(f"{where}: the same mailbox as {_key('expect.stored', first)}")
    return dict(table)


def _dsn(given: Any, where: str, recipients: set[str]) -> ExpectedDsn:
    t = _table(given, "expect.dsns", where)
    if t["recipient"].lower() not in recipients:
        raise HarnessError(
            f"{where}.recipient: {shown(t['recipient'])} is not one of sender.recipients"
        )
    if t["status"].startswith("2"):
        raise HarnessError(
            f"{where}.status: {shown(t['status'])}: class 2 reports success (RFC 3463 §2); "
            f"a {t['action']} DSN carries 4 or 5"
        )
    return ExpectedDsn(t["recipient"], t["action"], t["status"])


# --- the README's table of scenario keys (tools/scenario_keys.py writes it) ----------------
# the keys whose values are checked outside SCHEMA's rules, and what they take
CHECKED_ELSEWHERE = {
    "receiver.mta": "an MTA adapter: " + ", ".join(f"`{name}`" for name in adapters()),
    "sender.mta": "an MTA adapter: " + ", ".join(f"`{name}`" for name in adapters()),
    "dns.glue": "DNS name -> documentation address",
    "receiver.replies.on": "a verb, `BDAT LAST`, `<greeting>` or `<end-of-data>`",
    "sender.script.at": ", ".join(f"`{point}`" for point in SCRIPT_POINTS),
    "expect.stored": f"mailbox -> count ({COUNT.start}-{COUNT.stop - 1})",
}


def schema_markdown() -> str:
    """Every scenario key as a markdown table: its key, type, default and the values it
    takes (from ``SCHEMA``, ``HOST_KEYS`` and ``CHECKED_ELSEWHERE``)."""
    rows = ["| Key | Type | Default | Values |", "|---|---|---|---|"]
    for section in ("scenario", "hosts", *(name for name in SCHEMA if name != "scenario")):
        if section == "hosts":
            rows += [_host_row(key, *spec) for key, spec in HOST_KEYS.items()]
            continue
        for key, spec in SCHEMA[section].items():
            dotted = f"{section}.{key}"
            kind = _type_column(spec.kind)
            values = CHECKED_ELSEWHERE.get(dotted) or _values(spec)
            rows.append(f"| `{dotted}` | {kind} | {_default(spec.default)} | {values} |")
    return "\n".join(rows) + "\n"


def _host_row(key: str, required: bool, rule: Grammar | int) -> str:
    values = _values(Key(str, None, rule)) if isinstance(rule, Grammar) else (
        f"an IPv{rule} documentation address ({'RFC 5737' if rule == 4 else 'RFC 3849'})"
    )  # fmt: skip
    return f"| `hosts.{key}` | a string | {'required' if required else 'unset'} | {values} |"


def _type_column(kind: Kind | tuple[Kind, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_kind_name(k) for k in kinds if k is not NONE)


def _default(value: Any) -> str:
    if value == REQUIRED:
        return "required"
    if value is None or value == OMIT:
        return "unset"
    if isinstance(value, str) and value.startswith(str(FIXTURES)):
        value = str(Path(value).relative_to(FIXTURES.parent))  # the same on every machine
    text = {True: "true", False: "false"}.get(value) if isinstance(value, bool) else None
    return f"`{text or _toml_value(value)}`"


def _toml_value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + value + '"' if isinstance(value, str) else str(value)


def _values(spec: Key) -> str:
    rule = spec.rule
    if isinstance(rule, Grammar):
        found = RULES[rule]
        said = f"{found.what} ({found.cite}), at most {found.most} characters"
    elif isinstance(rule, range):
        said = f"{rule.start}-{rule.stop - 1}"
    elif isinstance(rule, tuple):
        said = ", ".join(f"`{choice}`" for choice in rule)
    elif callable(rule):
        said = (rule.__doc__ or "").split("\n")[0].strip().rstrip(".")
    else:
        said = ""
    if spec.most is not None:
        count = f"{spec.least} to {spec.most} items" if spec.least else f"at most {spec.most} items"
        said = f"{count}{'; each ' + said if said else ''}"
    return said.replace("|", "\\|")
