"""The lab: hosts in network namespaces on a private bridge (see lab.py for the rules).

The topology is imported with the package; ``Lab`` and ``clean_stale`` (``harness.lab.lab``:
namespaces, processes, the bridge) when first asked for, so a module that reads only the
topology (a check's setups) does not load what runs a lab.  The deferred import is
``signals.imported``: a signal that arrives meanwhile lands after it, never inside it.
"""

from typing import Any

from harness import signals
from harness.lab.topology import Host, Topology, default_topology, topology_from_dict

__all__ = ["Host", "Lab", "Topology", "clean_stale", "default_topology", "topology_from_dict"]
_FROM_LAB = frozenset({"Lab", "clean_stale"})


def __getattr__(name: str) -> Any:
    if name in _FROM_LAB:
        return getattr(signals.imported("harness.lab.lab"), name)
    raise AttributeError(f"module 'harness.lab' has no attribute {name!r}")
