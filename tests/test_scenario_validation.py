"""The scenario loader refuses everything it can before a lab exists, in one line naming the
file and the key (issue 9: findings 1-3 and 8's `run CAPTURE.pcap`; issue 8: reply rules and
the `[expect]` keys about the wire).  No lab is built here: nothing needs root."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import CLI, ROOT
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from harness.errors import HarnessError
from harness.lab.topology import HOST_KEYS
from harness.mta.base import adapters
from harness.scenario import (
    FIXTURES,
    NONE,
    SCHEMA,
    TOP_LEVEL,
    Array,
    ExpectedDsn,
    load_scenario,
    scenario_from_data,
)

PATH = FIXTURES / "scenarios" / "s.toml"  # virtual: names the scenario, anchors paths
MAX = 2**63 - 1
SEED_HOSTS = [
    {"name": "sender", "ipv4": "192.0.2.10", "fqdn": "mail.sender.com"},
    {"name": "dns", "ipv4": "192.0.2.53"},
    {"name": "receiver", "ipv4": "192.0.2.25", "fqdn": "mail.receiver.com"},
]


def _hosts(**sender: object) -> list[dict]:
    return [{**SEED_HOSTS[0], **sender}, *SEED_HOSTS[1:]]


def _error(data: dict) -> str:
    """The one-line error of loading ``data``, without the file name it starts with."""
    with pytest.raises(HarnessError) as caught:
        scenario_from_data(data, PATH)
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    assert message.startswith(f"{PATH}: "), message
    return message.removeprefix(f"{PATH}: ")


def _write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- issue 9, findings 1-3: each failed on main ---------------------------------------------
FINDINGS = [
    # 1. injection: the payloads the grammars refuse never reach m4 or /etc/netns
    (
        "sendmail-users-m4",
        {"receiver": {"users": ["c3po", "esyscmd(COMMAND)"]}},
        "receiver.users[1]: \"esyscmd(COMMAND)\" is not a local part (RFC 5321 §4.1.2): '('",
    ),
    (
        "sendmail-hostname-m4",
        {"receiver": {"hostname": "mail.receiver.com')esyscmd(`COMMAND')define(`zz"}},
        "receiver.hostname: \"mail.receiver.com')esyscmd",
    ),
    (
        "fqdn-newline-etc-hosts",
        {"hosts": _hosts(fqdn="mail.sender.com\n192.0.2.66 evil.example")},
        'hosts[0].fqdn: "mail.sender.com\\n192.0.2.66 evil.example" is not a domain'
        " (RFC 1123 §2.1): control character U+000A at offset 15",
    ),
    ("exim-helo-expansion", {"sender": {"helo": "${run{COMMAND}}"}}, "sender.helo: "),
    # 2. CR/LF in every string that reaches the wire or a config
    ("crlf-hostname", {"receiver": {"hostname": "mail.receiver.com\r\n"}}, "receiver.hostname:"),
    ("crlf-greeting", {"receiver": {"greeting": "ok\r\n250 x"}}, "receiver.greeting: "),
    ("crlf-helo", {"sender": {"helo": "mail.sender.com\r\nRSET"}}, "sender.helo: "),
    ("crlf-mail-from", {"sender": {"mail_from": "luke@sender.com\n"}}, "sender.mail_from: "),
    ("crlf-users", {"receiver": {"users": ["c3\npo"]}}, "receiver.users[0]: "),
    (
        "crlf-recipients",
        {"sender": {"recipients": ["c3po@receiver.com\r"]}},
        "sender.recipients[0]:",
    ),
    ("crlf-extensions", {"receiver": {"extensions": ["SIZE\r\n10"]}}, "receiver.extensions[0]"),
    ("crlf-domains", {"receiver": {"domains": ["receiver.com\n"]}}, "receiver.domains[0]: "),
    (
        "crlf-reply-text",
        {"receiver": {"replies": [{"on": "MAIL", "text": ["ok", "x\ry"]}]}},
        "receiver.replies[0].text[1]: ",
    ),
    (
        "crlf-script-send",
        {"sender": {"script": [{"at": "MAIL", "send": "NOOP\r\nRSET"}]}},
        "sender.script[0].send: ",
    ),
    # 3. validation holes
    ("hosts-not-tables", {"hosts": [1, 2, 3]}, "hosts[0]: expected a table, got 1"),
    ("hosts-strings", {"hosts": ["sender"]}, 'hosts[0]: expected a table, got "sender"'),
    ("fqdn-number", {"hosts": _hosts(fqdn=123)}, "hosts[0].fqdn: expected a string, got 123"),
    (
        "script-at-unknown",
        {"sender": {"script": [{"at": "FROBNICATE"}]}},
        'sender.script[0].at: "FROBNICATE" is no point the scripted sender reaches',
    ),
    ("timeout-huge", {"sender": {"timeout_ms": MAX}}, f"sender.timeout_ms: {MAX} is not in"),
    (
        "delay-huge",
        {"receiver": {"replies": [{"on": "QUIT", "delay_ms": MAX}]}},
        f"receiver.replies[0].delay_ms: {MAX} is not in 0..60000",
    ),
    (
        "pause-huge",
        {"sender": {"script": [{"at": "QUIT", "pause_ms": MAX}]}},
        "sender.script[0].pause_ms: ",
    ),
    (
        "fault-delay-huge",
        {"dns": {"faults": [{"name": "receiver.com", "type": "MX", "action": "delay", "ms": MAX}]}},
        f"dns.faults[0].ms: {MAX} is not in 0..60000",
    ),
    (
        "records-bad",
        {"dns": {"records": ["receiver.com. MX x mail.receiver.com."]}},
        "dns.records[0]: bad zone record: invalid literal for int()",
    ),
    (
        "glue-real-address",
        {"dns": {"glue": {"mail.receiver.com": "8.8.8.8"}}},
        'dns.glue."mail.receiver.com": "8.8.8.8" is not a documentation address',
    ),
    (
        "records-real-address",
        {"dns": {"records": ["mail.receiver.com. A 8.8.8.8"]}},
        'dns.records[0]: "8.8.8.8" is not a documentation address',
    ),
]


@pytest.mark.parametrize(("data", "error"), [f[1:] for f in FINDINGS], ids=[f[0] for f in FINDINGS])
def test_issue9_findings_are_refused_at_load(data: dict, error: str) -> None:
    assert _error(data).startswith(error)


def test_issue9_empty_zones_folder_is_refused_at_load(tmp_path) -> None:
    assert _error({"dns": {"zones": str(tmp_path)}}) == f"dns.zones: {tmp_path}: no *.zone files"


def test_issue9_zone_file_addresses_are_documentation_addresses(tmp_path) -> None:
    zones = tmp_path / "zones"
    shutil.copytree(FIXTURES / "zones", zones)
    zone = zones / "receiver.com.zone"
    lines = zone.read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if "IN A    192.0.2.25" in text)
    zone.write_text("\n".join(text.replace("192.0.2.25", "8.8.8.8") for text in lines) + "\n")
    assert _error({"dns": {"zones": str(zones)}}).startswith(
        f'dns.zones: {zone}:{line}: "8.8.8.8" is not a documentation address'
    )


def test_issue9_bad_zone_file_names_file_and_line(tmp_path) -> None:
    (tmp_path / "receiver.com.zone").write_text(
        "$ORIGIN receiver.com.\n@ 300 IN SOA ns. h. 1 2 3 4 5\nmail IN MX x mail.\n"
    )
    error = _error({"dns": {"zones": str(tmp_path)}})
    assert error.startswith(f"dns.zones: {tmp_path / 'receiver.com.zone'}:3: bad zone record")


def test_exim_expansion_is_a_local_part_and_loads() -> None:
    """``${run{...}}`` is Dot-string (``$ { } /`` are atext): the loader must take it; the
    adapters quote it (issue 9: "Escaping per target: the real defence")."""
    payload = "${run{/usr/bin/id}}"
    scenario = scenario_from_data({"receiver": {"users": ["c3po", payload]}}, PATH)
    assert scenario.receiver.users == ("c3po", payload)


def test_run_with_a_capture_says_it_is_not_a_scenario(tmp_path) -> None:
    """Issue 9 finding 8: `run CAPTURE.pcap` printed "'utf-8' codec can't decode byte 0xb2"."""
    pcap = ROOT / "pcaps" / "seed.pcap"
    out = subprocess.run([*CLI, "run", str(pcap)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == (
        f"smtp-harness: error: {pcap}: not a scenario (TOML text): it looks like a capture "
        f"(pcap); to read it: smtp-harness ladder {pcap}\n"
    )
    binary = _write(tmp_path, "", "bin.toml")
    binary.write_bytes(b'[scenario]\nname = "x\xb2"\n')
    with pytest.raises(
        HarnessError, match=r"not a scenario \(TOML text\): byte 0xb2 at offset 20 "
    ):
        load_scenario(binary)


def test_not_toml_and_too_deep_are_one_line(tmp_path) -> None:
    bad = _write(tmp_path, "[sender\n")
    with pytest.raises(HarnessError, match=r"not valid TOML: .*line 1") as caught:
        load_scenario(bad)
    assert "\n" not in str(caught.value)
    deep = _write(tmp_path, "x = " + "[" * 5000 + "]" * 5000 + "\n", "deep.toml")
    with pytest.raises(HarnessError, match="nested too deeply"):
        load_scenario(deep)  # tomllib raised RecursionError: a traceback


# --- errors name the file and the key (moved from test_run_lab, which needs a lab) --------
@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[scenario]\nfoo = 1\n", "scenario.foo: unknown key (known: name, description)"),
        ('[receiver]\nport = "25"\n', 'receiver.port: expected an integer, got "25"'),
        ("[receiver]\nport = true\n", "receiver.port: expected an integer, got True"),
        ("[receiver]\nport = 70000\n", "receiver.port: 70000 is not in 1..65535"),
        ('[[receiver.replies]]\non = "MAIL"\ncode = 700\n', "receiver.replies[0].code: 700 is"),
        ('[receiver]\nvrfy = "maybe"\n', 'receiver.vrfy: "maybe": expected "check" or "252"'),
        ("[[receiver.replies]]\ncode = 450\n", "receiver.replies[0].on: required"),
        (
            '[[dns.faults]]\nname = "x"\ntype = "MX"\naction = "explode"\n',
            'dns.faults[0].action: "explode": expected "servfail"',
        ),
        ("[surprise]\n", "surprise: unknown section (known: scenario, hosts, dns,"),
        ('[[hosts]]\nname = "a"\nipv4 = "8.8.8.8"\n', 'hosts[0].ipv4: "8.8.8.8" is not a doc'),
        ('[receiver]\nfamily = "ipv6"\n', 'receiver.family: "ipv6": expected "ipv4" or "any"'),
        ('[sender]\nfamily = "any"\n', "sender.family: the scripted sender knows IPv4 only"),
        ('[dns]\nglue = { "mail.receiver.com" = "nope" }\n', 'dns.glue."mail.receiver.com": "n'),
        ('[receiver]\nmta = "exim"\nvrfy = "252"\n', 'receiver.vrfy: "252" for exim: expected'),
        ('[sender]\nmta = "exim"\nfamily = "ipv5"\n', 'sender.family: "ipv5": expected'),
        ('[sender]\nmessage = "nope.eml"\n', "sender.message: "),
    ],
)
def test_scenario_errors_name_file_and_key(tmp_path, body, message) -> None:
    path = _write(tmp_path, body)
    with pytest.raises(HarnessError) as err:
        load_scenario(path)
    assert str(err.value).startswith(f"{path}: {message}"), str(err.value)
    assert "\n" not in str(err.value)


# --- bounds, types and cross-checks ---------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"receiver": {"domains": []}}, "receiver.domains: 0 items; give 1 to 100"),
        ({"sender": {"recipients": []}}, "sender.recipients: 0 items; give 1 to 1000"),
        (
            {"sender": {"recipients": [f"u{i}@receiver.com" for i in range(1001)]}},
            "sender.recipients: 1001 items",
        ),
        (
            {"sender": {"recipients": ["c3po@receiver.com", "C3PO@receiver.com"]}},
            'sender.recipients[1]: "C3PO@receiver.com" is sender.recipients[0] again',
        ),
        ({"receiver": {"users": [1]}}, "receiver.users[0]: expected a string, got 1"),
        ({"receiver": {"timeout_ms": 0}}, "receiver.timeout_ms: 0 is not in 1..600000"),
        ({"receiver": {"greeting": "x" * 490}}, "receiver.greeting: the greeting line"),
        ({"hosts": []}, "hosts: 0 hosts; give 1 to 32"),
        ({"hosts": _hosts(name="lan")}, 'hosts[0].name: "lan" is not a lab host name'),
        ({"hosts": _hosts(extra=1)}, 'hosts[0]: unknown key "extra"'),
        ({"hosts": SEED_HOSTS[1:]}, "sender.host: no host named 'sender' in the topology"),
        ({"hosts": _hosts(ipv4="192.0.2.25")}, "hosts[2].ipv4: 192.0.2.25 is another host's"),
        ({"hosts": _hosts(ipv4="198.51.100.1")}, "hosts[1].ipv4: 192.0.2.53 is outside the lab"),
        ({"scenario": {"name": "../../x"}}, 'scenario.name: "../../x" is not a scenario name'),
        ({"scenario": {"description": "\x1b[2J"}}, "scenario.description: "),
        ({"sender": {"helo": "[8.8.8.8]"}}, 'sender.helo: "[8.8.8.8]" is not a HELO name'),
        ({"sender": {"message": "/dev/null/x"}}, "sender.message: /dev/null/x: no such file"),
        ({"sender": {"message": "a\x00b"}}, 'sender.message: "a\\u0000b" is not a path'),
        (
            {"sender": {"script": [{"at": "VRFY", "send": "NOOP"}], "vrfy": False}},
            "sender.script[0].at: the sender never sends VRFY: sender.vrfy is false",
        ),
        (
            {"sender": {"script": [{"at": "EHLO", "send": "NOOP"}]}},
            "sender.script[0].at: the sender never sends EHLO: sender.ehlo is false",
        ),
        (
            {"sender": {"script": [{"at": "RCPT", "argument": "bb8@receiver.com"}]}},
            'sender.script[0].argument: "bb8@receiver.com" never fires',
        ),
        (
            {"sender": {"script": [{"at": "DATA", "argument": "x"}]}},
            "sender.script[0].argument: DATA has no argument",
        ),
        (
            {"sender": {"script": [{"at": "MAIL", "position": "around"}]}},
            'sender.script[0].position: "around": expected "before" or "instead" or "after"',
        ),
        (
            {"sender": {"script": [{"at": "MAIL", "raw": "\u0100"}]}},
            "sender.script[0].raw: character U+0100 at offset 0 is not a single byte",
        ),
        (
            {"sender": {"script": [{"at": "MAIL", "send": "NOOP", "raw": "NOOP\r\n"}]}},
            "sender.script[0]: give send or raw, not both",
        ),
        (
            {"dns": {"records": ["$ORIGIN receiver.com."]}},
            'dns.records[0]: "$ORIGIN receiver.com.": directives belong in zone files',
        ),
        (
            {"dns": {"records": ["www.elsewhere.example. A 192.0.2.25"]}},
            "dns.records[0]: www.elsewhere.example. is outside every zone in dns.zones",
        ),
        (
            {"dns": {"records": ["x.receiver.com. 4000000000 A 192.0.2.1"]}},
            "dns.records[0]: x.receiver.com. A: TTL 4000000000 is not 0..2147483647",
        ),
        (
            {"dns": {"records": ["receiver.com. SOA ns. h. 2 3 4 5 6"]}},
            "dns.records[0]: an SOA record can only change in its zone file",
        ),
        (
            {"dns": {"records": ["a.receiver.com. TXT ( x", "b.receiver.com. A 192.0.2.1"]}},
            "dns.records: the entries do not stand alone",
        ),
        (
            {"dns": {"records": ["mail.receiver.com. CNAME x.receiver.com."]}},
            "dns.records: mail.receiver.com. has a CNAME and other records",
        ),
        ({"dns": {"no_glue": ["nosuch.example"]}}, "dns.no_glue[0]: no zone 'nosuch.example'"),
        (
            {"dns": {"glue": {"mx.elsewhere.example": "192.0.2.9"}}},
            'dns.glue."mx.elsewhere.example": mx.elsewhere.example. is outside every loaded',
        ),
        ({"dns": {"glue": {"a b.receiver.com": "192.0.2.9"}}}, 'dns.glue."a b.receiver.com": "a'),
        (
            {"dns": {"faults": [{"name": "receiver.com", "type": "MX", "action": "delay"}]}},
            "dns.faults[0]: key 'ms' is required",
        ),
        (
            {"dns": {"faults": [{"name": "receiver.com\n", "type": "MX", "action": "drop"}]}},
            "dns.faults[0].name: ",
        ),
        (
            {"dns": {"faults": [{"name": "r.com", "type": "FROB", "action": "drop"}]}},
            "dns.faults[0].type: not a DNS type dnslib knows",
        ),
        (
            {
                "dns": {
                    "faults": [{"name": "r.com", "type": "A", "action": "fail_times", "times": 0}]
                }
            },
            "dns.faults[0].times: 0 is not in 1..1000",
        ),
    ],
)
def test_bounds_types_and_references(data: dict, error: str) -> None:
    assert _error(data).startswith(error)


def test_the_dns_host_must_exist() -> None:
    hosts = [SEED_HOSTS[0], SEED_HOSTS[2]]
    assert _error({"hosts": hosts}) == "hosts: no host named 'dns' (the DNS server's host)"


def test_receiver_timeout_and_defaults() -> None:
    seed = load_scenario(None)
    assert seed.receiver.timeout == 30.0  # the test-friendly default, not RFC 5321's 300 s
    custom = scenario_from_data({"receiver": {"timeout_ms": 1500}}, PATH)
    assert custom.receiver.timeout == 1.5


def test_hosts_may_use_hyphens_and_any_documentation_segment() -> None:
    hosts = [
        {"name": "mx-1", "ipv4": "203.0.113.10", "ipv6": "2001:db8:5::10", "fqdn": "a.example"},
        {"name": "dns", "ipv4": "203.0.113.53"},
    ]
    data = {"hosts": hosts, "sender": {"host": "mx-1"}, "receiver": {"host": "mx-1"}}
    scenario = scenario_from_data(data, PATH)
    assert [h.name for h in scenario.topology.hosts] == ["mx-1", "dns"]
    assert scenario.sender.helo_name == "a.example"


# --- [[receiver.replies]] (issue 8, last bullet) --------------------------------------------
def _rules(*rules: dict) -> dict:
    return {"receiver": {"replies": list(rules)}}


@pytest.mark.parametrize(
    ("rules", "error"),
    [
        (
            [{"on": "greeting", "code": 554}],
            'receiver.replies[0].on: "greeting" is no command or event the receiver answers '
            '(did you mean "<greeting>"?)',
        ),
        ([{"on": "FROB", "code": 500}], 'receiver.replies[0].on: "FROB" is no command'),
        (
            [{"on": "<greeting>", "argument": "x", "code": 554}],
            "receiver.replies[0].argument: <greeting> has no argument: the rule could never fire",
        ),
        (
            [{"on": "<end-of-data>", "argument": "x", "code": 554}],
            "receiver.replies[0].argument: <end-of-data> has no argument",
        ),
        (
            [
                {"on": "RCPT", "argument": "c3po@receiver.com", "code": 450},
                {"on": "rcpt", "argument": "C3PO@receiver.com", "code": 550},
            ],
            "receiver.replies[1]: never fires: receiver.replies[0] answers every RCPT with this",
        ),
        (
            [{"on": "RCPT", "code": 450}, {"on": "RCPT", "argument": "c3po@receiver.com"}],
            "receiver.replies[1]: never fires: receiver.replies[0] answers every RCPT",
        ),
        (
            [{"on": "<greeting>", "code": 421}, {"on": "<GREETING>", "code": 554}],
            "receiver.replies[1]: never fires: receiver.replies[0] answers every <greeting>",
        ),
        (
            [{"on": "<greeting>", "text": ["a", "b"], "line_pause_ms": 60001}],
            "receiver.replies[0].line_pause_ms: 60001 is not in 0..60000",
        ),
        (
            [{"on": "<greeting>", "text": "one line", "line_pause_ms": 100}],
            "receiver.replies[0].line_pause_ms: pauses go between the lines of a multi-line",
        ),
        (
            [{"on": "<greeting>", "text": ["only"], "line_pause_ms": 100}],
            "receiver.replies[0].line_pause_ms: ",
        ),
        (
            [{"on": "MAIL", "raw": "250 ok\r\n", "code": 250}],
            "receiver.replies[0].raw: give raw, or code and text, not both",
        ),
        ([{"on": "MAIL", "code": 560}], "receiver.replies[0].code: 560 is not an SMTP reply code"),
        ([{"on": "MAIL", "code": 199}], "receiver.replies[0].code: 199 is not an SMTP reply code"),
        ([{"on": "MAIL", "code": True}], "receiver.replies[0].code: expected an integer or none"),
        ([{"on": "MAIL", "text": [1]}], "receiver.replies[0].text[0]: expected a string, got 1"),
        ([{"on": "MAIL", "close": 1}], "receiver.replies[0].close: expected true or false, got 1"),
    ],
)
def test_reply_rules_that_cannot_fire_or_break_the_wire_are_refused(rules, error) -> None:
    assert _error(_rules(*rules)).startswith(error)


def test_reply_rules_load_what_the_receiver_uses() -> None:
    scenario = scenario_from_data(
        _rules(
            {"on": "<GREETING>", "text": ["220-a", "b"], "line_pause_ms": 3000, "delay_ms": 5},
            {"on": "RCPT", "argument": "c3po@receiver.com", "code": 450},
            {"on": "RCPT", "argument": "r2d2@receiver.com", "code": 451},
            {"on": "RCPT", "code": 550},
            {"on": "bdat last", "raw": "250 \u00ff\r\n", "close": True},
        ),
        PATH,
    )
    greet, c3po, r2d2, rcpt, bdat = scenario.receiver.rules
    assert (greet.on, greet.text, greet.line_pause, greet.delay) == (
        "<greeting>",
        ("220-a", "b"),
        3.0,
        0.005,
    )
    assert [(r.on, r.argument, r.code) for r in (c3po, r2d2, rcpt)] == [
        ("RCPT", "c3po@receiver.com", 450),
        ("RCPT", "r2d2@receiver.com", 451),
        ("RCPT", None, 550),
    ]
    assert (bdat.on, bdat.raw, bdat.close) == ("BDAT LAST", b"250 \xff\r\n", True)


# --- [expect] about the wire (issue 8) ------------------------------------------------------
def test_expect_wire_keys_load() -> None:
    expect = {
        "syns_only_to": ["192.0.2.25", "2001:DB8::25"],
        "dns_not_asked": ["receiver.com A", "receiver.com AAAA"],
        "contents_sent": 1,
        "stored": {"c3po@receiver.com": 1, "r2d2@receiver.com": 0},
        "dsns": [
            {"recipient": "aibo@receiver.com", "action": "failed", "status": "5.1.1"},
            {"recipient": "c3po@receiver.com", "action": "delayed", "status": "4"},
        ],
    }
    got = scenario_from_data({"expect": expect}, PATH).expect
    assert got.syns_only_to == ["192.0.2.25", "2001:db8::25"]
    assert got.dns_not_asked == ["receiver.com A", "receiver.com AAAA"]
    assert got.contents_sent == 1
    assert got.stored == {"c3po@receiver.com": 1, "r2d2@receiver.com": 0}
    assert got.dsns == [
        ExpectedDsn("aibo@receiver.com", "failed", "5.1.1"),
        ExpectedDsn("c3po@receiver.com", "delayed", "4"),
    ]
    none = scenario_from_data({"expect": {"syns_only_to": []}}, PATH).expect
    assert none.syns_only_to == [] and none.stored is None and none.dsns is None


def test_expect_keys_parse_from_toml(tmp_path) -> None:
    path = _write(
        tmp_path,
        '[expect]\nsyns_only_to = []\ncontents_sent = 0\n[expect.stored]\n"c3po@receiver.com" = 2\n'
        '[[expect.dsns]]\nrecipient = "c3po@receiver.com"\naction = "failed"\nstatus = "5.1"\n',
    )
    got = load_scenario(path).expect
    assert (got.syns_only_to, got.contents_sent, got.stored) == ([], 0, {"c3po@receiver.com": 2})
    assert got.dsns == [ExpectedDsn("c3po@receiver.com", "failed", "5.1")]


@pytest.mark.parametrize(
    ("expect", "error"),
    [
        ({"syns_only_to": ["8.8.8.8"]}, 'expect.syns_only_to[0]: "8.8.8.8" is not a documentation'),
        ({"syns_only_to": "192.0.2.25"}, "expect.syns_only_to: expected an array of strings or"),
        ({"dns_not_asked": ["receiver.com"]}, 'expect.dns_not_asked[0]: "receiver.com" is not a'),
        ({"dns_questions": ["receiver.com. MX"]}, "expect.dns_questions[0]: "),
        ({"contents_sent": -1}, "expect.contents_sent: -1 is not in 0..1000"),
        ({"contents_sent": 1.0}, "expect.contents_sent: expected an integer or none, got 1.0"),
        ({"stored": {"c3po": 1}}, 'expect.stored.c3po: "c3po" is not a mailbox'),
        ({"stored": {"c3po@receiver.com": True}}, 'expect.stored."c3po@receiver.com": expected an'),
        ({"stored": {"c3po@receiver.com": 1001}}, 'expect.stored."c3po@receiver.com": 1001 is not'),
        (
            {"stored": {"c3po@receiver.com": 1, "C3PO@receiver.com": 1}},
            'expect.stored."C3PO@receiver.com": the same mailbox as expect.stored."c3po@',
        ),
        (
            {"dsns": [{"recipient": "c3po@receiver.com", "action": "bounced", "status": "5"}]},
            'expect.dsns[0].action: "bounced": expected "failed" or "delayed"',
        ),
        (
            {"dsns": [{"recipient": "c3po@receiver.com", "action": "failed", "status": "5.1.1.1"}]},
            'expect.dsns[0].status: "5.1.1.1" is not an enhanced status code (RFC 3463 §2)',
        ),
        (
            {"dsns": [{"recipient": "c3po@receiver.com", "action": "failed", "status": "2.0.0"}]},
            'expect.dsns[0].status: "2.0.0": class 2 reports success (RFC 3463 §2)',
        ),
        (
            {"dsns": [{"recipient": "bb8@receiver.com", "action": "failed", "status": "5"}]},
            'expect.dsns[0].recipient: "bb8@receiver.com" is not one of sender.recipients',
        ),
        ({"dsns": [{"recipient": "c3po@receiver.com"}]}, "expect.dsns[0].action: required"),
        ({"golden": "/etc/passwd"}, 'expect.golden: "/etc/passwd" is not a .pcap or .pcapng file'),
        ({"delivered": ["bb8@receiver.com"]}, 'expect.delivered[0]: "bb8@receiver.com" is not one'),
        (
            {"delivered": ["c3po@receiver.com"], "deferred": ["C3PO@receiver.com"]},
            'expect.deferred[0]: "C3PO@receiver.com" is expected delivered too',
        ),
    ],
)
def test_expect_keys_are_validated(expect: dict, error: str) -> None:
    assert _error({"expect": expect}).startswith(error)


# --- a real MTA's own limits: its adapter's accepts() at load -------------------------------
def test_mta_accepts_is_asked_at_load_and_its_refusal_names_the_key(monkeypatch) -> None:
    """The adapters' ``accepts`` are another engineer's (the default takes everything), so a
    refusing one is stood in for here: what is tested is the loader's call and its error."""
    seen = []

    def refuse(cls, role, hostname, domain, users, knobs=None, peer_offers_tls=False):
        seen.append((cls.name, role, hostname, domain, users))
        if "dnl" in users:
            raise HarnessError(f"user {users[-1]!r} cannot be quoted for m4")

    monkeypatch.setattr(adapters()["sendmail"], "accepts", classmethod(refuse))
    data = {"receiver": {"mta": "sendmail", "users": ["c3po", "dnl"]}}
    assert _error(data) == (
        "receiver.mta: sendmail cannot take these names: user 'dnl' cannot be quoted for m4"
    )
    scenario_from_data({"sender": {"mta": "sendmail", "helo": "mx.sender.com"}}, PATH)
    assert seen == [
        ("sendmail", "receiver", "mail.receiver.com", "receiver.com", ("c3po", "dnl")),
        ("sendmail", "sender", "mx.sender.com", "sender.com", ("luke",)),
    ]


