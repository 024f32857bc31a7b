"""The STARTTLS checks (harness/checks/tls.py) beyond their crafted cases: the setups load
in every column of the matrix, the kinds and roles the issue asks for, and a ladder that
could not see inside TLS (the real dissector with no key log) is never judged as if it had.

A setup an MTA cannot play (refused at load) is an n/a cell.  The real-lab tests are in
tests/test_checks_tls_lab.py.
"""

from __future__ import annotations

import pytest
from check_cases import C3PO, DEFERRED, DELIVERED, MAIL_BEHIND, TLS10, TLS11, _secured
from tls_wire import READY, starttls, tls_run
from wire import Wire, run_of, scenario_of

from harness.checks.base import REFERENCE, Kind, Seen, registry
from harness.checks.expected import Expected
from harness.checks.matrix import Column, Matrix
from harness.errors import HarnessError, Unsupported
from harness.mta.base import adapters
from harness.verdict import Verdict

TLS = {k: c for k, c in registry().items() if k.startswith("tls.")}
OBSERVATIONS = {
    "tls.454-policy",
    "tls.downgrade",
    "tls.version-cipher",
    *(f"tls.certificate-{v}" for v in ("wrong-name", "expired", "self-signed", "no-intermediate")),
}
RECEIVER_ROLE = {
    "tls.no-starttls-after-tls",
    "tls.second-starttls-refused",
    "tls.injection-server",
    "tls.forgets-ehlo",
    "tls.version",
    "tls.version-cipher",
}
CLIENT_HELLO = b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00"  # an opaque TLS record
SERVER_HELLO = b"\x16\x03\x03\x00\x05\x02\x00\x00\x01\x00"


def test_the_issue_s_checks_are_registered_with_their_kinds_and_roles() -> None:
    assert len(TLS) == 22
    assert {k for k, c in TLS.items() if c.kind is Kind.OBSERVATION} == OBSERVATIONS
    assert {k for k, c in TLS.items() if "receiver" in c.roles} == RECEIVER_ROLE
    assert TLS["tls.version-cipher"].roles == TLS["tls.version"].roles == ("sender", "receiver")
    assert all("MTA-STS" not in c.title for c in TLS.values())


@pytest.mark.parametrize("check_id", sorted(TLS))
def test_every_setup_loads_in_every_column(check_id) -> None:
    """A real MTA on the side under test gets only the keys it takes (tls, certificate,
    starttls): a scripted-only key there is a load error, so this fails on one.  The one
    refusal allowed is OpenSMTPD's tls = "offer" (its adapter's, an n/a cell)."""
    check = TLS[check_id]
    for role in check.roles:
        for setup in check.setups:
            for mta in (REFERENCE, *adapters()):
                try:
                    scenario = setup.scenario(mta, role)
                except Unsupported as exc:
                    assert (mta, role) == ("opensmtpd", "receiver"), exc
                    continue
                side = scenario.sender if role == "sender" else scenario.receiver
                assert side is not None


def _looks_inside(check) -> bool:
    """The checks about the dialogue inside TLS (injection-server reads it in its judge)."""
    return check.id == "tls.injection-server" or any(p.inside_tls for p in check.requires)


def test_the_checks_about_the_inside_say_so() -> None:
    inside = {k for k, c in TLS.items() if _looks_inside(c)}
    assert inside == {
        "tls.no-starttls-after-tls",
        "tls.second-starttls-refused",
        "tls.forgets-ehlo",
        "tls.injection-server",
        "tls.injection-client",
        "tls.re-ehlo",
    }


def _undecrypted(delivered: bool):
    """A STARTTLS session the real dissector reads with no key log: records, opaque."""
    w, s = starttls()
    s.client(CLIENT_HELLO)
    s.server(SERVER_HELLO)
    s.close("receiver-first")
    return w, {C3PO: DELIVERED} if delivered else None


@pytest.mark.parametrize("check_id", sorted(TLS))
def test_an_undecrypted_delivery_is_an_error_never_a_verdict(check_id, tmp_path) -> None:
    """A delivery through TLS the ladder could not read: the checks about what happened
    inside are the harness's error (no key log), never n/a or pass; the plaintext ones
    still judge what they see."""
    check = TLS[check_id]
    role = check.roles[0]
    runs = []
    for i in range(len(check.setups)):
        wire, outcomes = _undecrypted(True)
        runs.append(run_of(scenario_of(check, role, i), wire, tmp_path / str(i), outcomes))
    assert any(s.kind == "tls" for s in runs[0].ladder.steps)
    outcome = check.judge(runs)
    plaintext = {
        "tls.nothing-after-starttls",  # judged before TLS: the 220 and nothing behind it
        "tls.starttls-last-in-group",  # n/a: no pipelining
        "tls.454-policy",  # n/a: no 454
        "tls.454-required",
        "tls.downgrade",  # n/a: STARTTLS was offered
        "tls.downgrade-required",
        "tls.version",  # n/a: these records hold no ServerHello to read in the clear
        "tls.version-cipher",
    }
    if check_id in plaintext:
        assert outcome.verdict in (Verdict.PASS, Verdict.NA), outcome
    elif check_id.endswith("-verify"):
        assert outcome.verdict is Verdict.FAIL, outcome  # delivered to a bad certificate
    else:
        assert outcome.verdict is Verdict.ERROR, outcome
        assert "not decrypted" in outcome.note


