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
- A run's folder (``harness.runinfo``: new, empty, or an earlier run folder of ours, which
  is emptied first; anything else is refused before the run) holds what it produced:
  ``capture.pcapng`` and its ladder (``ladder.txt``, ``.svg``, ``.html``, ``.json``),
  ``receiver.jsonl``, ``sender.jsonl``, ``dns.jsonl``, the stored mail under ``maildir/``,
  ``scenario.toml`` (the scenario as given), ``run.json`` (the verdict file: the scenario
  as loaded, outcomes, verdict, exit code, problems, faults, the MTA and the .debs it ran
  from, times, versions) and, after a fault, ``traceback.txt``.  Bad input that stops a
  run midway still leaves its ``run.json`` (no verdict, exit code 2), and so does a signal
  that ends it (SIGINT, SIGTERM: verdict error, exit code 130 or 143), once the ``with``
  blocks have taken the lab down.
- The capture is written raw while the run lasts; once the ladder and the verdict are
  known it is rewritten in place, atomically, as the final pcapng: the lab's names, a
  comment per frame naming its steps, the scenario and verdict in its section header.
  The ladder is read from the raw capture, so the two agree frame for frame.
- ``RunResult.assert_ok()`` fails with the verdict, every recipient's outcome ("c3po@...
  deferred at RCPT 450 4.2.0 ..."), every problem and fault, and where the files are.
- TLS (RFC 3207): a scripted peer that speaks STARTTLS gets the run's PKI
  (``harness.tls.pki.lab_pki(<folder>/tls)``, made on first use, so a real MTA on the
  other side gets the same root through ``Site.pki``): the receiver its certificate for its
  hostname, broken as ``[receiver] certificate`` says; a ``verify`` sender the root CA.
  Both write their TLS secrets to ``<folder>/tls/keylog.txt`` (NSS key log, mode 0600);
  ``run.json`` lists each handshake a scripted peer logged (``tls``: side, version,
  cipher).
- Only ``update_golden=True`` writes a golden capture; nothing else does.  A golden named
  ``.pcapng`` is the final capture as it is; any other is written as plain pcap.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness import runinfo, signals
from harness.capture import pcapng
from harness.capture.live import Capture
from harness.capture.pcapfile import PcapWriter, read
from harness.dns import DnsServer, FaultRule, FaultRules, QueryLog, ZoneSet, aquery
from harness.errors import HarnessError, InternalFault
from harness.lab import Lab, impair
from harness.ladder.compare import compare, format_diff
from harness.ladder.dissect import dissect
from harness.ladder.model import Ladder, StepKind
from harness.message import ORIGINATING, RECEIVING, Allowance
from harness.message import compare as compare_message
from harness.mta.roles import Exchange, from_mta, to_mta
from harness.outcome import OutcomeStatus, SendReport, describe
from harness.render import render
from harness.result import CAPTURE, RunResult
from harness.runinfo import host_names
from harness.scenario import Scenario
from harness.smtp.policy import ReceiverConfig
from harness.smtp.receiver import Receiver
from harness.smtp.sender import Sender, SenderConfig
from harness.tls.keylog import KeyLog, from_capture
from harness.tls.pki import CertVariant, lab_pki

DNS_PORT = 53
LOSSY_DNS_TRIES = 4
LADDER_FORMATS = {"txt": "text", "svg": "svg", "html": "html", "json": "json"}
TLS_FOLDER, KEYLOG = "tls", "keylog.txt"  # the run's PKI and the peers' TLS secrets


@contextmanager
def lab_dns(lab: Lab, scenario: Scenario, log_path: Path | None = None) -> Iterator[DnsServer]:
    """The scenario's DNS server, answering on port 53 of the lab's DNS host."""
    faults = FaultRules(FaultRule.from_dict(f) for f in scenario.dns_faults)
    server = DnsServer(scenario_zones(scenario), faults, QueryLog(log_path))
    host = lab.topology.dns_server
    server.start([(a, DNS_PORT) for a in host.addresses], lab.socket_factory(host.name))
    try:
        yield server
    finally:
        server.stop()
        server.log.close()


def scenario_zones(scenario: Scenario) -> ZoneSet:
    """The zones the scenario's DNS server serves."""
    zones = ZoneSet.from_dir(scenario.zones_dir)
    for origin in scenario.no_glue:
        zones.set_glue(origin, False)
    if scenario.dns_records:
        zones.add("\n".join(scenario.dns_records), replace=True)
    for name, address in scenario.dns_glue.items():
        zones.serve_glue(name, address)
    return zones


def resolver_for(lab: Lab, host: str, tries: int = 2):
    """An async ``resolve(qname, qtype)`` asking the lab DNS from inside ``host``."""
    dns = lab.topology.dns_server
    factory = lab.socket_factory(host)
    return functools.partial(aquery, (dns.ipv4, DNS_PORT), socket_factory=factory, tries=tries)


