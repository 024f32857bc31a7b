"""A run's capture with TLS (issue 12): the key logs its peers wrote under ``<run>/tls/``
go into capture.pcapng as a Decryption Secrets Block, and the run's ladder is read with
them (harness/runner.py ``_ladder`` and ``_finish_capture``, as ``run_scenario`` calls them)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from harness import runner
from harness.ladder.dissect import dissect
from harness.outcome import SendReport
from harness.scenario import FIXTURES, load_scenario
from harness.tls.keylog import from_capture

CRAFTED = Path(__file__).resolve().parent / "crafted" / "tls"


def _run_folder(tmp_path: Path, keylog: bool) -> Path:
    """A run folder as the live capture leaves it: the raw capture, and the key log."""
    shutil.copyfile(CRAFTED / "starttls-tls13.pcap", tmp_path / runner.CAPTURE)
    if keylog:
        (tmp_path / "tls").mkdir(mode=0o700)
        shutil.copyfile(CRAFTED / "starttls-tls13.keylog", tmp_path / "tls" / "keylog.txt")
    return tmp_path


def _finished(folder: Path) -> runner.RunResult:
    scenario = load_scenario(FIXTURES / "scenarios" / "seed.toml")
    faults: list = []
    ladder = runner._ladder(scenario, folder, faults)
    assert not faults
    result = runner.RunResult(scenario, folder, SendReport({}), [], [], [], ladder)
    runner._finish_capture(result)
    assert not result.faults
    return result


def test_the_runs_ladder_and_capture_carry_the_dialogue_inside_tls(tmp_path):
    result = _finished(_run_folder(tmp_path, keylog=True))
    inside = [s.text for s in result.ladder.steps if s.get("tls")]
    assert inside[:2] == ["EHLO inside.sender.com", "250 mail.receiver.com"]
    assert len(from_capture(result.pcap)) == 1
    reread = dissect(str(result.pcap), keylog=from_capture(result.pcap))
    assert [s.text for s in reread.steps if s.get("tls")] == inside
    tshark = subprocess.run(
        ["tshark", "-r", str(result.pcap), "-Y", "smtp", "-T", "fields", "-e", "smtp.req.command"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert tshark.stdout.split() == ["EHLO", "STAR", "EHLO", "MAIL", "RCPT", "DATA", "QUIT"]


def test_a_run_without_key_logs_writes_no_secrets_and_warns(tmp_path):
    result = _finished(_run_folder(tmp_path, keylog=False))
    assert not [s for s in result.ladder.steps if s.get("tls")]
    assert len(from_capture(result.pcap)) == 0
    assert any("no key log" in warning for warning in result.ladder.warnings)
