"""One run of a scenario: lab, DNS, receiver, sender, capture — and its verdict.

Rules kept here:
- Everything a run starts is stopped by the ``with`` that started it, innermost first: the
  peers, then the capture, then the DNS server, then the lab.
- Both peers run on one asyncio loop in the calling thread, each with sockets created in
  its own lab host and a resolver that asks the lab DNS from that host.
- A real MTA (``[receiver] mta`` or ``[sender] mta``) replaces one scripted peer: its
  adapter (harness.mta) runs it in that peer's host, under ``<folder>/<role>-<mta>/`` (its
  configuration, queue, mailboxes and its own log).  Its blocking calls run in executor
  threads; every wait on it is bounded (``MTA_TIMEOUT_S``) and ends in a clear error.
- With an MTA as sender, outcomes come from what the scripted receiver did: delivered =
  stored; rejected = a 5yz to the recipient's RCPT or VRFY, or to the MAIL, DATA or end of
  data of its session; deferred otherwise.  With an MTA as receiver, ``stored`` is read
  back from its mailboxes once every recipient it accepted has a copy (bounded wait).
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
import re
import shutil
import time
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
from harness.mta.base import MtaAdapter, Site, adapters
from harness.render import render
from harness.scenario import Scenario
from harness.smtp.receiver import Receiver, StoredMessage
from harness.smtp.sender import Outcome, Sender, SendReport

DNS_PORT = 53
MTA_TIMEOUT_S = 30.0  # the longest a real MTA may take to deliver or store a message
POLL_S = 0.02
LADDER_FORMATS = {"txt": "text", "svg": "svg", "html": "html", "json": "json"}


@contextmanager
def lab_dns(lab: Lab, scenario: Scenario, log_path: Path | None = None) -> Iterator[DnsServer]:
    """The scenario's DNS server, answering on port 53 of the lab's DNS host."""
    zones = ZoneSet.from_dir(scenario.zones_dir)
    for origin in scenario.no_glue:
        zones.set_glue(origin, False)
    if scenario.dns_records:
        zones.add("\n".join(scenario.dns_records), replace=True)
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


@dataclass
class _Exchange:
    """What the exchange left for the judge."""

    report: SendReport
    stored: list[StoredMessage]
    receiver_log: list[dict]
    as_sent: Callable[[bytes], bytes] = bytes


async def _exchange(lab: Lab, scenario: Scenario, folder: Path) -> _Exchange:
    if scenario.receiver_mta:
        return await _to_mta(lab, scenario, folder)
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
    async with receiver:
        for address in rhost.addresses:
            await receiver.start(address, scenario.receiver_port)
        if scenario.sender_mta:
            report, as_sent = await _from_mta(lab, scenario, folder, receiver)
        else:
            report = await _scripted_sender(lab, scenario, folder).send()
        await receiver.idle()
    return _Exchange(report, receiver.stored, receiver.log.entries, as_sent)


def _scripted_sender(lab: Lab, scenario: Scenario, folder: Path) -> Sender:
    return Sender(
        dataclasses.replace(scenario.sender, log_path=folder / "sender.jsonl"),
        resolve=resolver_for(lab, scenario.sender_host),
        socket_factory=lab.socket_factory(scenario.sender_host),
    )


def mta_site(lab: Lab, scenario: Scenario, folder: Path, role: str) -> Site:
    """Where the scenario's MTA for ``role`` runs, under which names."""
    if role == "receiver":
        conf = scenario.receiver
        name, host, port = scenario.receiver_mta, scenario.receiver_host, scenario.receiver_port
        where = (conf.hostname, conf.domains[0], conf.users)
        return Site(lab, host, folder / f"receiver-{name}", *where, port=port)
    local, _, domain = scenario.sender.mail_from.rpartition("@")
    where = (scenario.sender.helo_name, domain, (local,))  # bounces stay in its mailbox
    return Site(lab, scenario.sender_host, folder / f"sender-{scenario.sender_mta}", *where)


async def _to_mta(lab: Lab, scenario: Scenario, folder: Path) -> _Exchange:
    """The scripted sender delivers to a real MTA; its mailboxes are read back."""
    site = mta_site(lab, scenario, folder, "receiver")
    mta = adapters()[scenario.receiver_mta](site, "receiver")
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, mta.start)
    try:
        report = await _scripted_sender(lab, scenario, folder).send()
        stored = await loop.run_in_executor(None, _read_back, mta, report)
    finally:
        await loop.run_in_executor(None, mta.stop)
    return _Exchange(report, stored, [], mta.as_sent)


