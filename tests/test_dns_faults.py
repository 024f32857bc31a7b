"""Fault rules and the query log, without sockets (the live behaviour is in test_dns_server)."""

from __future__ import annotations

import json

import pytest

from harness.dns import FaultRule, FaultRules, QueryEntry, QueryLog
from harness.dns.zones import name_key
from harness.errors import HarnessError

MX = name_key("receiver.com")


def test_rules_from_scenario_tables():
    rules = FaultRules(
        [
            {"name": "receiver.com", "type": "MX", "action": "servfail"},
            {"name": "mail.receiver.com.", "type": "a", "action": "delay", "ms": 300},
            {"name": "sender.com", "type": "*", "action": "fail_times", "times": 2},
        ]
    )
    assert [rule.describe() for rule in rules] == ["servfail", "delay:300", "fail_times:2"]
    assert rules.match(MX, "MX").action == "servfail"
    assert rules.match(name_key("MAIL.receiver.com"), "A").ms == 300
    assert rules.match(MX, "A") is None


def test_exact_type_beats_star_and_replacing_a_rule():
    rules = FaultRules()
    rules.add(FaultRule.from_dict({"name": "receiver.com", "type": "*", "action": "drop"}))
    rules.add(FaultRule.from_dict({"name": "receiver.com", "type": "MX", "action": "refused"}))
    assert rules.match(MX, "MX").action == "refused"
    assert rules.match(MX, "TXT").action == "drop"
    rules.add(FaultRule.from_dict({"name": "receiver.com", "type": "MX", "action": "truncate"}))
    assert rules.match(MX, "MX").action == "truncate"
    assert len(rules) == 2


def test_fail_times_counts_down_then_stops_firing():
    rules = FaultRules([{"name": "receiver.com", "type": "MX", "action": "fail_times", "times": 2}])
    fired = [rules.match(MX, "MX") is not None for _ in range(4)]
    assert fired == [True, True, False, False]


def test_remove_and_clear():
    rules = FaultRules()
    rule = rules.add(FaultRule.parse("receiver.com/MX=servfail"))
    rules.remove(rule)
    assert rules.match(MX, "MX") is None
    rules.add(rule)
    rules.clear()
    assert rules.match(MX, "MX") is None and len(rules) == 0


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("receiver.com/MX=servfail", FaultRule("receiver.com.", "MX", "servfail")),
        ("receiver.com/*=delay:300", FaultRule("receiver.com.", "*", "delay", ms=300)),
        (
            "a.receiver.com/aaaa=fail_times:3",
            FaultRule("a.receiver.com.", "AAAA", "fail_times", times=3),
        ),
    ],
)
def test_cli_spec(spec, expected):
    assert FaultRule.parse(spec) == expected


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"type": "MX", "action": "drop"}, "key 'name' must be a non-empty string"),
        (
            {"name": "r.com", "type": "MX", "action": "explode"},
            "key 'action': unknown action 'explode'",
        ),
        (
            {"name": "r.com", "type": "BOGUS", "action": "drop"},
            "key 'type': unknown DNS type 'BOGUS'",
        ),
        ({"name": "r.com", "type": "MX", "action": "delay"}, "key 'ms' is required"),
        (
            {"name": "r.com", "type": "MX", "action": "delay", "ms": -1},
            "key 'ms' must be an integer >= 0",
        ),
        (
            {"name": "r.com", "type": "MX", "action": "delay", "ms": "9"},
            "key 'ms' must be an integer",
        ),
        (
            {"name": "r.com", "type": "MX", "action": "fail_times", "times": 0},
            "key 'times' must be an integer >= 1",
        ),
        ({"name": "r.com", "type": "MX", "action": "fail_times", "times": True}, "key 'times'"),
        (
            {"name": "r.com", "type": "MX", "action": "fail_times", "times": 1, "rcode": "NOPE"},
            "key 'rcode'",
        ),
        (
            {"name": "r.com", "type": "MX", "action": "drop", "ms": 5},
            "key 'ms' is not allowed for 'drop'",
        ),
    ],
)
def test_bad_tables_name_the_key_in_one_line(table, message):
    with pytest.raises(HarnessError) as caught:
        FaultRules([table])
    assert str(caught.value).startswith("faults[0]: ")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "spec", ["receiver.com", "receiver.com/MX", "/MX=drop", "r.com/MX=drop:5", "r.com/MX=delay:x"]
)
def test_bad_cli_specs(spec):
    with pytest.raises(HarnessError, match="--fault"):
        FaultRule.parse(spec)


def entry(
    qname: str = "receiver.com.", qtype: str = "MX", rcode: str | None = "NOERROR"
) -> QueryEntry:
    return QueryEntry(
        1700000000.25,
        ("192.0.2.10", 5353),
        "udp",
        qname,
        qtype,
        rcode,
        ("receiver.com. MX 10 mail.receiver.com.",),
        None,
    )


def test_query_log_keeps_finds_and_writes_json_lines(tmp_path):
    seen = []
    path = tmp_path / "q.jsonl"
    log = QueryLog(path, maxlen=2, on_entry=seen.append)
    log.append(entry())
    log.append(entry("Mail.Receiver.com.", "A"))
    log.append(entry("sender.com.", "MX", rcode=None))
    log.close()
    assert [e.qname for e in log.entries()] == ["Mail.Receiver.com.", "sender.com."]
    assert log.find("mail.receiver.com", "a") == [log.entries()[0]]
    assert len(seen) == 3
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["qname"] for line in lines] == [
        "receiver.com.",
        "Mail.Receiver.com.",
        "sender.com.",
    ]
    assert lines[2]["rcode"] is None and lines[0]["client"] == ["192.0.2.10", 5353]


def test_query_log_line_is_readable():
    line = entry().line()
    assert (
        "192.0.2.10#5353 udp receiver.com. MX NOERROR [receiver.com. MX 10 mail.receiver.com.]"
        in line
    )
    assert "no reply" in entry(rcode=None).line()


def test_query_log_unwritable_path_is_one_line(tmp_path):
    with pytest.raises(HarnessError, match="cannot open query log"):
        QueryLog(tmp_path / "missing" / "q.jsonl")
