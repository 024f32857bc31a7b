"""A run interrupted mid-exchange (SIGTERM, Ctrl-C) leaves nothing: its lab, its daemons."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
from conftest import CLI, ROOT

from harness.lab.netns import netns_inode
from harness.lab.registry import STATE_DIR
from harness.verdict import ExitCode

pytestmark = pytest.mark.lab

FIXTURES = ROOT / "fixtures"
SLOW_REPLY = """
[[receiver.replies]]
on = "DATA"
delay_ms = 20000
"""
SLOW_SENDER_TO_POSTFIX = """
[receiver]
mta = "postfix"
[[sender.script]]
at = "DATA"
pause_ms = 20000
"""


def _records_of(pid: int) -> list[dict]:
    found = []
    for path in STATE_DIR.glob("sh*.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if record["owner_pid"] == pid:
            found.append(record)
    return found


def _wait_for(predicate, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def _pids_in(namespaces: list[str]) -> list[int]:
    out = []
    for ns in namespaces:
        if netns_inode(ns) is not None:
            listed = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            out += [int(p) for p in listed.stdout.split()]
    return out


@pytest.mark.parametrize("body", [SLOW_REPLY, SLOW_SENDER_TO_POSTFIX], ids=["scripted", "postfix"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_run_removes_its_lab_and_daemons(tmp_path, body, sig) -> None:
    scenario = tmp_path / "slow.toml"
    scenario.write_text(
        f'[dns]\nzones = "{FIXTURES / "zones"}"\n'
        f'[sender]\nmessage = "{FIXTURES / "messages" / "seed.eml"}"\n' + body
    )
    run = subprocess.Popen(
        [*CLI, "run", str(scenario), "--out", str(tmp_path / "run")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    (record,) = _wait_for(lambda: _records_of(run.pid))
    namespaces = record["namespaces"]
    _wait_for(lambda: (tmp_path / "run" / "dns.jsonl").exists())  # the exchange is under way
    time.sleep(0.5)
    daemons = _pids_in(namespaces)
    assert daemons or body is SLOW_REPLY  # postfix is running in its host
    run.send_signal(sig)
    run.wait(timeout=20)
    assert b"Traceback" not in run.stderr.read()
    assert run.returncode == {signal.SIGTERM: ExitCode.SIGTERM, signal.SIGINT: ExitCode.SIGINT}[sig]
    assert not _records_of(run.pid)
    assert [ns for ns in namespaces if netns_inode(ns) is not None] == []
    assert [pid for pid in daemons if _running(pid)] == []


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return b") Z" not in f.read(64)
    except FileNotFoundError:
        return False
