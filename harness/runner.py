"""One run of a scenario: lab, DNS, receiver, sender, capture — and its verdict.

Rules kept here:
- Everything a run starts is stopped by the ``with`` that started it, innermost first: the
  peers, then the capture, then the DNS server, then the lab.
- Both peers run on one asyncio loop in the calling thread, each with sockets created in
  its own lab host and a resolver that asks the lab DNS from that host.  The scripted
  receiver listens on its host's IPv4 address, or on every address of its host with
  ``[receiver] family = "any"``.
- A real MTA (``[receiver] mta`` or ``[sender] mta``) replaces one scripted peer:
  ``harness.mta.roles`` runs it in that peer's host, under ``<folder>/<role>-<mta>/``, and
  reads what it decided (outcomes from its queue and DSNs as sender, stored mail as
  receiver).
- The verdict (``Verdict``): ``error`` when the harness itself failed — a fault a scripted
  peer, the DNS server or the capture recorded, a queue that could not be read, a bug —
  listed in ``faults``, their tracebacks in ``traceback.txt``: never pass or fail then.
  Otherwise ``fail`` when the run differs from what the scenario expects (``problems``, one
  entry each; a message that differs carries its unified diff), else ``pass``.
- What is judged (``judge``), always: no recipient lost (RFC 5321 §6.1); every delivered
  recipient has exactly one stored copy; every mailbox of the receiving side is looked
  at, and a message in one that no delivered recipient accounts for is a problem unless
  ``[expect] stored`` lists it; the message file against the content on the wire (a real
  MTA as sender, with ``message.ORIGINATING`` allowances) and the content on the wire
  against each stored copy (``message.RECEIVING``).  And what ``[expect]`` asks:
  outcomes, DNS questions asked and not asked, SYN targets, contents sent, messages per
  mailbox, DSNs, and the golden capture (``harness.ladder.compare``).
- A run's folder holds what it produced: ``capture.pcap`` and its ladder (``ladder.txt``,
  ``.svg``, ``.html``, ``.json``), ``receiver.jsonl``, ``sender.jsonl``, ``dns.jsonl``, the
  stored mail under ``maildir/``, ``run.json`` (verdict, problems, faults, the MTA and the
  .debs it ran from) and, after a fault, ``traceback.txt``.
- Only ``update_golden=True`` writes a golden capture; nothing else does.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from harness import signals
from harness.capture.live import Capture
from harness.dns import DnsServer, FaultRule, FaultRules, QueryLog, ZoneSet, aquery
from harness.errors import HarnessError, InternalFault
from harness.lab import Lab
from harness.ladder.compare import compare, format_diff
from harness.ladder.dissect import dissect
from harness.ladder.model import Ladder, StepKind
from harness.message import ORIGINATING, RECEIVING, Allowance
from harness.message import compare as compare_message
from harness.mta.roles import Exchange, from_mta, to_mta
from harness.outcome import OutcomeStatus, SendReport
from harness.render import render
from harness.scenario import Scenario
from harness.smtp.receiver import Receiver, StoredMessage
from harness.smtp.sender import Sender
from harness.verdict import Verdict

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
        zones.serve_glue(name, address)
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
    faults: list[InternalFault] = field(default_factory=list)
    mta: dict | None = None  # the real MTA of the run: name, role, versions, .debs

    @property
    def verdict(self) -> Verdict:
        if self.faults:
            return Verdict.ERROR
        return Verdict.FAIL if self.problems else Verdict.PASS

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.PASS

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
    done, dns_log, faults = _exchanged(scenario, folder, capture_backend)
    ladder = _ladder(scenario, folder, faults)
    result = RunResult(
        scenario=scenario,
        folder=folder,
        report=done.report,
        stored=done.stored,
        receiver_log=done.receiver_log,
        dns_log=dns_log,
        ladder=ladder,
        faults=faults,
        mta=done.mta,
    )
    write_ladder(result.ladder, folder, lifelines(scenario, done.mta), scenario.name)
    if golden is not None and update_golden and not faults:
        golden.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result.pcap, golden)
    if not faults:
        result.problems = judge(result, done)
        if golden is not None and not update_golden:
            result.problems += judge_wire(result.ladder, result.pcap, golden, scenario.topology)
    write_record(result)
    return result


def _exchanged(
    scenario: Scenario, folder: Path, backend: str
) -> tuple[Exchange, list, list[InternalFault]]:
    """The exchange in a fresh lab, the DNS log, and our faults (bugs included: anything
    but a ``HarnessError``, which is bad input or an unusable machine and propagates)."""
    faults: list[InternalFault] = []
    done, dns_log = Exchange(SendReport({}), [], []), []
    try:
        with (
            Lab(scenario.topology) as lab,
            lab_dns(lab, scenario, folder / "dns.jsonl") as dns,
        ):
            try:
                with Capture(lab, folder / "capture.pcap", backend):
                    done = signals.run_async(_exchange(lab, scenario, folder))
            finally:
                faults += dns.internal_faults
                dns_log = dns.log.entries()
    except HarnessError:
        raise
    except Exception as exc:  # our fault: the verdict is error, with the traceback kept
        faults.append(InternalFault.from_exception(getattr(exc, "where", "run"), exc))
    return done, dns_log, faults + done.faults


def _ladder(scenario: Scenario, folder: Path, faults: list[InternalFault]) -> Ladder:
    """The capture's ladder; a dissector that fails on our own capture is our fault."""
    pcap = folder / "capture.pcap"
    try:
        return dissect(str(pcap), host_names(scenario.topology))
    except Exception as exc:
        if pcap.exists():
            faults.append(InternalFault.from_exception("dissector", exc))
        return Ladder([], str(pcap))


