"""Formats that last (schema_version on run.json, matrix.json, the JSON ladder, scenario
files) and the run folder: which folders a run may use, run.json, scenario.toml, the
capture's names and comments.  No lab: the lab runs are in test_run_folder.py."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib

import pytest
from conftest import CLI, ROOT

from harness.checks.base import registry
from harness.checks.report import read_json
from harness.errors import HarnessError
from harness.formats import KEY, READS, WRITES, Format, version_of
from harness.ladder.model import Ladder, Step, StepKind
from harness.runinfo import (
    RECORD,
    check_folder,
    copy_scenario,
    lab_names,
    plain,
    prepare_folder,
    read_record,
    step_comments,
)
from harness.runner import scenario_zones
from harness.scenario import SEED_SCENARIO, load_scenario
from harness.verdict import ExitCode

OURS = {KEY: 1, "harness": {"name": "smtp-harness", "version": "0.1.0"}, "verdict": "pass"}


@pytest.mark.parametrize("fmt", list(Format))
def test_every_format_reads_what_it_writes(fmt: Format) -> None:
    assert WRITES[fmt] in READS[fmt]
    assert version_of({KEY: WRITES[fmt]}, fmt, "f") == WRITES[fmt]
    assert version_of({}, fmt, "f") == 1  # written before versions: version 1's shape


@pytest.mark.parametrize("bad", [2, 0, "1", True, 1.0, None, [1]])
def test_a_version_this_release_does_not_read_is_one_line(bad) -> None:
    with pytest.raises(HarnessError) as err:
        version_of({KEY: bad}, Format.RUN, "x/run.json")
    message = str(err.value)
    assert message.startswith(f"x/run.json: schema_version {json.dumps(bad)}: ")
    assert "reads run.json version 1" in message and "\n" not in message


def test_the_json_ladder_carries_its_version_and_refuses_another() -> None:
    ladder = Ladder([Step(1, 0, "a", "b", StepKind.SYN, "SYN", (1,))])
    data = json.loads(ladder.to_json())
    assert data[KEY] == WRITES[Format.LADDER]
    assert Ladder.from_json(json.dumps(data)) == ladder
    data[KEY] = 2
    with pytest.raises(HarnessError, match=r"schema_version 2: .* reads JSON ladder version 1"):
        Ladder.from_json(json.dumps(data))


def test_matrix_json_is_read_only_in_a_version_we_read(tmp_path) -> None:
    path = tmp_path / "matrix.json"
    path.write_text(json.dumps({KEY: 1, "cells": []}))
    assert read_json(path)["cells"] == []
    path.write_text(json.dumps({KEY: 7, "cells": []}))
    with pytest.raises(HarnessError, match=rf"^{re.escape(str(path))}: schema_version 7: "):
        read_json(path)
    path.write_text("[1]")
    with pytest.raises(HarnessError, match=r"not a matrix\.json"):
        read_json(path)


def test_matrix_json_is_written_with_its_version(tmp_path) -> None:
    from harness.checks.expected import Expected
    from harness.checks.report import write_json

    path = write_json([], tmp_path, Expected({}, "expected.toml"))
    assert json.loads(path.read_text())[KEY] == WRITES[Format.MATRIX]
    assert read_json(path)["cells"] == []


def scenario_file(tmp_path, version: str) -> str:
    path = tmp_path / "s.toml"
    path.write_text(f'{version}\n[scenario]\nname = "versioned"\n')
    return str(path)


def test_a_scenario_may_name_its_version(tmp_path) -> None:
    assert load_scenario(scenario_file(tmp_path, "schema_version = 1")).name == "versioned"


@pytest.mark.parametrize("version", ["schema_version = 2", 'schema_version = "1"'])
def test_a_scenario_of_another_version_is_refused_with_exit_2(tmp_path, version: str) -> None:
    path = scenario_file(tmp_path, version)
    done = subprocess.run([*CLI, "run", path], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == ExitCode.BAD_INPUT
    assert done.stdout == ""
    assert done.stderr.startswith(f"smtp-harness: error: {path}: schema_version ")
    assert done.stderr.count("\n") == 1 and "reads scenario version 1" in done.stderr


# --- the run folder -------------------------------------------------------------------------
def test_a_new_or_empty_folder_is_used(tmp_path) -> None:
    assert check_folder(tmp_path / "new") is False
    prepare_folder(tmp_path / "new" / "deeper")
    assert (tmp_path / "new" / "deeper").is_dir()
    assert check_folder(tmp_path / "new" / "deeper") is False


def test_a_folder_of_other_files_is_refused_and_left_alone(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(HarnessError, match=r"not empty and not a run folder \(run.json missing\)"):
        prepare_folder(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ("{", r"not a run\.json: Expecting property name"),
        ('{"verdict": "pass"}', "not a run.json of smtp-harness"),
        ('{"harness": "smtp-harness"}', "not a run.json of smtp-harness"),
        (json.dumps({**OURS, KEY: 2}), "schema_version 2"),
    ],
)
def test_a_run_json_not_ours_is_refused(tmp_path, record: str, message: str) -> None:
    (tmp_path / RECORD).write_text(record)
    (tmp_path / "other").write_text("x")
    with pytest.raises(HarnessError, match=message):
        prepare_folder(tmp_path)
    assert (tmp_path / "other").exists()


def test_a_file_or_a_link_is_refused(tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path)
    for name in ("file", "link"):
        with pytest.raises(HarnessError, match="not a folder"):
            prepare_folder(tmp_path / name)


def test_our_run_folder_is_replaced_whole(tmp_path) -> None:
    folder = tmp_path / "run"
    (folder / "maildir" / "new").mkdir(parents=True)
    (folder / "maildir" / "new" / "1.eml").write_text("old mail")
    (folder / RECORD).write_text(json.dumps(OURS))
    (folder / "capture.pcap").write_text("an earlier release's capture")
    assert check_folder(folder) is True
    assert read_record(folder / RECORD)["verdict"] == "pass"
    prepare_folder(folder)
    assert folder.is_dir() and list(folder.iterdir()) == []


# --- scenario.toml and run.json -------------------------------------------------------------
def test_a_scenario_file_is_copied_as_given(tmp_path) -> None:
    copy_scenario(load_scenario(SEED_SCENARIO), tmp_path)
    assert (tmp_path / "scenario.toml").read_bytes() == SEED_SCENARIO.read_bytes()


def test_a_scenario_built_from_data_is_written_as_toml_that_loads_the_same(tmp_path) -> None:
    check = registry()["seed.exchange"]
    setup = check.setups[0]
    scenario = setup.scenario("harness", check.roles[0])
    copy_scenario(scenario, tmp_path)
    data = tomllib.loads((tmp_path / "scenario.toml").read_text())
    assert data == plain(scenario.data)
    again = load_scenario(tmp_path / "scenario.toml")
    assert again.name == scenario.name and again.sender == scenario.sender


def test_plain_makes_the_loaded_scenario_json() -> None:
    loaded = plain(load_scenario(None), skip=("data", "text"))
    json.dumps(loaded)  # every value is JSON
    assert loaded["sender"]["message"]["octets"] == len(
        (ROOT / "fixtures" / "messages" / "seed.eml").read_bytes()
    )
    assert loaded["receiver"]["users"] == ["c3po", "r2d2"]
    assert "data" not in loaded and "text" not in loaded


# --- what the final capture carries ---------------------------------------------------------
def test_lab_names_give_hosts_last_and_the_names_the_zones_serve() -> None:
    scenario = load_scenario(None)
    names = lab_names(scenario, scenario_zones(scenario))
    assert names["192.0.2.25"] == ["mail.receiver.com", "receiver"]
    assert names["2001:db8::25"] == ["mail.receiver.com", "receiver"]
    assert names["192.0.2.53"][-1] == "dns" and "ns.receiver.com" in names["192.0.2.53"]
    assert names["192.0.2.10"][-1] == "sender"


def test_each_frame_names_the_steps_it_carried() -> None:
    steps = [
        Step(1, 0, "a", "b", StepKind.REPLY, "250-first\n250 last", (4,)),
        Step(2, 0, "a", "b", StepKind.FIN, "FIN", (5,)),
        Step(3, 0, "b", "a", StepKind.CONTENT, "2 lines", (5, 6)),
    ]
    assert step_comments(Ladder(steps)) == {
        4: ["step 1: 250-first (+1 lines)"],
        5: ["step 2: FIN", "step 3: 2 lines"],
        6: ["step 3: 2 lines"],
    }


def test_a_pcap_golden_is_recorded_as_pcap_and_a_pcapng_one_as_it_is(tmp_path) -> None:
    from harness.capture.pcapfile import annotations, read
    from harness.capture.pcapng import PcapngWriter
    from harness.runner import record_golden

    capture = tmp_path / "capture.pcapng"
    with open(capture, "wb") as f:
        writer = PcapngWriter(f, names={"192.0.2.25": ["receiver"]})
        writer.write(1_700_000_000_123_456_789, b"\x02" * 60, 70, ["step 1: SYN"])
    record_golden(capture, tmp_path / "pcaps" / "g.pcap")
    record_golden(capture, tmp_path / "pcaps" / "g.pcapng")
    pcap, ng = tmp_path / "pcaps" / "g.pcap", tmp_path / "pcaps" / "g.pcapng"
    assert pcap.read_bytes()[:4] == b"\x4d\x3c\xb2\xa1"  # pcap, nanoseconds, little-endian
    assert ng.read_bytes() == capture.read_bytes()
    frames = [(r.time, r.data, r.origlen) for r in read(str(pcap))]
    assert frames == [(r.time, r.data, r.origlen) for r in read(str(capture))]
    assert annotations(str(ng)).names == {"192.0.2.25": "receiver"}
