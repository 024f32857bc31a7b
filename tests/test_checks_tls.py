"""The STARTTLS checks (harness/checks/tls.py) beyond their crafted cases: the setups load
in every column of the matrix, the kinds and roles the issue asks for, and a ladder that
could not see inside TLS (the real dissector with no key log) is never judged as if it had.

A setup an MTA cannot play (refused at load) is an n/a cell.  The real-lab tests are in
tests/test_checks_tls_lab.py.
"""

from __future__ import annotations

import pytest
from check_cases import C3PO, DELIVERED
from tls_wire import starttls
from wire import run_of, scenario_of

from harness.checks.base import REFERENCE, Kind, registry
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
    "tls.version-cipher",
}
CLIENT_HELLO = b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00"  # an opaque TLS record
SERVER_HELLO = b"\x16\x03\x03\x00\x05\x02\x00\x00\x01\x00"


def test_the_issue_s_checks_are_registered_with_their_kinds_and_roles() -> None:
    assert len(TLS) == 21
    assert {k for k, c in TLS.items() if c.kind is Kind.OBSERVATION} == OBSERVATIONS
    assert {k for k, c in TLS.items() if "receiver" in c.roles} == RECEIVER_ROLE
    assert TLS["tls.version-cipher"].roles == ("sender", "receiver")
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
    }
    if check_id in plaintext:
        assert outcome.verdict in (Verdict.PASS, Verdict.NA), outcome
    elif check_id.endswith("-verify"):
        assert outcome.verdict is Verdict.FAIL, outcome  # delivered to a bad certificate
    else:
        assert outcome.verdict is Verdict.ERROR, outcome
        assert "not decrypted" in outcome.note


def test_an_undecrypted_session_that_delivered_nothing_is_not_exercised(tmp_path) -> None:
    check = TLS["tls.re-ehlo"]
    wire, _ = _undecrypted(False)
    run = run_of(scenario_of(check, "sender"), wire, tmp_path)
    assert check.judge([run]).verdict is Verdict.NA


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
