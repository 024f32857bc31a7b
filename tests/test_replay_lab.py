"""Replay in real labs: the seed against the scripted receiver and Postfix, a changed reply,
a smuggling-shaped content byte for byte, and every corpus capture."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
from pathlib import Path

import pytest
from conftest import CLI, ROOT
from ladder_pcaps import CORPUS, seed_capture
from test_replay import PIPELINED

from harness.errors import HarnessError
from harness.ladder.dissect import dissect
from harness.replay.session import read_session
from harness.replay.stored import NOT_THE_PROBE

pytestmark = pytest.mark.lab

SEED = ROOT / "pcaps" / "seed.pcap"
FIXTURES = ROOT / "fixtures"
_ERROR_STEP = re.compile(r"^\S+?:(\d+): error: (.*)$", re.MULTILINE)


def replay_cli(capture: Path, out: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    argv = [*CLI, "replay", str(capture), "--as", "client", "--lab", "--out", str(out), *args]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=300)
    record = out / "replay.json"
    return done, json.loads(record.read_text()) if record.exists() else {}


def _diff_steps(out: Path) -> dict[int, str]:
    """The captured step of each mismatch in diff.txt, and what it says."""
    return {int(n): what for n, what in _ERROR_STEP.findall((out / "diff.txt").read_text())}


def test_the_seed_replays_the_same_against_the_scripted_receiver(tmp_path):
    done, record = replay_cli(SEED, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert record["verdict"] == "pass" and record["stopped"] is None
    assert len(record["replies"]) == 11
    assert all(not r["differences"] for r in record["replies"])
    assert "same as" in (tmp_path / "diff.txt").read_text()
    for kept in ("capture.pcapng", "ladder.json", "captured-ladder.json"):
        assert (tmp_path / kept).is_file()
    assert "helo       mail.sender.com (kept)" in done.stdout
    assert "client     192.0.2.10 -> 192.0.2.10 (sender)" in done.stdout
    live = [s for s in dissect(str(tmp_path / "capture.pcapng")).steps if s.kind == "content"]
    captured = [s for s in dissect(str(SEED)).steps if s.kind == "content"]
    assert [s.get("sha256") for s in live] == [s.get("sha256") for s in captured]


def test_a_changed_reply_is_a_diff_at_its_step_and_stops_the_replay(tmp_path):
    scenario = tmp_path / "rcpt-450.toml"
    scenario.write_text(
        f'[dns]\nzones = "{FIXTURES / "zones"}"\n'
        f'[sender]\nmessage = "{FIXTURES / "messages" / "seed.eml"}"\n'
        '[[receiver.replies]]\non = "RCPT"\nargument = "r2d2@receiver.com"\n'
        'code = 450\ntext = "4.2.1 try again later"\n'
    )
    out = tmp_path / "run"
    done, record = replay_cli(SEED, out, "--scenario", str(scenario))
    assert done.returncode == 1, done.stdout + done.stderr
    steps = read_session(str(SEED)).steps
    rcpt = next(s for s in steps if s.text == "RCPT TO:<r2d2@receiver.com>")
    answer = next(s for s in steps if s.index > rcpt.index and s.kind == "reply")
    assert record["stopped"]["step"] == answer.index
    assert record["stopped"]["differences"][0] == "code 250 -> 450"
    diff = _diff_steps(out)
    assert list(diff) == [answer.index]
    assert diff[answer.index].startswith("reply differs: code 250 -> 450")
    assert record["replies"][-1]["live"] == [450, ["4.2.1 try again later"]]


def test_against_postfix_the_diff_is_at_the_steps_postfix_answers_otherwise(open_folder):
    done, record = replay_cli(SEED, open_folder / "run", "--mta", "postfix", "--continue")
    assert done.returncode == 1, done.stdout + done.stderr
    differing = {r["step"] for r in record["replies"] if r["differences"]}
    assert differing, "Postfix answered every reply as the scripted receiver did"
    diff = _diff_steps(open_folder / "run")
    assert set(diff) == differing
    live_codes = {r["step"]: r["live"][0] for r in record["replies"]}
    for step, what in diff.items():  # each diff line names what Postfix answered there
        reply = next(r for r in record["replies"] if r["step"] == step)
        assert what.startswith("reply differs")
        if reply["captured"][0] != live_codes[step]:
            assert f"code {reply['captured'][0]} -> {live_codes[step]}" in what


def test_against_postfix_the_replay_stops_at_the_first_other_code(open_folder):
    done, record = replay_cli(SEED, open_folder / "run", "--mta", "postfix")
    assert done.returncode == 1, done.stdout + done.stderr
    first = next(r for r in record["replies"] if r["captured"][0] != r["live"][0])
    assert record["stopped"]["step"] == first["step"]
    assert record["replies"][-1] is first  # nothing was sent after it
    assert max(_diff_steps(open_folder / "run")) == first["step"]
    assert f"stopped at step {first['step']}" in done.stdout


def test_a_look_alike_ending_and_a_pipelined_group_replay_byte_for_byte(tmp_path):
    capture = seed_capture(tmp_path / "pipelined.pcap", dialogue=PIPELINED)
    done, record = replay_cli(capture, tmp_path / "run", "--continue")
    assert done.returncode in (0, 1), done.stdout + done.stderr
    assert record["faults"] == []
    # a look-alike in mail that is not the matrix's probe is not judged by the probe's rule
    assert record["smuggling"] == {"verdict": "n/a", "note": NOT_THE_PROBE, "steps": []}
    live = [s for s in dissect(str(tmp_path / "run" / "capture.pcapng")).steps]
    group = [s for s in live if s.kind == "command" and s.get("verb") in ("MAIL", "RCPT", "DATA")]
    assert len({s.evidence for s in group}) == 1  # one segment, as captured
    content = next(s for s in live if s.kind == "content")
    captured = next(s for s in dissect(str(capture)).steps if s.kind == "content")
    assert content.get("sha256") == captured.get("sha256")


def _replayable(path: Path) -> str | None:
    try:
        read_session(str(path))
    except HarnessError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.pcap*")), ids=lambda p: p.name)
def test_each_corpus_capture_replays_without_a_harness_error(path, tmp_path):
    refused = _replayable(path)
    done, record = replay_cli(path, tmp_path / "run")
    if refused is not None:  # not a completed session: bad input, before any lab
        assert done.returncode == 2 and done.stderr == f"smtp-harness: error: {refused}\n"
        return
    assert done.returncode in (0, 1), done.stdout + done.stderr
    assert record["faults"] == []
    assert record["verdict"] in ("pass", "fail")
    assert (tmp_path / "run" / "diff.txt").is_file()


def test_capture_timing_waits_at_least_the_captured_gaps(tmp_path):
    done, _ = replay_cli(SEED, tmp_path, "--timing", "capture")
    assert done.returncode == 0, done.stdout + done.stderr
    session = read_session(str(SEED))
    gaps, last = [], session.turns[0].replies[0].time
    for turn in session.turns[1:]:
        for _, at in turn.cuts:
            gaps.append((at - last) / 1e9)
            last = at
        last = turn.replies[-1].time
    log = [json.loads(line) for line in (tmp_path / "client.jsonl").read_text().splitlines()]
    waited = [b["t"] - a["t"] for a, b in itertools.pairwise(log) if b["kind"] == "sent"]
    assert len(waited) == len(gaps) and max(gaps) > 0.002
    assert all(w >= g - 0.001 for w, g in zip(waited, gaps, strict=True)), (waited, gaps)


def test_the_replay_fixture_maps_names_onto_the_wire(replay):
    kept = replay(SEED, maps=("mail.sender.com=relay.sender.com",))
    assert kept.verdict == "pass", kept.diff_text
    live = dissect(str(kept.pcap)).steps
    assert any(s.text == "HELO relay.sender.com" for s in live)
    assert any("Hello relay.sender.com" in s.text for s in live if s.kind == "reply")
    moved = replay(SEED, maps=("c3po@receiver.com=aibo@receiver.com",))
    assert moved.verdict == "fail"
    captured = read_session(str(SEED)).steps
    rcpt = next(s for s in captured if s.text == "RCPT TO:<c3po@receiver.com>")
    answer = next(s for s in captured if s.index > rcpt.index and s.kind == "reply")
    assert moved.client.stopped.live.code == 550
    assert moved.client.stopped.captured.step == answer.index
    assert any(s.text == "RCPT TO:<aibo@receiver.com>" for s in dissect(str(moved.pcap)).steps)
