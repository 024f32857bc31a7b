"""Who owns which lab resource.

Rules kept here:
- A resource is recorded *before* it is created (an intent log), so a run killed at any
  instant leaves a record naming everything it may have made.
- An owner is a (pid, process start time) pair: a recycled pid is not the owner, and a
  zombie (killed, not yet reaped: for good where no init reaps) is gone (``running``).
- ``clean`` removes only what a record names, only when its owner is gone, and only names
  that carry the record's lab id.  It never guesses from names alone.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_DIR = Path(os.environ.get("SMTP_HARNESS_STATE", "/run/smtp-harness/labs"))
ID_PREFIX = "sh"


def new_lab_id() -> str:
    return ID_PREFIX + secrets.token_hex(3)


def _stat(pid: int) -> tuple[bytes, int] | None:
    """The state letter and start time (clock ticks since boot) of ``pid``, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # the command name (field 2) may contain spaces and ')': split after the last ')'
    fields = stat[stat.rindex(b")") + 2 :].split()
    return fields[0], int(fields[19])


def process_start(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot, or None if it is gone."""
    stat = _stat(pid)
    return stat[1] if stat else None


def running(pid: int, start: int | None = None) -> bool:
    """Whether ``pid`` is a live process (a zombie is not) and, given ``start``, the same one."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in b"ZX" and start in (None, stat[1])


@dataclass
class Record:
    lab_id: str
    owner_pid: int
    owner_start: int
    purpose: str = "run"
    created: float = field(default_factory=time.time)
    hosts: dict[str, str] = field(default_factory=dict)  # host name -> namespace
    namespaces: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    pids: list[tuple[int, int]] = field(default_factory=list)  # (pid, start time)

    @property
    def path(self) -> Path:
        return STATE_DIR / f"{self.lab_id}.json"

    def owner_alive(self) -> bool:
        return running(self.owner_pid, self.owner_start)

    def save(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, self.path)

    def delete(self) -> None:
        self.path.with_suffix(".tmp").unlink(missing_ok=True)  # a save cut short
        self.path.unlink(missing_ok=True)


def new_record(purpose: str) -> Record:
    """A record owned by this process, not saved yet (its owner saves it, then builds)."""
    pid = os.getpid()
    start = process_start(pid)
    assert start is not None
    return Record(lab_id=new_lab_id(), owner_pid=pid, owner_start=start, purpose=purpose)


def all_records() -> list[Record]:
    records = []
    if not STATE_DIR.is_dir():
        return records
    for p in sorted(STATE_DIR.glob(f"{ID_PREFIX}*.json")):
        try:
            data = json.loads(p.read_text())
            data["pids"] = [tuple(x) for x in data.get("pids", [])]
            records.append(Record(**data))
        except (OSError, ValueError, TypeError):
            continue  # half-written or foreign file: never act on it
    return records
