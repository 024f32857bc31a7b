"""Renderers: every format shows every step, between the right hosts, the right way round."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from ladder_pcaps import HOSTS, SEED_LADDER, seed_capture

from harness.errors import HarnessError
from harness.ladder.dissect import dissect
from harness.ladder.model import Ladder
from harness.render import render

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def seed(tmp_path_factory) -> Ladder:
    return dissect(seed_capture(tmp_path_factory.mktemp("r") / "seed.pcap"), HOSTS)


def test_text_has_a_column_per_host_and_arrows_that_point_the_right_way(seed):
    lines = render(seed, "text").splitlines()
    header = lines[0]
    assert header.index("mail.sender.com") < header.index("dns") < header.index("mail.receiver.com")
    steps = {int(line[:4]): line for line in lines[2:]}
    assert len(steps) == len(SEED_LADDER)
    assert all(len(line) <= 110 for line in lines)
    helo, greeting, ptr = steps[7], steps[6], steps[8]
    assert "HELO mail.sender.com" in helo and helo.index("──") < helo.index("►")
    assert "◄" in greeting and "►" not in greeting
    # the PTR query goes from the receiver's column left to the DNS column only
    dns_col = header.index("dns") + 1
    assert ptr.index("◄") == dns_col + 1


def test_text_truncates_long_labels_with_an_ellipsis(seed):
    line = render(seed, "text").splitlines()[3]  # the MX answer, longer than its arrow
    assert "MX 10 mail.receiver.com." in line and "…" in line


def test_svg_is_xml_with_one_arrow_per_step_and_the_hosts_on_top(seed):
    root = ET.fromstring(render(seed, "svg").encode())
    assert root.tag == f"{SVG}svg" and root.get("version") == "1.1"
    arrows = root.findall(f".//{SVG}line[@marker-end]")
    assert len(arrows) == len(SEED_LADDER)
    names = [t.text for t in root.iter(f"{SVG}text")]
    assert {"mail.sender.com", "dns", "mail.receiver.com"} <= set(names)
    helo = arrows[6]
    assert float(helo.get("x1")) < float(helo.get("x2"))  # sender is left of the receiver
    greeting = arrows[5]
    assert float(greeting.get("x1")) > float(greeting.get("x2"))
    colours = {a.get("stroke") for a in arrows}
    assert len(colours) == 3  # DNS, TCP, SMTP


def test_html_embeds_the_svg_and_a_table_with_evidence(seed):
    page = render(seed, "html")
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page
    assert "src=" not in page and "href=" not in page  # self-contained
    assert page.count("<tr class=") == len(SEED_LADDER)
    assert "MAIL FROM:&lt;luke@sender.com&gt;" in page
    assert "<td>42</td>" in page  # the content step's evidence packet


def test_mermaid_is_a_sequence_diagram(seed):
    text = render(seed, "mermaid")
    lines = text.splitlines()
    assert lines[0] == "sequenceDiagram"
    assert "    participant P1 as mail.sender.com" in lines
    assert "    P1->>P3: 17 MAIL FROM:#60;luke@sender.com#62;" in lines
    assert "    P3-->>P1: 18 250 OK" in lines
    assert sum("->>" in x or "-)" in x for x in lines) == len(SEED_LADDER)


def test_json_round_trip_is_equal(seed):
    assert Ladder.from_json(render(seed, "json")) == seed


def test_unknown_format_is_a_one_line_error(seed):
    with pytest.raises(HarnessError, match="unknown format 'png'"):
        render(seed, "png")
