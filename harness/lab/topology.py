"""What a lab looks like, as data.

Rules kept here:
- Every address is a documentation address (RFC 5737 IPv4, RFC 3849 IPv6): a topology that
  names anything else is rejected, so nothing a lab host sends can be routed off the lab.
- Hosts share one layer-2 segment (one IPv4 /24, one IPv6 /64); there is no gateway and no
  default route, so a host can reach the other hosts and nothing else.
- Host names are short identifiers (they become namespace names); FQDNs are separate and are
  what HELO/greetings use (the kernel hostname is shared by every namespace).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from harness.errors import HarnessError

DOC_NETS = tuple(
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
)
_HOST_NAME = re.compile(r"^[a-z][a-z0-9]{0,9}$")


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
        validate(self)

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
    """Build a topology from plain data (a scenario's ``[[hosts]]`` tables)."""
    hosts = []
    for i, item in enumerate(data.get("hosts", [])):
        key = f"{where}.hosts[{i}]"
        unknown = set(item) - {"name", "ipv4", "ipv6", "fqdn"}
        if unknown:
            raise HarnessError(f"{key}: unknown key {sorted(unknown)[0]!r}")
        for required in ("name", "ipv4"):
            if not isinstance(item.get(required), str):
                raise HarnessError(f"{key}.{required}: required string")
        hosts.append(Host(item["name"], item["ipv4"], item.get("ipv6"), item.get("fqdn")))
    return Topology(hosts=tuple(hosts), dns_host=data.get("dns_host", "dns"))


def validate(topo: Topology) -> None:
    if not topo.hosts:
        raise HarnessError("topology: no hosts")
    seen: set[str] = set()
    for h in topo.hosts:
        if not _HOST_NAME.match(h.name):
            raise HarnessError(
                f"topology: host name {h.name!r} must be 1-10 lowercase letters/digits"
            )
        if h.name in seen:
            raise HarnessError(f"topology: host {h.name!r} appears twice")
        seen.add(h.name)
        _check_address(h.name, h.ipv4, 4, topo.ipv4_prefix, topo.hosts[0].ipv4)
        if h.ipv6:
            first_v6 = next((x.ipv6 for x in topo.hosts if x.ipv6), h.ipv6)
            _check_address(h.name, h.ipv6, 6, topo.ipv6_prefix, first_v6)
    addrs = [a for h in topo.hosts for a in h.addresses]
    if len(addrs) != len(set(addrs)):
        raise HarnessError("topology: two hosts share an address")
    if topo.dns_host and topo.dns_host not in seen:
        raise HarnessError(f"topology: dns_host {topo.dns_host!r} is not a host")


def _check_address(host: str, addr: str, version: int, prefix: int, first: str) -> None:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise HarnessError(f"topology: host {host!r}: {addr!r} is not an address") from None
    if ip.version != version:
        raise HarnessError(f"topology: host {host!r}: {addr} is not IPv{version}")
    if not any(ip in net for net in DOC_NETS):
        raise HarnessError(
            f"topology: host {host!r}: {addr} is not a documentation address "
            "(192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32)"
        )
    segment = ipaddress.ip_interface(f"{first}/{prefix}").network
    if ip not in segment:
        raise HarnessError(f"topology: host {host!r}: {addr} is outside the lab segment {segment}")
