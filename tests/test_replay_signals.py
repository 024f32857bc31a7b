"""A replay interrupted mid-session (SIGTERM, Ctrl-C) leaves nothing: its lab is gone."""

from __future__ import annotations

import signal

import pytest
from conftest import ROOT
from interrupted import SLOW_REPLY, signalled, slow_scenario

pytestmark = pytest.mark.lab


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_replay_removes_its_lab(tmp_path, sig) -> None:
    out = tmp_path / "run"
    argv = ["replay", str(ROOT / "pcaps" / "seed.pcap"), "--as", "client", "--lab"]
    argv += ["--scenario", str(slow_scenario(tmp_path, SLOW_REPLY)), "--out", str(out)]
    ended = signalled(argv, out / "client.jsonl", b"DATA", sig)  # waiting for the 354
    ended.assert_left_nothing(sig)
