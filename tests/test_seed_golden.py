"""The seed exchange on the wire, judged against pcaps/seed.pcap through the pytest plugin."""

from __future__ import annotations

import pytest
from conftest import ROOT

from harness.ladder.dissect import dissect
from harness.runner import host_names
from harness.scenario import load_scenario

pytestmark = pytest.mark.lab

GOLDEN = ROOT / "pcaps" / "seed.pcap"


def test_seed_wire_matches_the_golden_capture(scenario_run, assert_ladder) -> None:
    result = scenario_run()
    assert result.ok, result.problems
    assert_ladder(result, GOLDEN)


def test_golden_seed_has_the_ladder_of_the_reference_exchange() -> None:
    """pcaps/seed.pcap itself: the 33 steps of shared/seed/ladder.md (content + '.' is one)."""
    ladder = dissect(str(GOLDEN), host_names(load_scenario(None).topology))
    rows = [(s.src, s.dst, s.kind, s.text) for s in ladder.steps]
    assert [r[:3] for r in rows] == [
        ("sender", "dns", "dns-query"), ("dns", "sender", "dns-answer"),
        ("sender", "receiver", "syn"), ("receiver", "sender", "syn-ack"),
        ("sender", "receiver", "ack"),
        ("receiver", "sender", "reply"),
        ("sender", "receiver", "command"),
        ("receiver", "dns", "dns-query"), ("dns", "receiver", "dns-answer"),
        ("receiver", "sender", "reply"),
        *[("sender", "receiver", "command"), ("receiver", "sender", "reply")] * 7,
        ("sender", "receiver", "content"), ("receiver", "sender", "reply"),
        ("sender", "receiver", "command"), ("receiver", "sender", "reply"),
        ("receiver", "sender", "fin"), ("sender", "receiver", "fin-ack"),
        ("sender", "receiver", "fin"), ("receiver", "sender", "close-ack"),
    ]  # fmt: skip
    texts = [r[3] for r in rows]
    assert texts[0] == "receiver.com IN MX"
    assert texts[1].startswith("MX 10 mail.receiver.com. + A mail.receiver.com. 192.0.2.25")
    assert texts[6] == "HELO mail.sender.com"
    assert texts[7] == "10.2.0.192.in-addr.arpa IN PTR"
    assert [t for t in texts if t.startswith("VRFY")] == ["VRFY aibo", "VRFY c3po", "VRFY r2d2"]
    assert texts[texts.index("VRFY aibo") + 1].startswith("550")
    assert "RCPT TO:<aibo@receiver.com>" not in texts
    assert texts[-7:-4] == ["250 OK Mail accepted", "QUIT", texts[-5]]
    assert texts[-5].startswith("221")
    assert ladder.coverage[1].units == 21 and ladder.coverage[1].complete  # all ACKed


def test_a_different_wire_fails_with_a_packetdrill_diff(pytester) -> None:
    scenario = pytester.path / "vrfy252.toml"
    scenario.write_text(
        f'[dns]\nzones = "{ROOT / "fixtures" / "zones"}"\n'
        f'[sender]\nmessage = "{ROOT / "fixtures" / "messages" / "seed.eml"}"\n'
        '[receiver]\nvrfy = "252"\n'
    )
    pytester.makepyfile(
        f"""
        def test_wire(scenario_run, assert_ladder):
            assert_ladder(scenario_run({str(scenario)!r}), {str(GOLDEN)!r})
        """
    )
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest_subprocess(f"--junitxml={junit}", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert f"{GOLDEN}:12: error: reply differs" in out and "VRFY aibo" in out
    assert "550" in out and "252" in out
    assert str(GOLDEN) in out and "capture.pcapng" in out
    assert "pytest-artefacts" in junit.read_text()  # the failure text names the artefacts
