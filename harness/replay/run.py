"""One replay in a fresh lab: the capture read, the peers run, the ladders compared.

Rules kept here:

- Everything from the capture is read and validated (``session.read_session``, the
  ``Mapping``) before the lab exists; the target is always the lab's receiver host, on
  the scenario's port, from its sender host: nothing outside a lab is ever a target.
- The lab is the runner's (``harness.runner``): the scenario's topology and DNS, the
  scripted receiver as the scenario configures it, or ``mta`` (a real MTA,
  ``harness.mta.roles.to_mta``) in its place; everything is stopped by the ``with`` that
  started it, innermost first.  With ``side="server"`` the scripted receiver answers as
  the captured server and the scripted sender is the live client (``server.py``), or
  ``mta`` as sender (``harness.mta.roles.from_mta``: the captured envelope and message
  submitted to it, delivered by MX to the scripted receiver), checked as a scenario's
  sending MTA is (``scenario.check_mta_sides``) before the lab exists.
- ``judge_replay`` is the judgement of a live session wherever it ran (a fresh lab here,
  a running one in ``attach.py``).
- The run folder keeps ``capture.pcapng`` (the new capture) and its ladder (``ladder.*``),
  ``captured-ladder.txt``/``.json`` (the session as captured, on the lab's names),
  ``diff.txt`` and ``replay.json`` (mappings, each reply's judgement, verdict, faults).
- What the target stored is judged too (``stored.py``): each recipient's copies as an
  outcome, and the smuggling verdict, both in ``replay.json`` and the output.  With
  ``side="server"`` the live client's own outcome for each recipient (the scripted
  sender's report; an MTA's read from its queue, DSNs and what the receiver stored,
  ``roles.from_mta``) is ``outcomes`` there too.
- The verdict: ``error`` when the harness failed (a fault of ours, the receiver's, the
  DNS server's or the capture's) or the smuggling judge did, else ``fail`` when the
  ladders differ or a look-alike ended DATA, else ``pass``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness import signals
from harness.capture.live import Capture
from harness.checks.base import Outcome as CheckOutcome
from harness.errors import HarnessError, InternalFault
from harness.lab import Lab
from harness.ladder.compare import Verdict as LadderVerdict
from harness.ladder.compare import format_diff
from harness.ladder.dissect import dissect
from harness.ladder.model import Ladder
from harness.mta.base import adapters
from harness.mta.roles import Exchange, from_mta, to_mta
from harness.outcome import Outcome, SendReport
from harness.render import render
from harness.replay.client import ReplayClient
from harness.replay.judge import captured_ladder, compare_session, live_ladder
from harness.replay.script import Mapped, Mapping
from harness.replay.server import receiver_config, sender_config
from harness.replay.session import Session, read_session
from harness.replay.stored import judge_smuggling, stored_outcomes
from harness.runner import host_names, lab_dns, resolver_for, scripted_receiver, write_ladder
from harness.scenario import Scenario, check_mta_sides
from harness.smtp.peer import EventLog
from harness.smtp.receiver import StoredMessage
from harness.smtp.sender import Sender
from harness.verdict import Verdict


@dataclass
class ReplayOptions:
    session: int = 1
    maps: tuple[str, ...] = ()
    mta: str | None = None
    timing: str = "smtp"
    keep_going: bool = False
    side: str = "client"  # or "server": the captured server side replayed (server.py)


@dataclass
class ReplayResult:
    session: Session
    folder: Path
    mappings: list[Mapped]
    side: str = "client"
    client: ReplayClient | None = None  # None with --as server: the scripted sender is live
    diff: LadderVerdict | None = None
    diff_text: str = ""
    faults: list[InternalFault] = field(default_factory=list)
    stored: list[StoredMessage] = field(default_factory=list)  # what the target stored
    smuggling: CheckOutcome | None = None  # stored.py's verdict
    mta: dict | None = None  # the real MTA of the replay (roles.mta_record), either side
    outcomes: list[Outcome] = field(default_factory=list)  # the live client's, per recipient
    into: str | None = None  # the running lab replayed into (attach.py), None: a fresh one

    @property
    def verdict(self) -> Verdict:
        said = self.smuggling.verdict if self.smuggling else Verdict.ERROR
        if self.faults or self.diff is None or said is Verdict.ERROR:
            return Verdict.ERROR
        return Verdict.PASS if self.diff.ok and said is not Verdict.FAIL else Verdict.FAIL

    @property
    def pcap(self) -> Path:
        return self.folder / "capture.pcapng"


Live = ReplayClient | Sender  # what runs on the sender host: both have send(), internal_faults


def prepare(capture: Path, scenario: Scenario, options: ReplayOptions) -> tuple[Session, Mapping]:
    """The session and its mapping, validated (before any lab)."""
    validate(capture, scenario, options)
    session = read_session(str(capture), options.session)
    return session, Mapping(session, options.maps)


def validate(capture: Path, scenario: Scenario, options: ReplayOptions) -> None:
    """The options, the scenario and the capture's file, before it is read."""
    if options.mta is not None and options.mta not in adapters():
        known = ", ".join(sorted(adapters()))
        raise HarnessError(f"--mta {options.mta!r}: no such MTA (known: {known})")
    if scenario.sender_mta:
        raise HarnessError(
            f"{scenario.path}: sender.mta: the replay is the client; give a scenario "
            "without a sending MTA"
        )
    if not capture.is_file():
        raise HarnessError(f"{capture}: no such capture file")


