"""Zone loading and the resolution policy, without sockets."""

from __future__ import annotations

from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE, RR, DNSLabel

from harness.dns import ZoneSet
from harness.dns.policy import resolve
from harness.errors import HarnessError

SEED_ZONES = Path(__file__).resolve().parent.parent / "fixtures" / "zones"

EXAMPLE = """\
$ORIGIN example.test.
$TTL 3600
@            IN SOA ns.example.test. admin.example.test. 7 3600 600 86400 60
@            IN NS  ns.example.test.
@            IN MX  10 mx1.example.test.
@            IN MX  20 mx.elsewhere.invalid.
ns           IN A   192.0.2.53
mx1          IN A   192.0.2.1
mx1          IN AAAA 2001:db8::1
www          IN CNAME web.example.test.
web          IN CNAME host.example.test.
host         IN A   192.0.2.80
dangling     IN CNAME missing.example.test.
outside      IN CNAME www.elsewhere.invalid.
loop1        IN CNAME loop2.example.test.
loop2        IN CNAME loop1.example.test.
host.deep.ent IN A  192.0.2.81
txt          IN TXT "hello world"
"""


@pytest.fixture
def zones() -> ZoneSet:
    zones = ZoneSet()
    zones.load_text(EXAMPLE, source="example")
    return zones


def ask(zones: ZoneSet, name: str, qtype: str):
    return resolve(zones, DNSLabel(name), getattr(QTYPE, qtype))


def rdata(rrs: list[RR]) -> list[str]:
    return [f"{rr.rname} {QTYPE[rr.rtype]} {rr.rdata.toZone()}" for rr in rrs]


def test_seed_zones_load_with_the_documented_records():
    zones = ZoneSet.from_dir(SEED_ZONES)
    origins = sorted(str(zone.origin) for zone in zones)
    assert origins == [
        "0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.",
        "2.0.192.in-addr.arpa.",
        "receiver.com.",
        "sender.com.",
    ]
    mx = ask(zones, "receiver.com", "MX")
    assert rdata(mx.answer) == ["receiver.com. MX 10 mail.receiver.com."]
    assert rdata(mx.additional) == [
        "mail.receiver.com. A 192.0.2.25",
        "mail.receiver.com. AAAA 2001:db8::25",
    ]
    assert rdata(ask(zones, "mail.sender.com", "AAAA").answer) == [
        "mail.sender.com. AAAA 2001:db8::10"
    ]


@pytest.mark.parametrize(
    ("address", "target"),
    [
        ("192.0.2.10", "mail.sender.com."),
        ("192.0.2.25", "mail.receiver.com."),
        ("192.0.2.53", "ns.receiver.com."),
        ("2001:db8::10", "mail.sender.com."),
        ("2001:db8::25", "mail.receiver.com."),
        ("2001:db8::53", "ns.receiver.com."),
    ],
)
def test_seed_reverse_zones_map_every_lab_address(address, target):
    import ipaddress

    zones = ZoneSet.from_dir(SEED_ZONES)
    answer = ask(zones, ipaddress.ip_address(address).reverse_pointer, "PTR")
    assert [str(rr.rdata.label) for rr in answer.answer] == [target]


def test_every_seed_exchanger_and_ptr_target_resolves_forward():
    zones = ZoneSet.from_dir(SEED_ZONES)
    for name in ("mail.sender.com", "mail.receiver.com", "ns.receiver.com"):
        assert ask(zones, name, "A").answer, name


def test_answer_is_authoritative_and_case_insensitive(zones):
    answer = ask(zones, "HOST.Example.TEST", "A")
    assert (answer.rcode, answer.aa) == (RCODE.NOERROR, True)
    assert rdata(answer.answer) == ["host.example.test. A 192.0.2.80"]


