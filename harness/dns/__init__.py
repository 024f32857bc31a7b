"""The fake DNS: zones from RFC 1035 files, authoritative answers, faults on demand.

``ZoneSet`` holds the data, ``DnsServer`` serves it over UDP and TCP with ``FaultRules``
applied and every query recorded in a ``QueryLog``; ``query``/``aquery`` are the stub
resolver our own peers use.  Each name is imported from its module when first asked for:
a module that needs only the zones' grammar (``harness.grammar``) does not load the
server and asyncio.  The deferred import is ``signals.imported``: a signal that arrives
meanwhile lands after it, never inside it.
"""

from typing import Any

from harness import signals

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
    return getattr(signals.imported(f"harness.dns.{home}"), name)
