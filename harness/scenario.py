"""Scenario files: what a run builds, does and expects, as TOML (stdlib tomllib).

Rules kept here:
- A scenario is validated completely on load; an unknown key, a wrong type, a missing file or
  an impossible value is a ``HarnessError`` naming the file and the dotted key (and the line,
  when the TOML parser reports one).  Nothing downstream re-validates.
- Every key has a default, so an empty file is the seed exchange; paths are relative to the
  scenario file.  ``load_scenario(None)`` is the embedded seed (fixtures/scenarios/seed.toml).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.lab.topology import Topology, default_topology, topology_from_dict

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SEED_SCENARIO = FIXTURES / "scenarios" / "seed.toml"

# section -> key -> (expected type(s), default)
SCHEMA: dict[str, dict[str, tuple[type | tuple[type, ...], Any]]] = {
    "scenario": {"name": (str, "unnamed"), "description": (str, "")},
    "dns": {
        "zones": (str, str(FIXTURES / "zones")),
        "glue": (bool, True),
        "faults": (list, []),
    },
}
TOP_LEVEL = {"scenario", "hosts", "dns", "receiver", "sender", "expect"}


@dataclass
class Scenario:
    path: Path | None
    name: str
    description: str
    topology: Topology
    zones_dir: Path
    glue: bool
    dns_faults: list[dict] = field(default_factory=list)
    raw: dict = field(default_factory=dict)


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
    return _build(path, data)


def _build(path: Path, data: dict) -> Scenario:
    where = str(path)
    unknown = set(data) - TOP_LEVEL
    if unknown:
        raise HarnessError(f"{where}: unknown section {sorted(unknown)[0]!r}")
    meta = _section(where, data, "scenario")
    dns = _section(where, data, "dns")
    zones = _resolve(path, dns["zones"])
    if not zones.is_dir():
        raise HarnessError(f"{where}: dns.zones: {zones} is not a directory")
    return Scenario(
        path=path,
        name=meta["name"],
        description=meta["description"],
        topology=_topology(where, data),
        zones_dir=zones,
        glue=dns["glue"],
        dns_faults=dns["faults"],
        raw=data,
    )


def _section(where: str, data: dict, name: str) -> dict:
    given = data.get(name, {})
    if not isinstance(given, dict):
        raise HarnessError(f"{where}: {name}: must be a table")
    schema = SCHEMA[name]
    unknown = set(given) - set(schema)
    if unknown:
        raise HarnessError(f"{where}: unknown key {name}.{sorted(unknown)[0]}")
    out = {}
    for key, (kind, default) in schema.items():
        value = given.get(key, default)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise HarnessError(f"{where}: {name}.{key}: expected {_kind_name(kind)}")
        out[key] = value
    return out


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _topology(where: str, data: dict) -> Topology:
    if "hosts" not in data:
        return default_topology()
    if not isinstance(data["hosts"], list):
        raise HarnessError(f"{where}: hosts: must be an array of tables ([[hosts]])")
    try:
        return topology_from_dict({"hosts": data["hosts"]}, where="hosts")
    except HarnessError as exc:
        raise HarnessError(f"{where}: {exc}") from None


def _resolve(path: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else (path.parent / p).resolve()
