"""The torture (``make torture``): issue 9's figures, reproduced, every count next to its result.

    .venv/bin/python tools/torture.py [--quick] [--seed N] [--runs N] [--pcaps N]
                                      [--dns N] [--smtp N] [--only PART ...] [--out DIR]

Four parts, each reusing what the project has:

* ``runs``: ``smtp-harness run`` of each scenario in ``SCENARIOS`` (the seed, and Postfix
  as the receiver), killed by SIGINT, SIGTERM and SIGKILL at random points; exit codes,
  tracebacks and what was left, judged by each run's own lab ids (``torture_runs.py``).
* ``pcaps``: mutated captures (``tools/pcap_mutate.py``) through the dissector and every
  renderer, classified by ``tools/pcap_fuzz.py``: crashes by class, outputs that are not
  valid UTF-8, and the rest of its findings.
* ``dns``: malformed queries (``harness/dns/malformed.py``) over UDP and TCP at a real
  ``DnsServer`` in a lab host, from another host; then whether it still answers.
* ``smtp``: abusive sessions against the scripted receiver in a lab host, and every
  message given 250 checked byte-exact in its store (``torture_smtp.py``).

Rules kept here:

1. stdout is figures only, one per line (``torture_figure.Figure``: what, count, ok / FAIL
   / noted), printed as each is measured; details for reproducing a FAIL go to stderr.
2. Seeded: ``--seed`` (printed first) drives every random draw, each part from its own
   ``random.Random``, so a part reproduces whatever the counts of the others.
3. Exit 0 only when no figure is FAIL (no leak, no crash, no lost message), else 1; a
   machine that cannot run it (not root) is a one-line error, exit 2; a bug of the torture
   itself exit 3 (its traceback in the out folder); Ctrl-C 130, SIGTERM 143, with the lab
   and the run under way removed first (``harness.verdict.ExitCode``).  The out folder
   keeps findings only: what passed is removed.
4. Full counts by default (100 runs per signal and scenario, 100,000 mutated pcaps,
   100,000 malformed DNS queries each way, 1,000 abusive SMTP sessions); ``--quick`` is a
   small run of every part; a count given explicitly wins over either.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pcap_fuzz import SLOW_S, _batch
from torture_figure import Figure, detail, noted
from torture_runs import killed_runs
from torture_smtp import smtp_abuse

from harness.dns import DnsServer, QueryLog, ZoneSet
from harness.dns.malformed import throw
from harness.errors import HarnessError
from harness.lab import Lab
from harness.runner import DNS_PORT
from harness.scenario import Scenario, load_scenario
from harness.verdict import ExitCode

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = (
    ROOT / "fixtures" / "scenarios" / "seed.toml",
    ROOT / "fixtures" / "scenarios" / "postfix-receiver.toml",
)
PCAP_SEEDS = (
    ROOT / "pcaps" / "seed.pcap",
    ROOT / "tests" / "data" / "zeek" / "rfc3030-bdat-example1.pcap",
    ROOT / "tests" / "data" / "zeek" / "smtp-bdat-cmd-invalid.pcapng",
)
PCAP_BATCH = 500  # mutants per pcap_fuzz job
PARTS = ("runs", "pcaps", "dns", "smtp")
FULL = {"runs": 100, "pcaps": 100_000, "dns": 100_000, "smtp": 1_000, "drip": 0.01}
QUICK = {"runs": 2, "pcaps": 400, "dns": 400, "smtp": 24, "drip": 0.001}


def pcap_figures(count: int, seed: int, jobs: int, out: Path) -> Iterator[Figure]:
    """``count`` mutants of ``PCAP_SEEDS`` through ``pcap_fuzz``, its findings by kind."""
    out.mkdir(parents=True, exist_ok=True)
    each, extra = divmod(count, len(PCAP_SEEDS))
    shares = [each + (i < extra) for i in range(len(PCAP_SEEDS))]
    work = [
        (str(path), seed, start, min(PCAP_BATCH, share - start), str(out))
        for path, share in zip(PCAP_SEEDS, shares, strict=True)
        for start in range(0, share, PCAP_BATCH)
    ]
    total, classes, kept = 0, Counter(), {}
    began = time.monotonic()
    with ProcessPoolExecutor(jobs) as pool:
        for n, found, reproducers in pool.map(_batch, work):
            total += n
            classes.update(found)
            kept = {**reproducers, **kept}
    kinds = Counter({kind: 0 for kind in _PCAP_KINDS})
    for found, n in classes.items():
        kinds[_pcap_kind(found)] += n
        detail(f"pcap finding x{n}: {found}: {kept[found]}")
    seconds = time.monotonic() - began
    yield Figure(
        f"pcap mutants of {len(PCAP_SEEDS)} captures, dissected, rendered ({seconds:.0f} s)",
        total,
        count,
    )
    for kind, what in _PCAP_KINDS.items():
        yield Figure(f"pcap {what}", kinds[kind])
    for found, n in classes.most_common():
        yield Figure(f"pcap   {found}", n)


_PCAP_KINDS = {
    "crash": "crashes (an exception other than the one-line PcapError)",
    "utf8": "outputs that are not valid UTF-8",
    "other": f"other findings (PcapError not one line, JSON not equal, over {SLOW_S:.0f} s)",
}


def _pcap_kind(found: str) -> str:
    """The kind of one of ``pcap_fuzz.examine``'s classes."""
    if "not valid UTF-8" in found:
        return "utf8"
    others = ("PcapError not one line", "JSON ladder", "steps not numbered", "slow:")
    return "other" if found.startswith(others) else "crash"


