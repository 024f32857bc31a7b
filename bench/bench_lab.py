"""Lab up + down, median of 20, against the lab-facts recipe (one `ip` process per step).

Prints both medians and the ratio recipe/ours (> 1 means ours is faster).
"""

from __future__ import annotations

import statistics
import subprocess
import time

from harness.lab import Lab, default_topology

RUNS = 20


def _ours() -> tuple[float, float]:
    lab = Lab()
    t0 = time.perf_counter()
    lab.up()
    t1 = time.perf_counter()
    lab.down()
    return t1 - t0, time.perf_counter() - t1


def _sh(cmd: str) -> None:
    subprocess.run(cmd, shell=True, check=True)


def _recipe() -> tuple[float, float]:
    """The topology recipe from shared/notes/lab-facts.md, command by command."""
    lab = "shbench"
    t0 = time.perf_counter()
    _sh(f"ip netns add {lab}-lan; ip -n {lab}-lan link set lo up")
    _sh(f"ip -n {lab}-lan link add br0 type bridge")
    _sh(f"ip -n {lab}-lan link set br0 type bridge stp_state 0 forward_delay 0")
    _sh(f"ip -n {lab}-lan link set br0 up")
    for i, h in enumerate(default_topology().hosts):
        ns = f"{lab}-{h.name}"
        _sh(f"ip netns add {ns}; ip -n {ns} link set lo up")
        _sh(f"ip -n {lab}-lan link add p{i} type veth peer name eth0 netns {ns}")
        _sh(f"ip -n {lab}-lan link set p{i} master br0 up")
        _sh(f"ip -n {ns} addr add {h.ipv4}/24 dev eth0; ip -n {ns} link set eth0 up")
    t1 = time.perf_counter()
    for h in default_topology().hosts:
        _sh(f"ip netns delete {lab}-{h.name}")
    _sh(f"ip netns delete {lab}-lan")
    return t1 - t0, time.perf_counter() - t1


def _median_ms(fn) -> tuple[float, float]:
    samples = [fn() for _ in range(RUNS)]
    return tuple(statistics.median(s[i] for s in samples) * 1000 for i in (0, 1))


def main() -> None:
    ours_up, ours_down = _median_ms(_ours)
    rec_up, rec_down = _median_ms(_recipe)
    print(f"lab up+down, median of {RUNS} (3 hosts, IPv4+IPv6, resolv.conf):")
    print(f"  smtp-harness   up {ours_up:6.1f} ms  down {ours_down:6.1f} ms")
    print(f"  ip recipe      up {rec_up:6.1f} ms  down {rec_down:6.1f} ms  (IPv4 only)")
    ratio = (rec_up + rec_down) / (ours_up + ours_down)
    print(f"  ratio recipe/ours (up+down): {ratio:.2f}x")


if __name__ == "__main__":
    main()