def test_mta_sender_needs_a_mailbox_and_a_domain_name() -> None:
    null = {"sender": {"mta": "postfix", "mail_from": ""}}
    assert _error(null).startswith("sender.mail_from: postfix as sender needs a mailbox")
    literal = {"sender": {"mta": "postfix", "helo": "[192.0.2.10]"}}
    assert _error(literal).startswith("sender.helo: postfix takes it as its host name")
    scripted = scenario_from_data({"sender": {"mail_from": ""}}, PATH)
    assert scripted.sender.mail_from == ""  # MAIL FROM:<>, the null reverse-path (§4.5.5)


# --- fuzzing: only HarnessError, one line, naming a key (issue 9, a standing test) -----------
POOL = [
    *("c3po@receiver.com", "luke@sender.com", "c3po", "receiver.com", "mail.receiver.com"),
    *("MAIL", "RCPT", "QUIT", "DATA", "HELO", "EHLO", "VRFY", "<message>", "BDAT LAST"),
    *("<greeting>", "<end-of-data>", "greeting", "instead", "after", "failed", "delayed"),
    *("192.0.2.25", "192.0.2.99", "2001:db8::25", "8.8.8.8", "::1", "[192.0.2.10]", "[8.8.8.8]"),
    *("receiver.com. MX 10 mail.receiver.com.", "x.receiver.com. A 192.0.2.26", "$TTL 5"),
    *("x.receiver.com. A 8.8.8.8", "a.receiver.com. TXT (", "nosuch.example. A 192.0.2.1"),
    *("5.1.1", "5", "2.0.0", "delay", "servfail", "fail_times", "*", "MX", "A", "SERVFAIL"),
    *("receiver.com MX", "postfix", "exim", "any", "ipv4", "check", "disabled", "252"),
    *("../zones", "../messages/seed.eml", str(FIXTURES / "zones"), "/", "", "x" * 300),
    *("${run{/bin/id}}", "sender", "dns", "receiver", "lan", "PIPELINING", "SIZE 100"),
]
_pool = st.sampled_from(POOL)
_spliced = st.builds(
    lambda s, c, i: s[:i] + c + s[i:],
    _pool,
    st.sampled_from(["\r", "\n", "\x00", "\t", "\u2028", "\x7f", "\x85", "é", " ", '"', "\\", "."]),
    st.integers(0, 20),
)
_strings = st.one_of(_pool, _pool, _spliced, st.text(max_size=8))
_ints = st.one_of(st.integers(-(2**63), 2**63), st.sampled_from([0, 1, 421, 559, 560, 60001]))


