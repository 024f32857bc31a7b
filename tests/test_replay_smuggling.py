"""The issue's smuggling proof: the attempt crafted with the scripted sender's raw script
against the scripted receiver and captured, then that capture replayed against Postfix
(Debian 12's 3.7.11 with its defaults stores the smuggled message: CVE-2023-51764) and
Exim (4.96-15+deb12u11 carries the fix for CVE-2023-51766: it does not); the replay's
verdicts, read from what each stored, must say so."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_replay_lab import replay_cli

from harness.checks.base import REFERENCE, registry
from harness.checks.data import RCPT, SMUGGLED_TEXT, VICTIM
from harness.runner import run_scenario

pytestmark = pytest.mark.lab

PROBE = "data.smuggle-crlf-dot-lf"  # <CR><LF>.<LF>: Postfix ends DATA there, Exim does not


@pytest.fixture(scope="module")
def attempt(tmp_path_factory) -> Path:
    """The probe of the matrix, sent by the scripted sender to the scripted receiver."""
    setup = registry()[PROBE].setups[0]
    run = run_scenario(setup.scenario(REFERENCE, "receiver"), tmp_path_factory.mktemp("craft"))
    assert run.ok, run.explained(run.folder)
    assert [m.recipient for m in run.stored] == [RCPT]  # the reference kept it as content
    return run.folder / "capture.pcapng"


def _stored(record: dict) -> dict[str, str]:
    return {o["recipient"]: o["evidence"][0] for o in record["stored"]}


def test_against_the_scripted_receiver_the_attempt_replays_as_content(attempt, tmp_path):
    done, record = replay_cli(attempt, tmp_path / "run")
    assert done.returncode == 0, done.stdout + done.stderr
    assert record["smuggling"]["verdict"] == "pass", record["smuggling"]
    assert record["smuggling"]["steps"]  # earned: the look-alike and the reply it cites
    assert set(_stored(record)) == {RCPT}
    assert "smuggling: PASS" in done.stdout


def test_postfix_stores_the_smuggled_message_and_the_replay_says_so(attempt, open_folder):
    out = open_folder / "run"
    done, record = replay_cli(attempt, out, "--mta", "postfix", "--continue")
    assert done.returncode == 1, done.stdout + done.stderr
    assert record["faults"] == []
    assert record["verdict"] == "fail"
    smuggling = record["smuggling"]
    assert smuggling["verdict"] == "fail", smuggling
    assert f"1 smuggled message(s) stored for {VICTIM}" in smuggling["note"]
    assert set(_stored(record)) == {RCPT, VICTIM}
    assert _stored(record)[VICTIM].startswith("1 stored")
    assert "smuggling: FAIL" in done.stdout and f"  {VICTIM}: 1 stored" in done.stdout


def test_exim_keeps_the_look_alike_as_content_and_the_replay_says_so(attempt, open_folder):
    out = open_folder / "run"
    done, record = replay_cli(attempt, out, "--mta", "exim", "--continue")
    assert done.returncode in (0, 1), done.stdout + done.stderr  # replies' texts differ
    assert record["faults"] == []
    smuggling = record["smuggling"]
    assert smuggling["verdict"] == "pass", smuggling
    assert "kept as content" in smuggling["note"]
    assert set(_stored(record)) == {RCPT}
    assert _stored(record)[RCPT].startswith("1 stored")
    box = out / "receiver-exim"
    assert any(SMUGGLED_TEXT in p.read_bytes() for p in box.rglob("*") if p.is_file())
