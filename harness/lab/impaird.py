"""The impairment daemon: one lab host's link faults, on an NFQUEUE, in pure Python.

Runs inside one lab host (``ip netns exec``, started by ``impair.apply`` with the lab's
``popen``, so the lab's teardown ends it by pid).  It reads its configuration as JSON on
standard input (scenario data never reaches its command line), binds queue ``QUEUE`` over
an AF_NETLINK socket (nfnetlink_queue, ``linux/netfilter/nfnetlink_queue.h``: no C
library), prints ``ready`` and then gives every queued packet its verdict.

Rules kept here:
- The nft table of the host queues what leaves its eth0 (postrouting: direction "out")
  and what arrives on it (prerouting: "in"); the packet's hook says which fault applies.
- ``Impairer`` decides, without I/O: each packet belongs to a flow (``flow_key``: the
  direction, protocol, both addresses and the lower port, the service's: the client's
  port is ephemeral), and each flow draws from its own ``random.Random`` seeded with the
  seed and the flow, four draws a packet: lost (``loss``), jitter (uniform in
  ±``jitter_ms``), sent at once ahead of the delayed ones (``reorder``, netem's
  meaning: a fraction that skips ``delay_ms``), copied (``duplicate``).  Every packet
  takes all four draws whatever it gets, so the n-th packet of a flow meets the same fate
  in every run with that seed, whatever else the host sends meanwhile (an IPv6 MLD
  report, another connection).
- A lost packet gets NF_DROP; a kept one NF_ACCEPT once its delay is over (a timer heap,
  ties in arrival order); a copied one is accepted with mark ``DUPLICATE_MARK``, and the
  table's netdev egress rule sends it twice (clearing the mark first: the copy is not
  copied again).
- The kernel segments GSO packets before queueing them (no NFQA_CFG_F_GSO): faults apply
  to packets as the wire carries them.  No fail-open: if the daemon is gone, the queue
  drops, and the run shows it.
"""

from __future__ import annotations

import heapq
import json
import os
import random
import socket
import struct
import sys
import time
from dataclasses import dataclass

NETLINK_NETFILTER = 12
NETLINK_NO_ENOBUFS = 5
SOL_NETLINK = 270
QUEUE = 0
DUPLICATE_MARK = 0x1D
HOOK_IN, HOOK_OUT = 0, 4  # NF_INET_PRE_ROUTING, NF_INET_POST_ROUTING
NF_DROP, NF_ACCEPT = 0, 1

_NFNL_SUBSYS_QUEUE = 3
_MSG_PACKET, _MSG_VERDICT, _MSG_CONFIG = 0, 1, 2
_NLM_F_REQUEST, _NLM_F_ACK = 0x1, 0x4
_NLMSG_ERROR = 2
_CFG_CMD, _CFG_PARAMS, _CFG_QUEUE_MAXLEN = 1, 2, 3
_CMD_BIND = 1
_COPY_PACKET = 2
_ATTR_PACKET_HDR, _ATTR_VERDICT_HDR, _ATTR_MARK, _ATTR_PAYLOAD = 1, 2, 3, 10
_TCP, _UDP = 6, 17
COPY_BYTES = 128  # the headers are all the daemon reads
_NLMSG = struct.Struct("=IHHII")
_NLATTR = struct.Struct("=HH")
_NFGEN = struct.Struct("=BBH")  # family, version, queue number (big-endian: packed by hand)
QUEUE_MAXLEN = 8192


@dataclass(frozen=True)
class Rule:
    """The fault of one direction of a host's link, as the daemon applies it."""

    delay_ms: int = 0
    jitter_ms: int = 0
    loss: float = 0.0
    reorder: float = 0.0
    duplicate: float = 0.0


@dataclass(frozen=True)
class Fate:
    drop: bool
    delay_s: float
    copy: bool


Flow = tuple  # (hook, protocol, source, destination, lower port or None)


def flow_key(hook: int, packet: bytes) -> Flow:
    """The flow of an IPv4 or IPv6 packet (its first bytes are enough)."""
    if packet[:1] and packet[0] >> 4 == 6 and len(packet) >= 40:
        proto, src, dst, head = packet[6], packet[8:24], packet[24:40], 40
    elif len(packet) >= 20:
        proto, src, dst, head = packet[9], packet[12:16], packet[16:20], (packet[0] & 15) * 4
    else:
        return (hook, None, None, None, None)
    ports = packet[head : head + 4] if proto in (_TCP, _UDP) else b""
    low = min(struct.unpack("!HH", ports)) if len(ports) == 4 else None
    return (hook, proto, src.hex(), dst.hex(), low)


