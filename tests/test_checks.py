"""Conformance checks: verdicts of the reference column in real namespaces, a check that
fails on purpose, the expected-matrix comparison, and the HTML/JSON/JUnit writers."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from pathlib import Path
from types import SimpleNamespace
from xml.etree import ElementTree as ET

import pytest

from harness.checks.base import REFERENCE, Kind, Outcome, Setup, registry, select
from harness.checks.expected import DEFAULT_EXPECTED, Entry, Expected, difference, load_expected
from harness.checks.matrix import Cell, Column, Matrix, column, plan
from harness.checks.report import write_html, write_json, write_junit
from harness.cli import run_cli
from harness.errors import HarnessError
from harness.mta.debs import Deb
from harness.verdict import Verdict

HARNESS = Column(REFERENCE, "0.1.0")
NOTHING_EXPECTED = Expected({})


@pytest.fixture(scope="module")
def lab_matrix(tmp_path_factory) -> Matrix:
    return Matrix(tmp_path_factory.mktemp("matrix"), NOTHING_EXPECTED)


def judged(m: Matrix, check_id: str, role: str) -> Cell:
    return m.cell(registry()[check_id], role, HARNESS)


REFERENCE_VERDICTS = [
    ("seed.exchange", "sender", "pass", None),
    ("seed.exchange", "receiver", "pass", None),
    ("dns.mx-fallback", "sender", "pass", None),
    ("dns.null-mx", "sender", "pass", None),
    ("dns.glue-use", "sender", "observed", "used the glue"),
    ("dns.ptr-timing", "receiver", "observed", "after HELO"),
    ("session.vrfy-disabled-252", "receiver", "fail", None),
    ("session.reply-first-digit", "sender", "pass", None),
    ("esmtp.pipelining-group-end", "sender", "n/a", None),
    ("data.smuggle-crlf-dot-lf", "receiver", "pass", None),
    ("close.pattern", "sender", "observed", "both closed after the 221"),
]


@pytest.mark.lab
@pytest.mark.parametrize(("check_id", "role", "verdict", "value"), REFERENCE_VERDICTS)
def test_reference_column_verdicts(lab_matrix, check_id, role, verdict, value) -> None:
    cell = judged(lab_matrix, check_id, role)
    assert (cell.verdict, cell.value) == (verdict, value), cell.note
    assert cell.evidence or verdict == "n/a"
    for folder in cell.folders:
        assert (folder / "ladder.svg").is_file() and (folder / "capture.pcapng").is_file()


@pytest.mark.lab
def test_seed_exchange_evidence_is_every_ladder_step(lab_matrix) -> None:
    cell = judged(lab_matrix, "seed.exchange", "sender")
    assert cell.note.startswith("reproduced 33/33")
    assert cell.evidence == tuple((0, i) for i in range(1, 33))  # "." folded into content


def _misbehaving(check_id: str, reply: dict) -> object:
    """The check with our scripted receiver told to answer wrongly."""
    check = registry()[check_id]
    setup = check.setups[0]
    data = json.loads(json.dumps(setup.data))
    data.setdefault("receiver", {}).setdefault("replies", []).append(reply)
    return dataclasses.replace(check, setups=(Setup(f"{setup.name}-broken", data),))


@pytest.mark.lab
def test_a_receiver_scripted_to_misbehave_fails_with_evidence(lab_matrix) -> None:
    check = _misbehaving("session.rset", {"on": "RSET", "code": 500})
    cell = lab_matrix.cell(check, "receiver", HARNESS)
    assert cell.verdict == "fail"
    assert "RSET answered 500" in cell.note
    ladder = cell.folders[0] / "ladder.json"
    steps = {s["index"]: s for s in json.loads(ladder.read_text())["steps"]}
    assert [steps[i]["text"][:4] for _run, i in cell.evidence] == ["RSET", "500 "]


@pytest.mark.lab
def test_a_server_closing_without_221_fails(lab_matrix) -> None:
    check = _misbehaving("close.quit-221", {"on": "QUIT", "raw": "", "close": True})
    cell = lab_matrix.cell(check, "receiver", HARNESS)
    assert cell.verdict == "fail"
    assert cell.note.startswith("server FIN before any 221")


@pytest.mark.lab
def test_setups_giving_the_same_scenario_share_a_run(tmp_path) -> None:
    m = Matrix(tmp_path, NOTHING_EXPECTED)
    a = m.cell(registry()["close.quit-221"], "receiver", HARNESS)
    b = m.cell(registry()["dns.ptr-timing"], "receiver", HARNESS)
    assert a.folders == b.folders
    assert [p.name for p in (tmp_path / REFERENCE / "receiver").iterdir()] == ["seed"]


# --- units: no lab


def test_registry_covers_the_checklist() -> None:
    checks = registry()
    assert len(checks) >= 25
    assert all(c.id.count(".") == 1 and c.rfc and c.roles for c in checks.values())
    assert [c.id for c in select(["dns.null-mx", "close.*"])] == [
        "dns.null-mx",
        "close.quit-221",
        "close.client-waits-221",
        "close.pattern",
    ]
    assert {c.id for c in select(["close.*"], ["sender"])} == {
        "close.client-waits-221",
        "close.pattern",
    }
    with pytest.raises(HarnessError, match="no such check"):
        select(["dns.nope"])


def test_setup_puts_the_mta_in_its_role_and_reference_extras_only_in_harness() -> None:
    setup = Setup(
        "x", {"sender": {"recipients": ["c3po@receiver.com"]}}, {"sender": {"ehlo": True}}
    )
    assert setup.scenario_data("postfix", "sender")["sender"] == {
        "recipients": ["c3po@receiver.com"],
        "mta": "postfix",
    }
    assert setup.scenario_data(REFERENCE, "sender")["sender"]["ehlo"] is True
    assert setup.key("exim", "sender") != setup.key("exim", "receiver")


def test_outcome_rejects_unknown_verdicts() -> None:
    with pytest.raises(ValueError):
        Outcome("maybe")


EXPECTED_TOML = """
[postfix."3.7"]
package = "3.7.11-0+deb12u1"
[postfix."3.7".receiver]
"session.vrfy-disabled-252" = { verdict = "fail", reason = "502 when disabled" }
[postfix."3".receiver]
"session.vrfy-codes" = { verdict = "n/a", reason = "older table" }
[postfix."*".sender]
"close.pattern" = { verdict = "observed", value = "sender RST after the 221", reason = "any" }
"""


def _expected(tmp_path: Path, text: str = EXPECTED_TOML) -> Expected:
    path = tmp_path / "expected.toml"
    path.write_text(text)
    return load_expected(path, registry())


def test_expected_lookup_uses_the_longest_version_prefix(tmp_path) -> None:
    exp = _expected(tmp_path)
    assert exp.entry("postfix", "3.7.11", "receiver", "session.vrfy-disabled-252").verdict == "fail"
    assert exp.entry("postfix", "3.7.11", "receiver", "session.vrfy-codes").verdict == "pass"
    assert exp.entry("postfix", "3.6.4", "receiver", "session.vrfy-codes").verdict == "n/a"
    assert exp.entry("postfix", "3.70", "receiver", "session.vrfy-disabled-252").verdict == "pass"
    pattern = exp.entry("postfix", "9.9", "sender", "close.pattern", Kind.OBSERVATION)
    assert (pattern.verdict, pattern.value) == ("observed", "sender RST after the 221")
    assert exp.entry("exim", "4.96", "sender", "session.noop") == Entry(Verdict.PASS, "")
    unrecorded = exp.entry("exim", "4.96", "sender", "close.pattern", Kind.OBSERVATION)
    assert difference(unrecorded, Verdict.OBSERVED, "sender RST after the 221") == "changed"
    assert exp.written_for("postfix", "3.7.11") == "3.7.11-0+deb12u1"
    assert exp.written_for("postfix", "3.6.4") is None


@pytest.mark.parametrize(
    ("expected", "actual", "kind"),
    [
        ("pass", "pass", "match"),
        ("pass", "fail", "regression"),
        ("pass", "error", "regression"),
        ("pass", "n/a", "regression"),
        ("fail", "pass", "improvement"),
        ("fail", "deviation-known", "improvement"),
        ("deviation-known", "fail", "regression"),
        ("error", "n/a", "improvement"),
    ],
)
def test_difference(expected, actual, kind) -> None:
    assert difference(Entry(Verdict(expected), "why"), Verdict(actual)) == kind


def test_an_observation_differs_when_its_value_changes() -> None:
    entry = Entry(Verdict.OBSERVED, "recorded", "both closed after the 221")
    assert difference(entry, Verdict.OBSERVED, "both closed after the 221") == "match"
    assert difference(entry, Verdict.OBSERVED, "sender RST after the 221") == "changed"
    assert difference(entry, Verdict.NA) == "regression"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[postfix."3.7".receiver]\n"no.such" = { verdict = "fail", reason = "x" }',
            "no such check",
        ),
        (
            '[postfix."3.7".sender]\n"session.vrfy-codes" = { verdict = "fail", reason = "x" }',
            "does not run",
        ),
        (
            '[postfix."3.7".receiver]\n"session.vrfy-codes" = { verdict = "bad", reason = "x" }',
            "verdict",
        ),
        ('[postfix."3.7".receiver]\n"session.vrfy-codes" = { verdict = "fail" }', "reason"),
        (
            '[postfix."3.7".sender]\n"close.pattern" = { verdict = "pass", reason = "x" }',
            "an observation is observed",
        ),
        (
            '[postfix."3.7".sender]\n"close.pattern" = { verdict = "observed", reason = "x" }',
            "with the value seen",
        ),
        (
            '[postfix."3.7".receiver]\n'
            '"session.noop" = { verdict = "fail", value = "v", reason = "x" }',
            "only an observed cell",
        ),
        (
            '[postfix."3.7".client]\n"session.vrfy-codes" = { verdict = "fail", reason = "x" }',
            "role",
        ),
        ("[postfix", "cannot read"),
    ],
)
def test_bad_expected_files_are_one_line_errors(tmp_path, text, message) -> None:
    with pytest.raises(HarnessError, match=message) as caught:
        _expected(tmp_path, text)
    assert "\n" not in str(caught.value)


def test_the_repository_expected_matrix_loads() -> None:
    exp = load_expected(DEFAULT_EXPECTED, registry())
    entry = exp.entry(REFERENCE, "0.1.0", "receiver", "session.vrfy-disabled-252")
    assert entry.verdict == "fail" and entry.reason
    checks = registry()
    for mta, versions in exp.table.items():
        for roles in versions.values():
            for role, cells in roles.items():
                for check_id, cell in cells.items():
                    assert cell.verdict != "error", f"{mta}/{role}/{check_id}: an error cell"
                    assert role in checks[check_id].roles


def test_an_unavailable_mta_gives_error_cells_not_skips(tmp_path) -> None:
    class Broken:
        @classmethod
        def prepare(cls) -> None:
            from harness.mta.base import MtaUnavailable

            raise MtaUnavailable("broken: package missing")

    col = column("broken", {"broken": Broken})
    m = Matrix(tmp_path, NOTHING_EXPECTED)
    planned = plan(select(["dns.*"]), ["broken"], ["sender"])
    cells = [m.cell(check, role, col) for check, role, _ in planned]
    assert cells and all(c.verdict == "error" for c in cells)
    assert cells[0].note == "broken: package missing"
    assert not any(tmp_path.iterdir())  # nothing was run


def _synthetic_cells(out: Path) -> list[Cell]:
    """Three cells over two fake run folders: a match, a regression, an improvement."""
    checks = registry()
    folder = out / REFERENCE / "sender" / "seed"
    folder.mkdir(parents=True)
    for name in ("ladder.svg", "capture.pcapng", "sender.jsonl"):
        (folder / name).write_text("x")
    expect_fail = Entry(Verdict.FAIL, "known <bad> & old")
    deb = Deb("postfix", "3.7.11-0+deb12u1", "postfix_3.7.11-0+deb12u1_amd64.deb", "ab" * 32)
    postfix = Column("postfix", "3.7.11", package_version="3.7.11-0+deb12u1", debs=(deb,))
    return [
        Cell(
            checks["seed.exchange"],
            "sender",
            HARNESS,
            Verdict.PASS,
            "33/33",
            Entry(Verdict.PASS, ""),
            ((0, 1), (0, 2)),
            (folder,),
        ),
        Cell(
            checks["session.rset"],
            "receiver",
            HARNESS,
            Verdict.FAIL,
            "client <RST>",
            Entry(Verdict.PASS, ""),
            ((0, 5),),
            (folder,),
        ),
        Cell(checks["session.rset"], "receiver", postfix, Verdict.PASS, "ok", expect_fail),
    ]


def test_junit_has_one_testcase_per_cell(tmp_path) -> None:
    cells = _synthetic_cells(tmp_path)
    suite = ET.parse(write_junit(cells, tmp_path)).getroot()
    cases = suite.findall("testcase")
    assert len(cases) == len(cells)
    assert [c.get("name") for c in cases] == ["seed.exchange", "session.rset", "session.rset"]
    assert suite.get("failures") == "2"
    failures = [c.find("failure").get("message") for c in cases if c.find("failure") is not None]
    assert failures == [
        "regression: expected pass, got fail",
        "improvement: expected fail, got pass",
    ]


def test_json_lists_cells_links_and_differences(tmp_path) -> None:
    cells = _synthetic_cells(tmp_path)
    data = json.loads(write_json(cells, tmp_path, Expected({}, "expected.toml")).read_text())
    assert data["summary"]["differences"] == {"match": 1, "regression": 1, "improvement": 1}
    first = data["cells"][0]
    assert first["runs"][0] == {
        "svg": "harness/sender/seed/ladder.svg",
        "pcap": "harness/sender/seed/capture.pcapng",
        "log": "harness/sender/seed/sender.jsonl",
        "folder": "harness/sender/seed",
    }
    assert first["evidence"] == [{"run": 0, "step": 1}, {"run": 0, "step": 2}]
    assert data["columns"][1]["package_version"] == "3.7.11-0+deb12u1"
    assert data["columns"][1]["debs"][0]["sha256"] == "ab" * 32


def test_html_links_resolve_and_text_is_escaped(tmp_path) -> None:
    cells = _synthetic_cells(tmp_path)
    written = Expected({"postfix": {"3.7": {}}}, "expected.toml", {("postfix", "3.7"): "3.7.9-1"})
    page = write_html(cells, tmp_path, written).read_text()
    assert "postfix: expected file written for 3.7.9-1, ran 3.7.11-0+deb12u1" in page
    for link in ("ladder.svg", "capture.pcapng", "sender.jsonl"):
        href = f"harness/sender/seed/{link}"
        assert f"href='{href}'" in page and (tmp_path / href).is_file()
    assert "client &lt;RST&gt;" in page and "known &lt;bad&gt; &amp; old" in page
    assert "regression: expected pass" in page and "improvement: expected fail" in page


def _cli(*args: str) -> SimpleNamespace:
    """``smtp-harness matrix ARGS`` in this process, through the CLI's error mapping."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_cli(["matrix", *args])
    return SimpleNamespace(exit_code=code, output=out.getvalue(), stderr=err.getvalue())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mta", "qmail"], "--mta 'qmail': unknown MTA"),
        (["--mta", REFERENCE, "--check", "nope.*"], "--check 'nope.*': no such check"),
        (["--mta", REFERENCE, "--role", "relay"], "--role 'relay'"),
    ],
)
def test_matrix_bad_input_exits_2_with_one_line(tmp_path, args, message) -> None:
    result = _cli(*args, "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"smtp-harness: error: {message}")


@pytest.mark.lab
def test_matrix_command_writes_reports_and_compares(tmp_path) -> None:
    expected = tmp_path / "expected.toml"
    expected.write_text(
        '[harness."*".receiver]\n'
        '"close.quit-221" = { verdict = "fail", reason = "pretend it used to fail" }\n'
    )
    out = tmp_path / "out"
    args = ["--mta", REFERENCE, "--check", "close.*", "--role", "receiver"]
    result = _cli(*args, "--out", str(out), "--expected", str(expected))
    assert result.exit_code == 1, result.output + result.stderr
    assert "improvement: harness/receiver/close.quit-221: expected fail, got pass" in result.output
    assert {p.name for p in out.iterdir()} >= {"matrix.html", "matrix.json", "junit.xml", REFERENCE}
    expected.write_text(
        '[harness."*".receiver]\n'
        '"close.pattern" = { verdict = "observed", value = "both closed after the 221", '
        'reason = "our sender waits for the receiver\'s FIN" }\n'
    )
    again = _cli(*args, "--out", str(out), "--expected", str(expected))
    assert again.exit_code == 0, again.output


@pytest.mark.lab
@pytest.mark.parametrize("role", ["sender", "receiver"])
def test_seed_check_against_postfix_matches_the_expected_matrix(tmp_path, role) -> None:
    """Check zero against a real MTA in CI: Postfix in both roles, judged as recorded."""
    from harness.mta.base import adapters

    postfix = column("postfix", adapters())
    assert not postfix.unavailable, postfix.unavailable
    expected = load_expected(DEFAULT_EXPECTED, registry())
    cell = Matrix(tmp_path, expected).cell(registry()["seed.exchange"], role, postfix)
    assert cell.verdict == cell.expected.verdict, cell.note
    assert cell.verdict == "deviation-known"  # Postfix is not the seed: EHLO, no VRFY, ...
    if role == "sender":
        assert "EHLO" in cell.note  # how it differs is named
    assert cell.evidence and all((f / "capture.pcapng").is_file() for f in cell.folders)
