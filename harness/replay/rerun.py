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
from harness.render import render
from harness.replay.emit import emit_scenario
from harness.replay.run import ReplayOptions, in_lab, prepare
from harness.replay.script import Mapped
from harness.replay.session import Session
from harness.runner import RunResult, host_names, run_scenario
from harness.scenario import Scenario
from harness.verdict import Verdict

EMITTED = "scenario.toml"
RUN = "run"


@dataclass
class RerunResult:
    session: Session
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
    session, mapping = prepare(capture, scenario, options)
    folder.mkdir(parents=True, exist_ok=True)
    emitted = emit_scenario(
        in_lab(scenario, session, mapping, options), str(capture), folder / EMITTED
    )
    run = run_scenario(emitted, folder / RUN)
    hosts = (emitted.sender_host, emitted.receiver_host)
    mappings = mapping.lines(
        session,
        (emitted.topology.host(hosts[0]).ipv4, hosts[0]),
        (emitted.topology.host(hosts[1]).ipv4, hosts[1]),
    )
    result = RerunResult(session, folder, mappings, run, None, "")
    if not run.faults:
        _compare(result, emitted, hosts)
    _write_record(result)
    return result


def captured_names(session: Session, scenario: Scenario, hosts: tuple[str, str]) -> dict:
    """Address -> lab host name for the captured ladder: the lab's own, then the captured
    client and server onto the lab's sender and receiver."""
    names = host_names(scenario.topology)
    return {**names, session.client: hosts[0], session.server[0]: hosts[1]}


def _compare(result: RerunResult, scenario: Scenario, hosts: tuple[str, str]) -> None:
    session, folder = result.session, result.folder
    captured = dissect(session.path, captured_names(session, scenario, hosts))
    for suffix, fmt in (("txt", "text"), ("json", "json")):
        (folder / f"captured-ladder.{suffix}").write_text(render(captured, fmt), encoding="utf-8")
    result.diff = compare(result.run.ladder, captured)
    result.diff_text = format_diff(result.diff, str(result.run.pcap), session.path)
    (folder / "diff.txt").write_text(result.diff_text, encoding="utf-8")


def _write_record(result: RerunResult) -> None:
    record = {
        "capture": result.session.path,
        "session": result.session.number,
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