@pytest.mark.parametrize("check_id", sorted(k for k, c in TLS.items() if _looks_inside(c)))
def test_an_undecrypted_session_that_delivered_nothing_is_still_an_error(check_id, tmp_path):
    """TLS that happened and was not read is the lab's own failure (its key log is ours),
    delivery or not: never n/a "did not happen" about a session that did."""
    check = TLS[check_id]
    role = check.roles[0]
    runs = []
    for i in range(len(check.setups)):
        wire, _ = _undecrypted(False)
        runs.append(run_of(scenario_of(check, role, i), wire, tmp_path / str(i)))
    outcome = check.judge(runs)
    assert outcome.verdict is Verdict.ERROR, outcome
    assert "TLS on connection 1 was not decrypted" in outcome.note


def test_an_injection_refused_before_tls_is_not_exercised_and_says_so(tmp_path) -> None:
    """A server that refuses STARTTLS with plaintext behind it (Exim's synchronization
    error) never reaches TLS: the probe is n/a, and the note gives the reply."""
    check = TLS["tls.injection-server"]
    runs = []
    for i in range(len(check.setups)):
        w, s = starttls(behind=b"RSET\r\n", reply="554 5.5.0 SMTP synchronization error")
        s.close()
        runs.append(run_of(scenario_of(check, "receiver", i), w, tmp_path / str(i)))
    outcome = check.judge(runs)
    assert outcome.verdict is Verdict.NA
    assert "STARTTLS answered 554" in outcome.note


RECEIVER_CHECKS = sorted(k for k in TLS if "receiver" in TLS[k].roles)


@pytest.mark.parametrize("check_id", RECEIVER_CHECKS)
def test_a_setup_the_mta_cannot_play_is_n_a_with_the_reason(check_id, tmp_path) -> None:
    """OpenSMTPD 6.8 cannot serve STARTTLS here (its adapter refuses tls = "offer" at
    load): nothing is exercised, so n/a naming why, never an error cell; no lab is built."""
    m = Matrix(tmp_path, Expected({}))
    cell = m.cell(TLS[check_id], "receiver", Column("opensmtpd", "6.8.0p2"))
    assert cell.verdict is Verdict.NA
    assert cell.note.startswith('not exercised: opensmtpd: tls = "offer": ')
    assert not any(tmp_path.iterdir())


def test_a_refused_setting_is_still_bad_input_for_run(tmp_path) -> None:
    setup = TLS["tls.no-starttls-after-tls"].setups[0]
    with pytest.raises(Unsupported) as refused:
        setup.scenario("opensmtpd", "receiver")
    assert refused.value.reason.startswith('opensmtpd: tls = "offer": ')
    assert str(refused.value).endswith(f"tls-receiver.toml: receiver.mta: {refused.value.reason}")
    assert isinstance(refused.value, HarnessError)  # exit 2 for run


@pytest.mark.parametrize("ahead", [b"", b"RSET\r\n"])
def test_one_command_behind_starttls_is_one_fail(ahead, tmp_path) -> None:
    """MAIL behind STARTTLS: sent on its own, nothing-after-starttls fails; behind RSET (a
    pipelined group), starttls-last-in-group does; the other check is n/a, never a second
    fail for the same bytes."""
    reply = "250 2.0.0 Ok\r\n" + READY if ahead else READY
    verdicts = {}
    for check_id in ("tls.nothing-after-starttls", "tls.starttls-last-in-group"):
        check = TLS[check_id]
        make = _secured(ahead=ahead, reply=reply, behind=MAIL_BEHIND)
        scenario = scenario_of(check, "sender")
        folder = tmp_path / check_id
        verdicts[check_id] = check.judge([tls_run(scenario, folder, make(scenario, folder))])
    failing = "tls.starttls-last-in-group" if ahead else "tls.nothing-after-starttls"
    assert {k: o.verdict for k, o in verdicts.items()} == {
        k: Verdict.FAIL if k == failing else Verdict.NA for k in verdicts
    }


def test_downgrade_required_passes_citing_both_runs(tmp_path) -> None:
    """The pass is earned in each run: the judge itself cites the stripped EHLO reply of
    the required run and of the verify one (the preconditions' steps are not enough)."""
    check = TLS["tls.downgrade-required"]
    runs = []
    for i in range(2):
        s = Wire().seed_mx().smtp()
        s.ehlo("PIPELINING", "8BITMIME")
        scenario = scenario_of(check, "sender", i)
        runs.append(run_of(scenario, s.quit(), tmp_path / str(i), {C3PO: DEFERRED}))
    found = tuple(tuple(check.requires[i].find(run)) for i, run in enumerate(runs))
    own = check.judge_seen(Seen(tuple(runs), found))
    assert own.verdict is Verdict.PASS
    assert {run for run, _ in own.evidence} == {0, 1}
    assert check.judge(runs).verdict is Verdict.PASS


def test_tls_version_fails_below_tls12_and_says_which_rfc(tmp_path) -> None:
    check = TLS["tls.version"]
    scenario = scenario_of(check, "receiver")
    for handshake, rfc in ((TLS10, "RFC 8996 §2"), (TLS11, "RFC 8996 §3")):
        folder = tmp_path / rfc
        ladder = _secured(None, handshake)(scenario, folder)
        outcome = check.judge([tls_run(scenario, folder, ladder)])
        assert outcome.verdict is Verdict.FAIL and rfc in outcome.note, outcome
        assert outcome.evidence  # the handshake step
