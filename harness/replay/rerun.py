"""``replay CAPTURE --rerun``: the whole captured exchange re-run by the two scripted peers.

Rules kept here:

- The scenario re-run is the one ``--emit-scenario`` writes (``emit.py``: the captured
  server's replies for the scripted receiver, the captured client's HELO, envelope and
  message for the scripted sender, the given scenario's DNS data), written into the run
  folder (``scenario.toml``, ``scenario.eml``) and loaded back before it runs: what ran
  is a file a user can read, edit and ``smtp-harness run``.  A round trip, not a replay:
  neither peer is under test.
- It runs as any scenario does (``harness.runner.run_scenario``, a fresh lab) into
  ``<folder>/run``; its new capture's whole ladder (DNS, TCP and SMTP steps) is compared
  with the capture's, both after the normalisation masks (``harness.ladder.compare``),
  the captured one named as the lab names its hosts, the captured client and server
  addresses mapped onto the lab's sender and receiver hosts.  One session (``--session``)
  is re-run: a capture with more, or with DNS the scenario's zones do not serve, differs
  there, and the diff says so.
- A capture with no SMTP session (a sender that DNS stopped before any connection: a
  null MX, NXDOMAIN, SERVFAIL, a timeout; or a connection refused) re-runs its DNS part:
  the given scenario, its sender asking MX for the domains the captured client asked MX
  for (its own recipients at each, else the postmaster there, RFC 5321 §4.5.1), with no
  script and no reply rules (no session to edit or answer); the ladders say whether it
  asks the same questions and, where it connects, the same way.  Nothing to map: the
  capture's addresses are named as the lab names its hosts (a ``--map`` is refused).
  No MX question either is refused (``HarnessError``): there is nothing to re-run.
- The verdict: ``error`` when the run recorded a fault of ours (its tracebacks in the
  run's ``traceback.txt``), else ``fail`` when the ladders differ or the run's own
  judgement found a problem (both printed), else ``pass``.  ``diff.txt`` and
  ``rerun.json`` (capture, session, verdict, mismatches, problems, faults) are in the
  folder, and ``captured-ladder.txt``/``.json``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError
from harness.ladder.compare import Verdict as LadderVerdict
from harness.ladder.compare import compare, format_diff
from harness.ladder.dissect import dissect
from harness.ladder.model import Ladder, StepKind
from harness.render import render
from harness.replay.emit import emit_scenario
from harness.replay.run import ReplayOptions, in_lab, prepare, validate
from harness.replay.script import Mapped, Mapping
from harness.replay.session import Session, smtp_connections
from harness.runner import RunResult, host_names, run_scenario
from harness.scenario import Scenario
from harness.verdict import Verdict

EMITTED = "scenario.toml"
RUN = "run"


@dataclass
class RerunResult:
    capture: str
    session: Session | None  # None: a capture with no SMTP session (its DNS part re-run)
    folder: Path
    mappings: list[Mapped]
    run: RunResult
    diff: LadderVerdict | None
    diff_text: str

    @property
    def verdict(self) -> Verdict:
        if self.run.faults or self.diff is None:
            return Verdict.ERROR
        return Verdict.PASS if self.diff.ok and not self.run.problems else Verdict.FAIL


def rerun(capture: Path, scenario: Scenario, folder: Path, options: ReplayOptions) -> RerunResult:
    """The captured exchange re-run in a fresh lab, and its ladder against the capture's."""
    if options.mta:
        raise HarnessError("replay: --rerun runs the scripted peers only: no --mta")
    options = dataclasses.replace(options, side="server")
    validate(capture, scenario, options)
    session, played = _played(capture, scenario, options)
    folder.mkdir(parents=True, exist_ok=True)
    emitted = emit_scenario(played, str(capture), folder / EMITTED)
    run = run_scenario(emitted, folder / RUN)
    hosts = (emitted.sender_host, emitted.receiver_host)
    mappings = []
    if session is not None:
        mappings = Mapping(session, options.maps).lines(
            session,
            (emitted.topology.host(hosts[0]).ipv4, hosts[0]),
            (emitted.topology.host(hosts[1]).ipv4, hosts[1]),
        )
    result = RerunResult(str(capture), session, folder, mappings, run, None, "")
    if not run.faults:
        _compare(result, emitted, hosts)
    _write_record(result)
    return result


def _played(
    capture: Path, scenario: Scenario, options: ReplayOptions
) -> tuple[Session | None, Scenario]:
    """The captured session and the scenario that plays it; a capture with no SMTP
    session: None and the scenario that asks its questions (``asked``)."""
    ladder = dissect(str(capture))
    if not smtp_connections(ladder) and options.session == 1:  # else read_session says so
        if options.maps:
            raise HarnessError(f"--map {options.maps[0]!r}: {capture} has no SMTP session")
        return None, asked(scenario, ladder)
    session, mapping = prepare(capture, scenario, options)
    return session, in_lab(scenario, session, mapping, options)


def asked(scenario: Scenario, ladder: Ladder) -> Scenario:
    """The given scenario, its sender asking MX for the captured MX questions' domains
    (rules above)."""
    questions = (s for s in ladder.steps if s.kind == StepKind.DNS_QUERY)
    mx = (str(s.get("qname") or "") for s in questions if s.get("qtype") == "MX")
    domains = list(dict.fromkeys(d.rstrip(".").lower() for d in mx))
    if not domains:
        raise HarnessError(f"{ladder.source}: no SMTP session and no MX question to re-run")
    given = scenario.sender.recipients
    recipients = [
        r for d in domains for r in [g for g in given if _domain(g) == d] or [f"postmaster@{d}"]
    ]
    sender = dataclasses.replace(scenario.sender, recipients=tuple(recipients), script=[])
    receiver = dataclasses.replace(scenario.receiver, rules=[])
    return dataclasses.replace(scenario, sender=sender, receiver=receiver)


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


def captured_names(session: Session | None, scenario: Scenario, hosts: tuple[str, str]) -> dict:
    """Address -> lab host name for the captured ladder: the lab's own, then the captured
    client and server onto the lab's sender and receiver."""
    names = host_names(scenario.topology)
    if session is None:
        return names
    return {**names, session.client: hosts[0], session.server[0]: hosts[1]}


def _compare(result: RerunResult, scenario: Scenario, hosts: tuple[str, str]) -> None:
    session, folder = result.session, result.folder
    captured = dissect(result.capture, captured_names(session, scenario, hosts))
    for suffix, fmt in (("txt", "text"), ("json", "json")):
        (folder / f"captured-ladder.{suffix}").write_text(render(captured, fmt), encoding="utf-8")
    result.diff = compare(result.run.ladder, captured)
    result.diff_text = format_diff(result.diff, str(result.run.pcap), result.capture)
    (folder / "diff.txt").write_text(result.diff_text, encoding="utf-8")


def _write_record(result: RerunResult) -> None:
    record = {
        "capture": result.capture,
        "session": result.session.number if result.session else None,
        "as": "rerun",
        "verdict": str(result.verdict),
        "scenario": str(result.folder / EMITTED),
        "run": str(result.run.folder),
        "mappings": [dataclasses.asdict(m) for m in result.mappings],
        "mismatches": [m.note for m in result.diff.mismatches] if result.diff else [],
        "problems": result.run.problems,
        "faults": [f.line() for f in result.run.faults],
    }
    text = json.dumps(record, indent=1, ensure_ascii=False) + "\n"
    (result.folder / "rerun.json").write_text(text, encoding="utf-8")
