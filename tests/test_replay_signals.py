"""A replay interrupted mid-session (SIGTERM, Ctrl-C) leaves nothing: its lab is gone."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
from conftest import CLI, ROOT
from test_run_signals import FIXTURES, SLOW_REPLY, _records_of, _wait_for

from harness.lab.netns import netns_inode
from harness.verdict import ExitCode

pytestmark = pytest.mark.lab


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_replay_removes_its_lab(tmp_path, sig) -> None:
    scenario = tmp_path / "slow.toml"  # the scripted receiver waits 20 s before its 354
    scenario.write_text(
        f'[dns]\nzones = "{FIXTURES / "zones"}"\n'
        f'[sender]\nmessage = "{FIXTURES / "messages" / "seed.eml"}"\n' + SLOW_REPLY
    )
    out = tmp_path / "run"
    argv = [*CLI, "replay", str(ROOT / "pcaps" / "seed.pcap"), "--as", "client", "--lab"]
    replay = subprocess.Popen(
        [*argv, "--scenario", str(scenario), "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    (record,) = _wait_for(lambda: _records_of(replay.pid))
    log = out / "client.jsonl"
    _wait_for(lambda: log.exists() and b"DATA" in log.read_bytes())  # waiting for the 354
    time.sleep(0.2)
    replay.send_signal(sig)
    replay.wait(timeout=20)
    assert b"Traceback" not in replay.stderr.read()
    assert (
        replay.returncode == {signal.SIGTERM: ExitCode.SIGTERM, signal.SIGINT: ExitCode.SIGINT}[sig]
    )
    assert not _records_of(replay.pid)
    assert [ns for ns in record["namespaces"] if netns_inode(ns) is not None] == []
