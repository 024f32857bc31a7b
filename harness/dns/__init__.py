"""The fake DNS: zones from RFC 1035 files, authoritative answers, faults on demand.

``ZoneSet`` holds the data, ``DnsServer`` serves it over UDP and TCP with ``FaultRules``
applied and every query recorded in a ``QueryLog``; ``query``/``aquery`` are the stub
resolver our own peers use.
"""

from harness.dns.faults import FaultRule, FaultRules
from harness.dns.querylog import QueryEntry, QueryLog
from harness.dns.server import DnsServer
from harness.dns.stub import DnsError, DnsTimeout, aquery, query
from harness.dns.zones import ZoneSet

__all__ = [
    "DnsError",
    "DnsServer",
    "DnsTimeout",
    "FaultRule",
    "FaultRules",
    "QueryEntry",
    "QueryLog",
    "ZoneSet",
    "aquery",
    "query",
]