def _nested(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(inner, max_size=3) | st.dictionaries(_strings, inner, max_size=2)


_any = st.recursive(
    st.one_of(_strings, _ints, st.booleans(), st.floats(), st.datetimes()), _nested, max_leaves=5
)


def _plausible(name: str, key: str) -> st.SearchStrategy:
    """Values of roughly the right shape for SCHEMA[name][key], so runs get deep."""
    if f"{name}.{key}" in SCHEMA:
        return st.lists(_section(f"{name}.{key}"), max_size=3)
    spec = SCHEMA[name][key]
    options = []
    for kind in spec.kind if isinstance(spec.kind, tuple) else (spec.kind,):
        if kind is str and isinstance(spec.rule, tuple):
            options.append(st.sampled_from(spec.rule))
        elif kind is str:
            options.append(_strings)
        elif kind is int and isinstance(spec.rule, range):
            options.append(st.integers(spec.rule.start - 1, spec.rule.stop))
        elif kind is int:
            options.append(_ints)
        elif kind is bool:
            options.append(st.booleans())
        elif kind is dict:
            options.append(st.dictionaries(_strings, _strings | _ints, max_size=3))
        elif isinstance(kind, Array):
            options.append(st.lists(_strings, max_size=4))
        elif kind is NONE:
            options.append(st.none())
    return st.one_of(*options)


def _section(name: str) -> st.SearchStrategy:
    keys = [
        st.tuples(st.just(k), st.one_of(*[_plausible(name, k)] * 6, _any)) for k in SCHEMA[name]
    ]
    entry = st.one_of(*keys * 4, st.tuples(_strings, _any))
    return st.lists(entry, max_size=6).map(dict)


_host = st.lists(st.tuples(st.sampled_from(list(HOST_KEYS)), _strings | _any), max_size=5)
_SECTIONS = {name: _section(name) for name in TOP_LEVEL if name in SCHEMA}
_SECTIONS["hosts"] = st.one_of(st.just(SEED_HOSTS), st.lists(_host.map(dict), max_size=4), _any)
SCENARIO_DATA = st.lists(
    st.one_of(
        *[st.tuples(st.just(s), v) for s, v in _SECTIONS.items()] * 3, st.tuples(_strings, _any)
    ),
    max_size=6,
).map(dict)
_KEY = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*")'
KEY_PATH = re.compile(rf"{_KEY}(?:\[\d+\]|\.{_KEY})*(?: and {_KEY}(?:\.{_KEY})*)?: ")
FUZZ_EXAMPLES = int(os.environ.get("SMTP_HARNESS_FUZZ_EXAMPLES", "250"))


@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    database=None,
    derandomize="SMTP_HARNESS_FUZZ_EXAMPLES" not in os.environ,  # CI: the same inputs each run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(SCENARIO_DATA)
@example({"hosts": [1, 2, 3]})  # issue 9: TypeError traceback
@example({"hosts": ["sender"]})  # issue 9: "unknown key 'd'"
@example({"dns": {"records": ["x.receiver.com. 4294967295 A 192.0.2.1"]}})  # parsed, unpackable
@example({"scenario": {"\x00": 1}})  # a key that must be quoted to be named
def test_fuzz_loader_only_raises_one_line_harness_errors_naming_a_key(data: dict) -> None:
    try:
        scenario_from_data(data, PATH)
    except HarnessError as exc:
        message = str(exc)
        assert len(message.splitlines()) == 1, message
        assert message.startswith(f"{PATH}: "), message
        assert KEY_PATH.match(message.removeprefix(f"{PATH}: ")), message
