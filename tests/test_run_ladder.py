"""A run's ladder documents say what ran: the MTA and its version on its lifeline, the
scenario's name as the title, and one anchor per step of the ladder the run judged."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from harness.runner import lifelines, run_scenario
from harness.scenario import FIXTURES, load_scenario

SVG = "{http://www.w3.org/2000/svg}"
SCENARIOS = FIXTURES / "scenarios"


def test_lifelines_name_the_mta_and_its_version_and_the_scripted_peer() -> None:
    scenario = load_scenario(SCENARIOS / "postfix-receiver.toml")
    mta = {"name": "opensmtpd", "role": "receiver", "version": "7.0.0"}
    assert lifelines(scenario, mta) == {
        scenario.sender_host: "scripted sender",
        scenario.receiver_host: "OpenSMTPD 7.0.0",
    }
    seed = load_scenario(None)
    assert set(lifelines(seed, None).values()) == {"scripted sender", "scripted receiver"}


def _texts(svg: str) -> list[str]:
    return [t.text or "" for t in ET.fromstring(svg.encode()).iter(f"{SVG}text")]


@pytest.mark.lab
def test_a_scripted_run_titles_its_ladder_by_scenario_and_anchors_every_step(tmp_path) -> None:
    result = run_scenario(load_scenario(None), tmp_path / "run")
    assert result.ok, result.problems
    page = (result.folder / "ladder.html").read_text()
    assert f"<title>Ladder of {result.scenario.name}</title>" in page
    anchors = re.findall(r'<tr id="step-(\d+)"', page)
    assert anchors == [str(s.index) for s in result.ladder.steps] and len(anchors) > 30
    texts = _texts((result.folder / "ladder.svg").read_text())
    assert {"scripted sender", "scripted receiver"} <= set(texts)
    assert "frames" in (result.folder / "ladder.txt").read_text().splitlines()[0]


@pytest.mark.lab
def test_an_mta_run_puts_the_mta_and_its_version_on_its_lifeline(tmp_path) -> None:
    result = run_scenario(load_scenario(SCENARIOS / "postfix-receiver.toml"), tmp_path / "run")
    assert result.ok, result.problems
    version = result.mta["version"]
    assert re.fullmatch(r"3\.\d+\.\d+", version)
    texts = _texts((result.folder / "ladder.svg").read_text())
    host = texts.index(result.scenario.receiver_host)
    assert texts[host + 1] == f"Postfix {version}"  # under the receiver's name
    assert f"Postfix {version}" in (result.folder / "ladder.txt").read_text().splitlines()[1]