def host_names(topology) -> dict[str, str]:
    """Address -> host name, for the ladder of a lab capture."""
    return {addr: h.name for h in topology.hosts for addr in h.addresses}


def write_ladder(
    ladder: Ladder, folder: Path, lifelines: dict[str, str] | None = None, title: str | None = None
) -> None:
    for suffix, fmt in LADDER_FORMATS.items():
        document = render(ladder, fmt, lifelines=lifelines, title=title)
        (folder / f"ladder.{suffix}").write_text(document, encoding="utf-8")


MTA_NAMES = {"postfix": "Postfix", "exim": "Exim", "opensmtpd": "OpenSMTPD", "sendmail": "Sendmail"}


def lifelines(scenario: Scenario, mta: dict | None) -> dict[str, str]:
    """What runs on each peer's host, for the ladder's lifelines: "Postfix 3.7.11" (the
    upstream version the adapter read from its .deb), else "scripted sender/receiver"."""
    labels = {scenario.sender_host: "scripted sender", scenario.receiver_host: "scripted receiver"}
    if mta:
        host = scenario.receiver_host if mta["role"] == "receiver" else scenario.sender_host
        labels[host] = f"{MTA_NAMES.get(mta['name'], mta['name'])} {mta['version']}"
    return labels


def write_record(result: RunResult) -> None:
    """``run.json`` (and ``traceback.txt`` after a fault) in the run folder."""
    record = {
        "scenario": result.scenario.name,
        "source": str(result.scenario.path),
        "verdict": str(result.verdict),
        "problems": result.problems,
        "faults": [f.line() for f in result.faults],
        "outcomes": {
            r: {**dataclasses.asdict(o), "evidence": list(o.evidence)}
            for r, o in result.report.outcomes.items()
        },
        "mta": result.mta,
    }
    path = result.folder / "run.json"
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    if result.faults:
        text = "\n".join(f"== {f.line()}\n{f.traceback}" for f in result.faults)
        (result.folder / "traceback.txt").write_text(text, encoding="utf-8")


def judge_wire(ladder: Ladder, pcap: Path, golden: Path, topology) -> list[str]:
    """The packetdrill-style diff against the golden capture, or nothing if it matches."""
    verdict = compare(ladder, dissect(str(golden), host_names(topology)))
    return [] if verdict.ok else [format_diff(verdict, str(pcap), str(golden)).rstrip()]


