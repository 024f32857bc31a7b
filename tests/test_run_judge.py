"""The run-level judgement (harness/runner.py ``judge`` and ``RunResult.verdict``) over
crafted runs: lost messages, every mailbox looked at, the two message comparisons, and
``[expect]`` about the wire (issue 8 findings 2, 4, 5, 6; "[expect] about the wire")."""

from __future__ import annotations

from pathlib import Path

import pytest
from wire import MESSAGE, RECEIVER, TRAP, Wire, run_of

from harness.errors import InternalFault
from harness.outcome import Dsn, Outcome, OutcomeStatus
from harness.runner import judge
from harness.scenario import SEED_SCENARIO, scenario_from_data
from harness.verdict import Verdict

C3PO, R2D2 = "c3po@receiver.com", "r2d2@receiver.com"


def _scenario(tmp_path: Path, message: bytes = MESSAGE, **sections: dict):
    (tmp_path / "m.eml").write_bytes(message)
    data = {"sender": {"recipients": [C3PO], "message": str(tmp_path / "m.eml")}}
    for name, keys in sections.items():
        data.setdefault(name, {}).update(keys)
    return scenario_from_data(data, tmp_path / "s.toml")


def _delivered() -> Wire:
    s = Wire().seed_mx().smtp()
    s.ehlo()
    return s.transaction([C3PO]).quit()


def test_a_clean_run_passes(tmp_path) -> None:
    scenario = _scenario(tmp_path)
    run = run_of(
        scenario, _delivered(), tmp_path, {C3PO: OutcomeStatus.DELIVERED}, {C3PO: [MESSAGE]}
    )
    run.report.contents.append(MESSAGE)
    assert judge(run) == [] and run.verdict is Verdict.PASS


def test_a_lost_message_fails_the_run(tmp_path) -> None:
    """Issue 8 finding 2: the queue read empty, no DSN, no copy: the MTA lost it."""
    lost = Outcome(C3PO, OutcomeStatus.LOST, "queue", text="the queue was read and is empty")
    run = run_of(_scenario(tmp_path), Wire().seed_mx(), tmp_path, {C3PO: lost})
    (problem,) = judge(run)
    assert problem.startswith(f"{C3PO}: lost") and "RFC 5321 §6.1" in problem


def test_a_message_in_a_mailbox_no_envelope_named_fails(tmp_path) -> None:
    """Issue 8 finding 6: smuggled mail for r2d2 while the envelope named c3po only."""
    scenario = _scenario(tmp_path)
    stored = {C3PO: [MESSAGE], R2D2: [b"Subject: smuggled\r\n\r\nsmuggled\r\n"]}
    run = run_of(scenario, _delivered(), tmp_path, {C3PO: OutcomeStatus.DELIVERED}, stored)
    run.report.contents.append(MESSAGE)
    problems = judge(run)
    assert any(
        p.startswith(f"{R2D2}: 1 message(s) stored that no delivered recipient") for p in problems
    )


def test_expect_stored_makes_such_a_message_expected(tmp_path) -> None:
    scenario = _scenario(tmp_path, expect={"stored": {C3PO: 1, R2D2: 1}})
    stored = {C3PO: [MESSAGE], R2D2: [MESSAGE]}
    run = run_of(scenario, _delivered(), tmp_path, {C3PO: OutcomeStatus.DELIVERED}, stored)
    run.report.contents.append(MESSAGE)
    assert judge(run) == []
    scenario = _scenario(tmp_path, expect={"stored": {C3PO: 1}})
    run = run_of(scenario, _delivered(), tmp_path, {C3PO: OutcomeStatus.DELIVERED}, stored)
    run.report.contents.append(MESSAGE)
    assert judge(run) == [f"{R2D2}: 1 messages stored, expected 0"]


def test_the_stored_copy_is_compared_with_the_bytes_sent_not_the_file(tmp_path) -> None:
    """Issue 8 finding 5: with ``position = "instead"`` the wire content is the script's."""
    instead = b"Subject: scripted\r\n\r\nnot the file\r\n"
    scenario = _scenario(tmp_path)
    run = run_of(
        scenario, _delivered(), tmp_path, {C3PO: OutcomeStatus.DELIVERED}, {C3PO: [instead]}
    )
    run.report.contents.append(instead)
    assert judge(run) == []
    run.report.contents[0] = instead.replace(b"not", b"NOT")
    (problem,) = judge(run)
    assert "differs from wire in its body" in problem and "+not the file" in problem


