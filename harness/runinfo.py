"""What a run folder says about its run: ``run.json``, ``scenario.toml``, and the names and
comments its ``capture.pcapng`` carries; and which folders a run may write into.

Rules kept here:
- ``run.json`` is the run's verdict file, written once the run has its verdict (or, when
  bad input stopped it, its error: verdict ``null``, exit code 2; when a signal ended it,
  verdict ``error``, exit code 128 + the signal's number, 130 for SIGINT, 143 for SIGTERM,
  and ``error`` "interrupted by SIGINT"), atomically (a temporary file renamed over it), so
  a reader sees the whole record or none.  It holds its
  ``schema_version`` (``harness.formats``), the harness version, start and end times (UTC,
  ISO 8601), the scenario as loaded (every key with its default filled in; octets as their
  size and sha256), the outcomes, the verdict and exit code, the problems and faults, and
  the real MTA with its versions and the .debs it ran from.
- ``scenario.toml`` is the scenario as given: the file's own octets, or (a scenario built
  from data, as the checks build theirs) that data written as TOML.  Its relative paths
  are relative to the original (``run.json``'s ``scenario.source``).
- A run folder is ours when it holds a ``run.json`` of ours (a JSON object with our
  ``harness`` name, of a version this release reads).  A run goes into a folder that is
  new, empty or ours; ours is emptied first, so no earlier file stays beside the new ones.
  Anything else (a file, a folder of other files, a ``run.json`` that is not ours) is
  refused with one line, exit 2, before anything is written.
- The capture's names (``lab_names``): every host's addresses with its name, and every
  A/AAAA name the lab's zones serve at that address; the host name comes last, the name a
  reader shows (``harness.capture.pcapng``).  Its comments: each frame that carried a step
  names the step(s) (``step 12: RCPT TO:<c3po@receiver.com>``); the section header names
  the scenario and the verdict.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import time
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any

import tomli_w
from dnslib import QTYPE

from harness import __version__
from harness.dns import ZoneSet
from harness.errors import HarnessError
from harness.formats import KEY, WRITES, Format, read_json
from harness.lab.topology import Topology
from harness.ladder.model import Ladder
from harness.scenario import Scenario
from harness.verdict import ExitCode, Verdict, exit_code

RECORD = "run.json"
SCENARIO_COPY = "scenario.toml"
HARNESS = "smtp-harness"
APPLICATION = f"{HARNESS} {__version__}"
_NOT_PLAIN = ("data", "text")  # Scenario fields that are its sources, not what was loaded


def now() -> str:
    """The time as run.json writes it: UTC, ISO 8601, milliseconds."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


# --- which folders a run may use ------------------------------------------------------------
def read_record(path: Path) -> dict:
    """A ``run.json`` of ours, if this release reads its version; else one line."""
    data = read_json(path, Format.RUN)
    harness = data.get("harness")
    if not isinstance(harness, dict) or harness.get("name") != HARNESS:
        raise HarnessError(f"{path}: not a run.json of {HARNESS}")
    return data


