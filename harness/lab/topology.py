"""What a lab looks like, as data.

Rules kept here:
- Every address is a documentation address (RFC 5737 IPv4, RFC 3849 IPv6): a topology that
  names anything else is rejected, so nothing a lab host sends can be routed off the lab.
  The check is ``harness.grammar.documentation_address``, the same for every address in a
  scenario.
- Hosts share one layer-2 segment (one IPv4 /24, one IPv6 /64); there is no gateway and no
  default route, so a host can reach the other hosts and nothing else.
- Host names are lab host names (``harness.grammar``: short, lower-case, they become
  namespace names ``<lab id>-<host>``); FQDNs are domains (RFC 1123) and are what
  HELO/greetings use (the kernel hostname is shared by every namespace) and what
  ``/etc/netns/<ns>/hosts`` lists, so neither can add a line anywhere.
- A topology is checked whenever it is made, from code or from a scenario's ``[[hosts]]``;
  errors name the key: ``hosts[1].ipv4: ...`` (``topology.hosts[1]...`` from code).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from harness.errors import HarnessError
from harness.grammar import Grammar, IPAddress, documentation_address, require, shown

MAX_HOSTS = 32
# [[hosts]] key -> (required, its grammar, or the IP version of the address it holds)
HOST_KEYS: dict[str, tuple[bool, Grammar | int]] = {
    "name": (True, Grammar.HOST_NAME),
    "ipv4": (True, 4),
    "ipv6": (False, 6),
    "fqdn": (False, Grammar.DOMAIN),
}


@dataclass(frozen=True)
class Host:
    name: str
    ipv4: str
    ipv6: str | None = None
    fqdn: str | None = None

    @property
    def addresses(self) -> list[str]:
        return [a for a in (self.ipv4, self.ipv6) if a]


@dataclass(frozen=True)
class Topology:
    hosts: tuple[Host, ...]
    ipv4_prefix: int = 24
    ipv6_prefix: int = 64
    dns_host: str | None = "dns"

    def __post_init__(self) -> None:
        check_hosts(self.hosts, self.dns_host, "topology.hosts", self.ipv4_prefix, self.ipv6_prefix)

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise HarnessError(f"topology: no host named {name!r}")

    @property
    def dns_server(self) -> Host | None:
        return self.host(self.dns_host) if self.dns_host else None


def default_topology() -> Topology:
    """The seed's three hosts: the SMTP sender, the DNS server and the SMTP receiver."""
    return Topology(
        hosts=(
            Host("sender", "192.0.2.10", "2001:db8::10", "mail.sender.com"),
            Host("dns", "192.0.2.53", "2001:db8::53", "ns.receiver.com"),
            Host("receiver", "192.0.2.25", "2001:db8::25", "mail.receiver.com"),
        )
    )


def topology_from_dict(data: dict, where: str = "topology") -> Topology:
    """Build a topology from plain data (a scenario's ``[[hosts]]`` tables, ``where="hosts"``
    names them in errors; other callers get ``<where>.hosts``)."""
    key = where if where == "hosts" else f"{where}.hosts"
    tables = data.get("hosts", [])
    if not isinstance(tables, list):
        raise HarnessError(f"{key}: expected an array of tables ([[hosts]]), got {shown(tables)}")
    if not 1 <= len(tables) <= MAX_HOSTS:
        raise HarnessError(f"{key}: {len(tables)} hosts; give 1 to {MAX_HOSTS}")
    hosts = tuple(_host(table, f"{key}[{i}]") for i, table in enumerate(tables))
    dns_host = data.get("dns_host", "dns")
    check_hosts(hosts, dns_host, key)
    return Topology(hosts=hosts, dns_host=dns_host)


def _host(table: Any, where: str) -> Host:
    if not isinstance(table, dict):
        raise HarnessError(f"{where}: expected a table, got {shown(table)}")
    unknown = sorted(set(table) - set(HOST_KEYS), key=str)
    if unknown:
        raise HarnessError(f"{where}: unknown key {shown(unknown[0])}")
    for key, (required, _) in HOST_KEYS.items():
        if required and key not in table:
            raise HarnessError(f"{where}.{key}: required")
        if key in table and not isinstance(table[key], str):
            raise HarnessError(f"{where}.{key}: expected a string, got {shown(table[key])}")
    return Host(table["name"], table["ipv4"], table.get("ipv6"), table.get("fqdn"))


def check_hosts(
    hosts: tuple[Host, ...],
    dns_host: str | None,
    where: str,
    ipv4_prefix: int = 24,
    ipv6_prefix: int = 64,
) -> None:
    """Every rule of the module docstring; errors name ``<where>[i].<key>``."""
    if not hosts:
        raise HarnessError(f"{where}: no hosts")
    segments: dict[int, ipaddress.IPv4Network | ipaddress.IPv6Network] = {}
    prefixes = {4: ipv4_prefix, 6: ipv6_prefix}
    names: set[str] = set()
    addresses: set[IPAddress] = set()
    for i, host in enumerate(hosts):
        key = f"{where}[{i}]"
        for field, (required, rule) in HOST_KEYS.items():
            value = getattr(host, field)
            if value is None and not required:
                continue
            if isinstance(rule, Grammar):
                require(rule, value, f"{key}.{field}")
                continue
            address = documentation_address(value, f"{key}.{field}", version=rule)
            segment = segments.setdefault(
                rule, ipaddress.ip_interface(f"{address}/{prefixes[rule]}").network
            )
            if address not in segment:
                raise HarnessError(f"{key}.{field}: {address} is outside the lab segment {segment}")
            if address in addresses:
                raise HarnessError(f"{key}.{field}: {address} is another host's address too")
            addresses.add(address)
        if host.name in names:
            raise HarnessError(f"{key}.name: host {host.name!r} appears twice")
        names.add(host.name)
    if dns_host and dns_host not in names:
        raise HarnessError(f"{where}: no host named {dns_host!r} (the DNS server's host)")
