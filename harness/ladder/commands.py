"""``smtp-harness ladder`` and ``smtp-harness check``: a capture as a ladder, and a verdict.

Rules this module keeps:

* ``ladder FILE`` prints (or writes with ``--output``) the ladder in one format;
  ``--format jsonl`` streams it, flow by flow as each ends (``harness.render.jsonl``),
  holding only the connections open at once.
* Names: a pcapng's Name Resolution Blocks name its addresses (a run's capture.pcapng
  names the lab's hosts), so no ``--host`` is needed; ``--host`` overrides them.  They are
  read in the pass that reads the packets (``Dissector(file_names=True)``), but for
  ``--expect``, which names both captures before either is read.  ``check``
  names both captures with the names of both (the run's first), so a named run and an
  unnamed golden compare as equals.
* ``check RUN --expect GOLDEN`` exits 0 when the run does what the golden capture did,
  1 with the packetdrill-style diff on stdout when it does not.
* ``check CAPTURE`` (no ``--expect``) splits the capture into SMTP sessions as they end
  and judges each with every check a passive capture can meet
  (``harness.checks.offline``): per session, client, server, per-recipient outcomes and
  the failed checks with the steps they cite (``--format jsonl``: one line per session).
  ``--session N`` shows session N alone (the same step numbers); a capture without SMTP
  says "no SMTP sessions".  Exit 1 when a check failed, 3 when a judge erred.
* TLS: ``--keylog FILE`` (repeatable; NSS key log format) and a pcapng's own Decryption
  Secrets Blocks (a run's capture.pcapng carries its key logs) let the ladder read the
  dialogue inside STARTTLS and port 465 (``harness.tls.records``); a bad key log line is
  bad input (file and line).  Without secrets, TLS after STARTTLS is one opaque step and a
  warning says the dialogue inside is not seen.
* While a capture streams, the cyclic GC collects seldom (``few_collections``): what
  start-up made is frozen; a connection's objects hold no cycles, so memory stays flat.
* ``ladder --format jsonl`` and ``check CAPTURE`` read a big capture (4 MiB and more) in
  worker processes, one per core (two at most), each following its share of the flows
  (``harness.ladder.parallel``); ``--jobs N`` sets how many.  The output is the one
  process's, byte for byte; ``--session`` reads in one process (it stops at its session).
* ``--port`` adds server ports read as SMTP, ``--idle`` the capture time after which a
  silent connection is finished and given out.  A progress bar goes to stderr when it is
  a terminal.
* Exit codes (``ExitCode``): 0 ok / same, 1 differs or failed, 2 bad input, 3 our own fault.
  An output closed before the end (``| head``) is one line and exit 2, not a fault of ours.
* Bad input (an unreadable or damaged capture, a bad ``--host``, an unwritable output) is a
  one-line ``HarnessError``; the top-level CLI prints it and exits 2.  ``--host`` takes an
  IP address (written as the ladder writes it) and a name of printable characters.
* Any other exception is a bug of ours, never "differs": one line on stderr naming the
  file and the fault, the traceback written to a file whose path that line gives, exit 3.
  Never a traceback on the terminal.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import sys
from collections.abc import Callable, Iterator
from typing import TextIO, TypeVar

import click

from harness import signals
from harness.capture.pcapfile import PcapError, annotations
from harness.errors import HarnessError, InternalError, InternalFault
from harness.ladder.dissect import SMTP_PORTS, dissect
from harness.ladder.model import Ladder
from harness.ladder.parallel import Coordinator, Job, few_collections, jobs_for
from harness.ladder.sessions import DEFAULT_IDLE, Flow, Splitter
from harness.progress import Progress
from harness.render import FORMATS, jsonl, render
from harness.tls.keylog import KeyLog, from_capture
from harness.verdict import ExitCode

T = TypeVar("T")

_HOST = click.option(
    "--host",
    "hosts",
    multiple=True,
    metavar="ADDR=NAME",
    help="Show ADDR (an IP address) as NAME (repeatable); a pcapng's own names need none.",
)


_PORT = click.option(
    "--port",
    "ports",
    multiple=True,
    type=click.IntRange(1, 65535),
    help="Read connections to this server port as SMTP too (repeatable).",
)
_IDLE = click.option(
    "--idle",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_IDLE,
    show_default=True,
    help="Finish a connection silent this many seconds (of capture time).",
)
_KEYLOG = click.option(
    "--keylog",
    "keylogs",
    multiple=True,
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Decrypt TLS with this NSS key log (repeatable); a pcapng's own secrets need none.",
)
_JOBS = click.option(
    "--jobs",
    "-j",
    type=click.IntRange(1, 16),
    default=None,
    help="Processes reading the capture (default: one per core, two at most, from 4 MiB).",
)
JSONL = "jsonl"


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice([*FORMATS, JSONL]), default="text")
@click.option("--output", type=click.Path(dir_okay=False), help="Write here, not to stdout.")
@_PORT
@_IDLE
@_HOST
@_KEYLOG
@_JOBS
def ladder(
    file: str,
    fmt: str,
    output: str | None,
    ports: tuple[int, ...],
    idle: float,
    hosts: tuple[str, ...],
    keylogs: tuple[str, ...],
    jobs: int | None,
) -> None:
    """Show the ladder of the capture FILE (pcap or pcapng).

    --format jsonl streams it, one JSON object per line, each connection's steps as it
    ends.

    Exit 0, or 2 for bad input (an unreadable capture, a bad --host), 3 for a fault of
    the harness (its traceback is written to the file the message names)."""
    given = _hosts(hosts)
    _readable(file)  # before --output is created
    keylog = guarded(file, lambda: secrets([file], keylogs))
    if fmt == JSONL:
        job = _job(file, jobs_for(file, jobs), (ports, idle, keylog), given, "ladder", JSONL)
        with _writing(output) as out:
            guarded(file, lambda: _stream_ladder(job, out))
        return
    options = {"smtp_ports": SMTP_PORTS | frozenset(ports), "idle": idle, "keylog": keylog}
    document = guarded(file, lambda: render(dissect(file, given, **options, file_names=True), fmt))
    with _writing(output) as out:
        out.write(document)


@click.command()
@click.argument("run", type=click.Path(dir_okay=False))
@click.option(
    "--expect",
    "golden",
    type=click.Path(dir_okay=False),
    metavar="GOLDEN",
    help="Compare with the golden capture GOLDEN (pcap or pcapng, e.g. pcaps/seed.pcap) "
    "instead of judging RUN's sessions.",
)
@click.option("--strict", is_flag=True, help="Compare every step and detail where it fell.")
@click.option("--format", "fmt", type=click.Choice(["text", JSONL]), default="text")
@click.option("--session", "only", type=click.IntRange(min=1), help="Judge session N alone.")
@_PORT
@_IDLE
@_HOST
@_KEYLOG
@_JOBS
def check(
    run: str,
    golden: str | None,
    strict: bool,
    fmt: str,
    only: int | None,
    ports: tuple[int, ...],
    idle: float,
    hosts: tuple[str, ...],
    keylogs: tuple[str, ...],
    jobs: int | None,
) -> None:
    """Judge the SMTP sessions of the capture RUN, or compare it with a golden capture.

    Without --expect: every check a passive capture can meet, per session.  Exit 0 when
    none failed, 1 when one did, 2 for bad input, 3 for a fault of the harness.  With
    --expect GOLDEN: exit 0 when they do the same, 1 when they differ (the diff is
    printed), 2 for bad input, 3 for a fault of the harness (its traceback goes to the file
    the message names).  RUN is a capture (a run folder's capture.pcapng, or any other);
    GOLDEN one recorded from a run that was right (run --update-golden), compared as
    ladders: the steps, in order, each with its kind and details (--strict: every detail,
    where it fell too)."""
    given = _hosts(hosts)
    keylog = guarded(run, lambda: secrets([run, *([golden] if golden else [])], keylogs))
    if golden is None:
        if strict:
            raise HarnessError("--strict applies only with --expect")
        workers = 1 if only is not None else jobs_for(run, jobs)
        job = _job(run, workers, (ports, idle, keylog), given, "check", fmt)
        with _writing(None) as out:
            code = guarded(run, lambda: _judge_capture(job, only, out))
        sys.exit(code)
    only_without = [("--format", fmt != "text"), ("--session", only is not None)]
    only_without += [("--port", ports), ("--jobs", jobs is not None)]
    names = guarded(run, lambda: file_names([run, golden], given))
    for option, used in only_without:
        if used:
            raise HarnessError(f"{option} applies only without --expect")
    run_ladder: Ladder = guarded(run, lambda: dissect(run, names, idle=idle, keylog=keylog))
    golden_ladder: Ladder = guarded(
        golden, lambda: dissect(golden, names, idle=idle, keylog=keylog)
    )
    # deferred to --expect: comparing (normalise's masks, difflib) is no part of judging
    compared = signals.imported("harness.ladder.compare")
    verdict = guarded(run, lambda: compared.compare(run_ladder, golden_ladder, strict=strict))
    click.echo(compared.format_diff(verdict, run, golden), nl=False)
    sys.exit(ExitCode.OK if verdict.ok else ExitCode.FAIL)


def _job(
    file: str,
    workers: int,
    reading: tuple[tuple[int, ...], float, KeyLog | None],
    hosts: dict[str, str],
    mode: str,
    fmt: str,
) -> Job:
    """The job of reading *file*: *reading* is (--port, --idle, the TLS secrets)."""
    ports, idle, keylog = reading
    options = {"ports": ports, "idle": idle, "keylog": keylog, "file_names": True}
    return Job(file, 0, workers, options, hosts, mode, fmt, Splitter.source(file))


def _flows(splitter: Splitter, file: str) -> Iterator[Flow]:
    """The capture's flows as they end, with a progress bar on a terminal."""
    with few_collections(), Progress(unit="packets") as bar:
        sessions = 0
        for flow in splitter.flows(file):
            sessions = flow.session or sessions
            bar.advance(splitter.packets - bar.done, sessions=sessions)
            yield flow


def _coordinated(job: Job, out: TextIO) -> Coordinator:
    """*job* read by its workers, the texts written to *out*; the coordinator, done."""
    splitter = Splitter(job.hosts, **job.splitter)
    with Progress(unit="packets") as bar, Coordinator(job, splitter, out, bar) as coordinator:
        coordinator.run(job.path)
    return coordinator


def _stream_ladder(job: Job, out: TextIO) -> None:
    if job.workers > 1:
        done = _coordinated(job, out)
        counts = {"flows": done.totals.flows, "sessions": done.totals.sessions}
        out.write(
            jsonl.summary_line(job.source, done.splitter.hosts, done.warnings_all(), **counts)
        )
        return
    splitter = Splitter(job.hosts, **job.splitter)
    flows = sessions = 0
    for flow in _flows(splitter, job.path):
        out.writelines(jsonl.flow_lines(flow))
        flows, sessions = flows + 1, flow.session or sessions
    counts = {"flows": flows, "sessions": sessions}
    warnings = dict(sorted(splitter.warnings.items()))
    out.write(jsonl.summary_line(job.source, splitter.hosts, warnings, **counts))


def _judge_capture(job: Job, only: int | None, out: TextIO) -> ExitCode:
    """Judge each session as it ends; the worst exit code of them (0 with none)."""
    from harness.render import session as session_text

    if job.workers > 1:
        done = _coordinated(job, out)
        code, sessions, failed = ExitCode(done.code), done.totals.sessions, done.failed
        hosts, warnings = done.splitter.hosts, done.warnings_all()
    else:
        splitter = Splitter(job.hosts, **job.splitter)
        code, sessions, failed = _judge_alone(job, splitter, only, out)
        hosts, warnings = splitter.hosts, dict(sorted(splitter.warnings.items()))
    if only is not None and sessions < only:
        raise HarnessError(f"--session {only}: {job.path} has {sessions} SMTP session(s)")
    if job.fmt == JSONL:
        out.write(jsonl.summary_line(job.source, hosts, warnings, sessions=sessions))
    elif only is None:
        out.write(session_text.summary(sessions, failed, warnings))
    return code


def _judge_alone(
    job: Job, splitter: Splitter, only: int | None, out: TextIO
) -> tuple[ExitCode, int, int]:
    """(worst exit code, sessions, sessions failed) of judging in this process alone."""
    render = job.renderer(splitter.hosts)
    code, sessions, failed = ExitCode.OK, 0, 0
    for flow in _flows(splitter, job.path):
        if flow.session is None:
            continue
        sessions = flow.session
        if only is not None and flow.session != only:
            continue
        text, flow_code, flow_failed = render(flow)
        out.write(text)
        code, failed = max(code, ExitCode(flow_code)), failed + flow_failed
        if only is not None:
            break
    return code, sessions, failed


def _silence_stdout() -> None:
    """stdout to /dev/null: what is still buffered for a closed pipe goes nowhere, instead
    of raising again as the interpreter exits."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


@contextlib.contextmanager
def _writing(output: str | None) -> Iterator[TextIO]:
    """stdout, or the file *output*; a file that cannot be written is bad input."""
    if output is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    try:
        with open(output, "w", encoding="utf-8") as f:
            yield f
    except OSError as exc:
        raise HarnessError(f"{output}: cannot write: {exc.strerror}") from None


def guarded(file: str, work: Callable[[], T]) -> T:
    """``work()``; a fault of ours in it (any exception that is not a ``HarnessError``) is
    an ``InternalError`` naming ``file``: the CLI makes it one line and exit 3."""
    try:
        return work()
    except HarnessError:
        raise
    except BrokenPipeError:  # the reader of our output went away (``| head``)
        _silence_stdout()
        raise HarnessError("stdout: closed before the end of the output") from None
    except Exception as exc:  # a bug: reported, never a traceback on the terminal
        fault = InternalFault.from_exception(f"harness fault on {file}", exc)
        raise InternalError(fault.line()) from exc


def file_names(files: list[str], given: dict[str, str]) -> dict[str, str]:
    """The names the captures' name blocks give (the first file's win), then ``given``."""
    names: dict[str, str] = {}
    for file in reversed(files):
        names |= annotations(file).names
    return names | given


def secrets(captures: list[str], keylogs: tuple[str, ...]) -> KeyLog | None:
    """The TLS secrets of the captures' own blocks and the ``--keylog`` files (theirs win);
    None when there are none: TLS after STARTTLS then gets its warning."""
    keylog = KeyLog()
    for capture in captures:
        keylog.merge(from_capture(capture))
    for path in keylogs:
        keylog.add_file(path)
    return keylog if len(keylog) else None


def _readable(file: str) -> None:
    """A capture that cannot be opened is bad input, said as the reader says it."""
    try:
        open(file, "rb").close()
    except OSError as exc:
        raise PcapError(f"{file}: cannot read: {exc.strerror or exc}") from None


def _hosts(pairs: tuple[str, ...]) -> dict[str, str]:
    """``ADDR=NAME`` pairs as address -> name, each address as the ladder writes it."""
    hosts = {}
    for pair in pairs:
        addr, eq, name = pair.partition("=")
        if not eq or not addr or not name:
            raise HarnessError(f"--host {pair!r}: expected ADDR=NAME")
        try:
            address = ipaddress.ip_address(addr)
        except ValueError:
            raise HarnessError(f"--host {pair!r}: {addr!r} is not an IP address") from None
        # bytes that are not UTF-8 reach us as surrogates, which are not printable either
        if not name.isprintable() or any(ch.isspace() for ch in name):
            raise HarnessError(f"--host {pair!a}: the name must be printable UTF-8 without spaces")
        hosts[str(address)] = name
    return hosts
