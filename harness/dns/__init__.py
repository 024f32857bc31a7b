"""The fake DNS: zones from RFC 1035 files, authoritative answers, faults on demand.

``ZoneSet`` holds the data, ``DnsServer`` serves it over UDP and TCP with ``FaultRules``
applied and every query recorded in a ``QueryLog``; ``query``/``aquery`` are the stub
resolver our own peers use.  Each name is imported from its module when first asked for:
a module that needs only the zones' grammar (``harness.grammar``) does not load the
server and asyncio.
"""

import importlib
from typing import Any

_HOMES = {
    "FaultRule": "faults",
    "FaultRules": "faults",
    "QueryEntry": "querylog",
    "QueryLog": "querylog",
    "DnsServer": "server",
    "DnsError": "stub",
    "DnsTimeout": "stub",
    "aquery": "stub",
    "query": "stub",
    "ZoneSet": "zones",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'harness.dns' has no attribute {name!r}")
    return getattr(importlib.import_module(f"harness.dns.{home}"), name)
