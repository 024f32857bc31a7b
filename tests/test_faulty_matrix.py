"""tools/faulty_matrix.py: the overlay every setup gets, and how a cell is compared with
the observed matrix (the runs themselves are the matrix's: tests/test_matrix_*.py)."""

from __future__ import annotations

from test_fuzz import _tool

from harness.checks.base import REFERENCE, registry
from harness.checks.dns import MX_FALLBACK
from harness.checks.tcp import SILENT, SYN_UNANSWERED

faulty = _tool("faulty_matrix")
KNOBS = {"loss": 0.05, "delay_ms": 50, "jitter_ms": 20}


def test_every_host_gets_the_fault_and_a_checks_own_fault_stays() -> None:
    setup = faulty.overlaid(SYN_UNANSWERED, "sender", KNOBS, 7)
    scenario = setup.scenario("postfix", "sender")  # validated as any scenario
    by_host = {f.host: f for f in scenario.link_faults}
    assert set(by_host) == {h.name for h in scenario.topology.hosts}
    assert by_host[SILENT].loss == 1.0 and by_host[SILENT].delay_ms == 0  # its own
    assert all(f.loss == 0.05 and f.jitter_ms == 20 for h, f in by_host.items() if h != SILENT)
    assert scenario.network_seed == 7
    assert SYN_UNANSWERED.data["network"]["seed"] == 1  # the check's setup is unchanged
    plain = faulty.overlaid(MX_FALLBACK, "sender", {"duplicate": 0.05}, 1)
    faults = plain.scenario(REFERENCE, "sender").link_faults
    assert len(faults) == 3 and {f.direction for f in faults} == {"out"}


def test_a_cell_matches_only_with_the_same_verdict_and_value() -> None:
    delay = "tcp.next-mx-delay"
    observed = {
        (delay, "sender", "postfix"): {"verdict": "observed", "value": "5 s"},
        ("seed.exchange", "sender", "postfix"): {"verdict": "pass", "value": None},
    }

    def got(check: str, verdict: str, value: str | None = None) -> dict:
        return {
            "check": check,
            "role": "sender",
            "mta": "postfix",
            "verdict": verdict,
            "value": value,
        }

    assert faulty.compared(got(delay, "observed", "5 s"), observed) == "match"
    assert faulty.compared(got(delay, "observed", "6 s"), observed) == "was observed '5 s'"
    assert faulty.compared(got("seed.exchange", "fail"), observed) == "was pass"
    assert faulty.compared(got("dns.mx-fallback", "pass"), observed) == (
        "not in the observed matrix"
    )
    assert delay in registry()