async def _exchange(lab: Lab, scenario: Scenario, folder: Path) -> Exchange:
    if scenario.receiver_mta:
        return await to_mta(lab, scenario, folder, _scripted_sender(lab, scenario, folder))
    rhost = lab.host(scenario.receiver_host)
    receiver = scripted_receiver(lab, scenario, folder)
    listen = rhost.addresses if scenario.families["receiver"] == "any" else [rhost.ipv4]
    async with receiver:
        for address in listen:
            await receiver.start(address, scenario.receiver_port)
        if scenario.sender_mta:
            done = await from_mta(lab, scenario, folder, receiver)
        else:
            sender = _scripted_sender(lab, scenario, folder)
            report = await sender.send()
            done = Exchange(report, [], [], faults=list(sender.internal_faults))
        await receiver.idle()
    faults = done.faults + list(receiver.internal_faults)
    return dataclasses.replace(
        done, stored=receiver.stored, receiver_log=receiver.log.entries, faults=faults
    )


def scripted_receiver(lab: Lab, scenario: Scenario, folder: Path) -> Receiver:
    """The scenario's scripted receiver in its host (not started), its mail and log in
    ``folder``."""
    config = dataclasses.replace(
        scenario.receiver, maildir=folder / "maildir", log_path=folder / "receiver.jsonl"
    )
    host = scenario.receiver_host
    return Receiver(
        config, resolve=resolver_for(lab, host), socket_factory=lab.socket_factory(host)
    )


def _scripted_sender(lab: Lab, scenario: Scenario, folder: Path) -> Sender:
    return Sender(
        dataclasses.replace(scenario.sender, log_path=folder / "sender.jsonl"),
        resolve=resolver_for(lab, scenario.sender_host),
        socket_factory=lab.socket_factory(scenario.sender_host),
    )


# --- the judgement --------------------------------------------------------------------------
def judge(result: RunResult, done: Exchange | None = None) -> list[str]:
    """Every way the run differs from what it must and the scenario expects, one entry each."""
    allow = done.allowances if done else {}
    return [
        *_outcome_problems(result),
        *_message_problems(result, allow),
        *_mailbox_problems(result),
        *_dns_problems(result),
        *_wire_problems(result),
    ]


def _outcome_problems(result: RunResult) -> list[str]:
    exp, outcomes = result.scenario.expect, result.report.outcomes
    problems = [
        f"{r}: lost: {o.text} (RFC 5321 §6.1: a message taken is never lost)"
        for r, o in outcomes.items()
        if o.status is OutcomeStatus.LOST
    ]
    for status in (OutcomeStatus.DELIVERED, OutcomeStatus.REJECTED, OutcomeStatus.DEFERRED):
        wanted = getattr(exp, str(status))
        if wanted is None:
            continue
        got = sorted(r for r, o in outcomes.items() if o.status is status)
        if got != sorted(wanted):
            detail = "; ".join(
                f"{r} {o.status} at {o.stage} {o.code or ''} {o.text}".rstrip()
                for r, o in outcomes.items()
                if (r in wanted) != (o.status is status)
            )
            problems.append(f"expected {status} {sorted(wanted)}, got {got}: {detail}")
    return problems


def wire_contents(result: RunResult) -> list[bytes]:
    """The message contents as they went on the wire: what the scripted sender sent, or
    (a real MTA sending) what the scripted receiver stored, which is the wire's content."""
    if not result.scenario.sender_mta:
        return list(result.report.contents)
    return list(dict.fromkeys(m.data for m in result.stored))


def _delivered(result: RunResult) -> list[str]:
    outcomes = result.report.outcomes.items()
    return [r for r, o in outcomes if o.status is OutcomeStatus.DELIVERED]


