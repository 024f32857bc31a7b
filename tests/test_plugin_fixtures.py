"""The pytest plugin's building-block fixtures, used the way a test author would."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from conftest import ROOT

from harness.errors import HarnessError
from harness.ladder.dissect import dissect
from harness.runner import host_names

pytestmark = pytest.mark.lab


def test_peers_and_capture_fixtures_make_an_exchange(
    lab, dns, smtp_receiver, smtp_sender, capture
) -> None:
    receiver = smtp_receiver(users=("c3po",))
    sender = smtp_sender(recipients=("c3po@receiver.com", "r2d2@receiver.com"))

    async def exchange():
        async with receiver:
            await receiver.start("192.0.2.25", 25)
            report = await sender.send()
            await receiver.idle()
        return report

    report = asyncio.run(exchange())
    capture.stop()
    assert report.status("c3po@receiver.com") == "delivered"
    assert report.status("r2d2@receiver.com") == "rejected"  # VRFY 550: unknown here
    ladder = dissect(str(capture.path), host_names(lab.topology))
    kinds = [(s.src, s.kind) for s in ladder.steps if s.kind in ("syn", "fin")]
    assert kinds == [("sender", "syn"), ("receiver", "fin"), ("sender", "fin")]
    assert dns.log.find("receiver.com", "MX")[0].client[0] == "192.0.2.10"


PLUGIN_FIXTURES = {
    "lab_factory", "lab", "seed_scenario", "dns", "smtp_receiver", "smtp_sender", "capture",
    "scenario_run", "assert_ladder", "replay",
}  # fmt: skip


def test_pytest_fixtures_documents_every_fixture(pytester) -> None:
    """Issue 13: `pytest --fixtures` said "no docstring available" for capture,
    lab_factory, lab, dns and seed_scenario.  Every fixture the plugin defines has a
    docstring that starts with how it is called or what it is."""
    result = pytester.runpytest_subprocess("--fixtures", "-p", "no:cacheprovider")
    out = result.stdout.str()
    assert "no docstring available" not in out
    section = out.split("fixtures defined from harness.pytest_plugin")[1].splitlines()[1:]
    ends = [i for i, line in enumerate(section) if "fixtures defined from" in line]
    section = section[: ends[0]] if ends else section  # another plugin's (xdist's) follow
    documented = {}
    for line, following in itertools.pairwise(section):
        if " -- " in line and not line.startswith(" "):
            documented[line.split()[0]] = following.strip()
    assert set(documented) == PLUGIN_FIXTURES
    assert all(len(doc) > 20 for doc in documented.values()), documented


def test_scenario_run_takes_a_path_a_dict_or_a_toml_string(scenario_run) -> None:
    """Issue 13: `scenario_run` took only a file, so each test wrote a TOML first."""
    only_c3po = {"receiver": {"users": ["c3po"]}, "expect": {"delivered": ["c3po@receiver.com"]}}
    by_dict = scenario_run(only_c3po)
    by_text = scenario_run(
        '[receiver]\nusers = ["c3po"]\n[expect]\nrejected = ["aibo@receiver.com", '
        '"r2d2@receiver.com"]\n'
    )
    by_path = scenario_run(str(ROOT / "fixtures" / "scenarios" / "seed.toml"))
    for result in (by_dict, by_text, by_path):
        result.assert_ok()
    r2d2 = [r.report.status("r2d2@receiver.com") for r in (by_dict, by_text, by_path)]
    assert r2d2 == ["rejected", "rejected", "delivered"]  # c3po alone: r2d2 unknown (VRFY 550)
    assert len({by_dict.folder, by_text.folder, by_path.folder}) == 3
    assert only_c3po == {  # the caller's dict is left as it was
        "receiver": {"users": ["c3po"]},
        "expect": {"delivered": ["c3po@receiver.com"]},
    }


@pytest.mark.parametrize(
    "source",
    [{"receiver": {"users": ["c3\npo"]}}, '[receiver]\nusers = ["c3\\npo"]\n'],
    ids=["dict", "toml"],
)
def test_scenario_run_refuses_bad_data_in_one_line_naming_the_test_file(
    scenario_run, request, source
) -> None:
    with pytest.raises(HarnessError) as refused:
        scenario_run(source)
    assert str(refused.value) == (
        f'{request.path}: receiver.users[0]: "c3\\npo" is not a local part (RFC 5321 §4.1.2): '
        "control character U+000A at offset 2"
    )


BUSY = f"""
[[receiver.replies]]
on = "RCPT"
argument = "c3po@receiver.com"
code = 450
text = "4.2.0 c3po's mailbox is busy"
[expect]
delivered = ["c3po@receiver.com", "r2d2@receiver.com"]
golden = "{ROOT / "pcaps" / "seed.pcap"}"
"""


def test_assert_ok_says_the_outcomes_the_ladder_diff_and_keeps_the_artefacts(pytester) -> None:
    """Issue 13: `assert result.ok, result.problems` printed `["expected delivered [...],
    got []"]`: not that c3po was deferred at RCPT 450, no artefact path; the artefacts had
    neither the peers' logs nor the golden's ladder."""
    pytester.makepyfile(
        test_busy=f"""
        def test_busy(scenario_run):
            scenario_run({BUSY!r}).assert_ok()
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    kept = pytester.path / "runs" / "pytest-artefacts" / "test_busy.py__test_busy"
    assert "AssertionError: scenario unnamed: fail" in out
    assert "c3po@receiver.com deferred at RCPT 450 4.2.0 c3po's mailbox is busy" in out
    assert "aibo@receiver.com rejected at VRFY 550" in out
    assert "expected delivered ['c3po@receiver.com', 'r2d2@receiver.com']" in out
    assert f"{ROOT / 'pcaps' / 'seed.pcap'}:" in out and "error:" in out  # the ladder diff
    assert f"artefacts: {kept}" in out
    assert {p.name for p in kept.iterdir()} >= {
        "capture.pcapng", "ladder.txt", "ladder.svg", "ladder.html", "ladder.json", "run.json",
        "sender.jsonl", "receiver.jsonl", "dns.jsonl", "golden-ladder.txt", "golden-ladder.svg",
    }  # fmt: skip
    assert "450 4.2.0 c3po's mailbox is busy" in (kept / "ladder.txt").read_text()
    golden = (kept / "golden-ladder.txt").read_text()
    assert "VRFY aibo" in golden and "450" not in golden