def dns_figures(
    server: DnsServer, lab: Lab, scenario: Scenario, count: int, seed: int
) -> Iterator[Figure]:
    """``count`` malformed queries each way from the sender host; the server's tally."""
    address = (lab.topology.dns_server.ipv4, DNS_PORT)
    client = lab.socket_factory(scenario.sender_host)
    for transport in ("udp", "tcp"):
        tally = throw(
            server, count, seed=seed, transport=transport, address=address, socket_factory=client
        )
        what = f"DNS malformed queries over {transport.upper()}"
        yield Figure(f"{what}: sent", tally.sent, count)
        for rcode, n in sorted(tally.answered.items()):
            yield noted(f"{what}: answered {rcode}", n)
        yield noted(f"{what}: dropped as server.py documents", tally.dropped)
        yield Figure(f"{what}: answered otherwise than server.py documents", tally.wrong)
        yield Figure(f"{what}: internal faults the server recorded", tally.faults)
        yield Figure(
            f"{what}: a good query still answered after them", int(tally.still_answering), 1
        )
        for example in tally.examples:
            detail(f"DNS {transport}: {example}")


def _lab_figures(args: argparse.Namespace, parts: set[str]) -> Iterator[Figure]:
    """The parts that need one lab: its DNS server (also the receiver's PTR lookups)."""
    scenario = load_scenario(SCENARIOS[0])
    with Lab(scenario.topology, purpose="torture") as lab:
        host = lab.topology.dns_server
        server = DnsServer(ZoneSet.from_dir(scenario.zones_dir), log=QueryLog(maxlen=1000))
        with server:
            server.start([(a, DNS_PORT) for a in host.addresses], lab.socket_factory(host.name))
            if "dns" in parts:
                yield from dns_figures(server, lab, scenario, args.dns, args.seed)
            if "smtp" in parts:
                rng = random.Random(f"{args.seed}:smtp")
                folder = args.out / "smtp"
                abuse = smtp_abuse(lab, scenario, args.smtp, rng, folder, args.drip)
                yield from _kept_if_failed(abuse, folder)


def _kept_if_failed(figures: Iterator[Figure], folder: Path) -> Iterator[Figure]:
    """``figures``; then ``folder`` (what a part stored) is removed unless one failed."""
    failed = False
    for figure in figures:
        failed |= figure.failed
        yield figure
    if not failed:
        shutil.rmtree(folder, ignore_errors=True)


def figures(args: argparse.Namespace) -> Iterator[Figure]:
    parts = set(args.only or PARTS)
    yield noted("seed of every random draw (--seed)", args.seed)
    if "pcaps" in parts:
        yield from pcap_figures(args.pcaps, args.seed, args.jobs, args.out / "pcap-findings")
    if parts & {"dns", "smtp"}:
        yield from _lab_figures(args, parts)
    if "runs" in parts:
        for scenario in SCENARIOS:
            rng = random.Random(f"{args.seed}:runs:{scenario.stem}")
            yield from killed_runs(scenario, args.runs, rng, args.out / "runs")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run of every part")
    parser.add_argument("--seed", type=int, help="seed of every random draw (default: new)")
    parser.add_argument("--runs", type=int, help="killed runs per signal and scenario")
    parser.add_argument("--pcaps", type=int, help="mutated pcaps")
    parser.add_argument("--dns", type=int, help="malformed DNS queries, each of UDP and TCP")
    parser.add_argument("--smtp", type=int, help="abusive SMTP sessions")
    parser.add_argument("--drip", type=float, help="seconds between the bytes of a slow drip")
    parser.add_argument("--only", nargs="+", choices=PARTS, help="run these parts only")
    parser.add_argument("--jobs", type=int, default=2, help="processes for the pcaps part")
    parser.add_argument("--out", type=Path, help="findings (default: runs/torture-<UTC time>)")
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 32)
    if args.out is None:
        args.out = ROOT / "runs" / f"torture-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    return args


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(ExitCode.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    signal.signal(signal.SIGTERM, _terminated)
    failed = 0
    try:
        if os.geteuid() != 0:
            raise HarnessError("the torture needs root (labs and network namespaces)")
        for figure in figures(args):
            print(figure.line(), flush=True)
            failed += figure.failed
    except HarnessError as exc:
        print(f"torture: error: {exc}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    except KeyboardInterrupt:
        print("torture: interrupted", file=sys.stderr)
        return ExitCode.SIGINT
    except Exception as exc:  # our own bug: one line here, the traceback in the out folder
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "traceback.txt").write_text(traceback.format_exc())
        print(f"torture: internal error: {exc!r} (traceback.txt in {args.out})", file=sys.stderr)
        return ExitCode.HARNESS_ERROR
    finally:
        _remove_empty(args.out)
    print(Figure("figures that FAIL", failed).line(), flush=True)
    return ExitCode.FAIL if failed else ExitCode.OK


def _remove_empty(folder: Path) -> None:
    """The out folder's empty subfolders, then itself if empty: findings alone stay."""
    for path in sorted(folder.glob("**/"), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            path.rmdir()


if __name__ == "__main__":
    sys.exit(main())