def in_lab(
    scenario: Scenario, session: Session, mapping: Mapping, options: ReplayOptions
) -> Scenario:
    """The scenario the replay runs: an MTA as receiver, or the captured server's replies
    for the scripted receiver and the captured client's envelope for the scripted sender
    (or for ``mta`` as sender)."""
    if options.side == "server":
        receiver = receiver_config(session, scenario.receiver)
        sender = sender_config(session, mapping, scenario.sender)
        served = dataclasses.replace(scenario, receiver=receiver, sender=sender)
        if options.mta:
            knobs = {**scenario.mta_knobs, "sender": {"family": scenario.families["sender"]}}
            served = dataclasses.replace(served, sender_mta=options.mta, mta_knobs=knobs)
            check_mta_sides(served)
        return served
    if options.mta:
        knobs = {**scenario.mta_knobs, "receiver": scenario.mta_knobs.get("receiver", {})}
        return dataclasses.replace(scenario, receiver_mta=options.mta, mta_knobs=knobs)
    return scenario


def replay(capture: Path, scenario: Scenario, folder: Path, options: ReplayOptions) -> ReplayResult:
    session, mapping = prepare(capture, scenario, options)
    scenario = in_lab(scenario, session, mapping, options)
    folder.mkdir(parents=True, exist_ok=True)
    target = scenario.topology.host(scenario.receiver_host)
    names = (scenario.sender_host, scenario.receiver_host)
    client_ip = scenario.topology.host(names[0]).ipv4
    mappings = mapping.lines(session, (client_ip, names[0]), (target.ipv4, names[1]))

    def live(lab: Lab) -> Live | None:
        if scenario.sender_mta:
            return None  # the MTA is the live client (_exchange)
        factory = lab.socket_factory(scenario.sender_host)
        if options.side == "server":
            config = dataclasses.replace(scenario.sender, log_path=folder / "sender.jsonl")
            resolve = resolver_for(lab, scenario.sender_host)
            return Sender(config, resolve=resolve, socket_factory=factory)
        return ReplayClient(
            session,
            mapping,
            (target.ipv4, scenario.receiver_port),
            factory,
            timing=options.timing,
            keep_going=options.keep_going,
            log=EventLog(folder / "client.jsonl"),
        )

    result = ReplayResult(session, folder, mappings, options.side)
    result.faults, client, done = _exchanged(scenario, folder, live)
    result.stored, result.mta = done.stored, done.mta
    result.outcomes = list(done.report.outcomes.values())
    result.client = client if isinstance(client, ReplayClient) else None
    if not result.faults:
        hosts = host_names(scenario.topology)
        live_full = judge_replay(result, mapping, names, hosts, scenario.receiver_port)
        result.smuggling = judge_smuggling(session, scenario, folder, live_full, result.stored)
    write_record(result)
    return result


