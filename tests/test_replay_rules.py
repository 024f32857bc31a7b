"""Reply rules with an occurrence (``nth``), which a captured server side needs: the rule,
its scenario key, and a real lab where the second RCPT alone is answered 450."""

from __future__ import annotations

import pytest
from conftest import ROOT
from test_replay_lab import SEED, _diff_steps, replay_cli

from harness.errors import HarnessError
from harness.replay.session import read_session
from harness.scenario import FIXTURES, scenario_from_data
from harness.smtp.policy import ReplyRule, rule_for


def test_a_rule_with_nth_answers_only_that_occurrence():
    second = ReplyRule(on="RCPT", nth=2, code=450)
    every = ReplyRule(on="RCPT", code=550)
    assert [second.matches("RCPT", None, seen) for seen in (1, 2, 3)] == [False, True, False]
    assert [rule_for([second, every], "RCPT", None, n) for n in (1, 2)] == [every, second]


def _rules(*tables: dict):
    data = {"dns": {"zones": str(FIXTURES / "zones")}, "receiver": {"replies": list(tables)}}
    data["sender"] = {"message": str(FIXTURES / "messages" / "seed.eml")}
    return scenario_from_data(data, ROOT / "rules.toml").receiver.rules


def test_nth_is_a_scenario_key_and_is_checked():
    (rule,) = _rules({"on": "RCPT", "nth": 2, "code": 450})
    assert rule.nth == 2
    with pytest.raises(HarnessError, match=r"replies\[0\]\.nth: 0 is not in 1\.\.1000"):
        _rules({"on": "RCPT", "nth": 0, "code": 450})
    with pytest.raises(HarnessError, match=r"replies\[1\]: never fires: .*replies\[0\]"):
        _rules({"on": "RCPT", "code": 450}, {"on": "RCPT", "nth": 2, "code": 451})
    with pytest.raises(HarnessError, match=r"replies\[1\]: never fires: .*the 2\. time"):
        _rules({"on": "RCPT", "nth": 2, "code": 450}, {"on": "RCPT", "nth": 2, "code": 451})
    assert len(_rules({"on": "RCPT", "nth": 2, "code": 450}, {"on": "RCPT", "code": 451})) == 2


@pytest.mark.lab
def test_the_second_rcpt_answered_450_is_a_diff_at_its_step(tmp_path):
    scenario = tmp_path / "second-rcpt.toml"
    scenario.write_text(
        f'[dns]\nzones = "{FIXTURES / "zones"}"\n'
        f'[sender]\nmessage = "{FIXTURES / "messages" / "seed.eml"}"\n'
        '[[receiver.replies]]\non = "RCPT"\nnth = 2\ncode = 450\ntext = "4.2.1 later"\n'
    )
    done, record = replay_cli(SEED, tmp_path / "run", "--scenario", str(scenario))
    assert done.returncode == 1, done.stdout + done.stderr
    rcpts = [s for s in read_session(str(SEED)).steps if s.get("answers") == "RCPT"]
    assert record["stopped"]["step"] == rcpts[1].index
    assert list(_diff_steps(tmp_path / "run")) == [rcpts[1].index]
    first = next(r for r in record["replies"] if r["step"] == rcpts[0].index)
    assert first["differences"] == []  # the first RCPT kept its 250
