"""Link faults: delay, jitter, loss, reordering, duplication and rate on a lab host's link.

Rules kept here:
- A fault (``LinkFault``, a scenario's ``[[network.faults]]``, validated on load by
  ``harness.scenario``) is on the link from the bridge to one host: ``out`` is what the
  host sends, ``in`` what it receives, ``both`` is both.  Only numbers we checked reach a
  command: rules and qdiscs are written from the ints and floats of a ``LinkFault`` and
  the lab's own device names, never from a scenario string; the daemon gets its rules as
  JSON on stdin.  No shell anywhere.
- Two engines, both real kernel paths.  ``netem`` where the kernel has it (``detect``
  tries it on the lab bridge's loopback): one netem qdisc per direction, on the host's
  eth0 (out) or its bridge port (in).  Otherwise ``nfqueue``: in each faulty host, the
  ``impaird`` daemon on an NFQUEUE that the host's mangle table feeds (iptables-nft:
  POSTROUTING on eth0 is out, PREROUTING on eth0 is in), an nft netdev egress rule for
  the copies it marks, and a ``tbf`` qdisc for ``rate`` (on eth0 for out, on the
  bridge port for in).  Which one ran is in the record ``applied`` yields.
- Everything lives inside the lab's namespaces (never the root one): the daemon is the
  lab's child (``Lab.popen``: ended by pid in the teardown), the nft tables and qdiscs go
  with the namespaces.  Nothing is left after the lab, whatever ends it.
- A daemon that dies before the block ends is an ``InternalError`` (our fault: its queue
  dropped everything after it), with what it said.
- Faults are in place before ``applied`` enters its block, so before any traffic: the daemon has
  bound its queue (it says ``ready``) before the table that feeds it exists.
- The seed (recorded in the record) fixes, per host and flow (direction, protocol,
  addresses, the service's port: ``impaird.flow_key``), the fate of the n-th packet of
  that flow (``impaird.Impairer``): lost or not, its jitter, reordered or not, copied or
  not.  It does not fix the kernel's timing (retransmission timers, delayed ACKs,
  scheduling): a run repeats packet for packet as long as each flow's packets reach the
  queue in the same order.  netem draws from the kernel's own generator: under netem the
  seed fixes nothing, and the record says so.
"""

from __future__ import annotations

import json
import math
import random
import re
import select
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from enum import StrEnum

from harness.errors import InternalError, LabError

DAEMON_READY_S = 10.0  # the daemon imports Python and binds its queue within this
RATE = re.compile(r"([1-9][0-9]{0,9})(bit|kbit|mbit|gbit)")
RATE_UNITS = {"bit": 1, "kbit": 1_000, "mbit": 1_000_000, "gbit": 1_000_000_000}
RATE_BITS = range(8_000, 10_000_000_001)  # 8 kbit/s to 10 Gbit/s
TBF_LATENCY_MS = 1000
MTU_FRAME = 1514


class Direction(StrEnum):
    IN = "in"
    OUT = "out"
    BOTH = "both"


class Engine(StrEnum):
    NETEM = "netem"
    NFQUEUE = "nfqueue"


@dataclass(frozen=True)
class LinkFault:
    host: str
    direction: Direction = Direction.BOTH
    delay_ms: int = 0
    jitter_ms: int = 0
    loss: float = 0.0
    reorder: float = 0.0
    duplicate: float = 0.0
    rate_bits: int | None = None  # bits a second

    @property
    def directions(self) -> tuple[Direction, ...]:
        if self.direction is Direction.BOTH:
            return (Direction.IN, Direction.OUT)
        return (self.direction,)

    def rule(self) -> dict:
        """The daemon's rule (impaird.Rule) for one direction."""
        keys = ("delay_ms", "jitter_ms", "loss", "reorder", "duplicate")
        return {k: getattr(self, k) for k in keys}

    def to_dict(self) -> dict:
        return {**asdict(self), "direction": str(self.direction)}