def test_nxdomain_and_nodata_differ_and_both_carry_the_soa(zones):
    nx = ask(zones, "nothere.example.test", "A")
    nodata = ask(zones, "host.example.test", "MX")
    assert nx.rcode == RCODE.NXDOMAIN
    assert nodata.rcode == RCODE.NOERROR
    for answer in (nx, nodata):
        assert answer.aa and answer.answer == []
        assert [QTYPE[rr.rtype] for rr in answer.authority] == ["SOA"]
        assert answer.authority[0].ttl == 60  # min(SOA TTL 3600, MINIMUM 60): RFC 2308


def test_empty_non_terminal_is_nodata_not_nxdomain(zones):
    for name in ("deep.ent.example.test", "ent.example.test"):
        answer = ask(zones, name, "A")
        assert answer.rcode == RCODE.NOERROR, name
        assert answer.answer == [] and answer.authority


def test_outside_our_zones_is_refused_without_aa(zones):
    answer = ask(zones, "example.org", "A")
    assert (answer.rcode, answer.aa, answer.answer) == (RCODE.REFUSED, False, [])


def test_cname_chain_is_followed_to_the_address(zones):
    answer = ask(zones, "www.example.test", "A")
    assert rdata(answer.answer) == [
        "www.example.test. CNAME web.example.test.",
        "web.example.test. CNAME host.example.test.",
        "host.example.test. A 192.0.2.80",
    ]


def test_cname_question_gets_the_cname_itself(zones):
    assert rdata(ask(zones, "www.example.test", "CNAME").answer) == [
        "www.example.test. CNAME web.example.test."
    ]


def test_cname_to_a_missing_name_is_nxdomain_with_the_cname(zones):
    answer = ask(zones, "dangling.example.test", "A")
    assert answer.rcode == RCODE.NXDOMAIN
    assert rdata(answer.answer) == ["dangling.example.test. CNAME missing.example.test."]


def test_cname_leaving_our_zones_stops_there(zones):
    answer = ask(zones, "outside.example.test", "A")
    assert answer.rcode == RCODE.NOERROR
    assert rdata(answer.answer) == ["outside.example.test. CNAME www.elsewhere.invalid."]


def test_cname_loop_ends(zones):
    answer = ask(zones, "loop1.example.test", "A")
    assert rdata(answer.answer) == [
        "loop1.example.test. CNAME loop2.example.test.",
        "loop2.example.test. CNAME loop1.example.test.",
    ]


def test_mx_glue_only_for_exchangers_in_our_zones_and_switchable(zones):
    answer = ask(zones, "example.test", "MX")
    assert len(answer.answer) == 2
    assert rdata(answer.additional) == [
        "mx1.example.test. A 192.0.2.1",
        "mx1.example.test. AAAA 2001:db8::1",
    ]
    zones.set_glue("example.test", False)
    assert ask(zones, "example.test", "MX").additional == []


def test_served_glue_replaces_the_exchangers_addresses_in_answers_only(zones):
    before = zones.version
    zones.serve_glue("mx1.example.test", "192.0.2.99")
    assert zones.version > before
    assert rdata(ask(zones, "example.test", "MX").additional) == ["mx1.example.test. A 192.0.2.99"]
    assert rdata(ask(zones, "mx1.example.test", "A").answer) == ["mx1.example.test. A 192.0.2.1"]
    zones.serve_glue("mx1.example.test.", "2001:db8::99")
    assert rdata(ask(zones, "example.test", "MX").additional) == [
        "mx1.example.test. AAAA 2001:db8::99"
    ]
    with pytest.raises(HarnessError, match="outside every loaded zone"):
        zones.serve_glue("mx.elsewhere.invalid", "192.0.2.99")


def test_soa_ns_txt_and_any(zones):
    assert [QTYPE[rr.rtype] for rr in ask(zones, "example.test", "SOA").answer] == ["SOA"]
    assert rdata(ask(zones, "example.test", "NS").answer) == ["example.test. NS ns.example.test."]
    assert rdata(ask(zones, "txt.example.test", "TXT").answer) == [
        'txt.example.test. TXT "hello world"'
    ]
    kinds = {QTYPE[rr.rtype] for rr in ask(zones, "example.test", "ANY").answer}
    assert kinds == {"SOA", "NS", "MX"}


