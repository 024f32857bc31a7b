"""One run of a scenario: lab, DNS, receiver, sender, capture — and its verdict.

Rules kept here:
- Everything a run starts is stopped by the ``with`` that started it, innermost first: the
  peers, then the capture, then the DNS server, then the lab.
- Both peers run on one asyncio loop in the calling thread, each with sockets created in
  its own lab host and a resolver that asks the lab DNS from that host.
- The scripted receiver listens on its host's IPv4 address, or on every address of its
  host with ``[receiver] family = "any"``.
- A real MTA (``[receiver] mta`` or ``[sender] mta``) replaces one scripted peer: its
  adapter (harness.mta) runs it in that peer's host, under ``<folder>/<role>-<mta>/``;
  ``harness.mta.roles`` starts it, waits for it (bounded) and reads what it decided
  (outcomes as sender, stored mail as receiver).
- A run's folder holds what it produced: ``capture.pcap`` and its ladder (``ladder.txt``,
  ``ladder.svg``, ``ladder.html``, ``ladder.json``), ``receiver.jsonl``, ``sender.jsonl``,
  ``dns.jsonl`` and the stored mail under ``maildir/``.
- The verdict compares what happened with ``[expect]``: per-recipient outcomes, DNS
  questions, and — when ``expect.golden`` names a capture — the wire itself, ladder against
  golden ladder (``harness.ladder.compare``).  A delivered recipient also needs a stored
  message byte-identical to what the sender sent, once the trace fields a real MTA adds
  are removed (its adapter's ``as_sent``; scripted peers add none).
- Only ``update_golden=True`` writes a golden capture; nothing else does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from harness.capture.live import Capture
from harness.dns import DnsServer, FaultRule, FaultRules, QueryLog, ZoneSet, aquery
from harness.errors import HarnessError
from harness.lab import Lab
from harness.ladder.compare import compare, format_diff
from harness.ladder.dissect import dissect
from harness.ladder.model import Ladder
from harness.mta.roles import Exchange, from_mta, to_mta
from harness.render import render
from harness.scenario import Scenario
from harness.smtp.receiver import Receiver, StoredMessage
from harness.smtp.sender import Sender, SendReport

DNS_PORT = 53
LADDER_FORMATS = {"txt": "text", "svg": "svg", "html": "html", "json": "json"}


@contextmanager
def lab_dns(lab: Lab, scenario: Scenario, log_path: Path | None = None) -> Iterator[DnsServer]:
    """The scenario's DNS server, answering on port 53 of the lab's DNS host."""
    zones = ZoneSet.from_dir(scenario.zones_dir)
    for origin in scenario.no_glue:
        zones.set_glue(origin, False)
    if scenario.dns_records:
        zones.add("\n".join(scenario.dns_records), replace=True)
    for name, address in scenario.dns_glue.items():
        try:
            zones.serve_glue(name, address)
        except HarnessError as exc:
            raise HarnessError(f"{scenario.path}: dns.glue.{name}: {exc}") from None
    faults = FaultRules(FaultRule.from_dict(f) for f in scenario.dns_faults)
    server = DnsServer(zones, faults, QueryLog(log_path))
    host = lab.topology.dns_server
    server.start([(a, DNS_PORT) for a in host.addresses], lab.socket_factory(host.name))
    try:
        yield server
    finally:
        server.stop()
        server.log.close()


def resolver_for(lab: Lab, host: str):
    """An async ``resolve(qname, qtype)`` asking the lab DNS from inside ``host``."""
    dns = lab.topology.dns_server
    return functools.partial(aquery, (dns.ipv4, DNS_PORT), socket_factory=lab.socket_factory(host))


@dataclass
class RunResult:
    scenario: Scenario
    folder: Path
    report: SendReport
    stored: list[StoredMessage]
    receiver_log: list[dict]
    dns_log: list
    ladder: Ladder
    problems: list[str] = field(default_factory=list)
    as_sent: Callable[[bytes], bytes] = bytes  # a stored copy -> the message as first sent

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def pcap(self) -> Path:
        return self.folder / "capture.pcap"


def run_scenario(
    scenario: Scenario,
    folder: Path,
    capture_backend: str = "afpacket",
    update_golden: bool = False,
) -> RunResult:
    golden = scenario.expect.golden
    if golden is not None and not update_golden and not golden.is_file():
        raise HarnessError(
            f"{scenario.path}: expect.golden: {golden} does not exist "
            "(record it with --update-golden)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    with (
        Lab(scenario.topology) as lab,
        lab_dns(lab, scenario, folder / "dns.jsonl") as dns,
        Capture(lab, folder / "capture.pcap", capture_backend),
    ):
        done = asyncio.run(_exchange(lab, scenario, folder))
    result = RunResult(
        scenario=scenario,
        folder=folder,
        report=done.report,
        stored=done.stored,
        receiver_log=done.receiver_log,
        dns_log=dns.log.entries(),
        ladder=dissect(str(folder / "capture.pcap"), host_names(scenario.topology)),
        as_sent=done.as_sent,
    )
    write_ladder(result.ladder, folder)
    if golden is not None and update_golden:
        golden.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result.pcap, golden)
    result.problems = judge(result)
    if golden is not None and not update_golden:
        result.problems += judge_wire(result.ladder, result.pcap, golden, scenario.topology)
    return result


def host_names(topology) -> dict[str, str]:
    """Address -> host name, for the ladder of a lab capture."""
    return {addr: h.name for h in topology.hosts for addr in h.addresses}


def write_ladder(ladder: Ladder, folder: Path) -> None:
    for suffix, fmt in LADDER_FORMATS.items():
        (folder / f"ladder.{suffix}").write_text(render(ladder, fmt), encoding="utf-8")


def judge_wire(ladder: Ladder, pcap: Path, golden: Path, topology) -> list[str]:
    """The packetdrill-style diff against the golden capture, or nothing if it matches."""
    verdict = compare(ladder, dissect(str(golden), host_names(topology)))
    return [] if verdict.ok else [format_diff(verdict, str(pcap), str(golden)).rstrip()]


async def _exchange(lab: Lab, scenario: Scenario, folder: Path) -> Exchange:
    if scenario.receiver_mta:
        return await to_mta(lab, scenario, folder, _scripted_sender(lab, scenario, folder).send)
    rconf = dataclasses.replace(
        scenario.receiver, maildir=folder / "maildir", log_path=folder / "receiver.jsonl"
    )
    rhost = lab.host(scenario.receiver_host)
    receiver = Receiver(
        rconf,
        resolve=resolver_for(lab, rhost.name),
        socket_factory=lab.socket_factory(rhost.name),
    )
    as_sent: Callable[[bytes], bytes] = bytes
    listen = rhost.addresses if scenario.families["receiver"] == "any" else [rhost.ipv4]
    async with receiver:
        for address in listen:
            await receiver.start(address, scenario.receiver_port)
        if scenario.sender_mta:
            report, as_sent = await from_mta(lab, scenario, folder, receiver)
        else:
            report = await _scripted_sender(lab, scenario, folder).send()
        await receiver.idle()
    return Exchange(report, receiver.stored, receiver.log.entries, as_sent)


def _scripted_sender(lab: Lab, scenario: Scenario, folder: Path) -> Sender:
    return Sender(
        dataclasses.replace(scenario.sender, log_path=folder / "sender.jsonl"),
        resolve=resolver_for(lab, scenario.sender_host),
        socket_factory=lab.socket_factory(scenario.sender_host),
    )


def judge(result: RunResult) -> list[str]:
    """Every way the run differs from the scenario's expectations, one line each."""
    exp = result.scenario.expect
    outcomes = result.report.outcomes
    problems = []
    for status in ("delivered", "rejected", "deferred"):
        wanted = getattr(exp, status)
        if wanted is None:
            continue
        got = sorted(r for r, o in outcomes.items() if o.status == status)
        if got != sorted(wanted):
            problems.append(f"expected {status} {sorted(wanted)}, got {got}")
    sent = result.scenario.sender.message
    for rcpt, outcome in outcomes.items():
        if outcome.status != "delivered":
            continue
        copies = [m for m in result.stored if m.recipient.lower() == rcpt.lower()]
        if len(copies) != 1:
            problems.append(f"{rcpt}: delivered, but the receiver stored {len(copies)} copies")
        elif result.as_sent(copies[0].data) != (sent if sent.endswith(b"\r\n") else sent + b"\r\n"):
            problems.append(f"{rcpt}: the stored message differs from the one sent")
    if exp.dns_questions is not None:
        asked = [f"{e.qname.rstrip('.')} {e.qtype}".lower() for e in result.dns_log]
        if not _subsequence([q.lower() for q in exp.dns_questions], asked):
            problems.append(f"expected DNS questions {exp.dns_questions} in order, got {asked}")
    return problems


def _subsequence(wanted: list[str], seen: list[str]) -> bool:
    it = iter(seen)
    return all(any(w == s for s in it) for w in wanted)