def rate_bits(text: str) -> int | str:
    """``"1mbit"`` -> 1000000, or the problem with ``text``."""
    m = RATE.fullmatch(text) if len(text) <= 16 else None
    if m is None:
        return f'{text!r} is not a rate: a number then bit, kbit, mbit or gbit ("1mbit")'
    bits = int(m.group(1)) * RATE_UNITS[m.group(2)]
    if bits not in RATE_BITS:
        return f"{text!r}: give 8kbit to 10gbit"
    return bits


def detect(lab) -> Engine:
    """netem if the kernel has it (tried on the lab bridge namespace's loopback)."""
    tried = _tc(lab.lan_ns, ["qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"])
    if tried.returncode != 0:
        return Engine.NFQUEUE
    _tc(lab.lan_ns, ["qdisc", "del", "dev", "lo", "root"])
    return Engine.NETEM


@contextmanager
def applied(
    lab, faults: list[LinkFault], seed: int | None = None, engine: Engine | None = None
) -> Iterator[dict | None]:
    """Put ``faults`` on the lab's links for the block; yields the record of what ran
    (engine, seed, faults), None without faults.  The daemons are ended by pid when the
    block ends (the lab's teardown would end them too: they are its children)."""
    if not faults:
        yield None
        return
    seed = random.SystemRandom().randrange(2**32) if seed is None else seed
    engine = engine or detect(lab)
    daemons: dict[str, subprocess.Popen] = {}  # host -> its daemon
    try:
        for host, own in _by_host(faults).items():
            if engine is Engine.NETEM:
                for fault in own:
                    _netem(lab, fault)
            else:
                _nfqueue(lab, host, own, f"{seed}:{host}", daemons)
        yield {
            "engine": str(engine),
            "seed": seed,
            "seed_fixes": SEED_FIXES[engine],
            "faults": [f.to_dict() for f in faults],
        }
    finally:
        died = [_death(host, proc) for host, proc in daemons.items() if proc.poll() is not None]
        for proc in daemons.values():
            _end(proc)
    if died:  # its queue dropped every packet since: the run's verdict is not the MTA's
        raise InternalError(f"impairment daemon died during the run: {'; '.join(died)}")


def _by_host(faults: list[LinkFault]) -> dict[str, list[LinkFault]]:
    hosts: dict[str, list[LinkFault]] = {}
    for fault in faults:
        hosts.setdefault(fault.host, []).append(fault)
    return hosts


def _death(host: str, proc: subprocess.Popen) -> str:
    return f"host {host}: exit {proc.returncode}: {_last_line(proc.stderr.read())}"


SEED_FIXES = {
    Engine.NETEM: "nothing: netem draws from the kernel's generator",
    Engine.NFQUEUE: "the fate of the n-th packet of each flow in each host's queue",
}


