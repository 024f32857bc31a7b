"""Authoritative resolution policy: which records answer a question (RFC 1034 §4.3.2).

Rules this module keeps:

* Names outside every loaded zone are REFUSED; we are no resolver and never recurse.
* Inside our zones every answer is authoritative (AA=1).
* NXDOMAIN (the name does not exist) and NODATA (the name exists, the type does not —
  empty non-terminals included) are distinct, and both carry the zone's SOA in the
  authority section with the TTL of RFC 2308 §5: min(SOA TTL, SOA MINIMUM).
* CNAMEs are followed while the target lies in our zones; a loop ends the chain.  The
  rcode describes the last name of the chain (RFC 6604).
* MX and NS answers carry the glue of their targets (``ZoneSet.glue``: their A/AAAA, or
  the address a scenario serves instead) in the additional section when the targets are
  in our zones and the answering zone has ``glue`` on.
* No wildcards, no delegations: an NS record below an apex is plain data.
* Pure: no sockets, no clock, no faults (those are the server's and ``faults``' business).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dnslib import QTYPE, RCODE, RR, DNSLabel

from harness.dns.zones import Zone, ZoneSet, name_key

_TYPES_WITH_ADDITIONAL = (QTYPE.MX, QTYPE.NS)


@dataclass
class Answer:
    """The sections of a reply, before it is put on the wire."""

    rcode: int
    aa: bool
    answer: list[RR] = field(default_factory=list)
    authority: list[RR] = field(default_factory=list)
    additional: list[RR] = field(default_factory=list)


def resolve(zones: ZoneSet, qname: DNSLabel, qtype: int) -> Answer:
    """Answer ``qname``/``qtype`` (a QTYPE code) from ``zones``."""
    zone = zones.find(qname)
    if zone is None:
        return Answer(RCODE.REFUSED, aa=False)
    chain: list[RR] = []
    seen: set[tuple[bytes, ...]] = set()
    name = qname
    while True:
        key = name_key(name)
        rrsets = zone.rrsets.get(key)
        if rrsets is None:
            rcode = RCODE.NOERROR if key in zone.names else RCODE.NXDOMAIN
            return Answer(rcode, True, chain, [zone.negative_soa])
        found = _matching(rrsets, qtype)
        if found:
            return Answer(RCODE.NOERROR, True, chain + found, [], _additional(zones, zone, found))
        cname = rrsets.get(QTYPE.CNAME)
        if not cname:
            return Answer(RCODE.NOERROR, True, chain, [zone.negative_soa])
        chain += cname
        seen.add(key)
        name = cname[0].rdata.label
        zone = zones.find(name)
        if zone is None or name_key(name) in seen:
            return Answer(RCODE.NOERROR, True, chain)


def _matching(rrsets: dict[int, list[RR]], qtype: int) -> list[RR]:
    if qtype == QTYPE.ANY:
        # list() copies in one step: another thread may be adding records meanwhile.
        return [rr for rrset in list(rrsets.values()) for rr in rrset]
    return rrsets.get(qtype, [])


def _additional(zones: ZoneSet, zone: Zone, found: list[RR]) -> list[RR]:
    if not zone.glue:
        return []
    extra: list[RR] = []
    for rr in found:
        if rr.rtype in _TYPES_WITH_ADDITIONAL:
            extra += [a for a in zones.glue(rr.rdata.label) if a not in extra]
    return extra