def _dns_tries(scenario: Scenario) -> int:
    """Our peers' UDP tries: more on lossy links (two tries both lost at 5% loss on each of
    two links is a run in a hundred: the impairment table's loss rows saw it)."""
    return LOSSY_DNS_TRIES if any(f.loss for f in scenario.link_faults) else 2


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
    started = runinfo.now()
    runinfo.prepare_folder(folder)
    with _recorded_if_interrupted(scenario, folder, started):
        return _judged_run(scenario, folder, capture_backend, update_golden, started)


@contextmanager
def _recorded_if_interrupted(scenario: Scenario, folder: Path, started: str) -> Iterator[None]:
    """A signal that ends the block (``signals.signal_of``) still leaves the run's
    ``run.json``: verdict error, the signal's exit code."""
    try:
        yield
    except BaseException as exc:
        signum = signals.signal_of(exc)
        if signum is not None:
            _write_interrupted(folder, runinfo.interrupted_record(scenario, started, signum))
        raise


@signals.holding
def _write_interrupted(folder: Path, data: dict) -> None:
    """``run.json`` for an interrupted run; a second signal waits until it is written."""
    runinfo.write_record(folder, data)
    signals.release()


def _judged_run(
    scenario: Scenario, folder: Path, capture_backend: str, update_golden: bool, started: str
) -> RunResult:
    golden = scenario.expect.golden
    runinfo.copy_scenario(scenario, folder)
    try:
        done, dns_log, faults, wire = _exchanged(scenario, folder, capture_backend)
    except HarnessError as exc:
        runinfo.write_record(folder, runinfo.stopped_record(scenario, started, exc))
        raise
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
        **wire,
    )
    write_ladder(result.ladder, folder, lifelines(scenario, done.mta), scenario.name)
    if not faults:
        result.problems = judge(result, done)
        if golden is not None and not update_golden:
            result.problems += judge_wire(result.ladder, result.pcap, golden, scenario.topology)
    _finish_capture(result)
    if golden is not None and update_golden and not result.faults:
        record_golden(result.pcap, golden)
    write_record(result, started)
    return result


def _exchanged(
    scenario: Scenario, folder: Path, backend: str
) -> tuple[Exchange, list, list[InternalFault], dict]:
    """The exchange in a fresh lab (its link faults in place first), the DNS log, our
    faults (bugs included: anything but a ``HarnessError``, which is bad input or an
    unusable machine and propagates), and the wire's ``network`` and ``warnings``."""
    faults: list[InternalFault] = []
    done, dns_log, wire = Exchange(SendReport({}), [], []), [], {"network": None, "warnings": []}
    try:
        with (
            Lab(scenario.topology) as lab,
            impair.applied(lab, scenario.link_faults, scenario.network_seed) as network,
            lab_dns(lab, scenario, folder / "dns.jsonl") as dns,
        ):
            wire["network"] = network
            try:
                with Capture(lab, folder / CAPTURE, backend) as capture:
                    done = signals.run_async(_exchange(lab, scenario, folder))
                wire["warnings"] = capture.warnings
            finally:
                faults += dns.internal_faults
                dns_log = dns.log.entries()
    except HarnessError:
        raise
    except Exception as exc:  # our fault: the verdict is error, with the traceback kept
        faults.append(InternalFault.from_exception(getattr(exc, "where", "run"), exc))
    return done, dns_log, faults + done.faults, wire


def _ladder(scenario: Scenario, folder: Path, faults: list[InternalFault]) -> Ladder:
    """The capture's ladder; a dissector that fails on our own capture is our fault."""
    pcap = folder / CAPTURE
    try:
        keylog = KeyLog.from_files(run_keylogs(folder)) or None  # None: no TLS secrets
        return dissect(str(pcap), host_names(scenario.topology), keylog=keylog)
    except Exception as exc:
        if pcap.exists():
            faults.append(InternalFault.from_exception("dissector", exc))
        return Ladder([], str(pcap))


def _finish_capture(result: RunResult) -> None:
    """The raw capture rewritten as the final one (names, step comments, the scenario and
    verdict in its header); a failure is our fault."""
    if not result.pcap.exists():
        return
    try:
        final_capture(result.pcap, result.scenario, result.ladder, runinfo.section_comments(result))
    except Exception as exc:
        result.faults.append(InternalFault.from_exception("capture rewrite", exc))


def final_capture(pcap: Path, scenario: Scenario, ladder: Ladder, header: list[str]) -> None:
    """Rewrite the raw capture ``pcap`` in place as the final pcapng: the lab's names, a
    comment per frame naming its steps in ``ladder``, ``header`` in its section header, and
    the run's TLS key logs in a Decryption Secrets Block."""
    pcapng.rewrite(
        pcap,
        pcap,
        application=runinfo.APPLICATION,
        section_comments=header,
        names=runinfo.lab_names(scenario, scenario_zones(scenario)),
        comments=runinfo.step_comments(ladder),
        secrets=b"".join(path.read_bytes() for path in run_keylogs(pcap.parent)),
    )