class Impairer:
    """Fates from a seed, flow by flow (sans-IO: the daemon's only source of choices)."""

    def __init__(self, rules: dict[int, Rule], seed: int | str) -> None:
        self.rules = rules
        self.seed = seed
        self._flows: dict[Flow, random.Random] = {}

    def fate(self, flow: Flow) -> Fate:
        rule = self.rules.get(flow[0])
        stream = self._flows.get(flow)
        if stream is None:
            stream = self._flows[flow] = random.Random(f"{self.seed}:{flow}")
        draw = stream.random
        lost, jitter, at_once, copied = draw(), draw(), draw(), draw()
        if rule is None:
            return Fate(False, 0.0, False)
        delay = 0.0 if at_once < rule.reorder else rule.delay_ms
        delay += (2 * jitter - 1) * rule.jitter_ms if delay else 0.0
        return Fate(lost < rule.loss, max(0.0, delay) / 1000, copied < rule.duplicate)


# --- nfnetlink_queue over AF_NETLINK ----------------------------------------------------
def _attr(kind: int, payload: bytes) -> bytes:
    size = _NLATTR.size + len(payload)
    return _NLATTR.pack(size, kind) + payload + b"\0" * (-size % 4)


def _message(msg: int, flags: int, attrs: bytes, family: int = socket.AF_UNSPEC) -> bytes:
    body = _NFGEN.pack(family, 0, socket.htons(QUEUE)) + attrs
    kind = (_NFNL_SUBSYS_QUEUE << 8) | msg
    return _NLMSG.pack(_NLMSG.size + len(body), kind, _NLM_F_REQUEST | flags, 0, 0) + body


def _attrs(data: bytes, offset: int) -> dict[int, bytes]:
    out = {}
    while offset + _NLATTR.size <= len(data):
        size, kind = _NLATTR.unpack_from(data, offset)
        if size < _NLATTR.size:
            break
        out[kind & 0x3FFF] = data[offset + _NLATTR.size : offset + size]
        offset += (size + 3) & ~3
    return out


class Queue:
    """The host's NFQUEUE: bind, read packets (id, hook), give verdicts."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
        self.sock.bind((0, 0))
        bind = struct.pack("!BxH", _CMD_BIND, 0)
        params = struct.pack("!IB", COPY_BYTES, _COPY_PACKET)  # struct nfqnl_msg_config_params
        self._configure(_attr(_CFG_CMD, bind))
        self._configure(
            _attr(_CFG_PARAMS, params) + _attr(_CFG_QUEUE_MAXLEN, struct.pack("!I", QUEUE_MAXLEN))
        )

    def _configure(self, attrs: bytes) -> None:
        self.sock.send(_message(_MSG_CONFIG, _NLM_F_ACK, attrs))
        data = self.sock.recv(65536)
        _, kind, _, _, _ = _NLMSG.unpack_from(data)
        error = struct.unpack_from("=i", data, _NLMSG.size)[0] if kind == _NLMSG_ERROR else 0
        if error:
            raise OSError(-error, f"nfnetlink_queue config: {os.strerror(-error)}")

    def packets(self, timeout: float | None) -> list[tuple[int, Flow]]:
        """(packet id, flow) of what arrives within ``timeout`` (None: wait)."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 17)
        except TimeoutError:
            return []
        out, offset = [], 0
        while offset + _NLMSG.size <= len(data):
            size, kind, _, _, _ = _NLMSG.unpack_from(data, offset)
            if size < _NLMSG.size:
                break
            if kind == (_NFNL_SUBSYS_QUEUE << 8) | _MSG_PACKET:
                header = _attrs(data[: offset + size], offset + _NLMSG.size + _NFGEN.size)
                packet_id, _, hook = struct.unpack_from("!IHB", header[_ATTR_PACKET_HDR])
                out.append((packet_id, flow_key(hook, header.get(_ATTR_PAYLOAD, b""))))
            offset += (size + 3) & ~3
        return out

    def verdict(self, packet_id: int, verdict: int, mark: int | None = None) -> None:
        attrs = _attr(_ATTR_VERDICT_HDR, struct.pack("!II", verdict, packet_id))
        if mark is not None:
            attrs += _attr(_ATTR_MARK, struct.pack("!I", mark))
        self.sock.send(_message(_MSG_VERDICT, 0, attrs))


def serve(queue: Queue, impairer: Impairer) -> None:
    """Give every packet its verdict, forever (the lab's teardown ends the process)."""
    held: list[tuple[float, int, int, int | None]] = []  # (due, arrival, id, mark)
    arrival = 0
    while True:
        now = time.monotonic()
        while held and held[0][0] <= now:
            _, _, packet_id, mark = heapq.heappop(held)
            queue.verdict(packet_id, NF_ACCEPT, mark)
        timeout = max(0.0, held[0][0] - now) if held else None
        for packet_id, flow in queue.packets(timeout):
            fate = impairer.fate(flow)
            if fate.drop:
                queue.verdict(packet_id, NF_DROP)
                continue
            mark = DUPLICATE_MARK if fate.copy else None
            arrival += 1
            heapq.heappush(held, (time.monotonic() + fate.delay_s, arrival, packet_id, mark))


def main() -> None:
    config = json.load(sys.stdin)
    rules = {HOOK_IN if d == "in" else HOOK_OUT: Rule(**r) for d, r in config["rules"].items()}
    queue = Queue()
    print("ready", flush=True)
    serve(queue, Impairer(rules, config["seed"]))


if __name__ == "__main__":
    main()
