"""The lab DNS seen from inside the sender host: dig through resolv.conf, our stub, faults."""

from __future__ import annotations

import time

import pytest

from harness.dns import FaultRule, query
from harness.lab import Lab

pytestmark = pytest.mark.lab


def dig(lab: Lab, *args: str) -> str:
    """dig from the sender host, asking whatever /etc/resolv.conf names there."""
    out = lab.run("sender", ["dig", "+tries=1", "+timeout=1", *args])
    return out.stdout


def section(text: str, name: str) -> list[str]:
    """The records of one section of dig's output, as whitespace-normalised lines."""
    lines, inside = [], False
    for line in text.splitlines():
        if line.startswith(";; "):
            inside = line.startswith(f";; {name} SECTION")
            continue
        if inside and line.strip():
            lines.append(" ".join(line.split()))
    return lines


def test_mx_with_glue_as_in_the_seed(lab: Lab, dns) -> None:
    out = dig(lab, "receiver.com", "MX")
    assert "status: NOERROR" in out and " aa" in out.split("flags:")[1].split(";")[0]
    assert section(out, "ANSWER") == ["receiver.com. 300 IN MX 10 mail.receiver.com."]
    assert section(out, "ADDITIONAL") == [
        "mail.receiver.com. 300 IN A 192.0.2.25",
        "mail.receiver.com. 300 IN AAAA 2001:db8::25",
    ]
    assert "SERVER: 192.0.2.53#53(192.0.2.53) (UDP)" in out  # via the host's resolv.conf
    entry = dns.log.find("receiver.com", "MX")[-1]
    assert entry.client[0] == "192.0.2.10" and entry.transport == "udp"


@pytest.mark.parametrize(
    ("args", "answer"),
    [
        (["mail.receiver.com", "A"], "mail.receiver.com. 300 IN A 192.0.2.25"),
        (["mail.receiver.com", "AAAA"], "mail.receiver.com. 300 IN AAAA 2001:db8::25"),
        (["-x", "192.0.2.10"], "10.2.0.192.in-addr.arpa. 300 IN PTR mail.sender.com."),
        (["-x", "2001:db8::25"], "PTR mail.receiver.com."),
    ],
)
def test_addresses_and_pointers(lab: Lab, dns, args, answer) -> None:
    records = section(dig(lab, *args), "ANSWER")
    assert len(records) == 1 and records[0].endswith(answer)


def test_nxdomain_and_nodata_differ_and_both_carry_the_soa(lab: Lab, dns) -> None:
    nx = dig(lab, "nosuch.receiver.com", "A")
    nodata = dig(lab, "mail.receiver.com", "TXT")
    assert "status: NXDOMAIN" in nx and "status: NOERROR" in nodata
    for out in (nx, nodata):
        assert section(out, "ANSWER") == []
        (soa,) = section(out, "AUTHORITY")
        assert soa.startswith("receiver.com. 300 IN SOA ns.receiver.com.")


def test_over_ipv6_and_tcp(lab: Lab, dns) -> None:
    out = dig(lab, "@2001:db8::53", "+tcp", "receiver.com", "MX")
    assert "status: NOERROR" in out and "(TCP)" in out
    assert dns.log.find("receiver.com", "MX")[-1].transport == "tcp"


def test_python_stub_from_inside_the_sender(lab: Lab, dns) -> None:
    reply = query(
        ("192.0.2.53", 53), "receiver.com", "MX", socket_factory=lab.socket_factory("sender")
    )
    assert [str(rr.rdata) for rr in reply.rr] == ["10 mail.receiver.com."]
    assert sorted(str(rr.rdata) for rr in reply.ar) == ["192.0.2.25", "2001:db8::25"]
    assert dns.log.find("receiver.com", "MX")[-1].client[0] == "192.0.2.10"


@pytest.mark.parametrize(("action", "status"), [("servfail", "SERVFAIL"), ("refused", "REFUSED")])
def test_error_faults(lab: Lab, dns, action, status) -> None:
    dns.faults.add(FaultRule.from_dict({"name": "receiver.com", "type": "MX", "action": action}))
    assert f"status: {status}" in dig(lab, "receiver.com", "MX")
    assert "status: NOERROR" in dig(lab, "mail.receiver.com", "A")  # only that name/type


def test_drop_fault_times_out(lab: Lab, dns) -> None:
    dns.faults.add(FaultRule.from_dict({"name": "receiver.com", "type": "*", "action": "drop"}))
    out = dig(lab, "receiver.com", "MX")
    assert "timed out" in out and "ANSWER SECTION" not in out
    assert dns.log.find("receiver.com", "MX")[-1].rcode is None


def test_delay_fault(lab: Lab, dns) -> None:
    dns.faults.add(
        FaultRule.from_dict({"name": "receiver.com", "type": "MX", "action": "delay", "ms": 300})
    )
    factory = lab.socket_factory("sender")
    t0 = time.monotonic()
    reply = query(("192.0.2.53", 53), "receiver.com", "MX", socket_factory=factory)
    assert time.monotonic() - t0 >= 0.3
    assert len(reply.rr) == 1


def test_truncation_then_tcp(lab: Lab, dns) -> None:
    dns.faults.add(
        FaultRule.from_dict({"name": "receiver.com", "type": "MX", "action": "truncate"})
    )
    out = dig(lab, "receiver.com", "MX")
    assert "Truncated, retrying in TCP mode" in out
    assert section(out, "ANSWER") == ["receiver.com. 300 IN MX 10 mail.receiver.com."]
    transports = [e.transport for e in dns.log.find("receiver.com", "MX")]
    assert transports == ["udp", "tcp"]


def test_fail_twice_then_answer(lab: Lab, dns) -> None:
    dns.faults.add(
        FaultRule.from_dict(
            {"name": "receiver.com", "type": "MX", "action": "fail_times", "times": 2}
        )
    )
    statuses = [dig(lab, "receiver.com", "MX").split("status: ")[1].split(",")[0] for _ in "abc"]
    assert statuses == ["SERVFAIL", "SERVFAIL", "NOERROR"]
