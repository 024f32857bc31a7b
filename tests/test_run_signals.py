"""A run interrupted mid-exchange (SIGTERM, Ctrl-C) leaves nothing: its lab, its daemons;
and it leaves its run.json, saying so."""

from __future__ import annotations

import signal

import pytest
from interrupted import SLOW_REPLY, interrupted_run

pytestmark = pytest.mark.lab

SLOW_SENDER_TO_POSTFIX = """
[receiver]
mta = "postfix"
[[sender.script]]
at = "DATA"
pause_ms = 20000
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_scripted_run_removes_its_lab(tmp_path, sig) -> None:
    assert interrupted_run(tmp_path, SLOW_REPLY, sig) == []  # the peers are ours, in-process


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_run_removes_its_lab_and_the_mta(tmp_path, sig) -> None:
    assert interrupted_run(tmp_path, SLOW_SENDER_TO_POSTFIX, sig)  # postfix ran in its host
