"""The STARTTLS checks (harness/checks/tls.py) in real labs: the harness column of
``smtp-harness matrix --check 'tls.*'`` judged as fixtures/expected-matrix.toml records it
(a rule not listed passes, an observation has its recorded value, never an error), and each
injection probe failing against the scripted peer built to fail it (``[receiver]
starttls_plaintext = "answer"``, ``[sender] starttls_plaintext = "keep"``).
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from harness.checks.base import REFERENCE, Check, Setup, registry
from harness.checks.expected import DEFAULT_EXPECTED, load_expected
from harness.checks.matrix import Column, Matrix
from harness.verdict import Verdict

pytestmark = pytest.mark.lab

HARNESS = Column(REFERENCE, "0.1.0")
TLS = {k: c for k, c in registry().items() if k.startswith("tls.")}
CELLS = [(k, role) for k, c in sorted(TLS.items()) for role in c.roles]


@pytest.fixture(scope="module")
def tls_matrix(tmp_path_factory) -> Matrix:
    return Matrix(
        tmp_path_factory.mktemp("tls-matrix"), load_expected(DEFAULT_EXPECTED, registry())
    )


@pytest.mark.parametrize(("check_id", "role"), CELLS)
def test_the_harness_column_gives_its_recorded_verdicts(tls_matrix, check_id, role) -> None:
    cell = tls_matrix.cell(TLS[check_id], role, HARNESS)
    assert cell.verdict is not Verdict.ERROR, cell.note
    assert cell.difference == "match", (cell.verdict, cell.value, cell.note, cell.expected)
    assert cell.evidence or cell.verdict == Verdict.NA, cell.note


def _with(check: Check, section: str, keys: dict, setup: Setup) -> Check:
    """``check`` over ``setup`` alone, with ``keys`` added to its ``section``."""
    data = json.loads(json.dumps(setup.data))
    data.setdefault(section, {}).update(keys)
    built = Setup(f"{setup.name}-built-to-fail", data, setup.reference, setup.by_role)
    return dataclasses.replace(check, setups=(built,))


SERVER = TLS["tls.injection-server"]


@pytest.mark.parametrize("setup", SERVER.setups, ids=lambda s: s.name)
def test_a_receiver_answering_the_injected_commands_fails(tls_matrix, setup) -> None:
    """Each probe (RSET, MAIL, a whole transaction behind STARTTLS) against a receiver
    that answers, inside TLS, what was pipelined in plaintext: CVE-2011-0411's bug."""
    check = _with(SERVER, "receiver", {"starttls_plaintext": "answer"}, setup)
    cell = tls_matrix.cell(check, "receiver", HARNESS)
    assert cell.verdict is Verdict.FAIL, cell.note
    assert cell.note.startswith("answered injected plaintext inside TLS")
    ladder = json.loads((cell.folders[0] / "ladder.json").read_text())
    steps = {s["index"]: s for s in ladder["steps"]}
    anomaly, *answers = (steps[i] for _run, i in cell.evidence)
    assert anomaly["kind"] == "anomaly" and anomaly["src"] == "sender"
    assert answers and all(s["kind"] == "reply" and s["detail"]["tls"] for s in answers)


def test_a_sender_taking_the_injected_reply_fails(tls_matrix) -> None:
    """A reply behind the 220, against a sender that takes it as a reply inside TLS."""
    client = TLS["tls.injection-client"]
    check = _with(client, "sender", {"starttls_plaintext": "keep"}, client.setups[0])
    cell = tls_matrix.cell(check, "sender", HARNESS)
    assert cell.verdict is Verdict.FAIL, cell.note
    assert "the injected reply" in cell.note


TLS_SESSION = {"receiver": {"tls": "offer"}, "sender": {"ehlo": True, "starttls": "required"}}
CLOSES = [
    (k, role) for k in sorted(registry()) if k.startswith("close.") for role in registry()[k].roles
]


@pytest.mark.parametrize(("check_id", "role"), CLOSES)
def test_the_close_checks_judge_a_tls_session_as_a_plaintext_one(tls_matrix, check_id, role):
    """Inside TLS the FINs follow asyncio's TLS close (the receiver's close_notify first,
    then either FIN first): the verdicts and values do not depend on that order."""
    check = registry()[check_id]
    plain = tls_matrix.cell(check, role, HARNESS)
    setup = check.setups[0]
    data = json.loads(json.dumps(setup.data))
    for section, keys in TLS_SESSION.items():
        data.setdefault(section, {}).update(keys)
    secured = Setup(f"{setup.name}-in-tls", data, {"sender": {"ehlo": True}}, setup.by_role)
    cell = tls_matrix.cell(dataclasses.replace(check, setups=(secured,)), role, HARNESS)
    ladder = json.loads((cell.folders[0] / "ladder.json").read_text())
    assert any(s["kind"] == "tls-handshake" for s in ladder["steps"])
    assert (cell.verdict, cell.value) == (plain.verdict, plain.value), cell.note
    assert cell.verdict in (Verdict.PASS, Verdict.OBSERVED)


MTA_CELLS = [
    # Exim drops the connection on the bytes behind the 220 ("synch error"), asyncio has
    # closed the TLS transport on its EOF: once a harness fault (a second close); it took
    # no reply inside TLS and delivered on a new connection: a pass (expected-matrix.toml)
    ("exim", "sender", "tls.injection-client", Verdict.PASS),
    # after a 454 Sendmail's ${verify} is TEMP: the required policy once let it through
    ("sendmail", "sender", "tls.454-required", Verdict.PASS),
]


@pytest.mark.parametrize(("mta", "role", "check_id", "verdict"), MTA_CELLS)
def test_mta_cells_give_their_recorded_verdicts(open_folder, mta, role, check_id, verdict):
    m = Matrix(open_folder, load_expected(DEFAULT_EXPECTED, registry()))
    cell = m.cell(TLS[check_id], role, m.column(mta))
    assert (cell.verdict, cell.difference) == (verdict, "match"), cell.note
