"""A run folder from real runs (the CLI, real namespaces): run.json, scenario.toml,
capture.pcapng with the lab's names and step comments read back by us and by tshark, and
``--out`` into a folder that is used."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import CLI, ROOT

from harness.capture.pcapfile import annotations
from harness.errors import HarnessError
from harness.ladder.model import Ladder
from harness.runner import run_scenario
from harness.scenario import SEED_SCENARIO, load_scenario
from harness.verdict import ExitCode

pytestmark = pytest.mark.lab

TSHARK = shutil.which("tshark")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )  # fmt: skip


@pytest.fixture(scope="module")
def seed_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("seed") / "run"
    done = run("run", "--out", str(folder))
    assert done.returncode == ExitCode.OK, done.stdout + done.stderr
    return folder


def record(folder: Path) -> dict:
    return json.loads((folder / "run.json").read_text(encoding="utf-8"))


def test_the_folder_holds_its_record_scenario_and_pcapng(seed_folder) -> None:
    names = {p.name for p in seed_folder.iterdir()}
    assert {"run.json", "scenario.toml", "capture.pcapng", "ladder.txt", "dns.jsonl"} <= names
    assert "capture.pcap" not in names and not any(n.endswith(".tmp") for n in names)
    assert (seed_folder / "scenario.toml").read_bytes() == SEED_SCENARIO.read_bytes()


def test_run_json_is_the_verdict_file(seed_folder) -> None:
    data = record(seed_folder)
    assert data["schema_version"] == 1 and data["harness"]["name"] == "smtp-harness"
    assert (data["verdict"], data["exit_code"], data["error"]) == ("pass", 0, None)
    assert data["started"] <= data["ended"]
    assert data["scenario"]["name"] == "seed" and data["scenario"]["copy"] == "scenario.toml"
    assert data["scenario"]["loaded"]["sender"]["recipients"][0] == "aibo@receiver.com"
    statuses = {r: o["status"] for r, o in data["outcomes"].items()}
    assert statuses == {
        "aibo@receiver.com": "rejected",
        "c3po@receiver.com": "delivered",
        "r2d2@receiver.com": "delivered",
    }
    assert data["mta"] is None and data["problems"] == [] and data["faults"] == []


def test_the_capture_names_the_lab_and_each_frame_its_steps(seed_folder) -> None:
    ladder = Ladder.from_json((seed_folder / "ladder.json").read_text(encoding="utf-8"))
    notes = annotations(str(seed_folder / "capture.pcapng"))
    assert notes.names["192.0.2.25"] == "receiver" and notes.names["2001:db8::25"] == "receiver"
    assert notes.names["192.0.2.53"] == "dns" and notes.names["192.0.2.10"] == "sender"
    rcpt = next(s for s in ladder.steps if s.text == "RCPT TO:<c3po@receiver.com>")
    for frame in rcpt.evidence:
        assert f"step {rcpt.index}: RCPT TO:<c3po@receiver.com>" in notes.comments[frame]
    carried = {f for s in ladder.steps for f in s.evidence}
    assert set(notes.comments) == carried
    assert notes.application.startswith("smtp-harness ")
    assert notes.section_comments[:2] == (
        f"scenario seed: {record(seed_folder)['scenario']['description']}",
        "verdict: pass",
    )


def test_ladder_of_the_capture_shows_the_lab_names_without_host(seed_folder) -> None:
    done = run("ladder", str(seed_folder / "capture.pcapng"))
    assert done.returncode == 0, done.stderr
    kept = (seed_folder / "ladder.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    # the run's own ladder has one line more: what ran on each lifeline, which the run
    # knows (scripted peers, an MTA's version) and the capture does not
    assert "scripted sender" in kept[1]
    assert done.stdout == "".join(kept[:1] + kept[2:])
    assert "receiver" in done.stdout.splitlines()[0]


def test_check_compares_the_named_capture_with_the_plain_pcap_golden(seed_folder) -> None:
    done = run("check", str(seed_folder / "capture.pcapng"), "--expect", "pcaps/seed.pcap")
    assert done.returncode == ExitCode.OK, done.stdout + done.stderr


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (CI installs it)")
def test_tshark_shows_the_lab_names_from_the_file_and_the_comments(seed_folder) -> None:
    done = subprocess.run(
        [TSHARK, "-N", "n", "-r", str(seed_folder / "capture.pcapng"), "-Y",
         "tcp.flags.syn == 1 && tcp.flags.ack == 0", "-T", "fields", "-E", "separator=|",
         "-e", "ip.src_host", "-e", "ip.dst_host", "-e", "frame.comment"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "LC_ALL": "C.UTF-8"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    src, dst, comment = done.stdout.splitlines()[0].split("|")
    assert (src, dst) == ("sender", "receiver")
    assert comment.startswith("step ") and comment.endswith(": SYN to port 25")


def test_a_failed_run_says_fail_in_run_json_and_in_the_capture(tmp_path) -> None:
    scenario = tmp_path / "wrong.toml"
    scenario.write_text('[scenario]\nname = "wrong"\n[expect]\ndelivered = ["aibo@receiver.com"]\n')
    folder = tmp_path / "run"
    done = run("run", str(scenario), "--out", str(folder))
    assert done.returncode == ExitCode.FAIL, done.stdout + done.stderr
    data = record(folder)
    assert (data["verdict"], data["exit_code"]) == ("fail", 1) and data["problems"]
    notes = annotations(str(folder / "capture.pcapng"))
    assert notes.section_comments[1] == "verdict: fail"
    assert notes.section_comments[2].startswith("problem: expected delivered")
    assert (folder / "scenario.toml").read_bytes() == scenario.read_bytes()


def test_out_into_our_run_folder_replaces_it_whole(tmp_path) -> None:
    folder = tmp_path / "run"
    assert run("run", "--out", str(folder)).returncode == ExitCode.OK
    first = record(folder)["started"]
    (folder / "left-over.txt").write_text("from before")
    (folder / "maildir" / "extra").mkdir()
    assert run("run", "--out", str(folder)).returncode == ExitCode.OK
    assert not (folder / "left-over.txt").exists() and not (folder / "maildir" / "extra").exists()
    assert record(folder)["started"] > first


def test_out_into_a_folder_that_is_not_ours_is_refused_before_the_run(tmp_path) -> None:
    (tmp_path / "thesis.tex").write_text("precious")
    done = run("run", "--out", str(tmp_path))
    assert done.returncode == ExitCode.BAD_INPUT
    assert done.stdout == ""
    assert done.stderr == (
        f"smtp-harness: error: {tmp_path}: not empty and not a run folder (run.json missing); "
        "choose another folder, or empty it\n"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.tex"]


def test_bad_input_that_stops_a_run_midway_still_leaves_its_run_json(tmp_path) -> None:
    """A capture backend that does not exist is refused once the lab is up (a real
    HarnessError inside the run): the folder says so, and stays ours to run into again."""
    folder = tmp_path / "run"
    with pytest.raises(HarnessError, match="capture backend 'bogus'"):
        run_scenario(load_scenario(None), folder, capture_backend="bogus")
    data = record(folder)
    assert (data["verdict"], data["exit_code"]) == (None, ExitCode.BAD_INPUT)
    assert data["error"].startswith("capture backend 'bogus'")
    assert (folder / "scenario.toml").is_file()
    assert run("run", "--out", str(folder)).returncode == ExitCode.OK
    assert record(folder)["verdict"] == "pass"


def test_run_json_names_the_real_mta_and_the_debs_it_ran_from(tmp_path) -> None:
    folder = tmp_path / "run"
    scenario = ROOT / "fixtures" / "scenarios" / "postfix-receiver.toml"
    done = run("run", str(scenario), "--out", str(folder))
    assert done.returncode == ExitCode.OK, done.stdout + done.stderr
    mta = record(folder)["mta"]
    assert (mta["name"], mta["role"]) == ("postfix", "receiver")
    assert mta["version"] and mta["package_version"].startswith(mta["version"])
    postfix = next(d for d in mta["debs"] if d["package"] == "postfix")
    assert postfix["version"] == mta["package_version"] and len(postfix["sha256"]) == 64
    assert (folder / "scenario.toml").read_bytes() == scenario.read_bytes()
    assert annotations(str(folder / "capture.pcapng")).section_comments[1] == "verdict: pass"
