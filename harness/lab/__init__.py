"""The lab: hosts in network namespaces on a private bridge (see lab.py for the rules)."""

from harness.lab.lab import Lab, clean_stale
from harness.lab.topology import Host, Topology, default_topology, topology_from_dict

__all__ = ["Host", "Lab", "Topology", "clean_stale", "default_topology", "topology_from_dict"]
