"""Benchmark: our DNS server against dnslib's stock DNSServer + ZoneResolver, under dnsperf.

Rules this benchmark keeps:

* Same zones (fixtures/zones), same queries, same dnsperf settings, both on 127.0.0.1.
* Each server runs in its own subprocess (this script re-run with ``--serve``), so
  neither shares a GIL with the other or with the driver.
* Two query mixes: ``seed`` (the handful of names a seed run asks, repeated: what the
  lab sees) and ``distinct`` (20,000 different names, so no cached reply helps).
* Bounded: dnsperf runs ``--seconds`` per server and mix (default 4 s; ~20 s in all).
* Prints queries/s for each and the ratio ours/stock.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ZONES = Path(__file__).resolve().parent.parent / "fixtures" / "zones"
SEED_QUERIES = [
    "receiver.com MX",
    "mail.receiver.com A",
    "mail.receiver.com AAAA",
    "10.2.0.192.in-addr.arpa PTR",
    "sender.com MX",
    "nothere.receiver.com A",
]
DISTINCT_NAMES = 20_000
# -c: 4 client sockets; -q: at most 32 queries in flight (the stock server starts a
# thread per query: more in flight only measures its thread churn and its losses).
DNSPERF_ARGS = ["-c", "4", "-q", "32", "-t", "2"]


def serve(kind: str) -> None:
    """Run one server on an ephemeral loopback port; print the port; serve until stdin ends."""
    if kind == "ours":
        from harness.dns import DnsServer, ZoneSet

        server = DnsServer(ZoneSet.from_dir(ZONES))
        server.start([("127.0.0.1", 0)])
        port = server.addresses[0][1]
    else:
        from dnslib.server import DNSLogger, DNSServer
        from dnslib.zoneresolver import ZoneResolver

        text = "\n".join(p.read_text() for p in sorted(ZONES.glob("*.zone")))
        server = DNSServer(
            ZoneResolver(text), address="127.0.0.1", port=0, logger=DNSLogger("none")
        )
        server.start_thread()
        port = server.server.server_address[1]
    print(port, flush=True)
    sys.stdin.read()


def measure(kind: str, queries: Path, seconds: int) -> tuple[float, float]:
    """Queries per second dnsperf gets from a fresh ``kind`` server, and the % it lost."""
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = server.stdout.readline().strip()
        command = ["dnsperf", "-s", "127.0.0.1", "-p", port, "-d", str(queries), "-l", str(seconds)]
        out = subprocess.run(command + DNSPERF_ARGS, capture_output=True, text=True, check=True)
    finally:
        server.stdin.close()
        server.wait(timeout=10)
    rate = re.search(r"Queries per second:\s+([\d.]+)", out.stdout)
    lost = re.search(r"Queries lost:\s+\d+ \(([\d.]+)%\)", out.stdout)
    if rate is None or lost is None:
        raise SystemExit(f"dnsperf printed no rate:\n{out.stdout}{out.stderr}")
    return float(rate.group(1)), float(lost.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=4, help="dnsperf run per server and mix")
    parser.add_argument("--serve", choices=["ours", "stock"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    mixes = {
        "seed": SEED_QUERIES,
        "distinct": [f"host{i}.receiver.com A" for i in range(DISTINCT_NAMES)],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for mix, lines in mixes.items():
            queries = Path(tmp, f"{mix}.txt")
            queries.write_text("\n".join(lines) + "\n")
            (ours, ours_lost), (stock, stock_lost) = (
                measure(kind, queries, args.seconds) for kind in ("ours", "stock")
            )
            print(
                f"dns {mix:8}  ours {ours:7.0f} q/s ({ours_lost:.1f}% lost)"
                f"   dnslib stock {stock:7.0f} q/s ({stock_lost:.1f}% lost)"
                f"   ratio {ours / stock:5.2f}x"
            )


if __name__ == "__main__":
    main()
