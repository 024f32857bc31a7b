"""``smtp-harness replay CAPTURE --as client --lab``: a captured session against a live peer.

Rules kept here:

- The exit code: 0 the live peer answered as captured, 1 it differs (the diff is
  printed), 2 bad input (the capture, ``--session``, ``--map``, the options: nothing was
  run), 3 harness error (our fault: the faults are printed, their tracebacks kept).
- Only into a lab: ``--lab`` (a fresh one: the target is its receiver host), ``--lab-id
  ID --target HOST`` (a running ``lab up`` lab: one of its hosts, ``attach.py``) or
  ``--rerun`` (a fresh lab, both parts scripted, ``rerun.py``); exactly one.  Any other
  target (an address, a host of no running lab) is refused before anything runs.
- What is printed: every mapping, each reply's judgement that differs, where the replay
  stopped, the diff (``harness.ladder.compare``'s packetdrill form), what the target
  stored (each recipient's copies) and the smuggling verdict, the run folder and the
  verdict.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import click

from harness.errors import HarnessError
from harness.replay.attach import NOT_READ, replay_into
from harness.replay.emit import emit_scenario
from harness.replay.rerun import EMITTED, RerunResult, rerun
from harness.replay.run import ReplayOptions, ReplayResult, in_lab, prepare, replay
from harness.replay.script import Mapped
from harness.replay.stored import stored_outcomes
from harness.scenario import load_scenario
from harness.verdict import exit_code

HELP = """Replay one side of a captured SMTP session against a live peer in a lab.

