"""A run interrupted mid-exchange, for the tests that it leaves nothing behind: its lab, its
daemons, its lab record; and that it ends with the signal's code and its run.json."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from conftest import CLI, ROOT

from harness import runinfo
from harness.lab.netns import netns_inode
from harness.lab.registry import STATE_DIR
from harness.verdict import ExitCode, Verdict

FIXTURES = ROOT / "fixtures"
CODES = {signal.SIGTERM: ExitCode.SIGTERM, signal.SIGINT: ExitCode.SIGINT}


SLOW_REPLY = """
[[receiver.replies]]
on = "DATA"
delay_ms = 20000
"""  # the scripted receiver waits 20 s before its 354


@dataclass
class Ended:
    """A command that a signal ended: how, and what it had running when the signal went."""

    code: int
    stderr: bytes
    namespaces: list[str]  # its lab's
    daemons: list[int]  # the pids in them when the signal went
    records: list[dict]  # its lab records left after it ended

    def assert_left_nothing(self, sig: signal.Signals) -> None:
        """It ended with ``sig``'s code, without a traceback, and left no lab record,
        namespace or daemon."""
        assert b"Traceback" not in self.stderr
        assert self.code == CODES[sig]
        assert self.records == []
        assert [ns for ns in self.namespaces if netns_inode(ns) is not None] == []
        assert [pid for pid in self.daemons if running(pid)] == []


def slow_scenario(tmp_path: Path, body: str) -> Path:
    """A scenario of the seed's zones and message with ``body`` (TOML: what makes the run
    slow, its faults) added."""
    scenario = tmp_path / "slow.toml"
    scenario.write_text(
        f'[dns]\nzones = "{FIXTURES / "zones"}"\n'
        f'[sender]\nmessage = "{FIXTURES / "messages" / "seed.eml"}"\n' + body
    )
    return scenario


def signalled(argv: list[str], log: Path, sent: bytes, sig: signal.Signals) -> Ended:
    """Run the harness with ``argv``; once its lab is up and ``log`` holds ``sent`` (a peer
    has sent it: the exchange is under way), send ``sig``; how it ended."""
    command = subprocess.Popen(
        [*CLI, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT
    )
    (record,) = wait_for(lambda: records_of(command.pid))
    wait_for(lambda: log.exists() and sent in log.read_bytes())
    daemons = pids_in(record["namespaces"])
    command.send_signal(sig)
    command.wait(timeout=20)
    stderr = command.stderr.read()
    return Ended(command.returncode, stderr, record["namespaces"], daemons, records_of(command.pid))


def interrupted_run(tmp_path: Path, body: str, sig: signal.Signals) -> list[int]:
    """``run`` of ``slow_scenario(body)``, sent ``sig`` once the sender has sent RCPT:
    assert it left nothing and its run.json says it was interrupted (verdict error, the
    signal's exit code), in a folder a later run may replace.  The daemons it had."""
    folder = tmp_path / "run"
    argv = ["run", str(slow_scenario(tmp_path, body)), "--out", str(folder)]
    ended = signalled(argv, folder / "sender.jsonl", b'"RCPT TO:', sig)
    ended.assert_left_nothing(sig)
    said = runinfo.read_record(folder / runinfo.RECORD)
    assert (said["verdict"], said["exit_code"]) == (Verdict.ERROR, CODES[sig])
    assert said["error"] == f"interrupted by {sig.name}"
    assert runinfo.check_folder(folder)  # ours: a later run may replace it
    return ended.daemons


def records_of(pid: int) -> list[dict]:
    """The lab records that process ``pid`` owns."""
    found = []
    for path in STATE_DIR.glob("sh*.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if record["owner_pid"] == pid:
            found.append(record)
    return found


def wait_for(predicate, timeout: float = 15.0):
    """``predicate()``'s first true value, polled; ``AssertionError`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def pids_in(namespaces: list[str]) -> list[int]:
    """The processes in the named network namespaces that still exist."""
    out = []
    for ns in namespaces:
        if netns_inode(ns) is not None:
            listed = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            out += [int(p) for p in listed.stdout.split()]
    return out


def running(pid: int) -> bool:
    """Whether ``pid`` is a process that has not ended (a zombie has)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return b") Z" not in f.read(64)
    except FileNotFoundError:
        return False