def check_folder(folder: Path) -> bool:
    """Whether ``folder`` is an earlier run folder of ours (``False``: new or empty); a
    ``HarnessError`` if a run may not go there.  Changes nothing."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise HarnessError(f"{folder}: not a folder; a run needs a folder of its own")
    if not folder.is_dir() or not any(folder.iterdir()):
        return False
    if not (folder / RECORD).is_file():
        raise HarnessError(
            f"{folder}: not empty and not a run folder ({RECORD} missing); "
            "choose another folder, or empty it"
        )
    read_record(folder / RECORD)  # one of ours, of a version we read
    return True


def prepare_folder(folder: Path) -> None:
    """Make ``folder`` ready for a run: created, or emptied if it is a run folder of ours;
    a ``HarnessError`` if it is anything else."""
    try:
        if check_folder(folder):
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HarnessError(f"{folder}: cannot prepare it: {exc.strerror or exc}") from None


# --- run.json and scenario.toml ------------------------------------------------------------
def copy_scenario(scenario: Scenario, folder: Path) -> None:
    """``scenario.toml``: the file as given, or the data the scenario was built from."""
    text = scenario.text
    if text is None:
        text = tomli_w.dumps(_without_none(scenario.data)).encode("utf-8")
    (folder / SCENARIO_COPY).write_bytes(text)


def _without_none(value: Any) -> Any:
    """TOML has no null: a key given as None is a key left out (its default)."""
    if isinstance(value, Mapping):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_without_none(v) for v in value]
    return value


def record(result, started: str) -> dict:
    """The content of ``run.json`` for ``result`` (a ``RunResult``)."""
    return {
        **_head(result.scenario, started),
        "verdict": str(result.verdict),
        "exit_code": int(exit_code(result.verdict)),
        "error": None,
        "problems": result.problems,
        "faults": [f.line() for f in result.faults],
        "outcomes": plain(result.report.outcomes),
        "mta": result.mta,
        "network": result.network,
        "warnings": result.warnings,
    }


def stopped_record(scenario: Scenario, started: str, error: HarnessError) -> dict:
    """The content of ``run.json`` for a run that bad input stopped: no verdict, exit 2."""
    return {
        **_head(scenario, started),
        "verdict": None,
        "exit_code": int(ExitCode.BAD_INPUT),
        "error": str(error),
    }


def interrupted_record(scenario: Scenario, started: str, signum: int) -> dict:
    """The content of ``run.json`` for a run that the signal ``signum`` ended: verdict
    error, exit code 128 + ``signum`` (the code the harness ends with)."""
    return {
        **_head(scenario, started),
        "verdict": str(Verdict.ERROR),
        "exit_code": 128 + signum,
        "error": f"interrupted by {signal.Signals(signum).name}",
    }


def _head(scenario: Scenario, started: str) -> dict:
    return {
        KEY: WRITES[Format.RUN],
        "harness": {"name": HARNESS, "version": __version__},
        "started": started,
        "ended": now(),
        "scenario": {
            "name": scenario.name,
            "description": scenario.description,
            "source": str(scenario.path),
            "copy": SCENARIO_COPY,
            "loaded": plain(scenario, skip=_NOT_PLAIN),
        },
    }


def write_record(folder: Path, data: dict) -> Path:
    """``run.json``, atomically."""
    path = folder / RECORD
    temporary = folder / f".{RECORD}.tmp"
    temporary.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path


def plain(value: Any, skip: tuple[str, ...] = ()) -> Any:
    """``value`` as JSON data: dataclasses as objects (but the fields in ``skip``), paths
    and addresses as strings, octets as their size and sha256."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = (f.name for f in dataclasses.fields(value) if f.name not in skip)
        return {name: plain(getattr(value, name)) for name in fields}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [plain(v) for v in value]
        return items if isinstance(value, list | tuple) else sorted(items, key=str)
    if isinstance(value, bytes | bytearray):
        return {"octets": len(value), "sha256": hashlib.sha256(value).hexdigest()}
    if isinstance(value, Enum):
        return value.value
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


# --- what the final capture carries ---------------------------------------------------------
def lab_names(scenario: Scenario, zones: ZoneSet) -> dict[str, list[str]]:
    """address -> its names: the DNS names the zones serve there (A, AAAA), then the name
    of the host it belongs to, if any."""
    served: dict[str, set[str]] = {}
    for zone in zones:
        for rrsets in zone.rrsets.values():
            for rr in (*rrsets.get(QTYPE.A, ()), *rrsets.get(QTYPE.AAAA, ())):
                address = str(ipaddress.ip_address(str(rr.rdata)))
                served.setdefault(address, set()).add(str(rr.rname).rstrip("."))
    hosts = host_names(scenario.topology)
    return {
        address: [*sorted(served.get(address, set()) - {hosts.get(address)}), hosts[address]]
        if address in hosts
        else sorted(served[address])
        for address in {**served, **hosts}
    }


def host_names(topology: Topology) -> dict[str, str]:
    """Address -> host name, for the ladder of a lab capture."""
    return {addr: h.name for h in topology.hosts for addr in h.addresses}


def step_comments(ladder: Ladder) -> dict[int, list[str]]:
    """frame number -> one comment per step that frame carried."""
    comments: dict[int, list[str]] = {}
    for step in ladder.steps:
        first, *rest = step.text.splitlines() or [""]
        more = f" (+{len(rest)} lines)" if rest else ""
        for frame in step.evidence:
            comments.setdefault(frame, []).append(f"step {step.index}: {first}{more}")
    return comments


def section_comments(result) -> list[str]:
    """The section header's comments: the scenario, and the verdict with its reasons."""
    scenario = result.scenario
    about = f": {scenario.description}" if scenario.description else ""
    lines = [f"scenario {scenario.name}{about}"]
    lines.append(f"verdict: {result.verdict}")
    lines += [f"problem: {p.splitlines()[0]}" for p in result.problems]
    lines += [f"fault: {f.line()}" for f in result.faults]
    return lines