def _read_back(mta: MtaAdapter, report: SendReport) -> list[StoredMessage]:
    """Every stored message, once each recipient the MTA accepted has its copy."""
    users = {u.lower(): u for u in mta.site.users}
    wanted: dict[str, int] = {}
    for rcpt, outcome in report.outcomes.items():
        local = rcpt.rpartition("@")[0].lower()
        if outcome.status == "delivered" and local in users:
            wanted[users[local]] = wanted.get(users[local], 0) + 1
    deadline = time.monotonic() + MTA_TIMEOUT_S
    while True:
        boxes = {user: mta.mailbox(user) for user in mta.site.users}
        if all(len(boxes[u]) >= n for u, n in wanted.items()) or time.monotonic() > deadline:
            break
        time.sleep(POLL_S)
    return [
        StoredMessage(f"{user}@{mta.site.domain}", _return_path(data), None, data)
        for user, messages in boxes.items()
        for data in messages
    ]


def _return_path(stored: bytes) -> str:
    """The envelope sender a final delivery recorded in Return-Path (RFC 5321 §4.4)."""
    found = re.match(rb"Return-Path: *<([^>]*)>", stored, re.IGNORECASE)
    return found.group(1).decode("utf-8", "replace") if found else ""


async def _from_mta(
    lab: Lab, scenario: Scenario, folder: Path, receiver: Receiver
) -> tuple[SendReport, Callable[[bytes], bytes]]:
    """A real MTA delivers the scenario's message by MX to the scripted receiver."""
    site = mta_site(lab, scenario, folder, "sender")
    mta = adapters()[scenario.sender_mta](site, "sender")
    conf = scenario.sender
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, mta.start)
    try:
        submit = functools.partial(mta.submit, conf.mail_from, list(conf.recipients), conf.message)
        await loop.run_in_executor(None, submit)
        await _settled(mta, receiver)
    finally:
        await loop.run_in_executor(None, mta.stop)
    outcomes = mta_outcomes(conf.recipients, receiver.log.entries, receiver.stored)
    return SendReport(outcomes, []), mta.as_sent


async def _settled(mta: MtaAdapter, receiver: Receiver) -> None:
    """Until the MTA's queue is idle and the receiver's sessions are over (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + MTA_TIMEOUT_S
    while not await loop.run_in_executor(None, mta.idle):
        if loop.time() > deadline:
            raise HarnessError(
                f"{mta.name}: still delivering after {MTA_TIMEOUT_S:.0f} s (log: {mta.log_path})"
            )
        await asyncio.sleep(POLL_S)
    try:
        await asyncio.wait_for(receiver.idle(), max(deadline - loop.time(), POLL_S))
    except TimeoutError:
        raise HarnessError(
            f"{mta.name}: its SMTP session did not end (log: {mta.log_path})"
        ) from None


_ADDRESS = re.compile(r"<([^>]*)>")
_SESSION_WIDE = ("MAIL", "DATA", "<end-of-data>")


def mta_outcomes(
    recipients: tuple[str, ...], log: list[dict], stored: list[StoredMessage]
) -> dict[str, Outcome]:
    """Per recipient, what the scripted receiver made of a real MTA's delivery (rules
    above); the first decision about a recipient stands."""
    kept = {m.recipient.lower() for m in stored}
    decided: dict[str, Outcome] = {}
    named: dict[int, list[str]] = {}  # session -> recipients of its current transaction
    last: dict[int, str] = {}  # session -> its last command line
    for entry in log:
        session = entry.get("session", 0)
        if entry["kind"] == "command":
            last[session] = entry["line"]
        elif entry["kind"] == "reply":
            rcpts = named.setdefault(session, [])
            for outcome in _judged(entry, last.get(session, ""), rcpts, recipients, kept):
                decided.setdefault(outcome.recipient.lower(), outcome)
    for rcpt in recipients:
        if rcpt.lower() in kept:
            decided.setdefault(rcpt.lower(), Outcome(rcpt, "delivered", "<end-of-data>"))
    queued = "not delivered: still queued or deferred by the MTA"
    return {
        r: decided.get(r.lower(), Outcome(r, "deferred", "queue", text=queued)) for r in recipients
    }


def _judged(
    reply: dict, line: str, named: list[str], recipients: tuple[str, ...], kept: set[str]
) -> list[Outcome]:
    """The outcomes one reply of the scripted receiver decides."""
    key, last = reply["to"], reply["lines"][-1]
    code, text = int(last[:3]), last[4:]
    address = _ADDRESS.search(line)
    if key == "MAIL":
        named.clear()
    if key == "RCPT" and address:
        named.append(address.group(1))
        hit = [address.group(1)] if code >= 500 else []
    elif key == "VRFY" and code >= 500:
        user = line.partition(" ")[2].strip("<>").lower()
        hit = [r for r in recipients if r.lower().partition("@")[0] == user]
    elif key in _SESSION_WIDE and code >= 500:
        hit = list(named) or list(recipients)
    elif key == "<end-of-data>" and code < 300:
        return [Outcome(r, "delivered", key, code, text) for r in named if r.lower() in kept]
    else:
        hit = []
    return [Outcome(r, "rejected", key, code, text) for r in hit]


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