\b
The client's bytes go out as captured (pipelined groups as groups, in one write where the
capture had one segment, message content byte for byte), each turn waiting for the replies
the capture had; each live reply is compared with the captured one: the code and the
enhanced status code exactly, the text after the normalisation masks.  Another code (or
no reply) stops the replay there (unless --continue); the result is a ladder diff of the
session (its TCP and SMTP steps).  Captured addresses are mapped onto the lab's sender
(client) and receiver (server) hosts; HELO name, MAIL FROM and RCPT TO are kept unless
--map rewrites them.  Every mapping is printed.  With --as server the captured server's
replies are the scripted receiver's and the scripted sender (or --mta) is the live client.
With --rerun both parts are scripted: the round trip from a capture to a scenario (a
capture with no SMTP session re-runs its MX questions with the scenario's sender).

\b
Where it runs: always in a lab.  --lab: a fresh one, the target its receiver host.
--lab-id ID --target HOST: a lab `lab up` keeps running, from its sender host to HOST (a
host name of that lab: an address or any other name is refused, exit 2); nothing of that
lab is started or stopped, its receiver's mail is not read.  --rerun: a fresh one.

\b
The run folder holds capture.pcapng and ladder.* (the replay), captured-ladder.txt/.json
(the session as captured, on the lab's names), diff.txt, replay.json (with --as server
the live client's outcome for each recipient too), client.jsonl and
the receiver's or MTA's logs; with --rerun, scenario.toml and scenario.eml (what ran),
run/ (its run folder), diff.txt, captured-ladder.* and rerun.json.

Exit 0 when the live peer did as captured (--rerun: the ladders are equal), 1 when it
differs (the diff is printed), 2 for bad input (the capture, an option, a target outside
a lab: nothing was run), 3 for a fault of the harness."""


@click.command("replay", help=HELP)
@click.argument("capture", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--as",
    "side",
    type=click.Choice(["client", "server"]),
    help="Which captured side to replay (or --rerun).  client: the captured client's bytes "
    "against a live "
    "receiver; server: the captured server's replies as the scripted receiver, the scripted "
    "sender (configured from the captured envelope and message) or --mta as the live client, "
    "judged by the ladder diff against the captured client's commands.",
)
@click.option(
    "--rerun",
    "rerun_all",
    is_flag=True,
    help="Re-run the whole captured exchange in a fresh lab, the scripted peers taking both "
    "parts (the --emit-scenario scenario, written into the run folder as scenario.toml and "
    "run): exit 0 when the new capture's ladder (DNS, TCP, SMTP) equals the capture's after "
    "normalisation, 1 when it differs (the diff is printed).  Instead of --as.",
)
@click.option(
    "--lab",
    "fresh_lab",
    is_flag=True,
    help="Replay into a fresh lab, at its receiver host (or --lab-id with --target: no "
    "target outside a lab is accepted).",
)
@click.option(
    "--lab-id",
    metavar="ID",
    help="Replay into the running lab ID that `lab up` started (see `lab list`), from its "
    "sender host; with --target.  --as client only, its own receiver answering (no --mta).",
)
@click.option(
    "--target",
    metavar="HOST",
    help="With --lab-id: the host of that lab to replay at (a host name: receiver, dns, ...); "
    "its IPv4 address, read from its namespace, on the scenario's receiver port.",
)
@click.option(
    "--mta",
    metavar="NAME",
    help="A real MTA (postfix, exim, opensmtpd, sendmail): with --as client the receiver, "
    "instead of the scripted receiver; with --as server the live client, instead of the "
    "scripted sender (the captured envelope and message submitted to it, delivered by MX to "
    "the scripted receiver answering as the captured server).",
)
@click.option(
    "--scenario",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The scenario whose lab, DNS and receiver to use (default: the seed's); with "
    "--lab-id, whose sender host and receiver port; with --rerun, whose DNS data the "
    "emitted scenario keeps.",
)
@click.option(
    "--session",
    "number",
    type=int,
    default=1,
    show_default=True,
    help="Which SMTP session of the capture (a TCP connection carrying SMTP), from 1.",
)
@click.option(
    "--timing",
    type=click.Choice(["smtp", "capture"]),
    default="smtp",
    show_default=True,
    help="smtp: wait for each reply as SMTP requires; capture: also wait the captured gap "
    "before each segment (at most 60 s each).",
)
@click.option(
    "--continue",
    "keep_going",
    is_flag=True,
    help="Go on after a reply with another code (default: stop there).",
)
@click.option(
    "--map",
    "maps",
    multiple=True,
    metavar="OLD=NEW",
    help="Rewrite a captured HELO name, MAIL FROM or RCPT TO address (repeatable).",
)
@click.option(
    "--emit-scenario",
    "emit",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the session as the scenario --as server runs (TOML, its message next to it "
    "as <FILE stem>.eml) and exit 0, without a lab; `smtp-harness run FILE` runs it.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Run folder (default: runs/replay-<capture>-<UTC time>).",
)
def replay_command(
    capture: Path,
    side: str | None,
    rerun_all: bool,
    fresh_lab: bool,
    lab_id: str | None,
    target: str | None,
    mta: str | None,
    scenario: Path | None,
    number: int,
    timing: str,
    keep_going: bool,
    maps: tuple[str, ...],
    emit: Path | None,
    out: Path | None,
) -> None:
    if (side is None) == (not rerun_all):
        raise HarnessError("replay: give one of --as client, --as server or --rerun")
    if emit is not None:
        scen = load_scenario(scenario)
        options = ReplayOptions(number, maps, mta, timing, keep_going, "server")
        session, mapping = prepare(capture, scen, options)
        emit_scenario(in_lab(scen, session, mapping, options), str(capture), emit)
        click.echo(f"scenario written: {emit} (message: {emit.with_suffix('.eml')})")
        return
    _check_where(fresh_lab, rerun_all, lab_id, target)
    scen = load_scenario(scenario)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    folder = out or Path("runs") / f"replay-{capture.stem}-{stamp}"
    options = ReplayOptions(number, maps, mta, timing, keep_going, side or "server")
    if rerun_all:
        again = rerun(capture, scen, folder, options)
        print_rerun(again)
        sys.exit(exit_code(again.verdict))
    if lab_id is not None and target is not None:
        result = replay_into(capture, scen, folder, options, lab_id, target)
    else:
        result = replay(capture, scen, folder, options)
    print_result(result)
    sys.exit(exit_code(result.verdict))


def _check_where(fresh: bool, rerun_all: bool, lab_id: str | None, target: str | None) -> None:
    """Exactly one lab to replay into (rules above)."""
    running = lab_id is not None or target is not None
    if running and (lab_id is None or target is None):
        raise HarnessError(
            "replay: --lab-id and --target go together (a running lab, a host in it)"
        )
    if running and (fresh or rerun_all):
        raise HarnessError(
            "replay: --lab-id ID --target HOST is a running lab: not with --lab or --rerun"
        )
    if not (fresh or rerun_all or running):
        raise HarnessError(
            "replay: --lab or --lab-id ID --target HOST is required: a capture is replayed "
            "only into a lab"
        )


def print_result(result: ReplayResult) -> None:
    session = result.session
    click.echo(f"replay of {session.path}, session {session.number} (as {result.side})")
    _print_mappings(result.mappings, "mapping:")
    if result.mta:
        mta = result.mta
        click.echo(f"mta: {mta['name']} {mta['package_version']} as {mta['role']}")
    if result.outcomes:
        click.echo("outcomes (the live client's):")
    for o in result.outcomes:
        click.echo(f"  {o.recipient}: {o.status} at {o.stage} {o.code or ''}".rstrip())
    client = result.client
    if client is None:
        _print_diff(result)
        return
    click.echo(f"replies: {len(client.judged)} judged")
    for judged in client.judged:
        if judged.differences:
            click.echo(f"  step {judged.captured.step}: {'; '.join(judged.differences)}")
    if client.stopped is not None:
        stop = client.stopped
        click.echo(f"stopped at step {stop.captured.step}: {'; '.join(stop.differences)}")
    _print_diff(result)


def _print_mappings(mappings: Sequence[Mapped], header: str) -> None:
    click.echo(header)
    for mapped in mappings:
        click.echo(f"  {mapped.line()}")


def print_rerun(result: RerunResult) -> None:
    session = result.session
    what = f"session {session.number}" if session else "its DNS questions (no SMTP session)"
    click.echo(f"re-run of {result.capture}, {what} (the scripted peers)")
    _print_mappings(
        result.mappings, "mapping:" if result.mappings else "mapping: none (the lab's own names)"
    )
    click.echo(f"scenario: {result.folder / EMITTED}")
    if result.diff_text:
        click.echo("")
        click.echo(result.diff_text, nl=False)
    for problem in result.run.problems:
        click.echo(f"  - problem of the re-run: {problem}")
    click.echo(f"\nrun folder: {result.folder}")
    click.echo(f"verdict: {str(result.verdict).upper()}")
    for fault in result.run.faults:
        click.echo(f"  - harness fault: {fault.line()} (traceback.txt in {result.run.folder})")


def _print_diff(result: ReplayResult) -> None:
    if result.diff_text:
        click.echo("")
        click.echo(result.diff_text, nl=False)
    _print_stored(result)
    click.echo(f"\nrun folder: {result.folder}")
    click.echo(f"verdict: {str(result.verdict).upper()}")
    for fault in result.faults:
        click.echo(f"  - harness fault: {fault.line()} (traceback.txt in the run folder)")


def _print_stored(result: ReplayResult) -> None:
    if result.into is not None:
        click.echo(f"stored: {NOT_READ}")
    else:
        _print_copies(result)
    if result.smuggling is not None:
        said = result.smuggling
        click.echo(f"smuggling: {str(said.verdict).upper()} {said.note}".rstrip())


def _print_copies(result: ReplayResult) -> None:
    click.echo("stored:")
    for outcome in stored_outcomes(result.stored):
        click.echo(f"  {outcome.recipient}: {'; '.join(outcome.evidence)}")
    if not result.stored:
        click.echo("  nothing")