def _exchanged(
    scenario: Scenario, folder: Path, live: Callable[[Lab], Live | None]
) -> tuple[list[InternalFault], Live | None, Exchange]:
    faults: list[InternalFault] = []
    done = Exchange(SendReport({}), [], [])
    client = None
    try:
        with Lab(scenario.topology) as lab, lab_dns(lab, scenario, folder / "dns.jsonl") as dns:
            client = live(lab)
            try:
                with Capture(lab, folder / "capture.pcapng"):
                    done = signals.run_async(_exchange(lab, scenario, folder, client))
            finally:
                faults += dns.internal_faults
    except HarnessError:
        raise
    except Exception as exc:  # our fault: the verdict is error, with the traceback kept
        faults.append(InternalFault.from_exception(getattr(exc, "where", "replay"), exc))
    mine = client.internal_faults if client else []
    faults += [f for f in done.faults if f not in mine]
    return faults + mine, client, done


async def _exchange(lab: Lab, scenario: Scenario, folder: Path, client: Live | None) -> Exchange:
    """The live session: what the target stored, the MTA's record, the peers' faults."""
    if scenario.receiver_mta:
        return await to_mta(lab, scenario, folder, client)  # type: ignore[arg-type]
    host = lab.host(scenario.receiver_host)
    receiver = scripted_receiver(lab, scenario, folder)
    async with receiver:
        await receiver.start(host.ipv4, scenario.receiver_port)
        if client is None:  # an MTA as sender (rules above)
            done = await from_mta(lab, scenario, folder, receiver)
        else:
            done = Exchange(await client.send(), [], [])
        await receiver.idle()
    faults = done.faults + list(receiver.internal_faults)
    return dataclasses.replace(done, stored=receiver.stored, faults=faults)


def judge_replay(
    result: ReplayResult, mapping: Mapping, names: tuple[str, str], hosts: dict, port: int
) -> Ladder:
    """The live ladder (``hosts`` names its addresses) against the captured session's, the
    captured one on the lab's ``names`` (client, target) and ``port``; the live ladder."""
    folder, session = result.folder, result.session
    live_full = dissect(str(result.pcap), hosts)
    write_ladder(live_full, folder, title=f"replay of {session.path}")
    captured = captured_ladder(session, dissect(session.path), mapping, names, port)
    for suffix, fmt in (("txt", "text"), ("json", "json")):
        (folder / f"captured-ladder.{suffix}").write_text(render(captured, fmt), encoding="utf-8")
    client = result.client
    after = len(client.judged) if client and client.stopped is not None else None
    result.diff = compare_session(live_ladder(live_full, names), captured, after)
    result.diff_text = format_diff(result.diff, str(result.pcap), session.path)
    (folder / "diff.txt").write_text(result.diff_text, encoding="utf-8")
    return live_full


def write_record(result: ReplayResult) -> None:
    client = result.client
    judged = client.judged if client else []
    stopped = client.stopped if client else None
    record = {
        "capture": result.session.path,
        "session": result.session.number,
        "as": result.side,
        "lab": result.into,
        "verdict": str(result.verdict),
        "mappings": [dataclasses.asdict(m) for m in result.mappings],
        "replies": [
            {
                "step": j.captured.step,
                "captured": [j.captured.code, list(j.captured.lines)],
                "live": [j.live.code, list(j.live.lines)] if j.live else None,
                "differences": j.differences,
            }
            for j in judged
        ],
        "stopped": (
            {"step": stopped.captured.step, "differences": stopped.differences} if stopped else None
        ),
        "mismatches": [m.note for m in result.diff.mismatches] if result.diff else [],
        "stored": [dataclasses.asdict(o) for o in stored_outcomes(result.stored)],
        "smuggling": _verdict_record(result.smuggling),
        "mta": result.mta,
        "outcomes": [dataclasses.asdict(o) for o in result.outcomes],
        "faults": [f.line() for f in result.faults],
    }
    text = json.dumps(record, indent=1, ensure_ascii=False) + "\n"
    (result.folder / "replay.json").write_text(text, encoding="utf-8")
    if result.faults:
        tracebacks = "\n".join(f"== {f.line()}\n{f.traceback}" for f in result.faults)
        (result.folder / "traceback.txt").write_text(tracebacks, encoding="utf-8")


def _verdict_record(outcome: CheckOutcome | None) -> dict | None:
    if outcome is None:
        return None
    cited = [index for _run, index in outcome.evidence]
    return {"verdict": str(outcome.verdict), "note": outcome.note, "steps": cited}