def _message_problems(result: RunResult, allow: dict[str, tuple[Allowance, ...]]) -> list[str]:
    """The two comparisons (rules above), and one stored copy per delivered recipient."""
    scenario, contents = result.scenario, wire_contents(result)
    problems = []
    if scenario.sender_mta:  # the message file against what the MTA sent
        originating = allow.get("sender", ORIGINATING)
        names = ("message", "wire")
        for content in contents:
            diff = compare_message(scenario.sender.message, content, originating, names)
            problems += ["\n".join(diff.lines())] if diff else []
    else:  # what our sender sent against each stored copy
        receiving = allow.get("receiver", RECEIVING) if scenario.receiver_mta else ()
        for stored in result.stored:
            names = ("wire", stored.recipient)
            diffs = [compare_message(c, stored.data, receiving, names) for c in contents]
            first = diffs[0] if diffs and all(diffs) else None
            problems += ["\n".join(first.lines())] if first else []
    counts = Counter(m.recipient.lower() for m in result.stored)
    for rcpt in _delivered(result):
        if counts[rcpt.lower()] != 1:
            problems.append(f"{rcpt}: delivered, but {counts[rcpt.lower()]} copies were stored")
    return problems


def _mailbox_problems(result: RunResult) -> list[str]:
    """Every mailbox of the receiving side, against the envelope or ``[expect] stored``."""
    counts = Counter(m.recipient.lower() for m in result.stored)
    wanted = result.scenario.expect.stored
    if wanted is not None:
        want = {k.lower(): v for k, v in wanted.items()}
        return [
            f"{box}: {counts[box]} messages stored, expected {want.get(box, 0)}"
            for box in sorted(set(counts) | set(want))
            if counts[box] != want.get(box, 0)
        ]
    accounted = {r.lower() for r in _delivered(result)}
    return [
        f"{box}: {n} message(s) stored that no delivered recipient accounts for "
        "(list it in [expect] stored if it is expected)"
        for box, n in sorted(counts.items())
        if box not in accounted
    ]


def _dns_problems(result: RunResult) -> list[str]:
    exp, problems = result.scenario.expect, []
    asked = [f"{e.qname.rstrip('.')} {e.qtype}".lower() for e in result.dns_log]
    if exp.dns_questions is not None and not _subsequence(
        [q.lower() for q in exp.dns_questions], asked
    ):
        problems.append(f"expected DNS questions {exp.dns_questions} in order, got {asked}")
    for question in exp.dns_not_asked or ():
        if question.lower() in asked:
            problems.append(f"the DNS question {question!r} was asked, expected not to be")
    return problems


def _wire_problems(result: RunResult) -> list[str]:
    exp, ladder, problems = result.scenario.expect, result.ladder, []
    if exp.syns_only_to is not None:
        names = host_names(result.scenario.topology)
        allowed = {names.get(a, a) for a in exp.syns_only_to}
        sender = result.scenario.sender_host
        wrong = [s for s in ladder.steps if s.kind == StepKind.SYN and s.src == sender]
        wrong = [s for s in wrong if s.dst not in allowed]
        if wrong:
            where = ", ".join(f"step {s.index} to {s.dst}" for s in wrong)
            problems.append(f"SYNs only to {sorted(exp.syns_only_to)} expected, got {where}")
    if exp.contents_sent is not None:
        sent = [s for s in ladder.steps if s.kind == StepKind.CONTENT or s.get("last")]
        if len(sent) != exp.contents_sent:
            problems.append(f"{len(sent)} message contents sent, expected {exp.contents_sent}")
    for wanted in exp.dsns or ():
        if not any(_dsn_matches(wanted, dsn) for dsn in result.report.dsns):
            got = [f"{d.recipient} {d.action} {d.status}" for d in result.report.dsns]
            problems.append(
                f"expected a DSN {wanted.action} {wanted.status} for {wanted.recipient}, "
                f"got {got or 'none'}"
            )
    return problems


def _dsn_matches(wanted, dsn) -> bool:
    """Same recipient and action; the status equal to, or within the class of, the wanted."""
    parts, got = wanted.status.split("."), dsn.status.split(".")
    return (
        dsn.recipient.lower() == wanted.recipient.lower()
        and dsn.action == wanted.action
        and got[: len(parts)] == parts
    )


def _subsequence(wanted: list[str], seen: list[str]) -> bool:
    it = iter(seen)
    return all(any(w == s for s in it) for w in wanted)