def _end(proc: subprocess.Popen) -> None:
    """End one daemon by its pid (a Popen waits on its own child: no pid reuse here)."""
    proc.terminate()
    try:
        proc.wait(DAEMON_READY_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        pipe.close()


# --- netem ----------------------------------------------------------------------------
def netem_args(fault: LinkFault) -> list[str]:
    """netem's arguments for ``fault`` (one direction), from its numbers only."""
    args = ["limit", "100000"]
    if fault.delay_ms or fault.jitter_ms:
        args += ["delay", f"{fault.delay_ms}ms", f"{fault.jitter_ms}ms"]
    for name in ("loss", "reorder", "duplicate"):
        value = getattr(fault, name)
        if value:
            args += [name, f"{_percent(value)}%"]
    if fault.rate_bits:
        args += ["rate", f"{fault.rate_bits}bit"]
    return args


def _netem(lab, fault: LinkFault) -> None:
    for direction in fault.directions:
        ns, dev = _device(lab, fault.host, direction)
        _tc_ok(ns, ["qdisc", "add", "dev", dev, "root", "netem", *netem_args(fault)])


# --- NFQUEUE + nftables + tbf ----------------------------------------------------------
def queue_rules(directions: list[Direction]) -> str:
    """The host's iptables-restore input (IPv4 and IPv6 alike): what crosses eth0 in the
    faulty directions goes to queue 0.  This kernel has the xt NFQUEUE target but no nft
    ``queue`` expression (CONFIG_NFT_QUEUE unset): iptables-nft speaks it through
    nft_compat, in the host's own namespace."""
    from harness.lab.impaird import QUEUE

    chains = {Direction.OUT: "POSTROUTING -o", Direction.IN: "PREROUTING -i"}
    lines = [f"-A {chains[d]} eth0 -j NFQUEUE --queue-num {QUEUE}" for d in directions]
    return "\n".join(["*mangle", *lines, "COMMIT", ""])


def copy_ruleset() -> str:
    """The host's nft netdev table: a packet the daemon marked leaves eth0 twice (the
    mark is cleared first, so the copy is not copied again)."""
    from harness.lab.impaird import DUPLICATE_MARK

    return (
        "table netdev smtp_harness_copies {\n"
        '  chain egress { type filter hook egress device "eth0" priority 0; policy accept; '
        f'meta mark {DUPLICATE_MARK:#x} meta mark set 0x0 dup to "eth0"; }}\n}}\n'
    )


def tbf_args(bits: int) -> list[str]:
    burst = max(2 * MTU_FRAME, bits // 8 // 100)  # 10 ms of the rate, at least two frames
    return ["rate", f"{bits}bit", "burst", str(burst), "latency", f"{TBF_LATENCY_MS}ms"]


def _nfqueue(
    lab, host: str, faults: list[LinkFault], seed: str, daemons: dict[str, subprocess.Popen]
) -> None:
    """One host's faults (one per direction); its daemon, if one is needed, in ``daemons``."""
    queued = [f for f in faults if any(f.rule().values())]
    if queued:
        rules = {str(d): f.rule() for f in queued for d in f.directions}
        daemons[host] = _start_daemon(lab, host, {"seed": seed, "rules": rules})
        if any(f.duplicate for f in queued):
            _run_ok(lab, host, ["nft", "-f", "-"], copy_ruleset())
        directions = [d for f in queued for d in f.directions]
        for restore in ("iptables-restore", "ip6tables-restore"):
            _run_ok(lab, host, [restore, "--wait"], queue_rules(directions))
    for fault in faults:
        for direction in fault.directions if fault.rate_bits else ():
            ns, dev = _device(lab, host, direction)
            _tc_ok(ns, ["qdisc", "add", "dev", dev, "root", "tbf", *tbf_args(fault.rate_bits)])


def _start_daemon(lab, host: str, config: dict) -> subprocess.Popen:
    proc = lab.popen(
        host,
        [sys.executable, "-P", "-m", "harness.lab.impaird"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdin.write(json.dumps(config))
    proc.stdin.close()
    ready, _, _ = select.select([proc.stdout], [], [], DAEMON_READY_S)
    if not ready or proc.stdout.readline().strip() != "ready":
        proc.kill()
        proc.wait()
        said = _last_line(proc.stderr.read())
        _end(proc)
        raise LabError(f"impairment daemon in host {host} did not start: {said}")
    return proc


def _run_ok(lab, host: str, argv: list[str], text: str) -> None:
    """Run ``argv`` in ``host`` with ``text`` on its stdin; a ``LabError`` if it fails."""
    done = lab.run(host, argv, input=text)
    if done.returncode != 0:
        raise LabError(f"{argv[0]} in host {host}: {_error_line(done.stderr)}")


def _device(lab, host: str, direction: Direction) -> tuple[str, str]:
    """(namespace, device) whose egress carries ``direction`` of ``host``'s link."""
    return (lab.ns(host), "eth0") if direction is Direction.OUT else (lab.lan_ns, lab.port(host))


def _tc(ns: str, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["tc", "-n", ns, *args], capture_output=True, text=True)


def _tc_ok(ns: str, args: list[str]) -> None:
    done = _tc(ns, args)
    if done.returncode != 0:
        raise LabError(f"tc {' '.join(args[:4])} in {ns}: {_last_line(done.stderr)}")


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.6g}" if math.isfinite(fraction) else "0"


def _last_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else "(nothing said)"


def _error_line(text: str) -> str:
    """nft's line that says what is wrong (it follows with the rule and a caret line)."""
    lines = [line for line in (text or "").splitlines() if "Error" in line]
    return lines[0].strip() if lines else _last_line(text)