def run_keylogs(folder: Path) -> list[Path]:
    """The TLS key logs the run's peers wrote (``<run>/tls/*keylog*.txt``), in name order."""
    return sorted((folder / "tls").glob("*keylog*.txt"))


def record_golden(capture: Path, golden: Path) -> None:
    """Write ``capture`` as the golden: a ``.pcapng`` golden as it is, any other as pcap."""
    golden.parent.mkdir(parents=True, exist_ok=True)
    if golden.suffix == ".pcapng":
        shutil.copyfile(capture, golden)
        return
    with open(golden, "wb") as f:
        writer = PcapWriter(f, nanoseconds=True)
        for frame in read(str(capture)):
            writer.write(frame.time, frame.data, frame.origlen)


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


def write_record(result: RunResult, started: str) -> None:
    """``run.json`` (and ``traceback.txt`` after a fault) in the run folder."""
    record = runinfo.record(result, started)
    record["tls"] = handshakes(result)
    runinfo.write_record(result.folder, record)
    if result.faults:
        text = "\n".join(f"== {f.line()}\n{f.traceback}" for f in result.faults)
        (result.folder / "traceback.txt").write_text(text, encoding="utf-8")


def handshakes(result: RunResult) -> list[dict]:
    """Each TLS handshake a scripted peer logged: which side, version, cipher."""
    logs = {"receiver": result.receiver_log, "sender": result.report.transcript}
    return [
        {"side": side, "version": e["version"], "cipher": e["cipher"]}
        for side, log in logs.items()
        for e in log
        if e["kind"] == "tls"
    ]


def judge_wire(ladder: Ladder, pcap: Path, golden: Path, topology) -> list[str]:
    """The packetdrill-style diff against the golden capture, or nothing if it matches."""
    keylog = from_capture(golden) or None  # a golden pcapng keeps its TLS secrets
    verdict = compare(ladder, dissect(str(golden), host_names(topology), keylog=keylog))
    return [] if verdict.ok else [format_diff(verdict, str(pcap), str(golden)).rstrip()]


async def _exchange(lab: Lab, scenario: Scenario, folder: Path) -> Exchange:
    if scenario.receiver_mta:
        return await to_mta(lab, scenario, folder, _scripted_sender(lab, scenario, folder))
    receiver = scripted_receiver(lab, scenario, folder)
    async with receiver:
        for address in receiver_addresses(lab, scenario):
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
    """The scenario's scripted receiver for its lab host (not started): mail under
    ``<folder>/maildir``, its log ``<folder>/receiver.jsonl``."""
    rconf = dataclasses.replace(
        scenario.receiver,
        maildir=folder / "maildir",
        log_path=folder / "receiver.jsonl",
        **_receiver_tls(scenario.receiver, folder),
    )
    host = scenario.receiver_host
    return Receiver(
        rconf,
        resolve=resolver_for(lab, host, _dns_tries(scenario)),
        socket_factory=lab.socket_factory(host),
    )


def receiver_addresses(lab: Lab, scenario: Scenario) -> list[str]:
    """Where the scripted receiver listens: its host's IPv4 address, or every address of
    its host with ``[receiver] family = "any"``."""
    host = lab.host(scenario.receiver_host)
    return host.addresses if scenario.families["receiver"] == "any" else [host.ipv4]


def _receiver_tls(config: ReceiverConfig, folder: Path) -> dict:
    """What the scripted receiver needs to offer STARTTLS: its credentials, the key log."""
    if config.tls == "off":
        return {}
    pki = lab_pki(folder / TLS_FOLDER)
    credentials = pki.server(config.hostname, CertVariant(config.certificate))
    return {"credentials": credentials, "keylog": folder / TLS_FOLDER / KEYLOG}


def _sender_tls(config: SenderConfig, folder: Path) -> dict:
    """What the scripted sender needs for STARTTLS: the root CA to verify against, the key
    log."""
    if config.starttls == "never":
        return {}
    pki = lab_pki(folder / TLS_FOLDER)  # made even where unused: the key log's folder
    ca = pki.ca if config.starttls == "verify" else None
    return {"ca": ca, "keylog": folder / TLS_FOLDER / KEYLOG}


def _scripted_sender(lab: Lab, scenario: Scenario, folder: Path) -> Sender:
    config = scenario.sender
    tls = _sender_tls(config, folder)
    return Sender(
        dataclasses.replace(config, log_path=folder / "sender.jsonl", **tls),
        resolve=resolver_for(lab, scenario.sender_host, _dns_tries(scenario)),
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
                describe(o) for r, o in outcomes.items() if (r in wanted) != (o.status is status)
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
