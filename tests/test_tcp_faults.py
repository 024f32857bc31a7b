"""TCP faults tied to protocol state, from the scripted receiver: an RST (SO_LINGER 0)
after RCPT, after 354, after the final "." instead of its 250, after the 250 - real runs,
judged by what the sender decided and what the receiver stored (RFC 5321 §6.1, RFC 1047:
a connection lost before the 250 is a temporary failure, a duplicate is possible, a lost
message is not acceptable; after the 250 the message is delivered)."""

from __future__ import annotations

import subprocess

import pytest
from check_cases import C3PO, DEFERRED
from wire import MESSAGE, Wire, run_of, scenario_of, stuffed

from harness.checks.base import registry
from harness.errors import HarnessError
from harness.ladder.model import StepKind
from harness.runner import run_scenario
from harness.scenario import SEED_SCENARIO, scenario_from_data
from harness.verdict import Verdict

BOTH = ["c3po@receiver.com", "r2d2@receiver.com"]
STORED = {"c3po@receiver.com": 1, "r2d2@receiver.com": 1}

CASES = {  # name -> (the reply rule, expect, the text of the last reply before the RST)
    "after RCPT": ({"on": "RCPT", "reset": True}, {"deferred": BOTH, "stored": {}}, "250"),
    "after 354": ({"on": "DATA", "reset": True}, {"deferred": BOTH, "stored": {}}, "354"),
    "before the 250": (
        {"on": "<end-of-data>", "raw": "", "reset": True},
        {"deferred": BOTH, "stored": {}},  # raw "" is no reply: nothing is committed
        "354",
    ),
    "after the 250": (
        {"on": "<end-of-data>", "reset": True},
        {"delivered": BOTH, "stored": STORED},
        "250 OK Mail accepted",
    ),
}


def _scenario(rule: dict, expect: dict):
    data = {
        "dns": {"zones": str(SEED_SCENARIO.parent.parent / "zones")},
        "receiver": {"replies": [rule]},
        "expect": {"rejected": ["aibo@receiver.com"], **expect},
    }
    return scenario_from_data(data, SEED_SCENARIO)


@pytest.mark.lab
@pytest.mark.parametrize("case", CASES)
def test_a_reset_at_each_stage(case: str, tmp_path) -> None:
    rule, expect, before = CASES[case]
    result = run_scenario(_scenario(rule, expect), tmp_path / "run")
    assert result.problems == [] and result.faults == [], result.problems
    steps = result.ladder.steps
    rst = next(i for i, s in enumerate(steps) if s.kind == StepKind.RST)
    assert steps[rst].src == "receiver"
    replies = [s for s in steps[:rst] if s.kind == StepKind.REPLY]
    assert replies[-1].text.startswith(before)
    assert not any(s.kind == StepKind.REPLY for s in steps[rst:])  # nothing after the RST
    entries = [e["kind"] for e in result.receiver_log]
    assert "reset" in entries


def test_reset_or_close_not_both() -> None:
    with pytest.raises(HarnessError, match=r"receiver.replies\[0\].reset: give close"):
        _scenario({"on": "RCPT", "reset": True, "close": True}, {})


@pytest.mark.lab
def test_after_quit_and_a_half_close_the_receiver_still_sends_its_221(tmp_path) -> None:
    """RFC 5321 §4.1.1.10: the receiver MUST send 221 to QUIT; our FIN right after QUIT
    (the client's half-close) does not excuse it."""
    data = {
        "dns": {"zones": str(SEED_SCENARIO.parent.parent / "zones")},
        "sender": {"half_close": True},
        "expect": {"rejected": ["aibo@receiver.com"], "delivered": BOTH},
    }
    result = run_scenario(scenario_from_data(data, SEED_SCENARIO), tmp_path / "run")
    assert result.problems == [] and result.faults == [], result.problems
    steps = result.ladder.steps
    quit_ = next(i for i, s in enumerate(steps) if s.kind == StepKind.COMMAND and s.text == "QUIT")
    after = [(s.kind, s.src, s.text.split(" ")[0]) for s in steps[quit_ + 1 :]]
    fin = after.index((StepKind.FIN, "sender", "FIN"))
    assert (StepKind.REPLY, "receiver", "221") in after[fin:]
    assert (StepKind.FIN, "receiver", "FIN") in after[fin:]


@pytest.mark.lab
def test_a_receiver_that_stops_reading_mid_data_defers_the_message(tmp_path) -> None:
    """After 354 the receiver reads nothing more: the 400 kB message fills its window (tshark
    sees the zero window), the sender's reply never comes, nothing is stored, the
    recipients are deferred (RFC 5321 §4.5.3.2.6, §6.1), never delivered."""
    message = tmp_path / "big.eml"
    body = b"".join(
        b"line %06d of a message too large for one receive window\r\n" % i for i in range(16000)
    )
    message.write_bytes(b"Subject: big\r\n\r\n" + body)
    data = {
        "dns": {"zones": str(SEED_SCENARIO.parent.parent / "zones")},
        "receiver": {"replies": [{"on": "DATA", "stop_reading": True}], "timeout_ms": 5000},
        "sender": {"message": str(message), "timeout_ms": 8000},
        "expect": {"rejected": ["aibo@receiver.com"], "deferred": BOTH, "stored": {}},
    }
    result = run_scenario(scenario_from_data(data, SEED_SCENARIO), tmp_path / "run")
    assert result.problems == [] and result.faults == [], result.problems
    zero_windows = ["-Y", "tcp.analysis.zero_window", "-T", "fields", "-e", "ip.src"]
    zero = subprocess.run(
        ["tshark", "-r", str(result.pcap), *zero_windows], capture_output=True, text=True
    )
    assert "192.0.2.25" in zero.stdout.split()
    assert "stopped-reading" in [e["kind"] for e in result.receiver_log]


def test_zero_window_data_needs_the_window_closed_on_the_wire(tmp_path) -> None:
    """tcp.zero-window-data's precondition: a message that got complete on the wire after
    the 354 (the window never closed) is not the fault, whatever the outcome: n/a."""
    check = registry()["tcp.zero-window-data"]
    s = Wire().seed_mx().smtp()
    s.ehlo("PIPELINING")
    s.say("MAIL FROM:<luke@sender.com>", "250 OK")
    s.say(f"RCPT TO:<{C3PO}>", "250 OK")
    s.say("DATA", "354 End data with <CR><LF>.<CR><LF>")
    s.conn.send("c", stuffed(MESSAGE) + b".\r\n")
    s.server("421 4.4.2 mail.receiver.com Error: timeout exceeded")
    s.conn.rst("s")
    run = run_of(scenario_of(check, "sender"), s.wire, tmp_path, outcomes={C3PO: DEFERRED})
    outcome = check.judge([run])
    assert outcome.verdict is Verdict.NA and "closed window" in outcome.note