def test_records_added_and_replaced_from_python(zones):
    before = zones.version
    zones.add("host.example.test. 60 IN A 192.0.2.99")
    assert {rr.rdata.toZone() for rr in ask(zones, "host.example.test", "A").answer} == {
        "192.0.2.80",
        "192.0.2.99",
    }
    zones.add("host.example.test. 60 IN A 192.0.2.100", replace=True)
    assert rdata(ask(zones, "host.example.test", "A").answer) == [
        "host.example.test. A 192.0.2.100"
    ]
    zones.add("new.example.test. 60 IN A 192.0.2.7")
    assert ask(zones, "new.example.test", "A").answer
    zones.remove("new.example.test")
    assert ask(zones, "new.example.test", "A").rcode == RCODE.NXDOMAIN
    assert zones.version > before


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ("www.example.org. IN A 192.0.2.1", "outside every loaded zone"),
        ("www.example.test. IN A 192.0.2.1", "has a CNAME and other records"),
        ("example.test. IN SOA a. b. 1 2 3 4 5", "SOA record can only change"),
    ],
)
def test_bad_additions_are_refused(zones, records, message):
    with pytest.raises(HarnessError, match=message):
        zones.add(records)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("@ IN SOA ns admin 1 2 3 4 5\nwww IN A 192.0.2.300\n", 2, "between 0-255"),
        ("@ IN SOA ns admin 1 2 3 4 5\n\n; comment\nwww IN BOGUS x\n", 4, "BOGUS"),
        ("@ IN SOA ns admin 1 2 3 4 5\nmx IN MX 10\nok IN A 192.0.2.1\n", 2, "too few fields"),
        ("@ IN SOA ns admin (\n 1 2 3\n 4 x )\n", 3, "invalid literal"),
    ],
)
def test_bad_zone_file_is_one_line_naming_file_and_line(tmp_path, text, line, reason):
    path = write(tmp_path, "bad.test.zone", text)
    with pytest.raises(HarnessError) as caught:
        ZoneSet.from_dir(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: ")
    assert reason in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"a.test.zone": "www IN A 192.0.2.1\n"}, "exactly one SOA record, found 0"),
        (
            {"a.test.zone": "@ IN SOA ns admin 1 2 3 4 5\n@ IN SOA ns admin 2 2 3 4 5\n"},
            "found 2",
        ),
        (
            {"a.test.zone": "@ IN SOA ns admin 1 2 3 4 5\nb.test. IN A 192.0.2.1\n"},
            "b.test. is outside zone a.test.",
        ),
        (
            {
                "a.test.zone": "@ IN SOA ns admin 1 2 3 4 5\n",
                "b.zone": "$ORIGIN a.test.\n@ IN SOA ns admin 1 2 3 4 5\n",
            },
            "zone a.test. is already loaded",
        ),
    ],
)
def test_zone_structure_errors_name_the_file(tmp_path, files, message):
    for name, text in files.items():
        write(tmp_path, name, text)
    with pytest.raises(HarnessError, match=message) as caught:
        ZoneSet.from_dir(tmp_path)
    assert ".zone" in str(caught.value)


def test_origin_inside_the_file_overrides_the_file_name(tmp_path):
    write(tmp_path, "anything.zone", "$ORIGIN real.test.\n@ IN SOA ns admin 1 2 3 4 5\n")
    assert [str(zone.origin) for zone in ZoneSet.from_dir(tmp_path)] == ["real.test."]


def test_missing_or_empty_directory_and_unreadable_file(tmp_path):
    with pytest.raises(HarnessError, match="not a directory"):
        ZoneSet.from_dir(tmp_path / "nope")
    with pytest.raises(HarnessError, match=r"no \*\.zone files"):
        ZoneSet.from_dir(tmp_path)
    (tmp_path / "latin1.test.zone").write_bytes(b"; caf\xe9\n")
    with pytest.raises(HarnessError, match=r"latin1\.test\.zone: cannot read"):
        ZoneSet.from_dir(tmp_path)
