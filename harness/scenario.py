"""Scenario files: what a run builds, does and expects, as TOML (stdlib tomllib).

Rules kept here:
- A scenario is validated completely on load; an unknown key, a wrong type, a missing file or
  an impossible value is a ``HarnessError`` naming the file and the dotted key (and the line,
  when the TOML parser reports one).  Nothing downstream re-validates.
- Every key has a default, so an empty file is the seed exchange; paths are relative to the
  scenario file.  ``load_scenario(None)`` is the embedded seed (fixtures/scenarios/seed.toml).
- The schema is the table below: one line per key, its type and its default.

Sections: ``[scenario]`` name/description; ``[[hosts]]`` the topology (default: the
seed's three hosts); ``[dns]`` zones, zones without glue, extra records, ``[[dns.faults]]``,
and ``glue``: name -> address served as that name's only glue in MX/NS answers instead of
its own A/AAAA (a trap address: inconsistent glue); ``[receiver]`` the scripted receiver
with ``[[receiver.replies]]``; ``[sender]`` the scripted sender with ``[[sender.script]]``;
``[expect]`` per-recipient outcomes and DNS questions.  ``mta = "postfix"`` (any name
``harness.mta.base.adapters()`` knows) in ``[receiver]`` or ``[sender]`` puts that real MTA
in the role instead of the scripted peer: then only the keys in ``MTA_KEYS`` apply to that
side, and the other side stays scripted.  ``family`` ("ipv4", the default, or "any") is the
addresses a side uses: the scripted receiver listens on IPv4 only or on every address of
its host; the scripted sender knows IPv4 only; an MTA gets it as a knob
(``harness.mta.base.KNOBS``), as does an MTA receiver's ``vrfy`` ("check" or "disabled").
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.lab.topology import Topology, default_topology, topology_from_dict
from harness.mta.base import KNOBS
from harness.smtp.receiver import ReceiverConfig, ReplyRule
from harness.smtp.sender import ScriptStep, SenderConfig

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SEED_SCENARIO = FIXTURES / "scenarios" / "seed.toml"

_STRS = list  # a TOML array of strings

# table -> key -> (expected type(s), default); "REQUIRED" marks keys without a default
SCHEMA: dict[str, dict[str, tuple[type | tuple[type, ...], Any]]] = {
    "scenario": {"name": (str, "unnamed"), "description": (str, "")},
    "dns": {
        "zones": (str, str(FIXTURES / "zones")),
        "no_glue": (_STRS, []),
        "records": (_STRS, []),
        "faults": (list, []),
        "glue": (dict, {}),
    },
    "receiver": {
        "host": (str, "receiver"),
        "mta": ((str, type(None)), None),
        "family": (str, "ipv4"),
        "port": (int, 25),
        "hostname": (str, "mail.receiver.com"),
        "greeting": (str, "ESMTP smtp-harness"),
        "domains": (_STRS, ["receiver.com"]),
        "users": (_STRS, ["c3po", "r2d2"]),
        "vrfy": (str, "check"),
        "ptr_check": (str, "accept"),
        "ptr_at": (str, "helo"),
        "extensions": (_STRS, ["PIPELINING", "8BITMIME", "SIZE 10240000"]),
        "bad_lines": (str, "reject"),
        "replies": (list, []),
    },
    "receiver.replies": {
        "on": (str, "REQUIRED"),
        "argument": ((str, type(None)), None),
        "code": ((int, type(None)), None),
        "text": ((str, list, type(None)), None),
        "raw": ((str, type(None)), None),
        "delay_ms": (int, 0),
        "close": (bool, False),
    },
    "sender": {
        "host": (str, "sender"),
        "mta": ((str, type(None)), None),
        "family": (str, "ipv4"),
        "helo": ((str, type(None)), None),
        "ehlo": (bool, False),
        "vrfy": (bool, True),
        "mail_from": (str, "luke@sender.com"),
        "recipients": (_STRS, ["aibo@receiver.com", "c3po@receiver.com", "r2d2@receiver.com"]),
        "message": (str, str(FIXTURES / "messages" / "seed.eml")),
        "port": (int, 25),
        "use_glue": (bool, True),
        "timeout_ms": (int, 10000),
        "script": (list, []),
    },
    "sender.script": {
        "at": (str, "REQUIRED"),
        "position": (str, "before"),
        "argument": ((str, type(None)), None),
        "send": ((str, type(None)), None),
        "raw": ((str, type(None)), None),
        "pause_ms": (int, 0),
        "reply": (bool, True),
    },
    "expect": {
        "delivered": ((_STRS, type(None)), None),
        "rejected": ((_STRS, type(None)), None),
        "deferred": ((_STRS, type(None)), None),
        "dns_questions": ((_STRS, type(None)), None),
        "golden": ((str, type(None)), None),
    },
}
TOP_LEVEL = {"scenario", "hosts", "dns", "receiver", "sender", "expect"}
# the keys that still mean something when a real MTA plays the role
MTA_KEYS = {
    "receiver": {"host", "mta", "port", "hostname", "domains", "users", "vrfy", "family"},
    "sender": {"host", "mta", "helo", "mail_from", "recipients", "message", "family"},
}
KNOB_KEYS = {"receiver": ("vrfy", "family"), "sender": ("family",)}  # -> Site.extra


@dataclass
class Expectations:
    """What must hold after the run; None means "not checked"."""

    delivered: list[str] | None = None
    rejected: list[str] | None = None
    deferred: list[str] | None = None
    dns_questions: list[str] | None = None  # "NAME TYPE", in this order, as a subsequence
    golden: Path | None = None  # the capture whose ladder the run's must match


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


def load_scenario(path: Path | str | None) -> Scenario:
    path = Path(path) if path is not None else SEED_SCENARIO
    where = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HarnessError(f"{where}: no such scenario file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HarnessError(f"{where}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise HarnessError(f"{where}: not valid TOML: {exc}") from None
    return scenario_from_data(data, path)


def scenario_from_data(data: dict, path: Path) -> Scenario:
    """A scenario from already-parsed TOML data; ``path`` anchors relative paths and names
    the scenario in errors (checks build their scenarios this way)."""
    try:
        return _build(path, data)
    except HarnessError as exc:
        raise HarnessError(f"{path}: {exc}") from None


def _build(path: Path, data: dict) -> Scenario:
    unknown = set(data) - TOP_LEVEL
    if unknown:
        raise HarnessError(f"unknown section [{sorted(unknown)[0]}]")
    meta = _table(data.get("scenario", {}), "scenario")
    dns = _table(data.get("dns", {}), "dns")
    zones = _existing(path, dns["zones"], "dns.zones", directory=True)
    topology = _topology(data)
    recv = _table(data.get("receiver", {}), "receiver")
    send = _table(data.get("sender", {}), "sender")
    sides = {"receiver": recv, "sender": send}
    for role, section in sides.items():
        if section["host"] not in {h.name for h in topology.hosts}:
            raise HarnessError(f"{role}.host: no host named {section['host']!r} in the topology")
    mtas = {role: _mta(data, role) for role in sides}
    _check_families(sides, mtas)
    scenario = Scenario(
        path=path,
        name=meta["name"],
        description=meta["description"],
        topology=topology,
        zones_dir=zones,
        no_glue=list(_strings(dns["no_glue"], "dns.no_glue")),
        dns_records=dns["records"],
        dns_faults=[_fault(f, i) for i, f in enumerate(dns["faults"])],
        dns_glue=_glue(dns["glue"]),
        receiver_host=recv["host"],
        receiver_port=_port(recv["port"], "receiver.port"),
        receiver=_receiver_config(recv),
        sender_host=send["host"],
        sender=_sender_config(path, send, topology.host(send["host"]).fqdn),
        expect=_expectations(path, _table(data.get("expect", {}), "expect")),
        receiver_mta=mtas["receiver"],
        sender_mta=mtas["sender"],
        families={role: section["family"] for role, section in sides.items()},
        mta_knobs={role: _knobs(sides[role], role, name) for role, name in mtas.items() if name},
    )
    _check_mta_sides(scenario)
    return scenario


def _check_families(sides: dict[str, dict], mtas: dict[str, str | None]) -> None:
    for role, section in sides.items():
        _one_of(section["family"], KNOBS["family"], f"{role}.family")
    if not mtas["sender"] and sides["sender"]["family"] != "ipv4":
        raise HarnessError("sender.family: the scripted sender knows IPv4 only (A records)")


def _knobs(section: dict, role: str, mta: str) -> dict[str, str]:
    """The MTA's knobs (``Site.extra``) from the side's keys, each checked for ``mta``."""
    knobs = {key: section[key] for key in KNOB_KEYS[role]}
    for key, value in knobs.items():
        _one_of(value, KNOBS[key], f"{role}.{key}", f" for {mta}")
    return knobs


def _one_of(value: str, allowed: tuple[str, ...], where: str, why: str = "") -> None:
    if value not in allowed:
        wanted = " or ".join(f'"{a}"' for a in allowed)
        raise HarnessError(f"{where}: {value!r}{why}: expected {wanted}")


def _glue(table: dict) -> dict[str, str]:
    """``[dns] glue``: each name and the one address its glue gives instead of its own."""
    for name, address in table.items():
        try:
            ipaddress.ip_address(address if isinstance(address, str) else None)
        except ValueError:
            raise HarnessError(f"dns.glue.{name}: {address!r} is not an IP address") from None
    return dict(table)


def _mta(data: dict, role: str) -> str | None:
    """The MTA named by ``[role] mta``, with only the keys that apply to it."""
    given = data.get(role, {})
    name = given.get("mta")
    if name is None:
        return None
    from harness.mta.base import adapters

    known = adapters()
    if name not in known:
        raise HarnessError(f"{role}.mta: no adapter named {name!r} (known: {', '.join(known)})")
    extra = sorted(set(given) - MTA_KEYS[role])
    if extra:
        raise HarnessError(f"{role}.{extra[0]}: applies to the scripted {role}, not to {name}")
    return name


def _check_mta_sides(scenario: Scenario) -> None:
    if scenario.receiver_mta and scenario.sender_mta:
        raise HarnessError("receiver.mta and sender.mta: one side must be a scripted peer")
    if scenario.sender_mta and scenario.receiver_port != 25:
        raise HarnessError(f"receiver.port: {scenario.sender_mta} as sender delivers to port 25")


def _expectations(path: Path, t: dict) -> Expectations:
    if t["golden"] is not None:
        golden = Path(t["golden"])
        t["golden"] = golden if golden.is_absolute() else (path.parent / golden).resolve()
    return Expectations(**t)


def _table(given: Any, name: str, where: str | None = None) -> dict:
    """Validate one table against SCHEMA[name]; return it with defaults filled in."""
    where = where or name
    if not isinstance(given, dict):
        raise HarnessError(f"{where}: must be a table")
    schema = SCHEMA[name]
    unknown = set(given) - set(schema)
    if unknown:
        raise HarnessError(f"unknown key {where}.{sorted(unknown)[0]}")
    out = {}
    for key, (kind, default) in schema.items():
        if default == "REQUIRED" and key not in given:
            raise HarnessError(f"{where}.{key}: required")
        value = given.get(key, default)
        if not _is(value, kind):
            raise HarnessError(f"{where}.{key}: expected {_kind_name(kind)}, got {value!r}")
        out[key] = value
    return out


def _is(value: Any, kind: type | tuple[type, ...]) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        return False
    if isinstance(value, list) and list in kinds:
        return True
    return isinstance(value, kinds)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("none" if k is type(None) else k.__name__ for k in kinds)


def _strings(value: list, where: str) -> tuple[str, ...]:
    if not all(isinstance(v, str) for v in value):
        raise HarnessError(f"{where}: expected an array of strings")
    return tuple(value)


def _port(value: int, where: str) -> int:
    if not 1 <= value <= 65535:
        raise HarnessError(f"{where}: {value} is not a TCP port")
    return value


def _ms(value: int, where: str) -> float:
    if value < 0:
        raise HarnessError(f"{where}: must not be negative")
    return value / 1000


def _existing(path: Path, value: str, where: str, directory: bool = False) -> Path:
    p = Path(value)
    p = p if p.is_absolute() else (path.parent / p).resolve()
    if directory and not p.is_dir():
        raise HarnessError(f"{where}: {p} is not a directory")
    if not directory and not p.is_file():
        raise HarnessError(f"{where}: {p}: no such file")
    return p


def _topology(data: dict) -> Topology:
    if "hosts" not in data:
        return default_topology()
    if not isinstance(data["hosts"], list):
        raise HarnessError("hosts: must be an array of tables ([[hosts]])")
    return topology_from_dict({"hosts": data["hosts"]}, where="hosts")


def _fault(table: Any, index: int) -> dict:
    from harness.dns.faults import FaultRule

    where = f"dns.faults[{index}]"
    if not isinstance(table, dict):
        raise HarnessError(f"{where}: must be a table")
    FaultRule.from_dict(table, where=where)  # validate now; the runner builds it again
    return table


def _receiver_config(t: dict) -> ReceiverConfig:
    rules = [_reply_rule(r, i) for i, r in enumerate(t["replies"])]
    return ReceiverConfig(
        hostname=t["hostname"],
        greeting=t["greeting"],
        domains=_strings(t["domains"], "receiver.domains"),
        users=_strings(t["users"], "receiver.users"),
        vrfy=t["vrfy"],
        ptr_check=t["ptr_check"],
        ptr_at=t["ptr_at"],
        extensions=_strings(t["extensions"], "receiver.extensions"),
        bad_lines=t["bad_lines"],
        rules=rules,
    )


def _reply_rule(given: Any, index: int) -> ReplyRule:
    where = f"receiver.replies[{index}]"
    t = _table(given, "receiver.replies", where)
    if t["code"] is not None and not 200 <= t["code"] <= 599:
        raise HarnessError(f"{where}.code: {t['code']} is not an SMTP reply code")
    text = t["text"]
    if isinstance(text, list):
        text = _strings(text, f"{where}.text")
    return ReplyRule(
        on=t["on"],
        argument=t["argument"],
        code=t["code"],
        text=text,
        raw=_raw(t["raw"]),
        delay=_ms(t["delay_ms"], f"{where}.delay_ms"),
        close=t["close"],
    )


def _sender_config(path: Path, t: dict, fqdn: str | None) -> SenderConfig:
    message = _existing(path, t["message"], "sender.message")
    script = [_script_step(s, i) for i, s in enumerate(t["script"])]
    return SenderConfig(
        recipients=_strings(t["recipients"], "sender.recipients"),
        message=message.read_bytes(),
        mail_from=t["mail_from"],
        helo_name=t["helo"] or fqdn or "localhost",
        ehlo=t["ehlo"],
        vrfy=t["vrfy"],
        port=_port(t["port"], "sender.port"),
        use_glue=t["use_glue"],
        timeout=_ms(t["timeout_ms"], "sender.timeout_ms"),
        script=script,
    )


def _script_step(given: Any, index: int) -> ScriptStep:
    where = f"sender.script[{index}]"
    t = _table(given, "sender.script", where)
    if t["send"] is not None and t["raw"] is not None:
        raise HarnessError(f"{where}: give send or raw, not both")
    send = _raw(t["raw"]) if t["raw"] is not None else t["send"]
    return ScriptStep(
        at=t["at"],
        position=t["position"],
        argument=t["argument"],
        send=send,
        pause=_ms(t["pause_ms"], f"{where}.pause_ms"),
        reply=t["reply"],
    )


def _raw(value: str | None) -> bytes | None:
    """TOML strings carry raw probes: "\\r", "\\n", "\\u0000" escapes; latin-1 maps 1:1."""
    if value is None:
        return None
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise HarnessError(f"raw: character {value[exc.start]!r} is not a single byte") from None
