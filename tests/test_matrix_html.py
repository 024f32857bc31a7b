"""matrix.html: cells link to the steps they cite in each run's ladder.html, and a fail the
expected matrix foresaw looks different from one it did not."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest

from harness.checks.base import REFERENCE, registry
from harness.checks.expected import Entry, Expected
from harness.checks.matrix import Cell, Column
from harness.checks.report import write_html
from harness.verdict import Verdict

HARNESS = Column(REFERENCE, "0.1.0")
POSTFIX, EXIM = Column("postfix", "3.7.11"), Column("exim", "4.96")


class Cells(HTMLParser):
    """Each ``td`` of class ``cell``: its classes, its verdict badge, its links."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[dict] = []
        self._badge = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        classes = (attr.get("class") or "").split()
        if tag == "td" and "cell" in classes:
            self.cells.append({"classes": classes, "badge": None, "text": "", "links": []})
        elif self.cells and tag == "span" and "verdict" in classes and not self.cells[-1]["badge"]:
            self.cells[-1]["badge"] = classes
            self._badge = True
        elif self.cells and tag == "a":
            self.cells[-1]["links"].append(attr["href"])

    def handle_data(self, data: str) -> None:
        if self._badge:
            self.cells[-1]["text"] = data
            self._badge = False


def cells_of(page: str) -> list[dict]:
    parser = Cells()
    parser.feed(page)
    return parser.cells


def run_folder(out: Path, name: str) -> Path:
    folder = out / REFERENCE / "receiver" / name
    folder.mkdir(parents=True)
    for file in ("ladder.html", "ladder.svg", "capture.pcap", "receiver.jsonl"):
        (folder / file).write_text("x")
    return folder


@pytest.fixture
def page(tmp_path) -> list[dict]:
    """Three fail cells and a pass: foreseen, a surprise, a known deviation, a two-run pass."""
    checks = registry()
    one, two = run_folder(tmp_path, "one"), run_folder(tmp_path, "two")
    rset = checks["session.rset"]
    cells = [
        Cell(
            rset,
            "receiver",
            HARNESS,
            Verdict.FAIL,
            "n",
            Entry(Verdict.FAIL, "old"),
            ((0, 7), (0, 9)),
            (one,),
        ),
        Cell(
            rset,
            "receiver",
            POSTFIX,
            Verdict.FAIL,
            "n",
            Entry(Verdict.PASS, ""),
            ((0, 12),),
            (one,),
        ),
        Cell(
            rset,
            "receiver",
            EXIM,
            Verdict.KNOWN,
            "n",
            Entry(Verdict.KNOWN, "x"),
            ((0, 3),),
            (one,),
        ),
        Cell(
            checks["seed.exchange"],
            "receiver",
            HARNESS,
            Verdict.PASS,
            "n",
            Entry(Verdict.PASS, ""),
            ((0, 1), (1, 4)),
            (one, two),
        ),
    ]
    html = write_html(cells, tmp_path, Expected({}, "expected.toml")).read_text()
    return cells_of(html)


def test_cited_steps_link_to_their_rows_in_the_runs_ladder(page, tmp_path):
    foreseen = page[0]
    one = f"{REFERENCE}/receiver/one/ladder.html"
    assert f"{one}#step-7" in foreseen["links"] and f"{one}#step-9" in foreseen["links"]
    for href in foreseen["links"]:
        assert (tmp_path / href.split("#")[0]).is_file()
    two_runs = page[3]
    assert f"{one}#step-1" in two_runs["links"]
    assert f"{REFERENCE}/receiver/two/ladder.html#step-4" in two_runs["links"]


def test_the_ladder_link_opens_at_the_first_cited_step(page):
    links = page[1]["links"]
    ladder = [h for h in links if "ladder.html" in h]
    assert ladder == [f"{REFERENCE}/receiver/one/ladder.html#step-12"] * 2  # step, then "ladder"
    assert f"{REFERENCE}/receiver/one/ladder.svg" in links


def test_an_expected_fail_looks_different_from_a_surprise(page):
    foreseen, surprise, known, _ = page
    assert foreseen["text"] == "fail (expected)" and "expected" in foreseen["badge"]
    assert "surprise" not in foreseen["classes"]
    assert surprise["text"] == "fail" and "expected" not in surprise["badge"]
    assert "surprise" in surprise["classes"]
    assert foreseen["badge"] != surprise["badge"]
    assert known["badge"] == ["verdict", "known"] and "surprise" not in known["classes"]