def test_a_real_mta_sender_may_add_date_and_message_id(tmp_path) -> None:
    """Issue 8 finding 4: Postfix adds Date and Message-ID to a message with neither."""
    scenario = _scenario(tmp_path, sender={"mta": "postfix"})
    relayed = b"Received: by mail.sender.com (Postfix)\r\n" + MESSAGE.replace(
        b"\r\n\r\n", b"\r\nDate: Tue, 1 Dec 2026\r\nMessage-Id: <1@mail.sender.com>\r\n\r\n"
    )
    run = run_of(
        scenario, _delivered(), tmp_path, {C3PO: OutcomeStatus.DELIVERED}, {C3PO: [relayed]}
    )
    assert judge(run) == []
    changed = relayed.replace(b"Subject: hi", b"Subject: HI")
    run = run_of(
        scenario, _delivered(), tmp_path, {C3PO: OutcomeStatus.DELIVERED}, {C3PO: [changed]}
    )
    (problem,) = judge(run)
    assert problem.startswith("wire differs from message in its header fields")
    assert "-Subject: hi" in problem and "+Subject: HI" in problem


@pytest.mark.parametrize(
    ("expect", "wire", "problem"),
    [
        ({"syns_only_to": []}, _delivered, "SYNs only to [] expected, got step 3 to receiver"),
        ({"syns_only_to": [RECEIVER]}, _delivered, None),
        (
            {"syns_only_to": [RECEIVER]},
            lambda: Wire().seed_mx().refused(TRAP),
            f"SYNs only to ['{RECEIVER}'] expected, got step 3 to {TRAP}",
        ),
        ({"contents_sent": 1}, _delivered, None),
        ({"contents_sent": 0}, _delivered, "1 message contents sent, expected 0"),
    ],
)
def test_expect_about_the_wire(tmp_path, expect, wire, problem) -> None:
    scenario = _scenario(tmp_path, expect=expect)
    run = run_of(scenario, wire(), tmp_path, {C3PO: OutcomeStatus.DELIVERED}, {C3PO: [MESSAGE]})
    run.report.contents.append(MESSAGE)
    assert [p for p in judge(run) if "SYN" in p or "contents" in p] == (
        [problem] if problem else []
    )


def test_expect_dsns_with_status_classes(tmp_path) -> None:
    dsn = {"recipient": C3PO, "action": "failed", "status": "5.1"}
    scenario = _scenario(tmp_path, expect={"dsns": [dsn]})
    bounced = Outcome(C3PO, OutcomeStatus.REJECTED, "dsn", status_code="5.1.10")
    run = run_of(scenario, Wire().mx("receiver.com. MX 0 ."), tmp_path, {C3PO: bounced})
    run.report.dsns.append(Dsn(C3PO, "failed", "5.1.10", "556 null MX"))
    assert judge(run) == []
    run.report.dsns[0] = Dsn(C3PO, "failed", "5.10.1")
    (problem,) = judge(run)
    assert problem == f"expected a DSN failed 5.1 for {C3PO}, got ['{C3PO} failed 5.10.1']"


def test_dns_questions_that_must_not_be_asked(tmp_path) -> None:
    from harness.dns.querylog import QueryEntry

    scenario = _scenario(tmp_path, expect={"dns_not_asked": ["receiver.com A"]})
    run = run_of(scenario, None, tmp_path, {C3PO: OutcomeStatus.DEFERRED})
    assert judge(run) == []
    entry = QueryEntry(0.0, ("192.0.2.10", 5353), "udp", "receiver.com.", "A", "NOERROR", (), None)
    run.dns_log.append(entry)
    assert judge(run) == ["the DNS question 'receiver.com A' was asked, expected not to be"]


def test_a_fault_of_ours_makes_the_verdict_error_whatever_else(tmp_path) -> None:
    run = run_of(load_seed(), None, tmp_path)
    run.faults.append(InternalFault("receiver session 1", "KeyError: 'x'"))
    run.problems.append("also a problem")
    assert run.verdict is Verdict.ERROR and not run.ok


def load_seed():
    from harness.scenario import load_scenario

    return load_scenario(SEED_SCENARIO)
