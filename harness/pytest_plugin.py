"""pytest plugin for smtp-harness (registered through the ``pytest11`` entry point).

Fixtures are the public test API; each one's docstring (``pytest --fixtures``) says how to
use it, and the README's "pytest plugin" section has a three-test example:
- ``lab`` — a running lab with the seed's topology (sender, dns, receiver), torn down after
  the test whatever happens; ``lab_factory`` builds more (other topologies, two at once).
- ``dns`` — the lab DNS (fixtures/zones) serving on the lab's DNS host.
- ``smtp_receiver`` / ``smtp_sender`` — factories of scripted peers bound to the lab: sockets
  in their hosts, resolvers asking the lab DNS; start them with ``asyncio.run``.
- ``capture`` — a live capture of the lab bridge (``capture.pcapng`` in the test's tmp dir).
- ``scenario_run`` — run a scenario end to end, given as a path, a dict (TOML-shaped data)
  or a TOML string (default: the seed), each validated as a scenario file is; returns a
  ``RunResult`` whose ``assert_ok()`` fails with the outcomes, the problems (the ladder diff
  against the scenario's golden among them) and the artefacts' path.
- ``assert_ladder(result, golden)`` — compare a run's ladder with a golden pcap; a failure
  message is the packetdrill-style diff.  ``--update-golden`` re-records the golden instead.
- Artefacts: a failing ``assert_ok`` or ``assert_ladder`` keeps the run's files under
  runs/pytest-artefacts/<test>/ (the path ends the message, so --junitxml has it): the
  capture, its ladders, ``run.json``, the peers' and the DNS's logs, a real MTA's log, a
  traceback, and the golden's ladder (``golden-ladder.txt``/``.svg``) beside the run's.
- ``replay(capture, **options)`` — ``smtp-harness replay CAPTURE --as client --lab`` with
  the same options (``side``, ``mta``, ``scenario``, ``session``, ``timing``,
  ``keep_going``, ``maps``; ``lab_id`` with ``target``: a running ``lab up`` lab;
  ``rerun=True``: ``--rerun``); returns a ``ReplayResult`` (``verdict``, ``diff``,
  ``diff_text``, ``client``), a ``RerunResult`` with ``rerun``.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from harness.capture.live import Capture
from harness.dns import DnsServer
from harness.lab import Lab, Topology
from harness.ladder.compare import compare, format_diff
from harness.ladder.dissect import dissect
from harness.render import render
from harness.runner import (
    CAPTURE,
    RunResult,
    host_names,
    lab_dns,
    record_golden,
    resolver_for,
    run_scenario,
)
from harness.scenario import Scenario, load_scenario, scenario_from_data, scenario_from_text
from harness.smtp.receiver import Receiver, ReceiverConfig
from harness.smtp.sender import Sender

ARTEFACTS = Path("runs") / "pytest-artefacts"
pytest_plugins = ("harness.checks.pytest_matrix",)  # the matrix's cells: --smtp-matrix
# what is kept of a run folder (globs), beside the golden's ladder
KEPT = ("capture.pcap*", "ladder.*", "run.json", "*.jsonl", "traceback.txt", "*-*/*.log")
ScenarioSource = str | Path | dict | None


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="smtp-harness: re-record golden captures (pcaps/) instead of comparing",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lab: needs root and real network namespaces")


@pytest.fixture
def lab_factory() -> Iterator[Callable[..., Lab]]:
    """``lab_factory(topology=None)`` — bring up one more lab and return it (a ``Lab``):
    the seed's topology by default, or a ``harness.lab.Topology`` of your own (documentation
    addresses only).  Call it as often as needed (two labs at once do not clash); every lab
    it made is torn down after the test, on failure and Ctrl-C too.  Needs root."""
    with ExitStack() as stack:

        def make(topology: Topology | None = None) -> Lab:
            return stack.enter_context(Lab(topology))

        yield make


@pytest.fixture
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    """A running lab (``harness.lab.Lab``) with the seed's hosts: ``sender`` 192.0.2.10,
    ``dns`` 192.0.2.53, ``receiver`` 192.0.2.25 (each also 2001:db8::N on one bridge, no
    route out).  ``lab.run(host, argv)`` runs a command in a host (``lab.popen`` starts
    one; the lab ends it), ``lab.socket_factory(host)`` makes sockets there, ``lab.ns(host)``
    names its namespace (``ip netns exec``).  Torn down after the test.  Needs root."""
    return lab_factory()


@pytest.fixture
def seed_scenario() -> Scenario:
    """The seed scenario (fixtures/scenarios/seed.toml) as a validated ``Scenario``: its
    ``sender``/``receiver`` configs are what ``smtp_sender``/``smtp_receiver`` start from, its
    ``topology`` is the ``lab``'s.  Needs no lab."""
    return load_scenario(None)


@pytest.fixture
def dns(lab: Lab, seed_scenario: Scenario) -> Iterator[DnsServer]:
    """The lab DNS server: the seed's zones (fixtures/zones: receiver.com's MX, A, AAAA,
    PTRs) on port 53 of the ``lab``'s dns host, over UDP and TCP; the lab hosts'
    resolv.conf points at it.  ``dns.log.find("receiver.com", "MX")`` lists the questions
    asked (each with its ``client`` address).  Stopped after the test."""
    with lab_dns(lab, seed_scenario) as server:
        yield server


@pytest.fixture
def smtp_receiver(lab: Lab, dns: DnsServer, tmp_path: Path) -> Callable[..., Receiver]:
    """``smtp_receiver(host="receiver", **config)`` — a scripted receiver (``Receiver``) for
    that host of the ``lab``, not started: ``config`` is ``ReceiverConfig``'s fields (users,
    vrfy, extensions, rules: ``ReplyRule``...), mail stored under tmp_path/maildir.  In an
    ``async def``: ``async with receiver: await receiver.start("192.0.2.25", 25)``, then
    ``await receiver.idle()``; ``receiver.stored`` holds what it took.  Uses ``dns``."""

    def make(host: str = "receiver", **config) -> Receiver:
        config.setdefault("maildir", tmp_path / "maildir")
        return Receiver(
            ReceiverConfig(**config),
            resolve=resolver_for(lab, host),
            socket_factory=lab.socket_factory(host),
        )

    return make


@pytest.fixture
def smtp_sender(lab: Lab, dns: DnsServer, seed_scenario: Scenario) -> Callable[..., Sender]:
    """``smtp_sender(host="sender", **config)`` — a scripted sender (``Sender``) for that
    host of the ``lab``: the seed's ``SenderConfig`` with ``config`` replacing fields
    (recipients, mail_from, helo_name, ehlo, vrfy, script...).  ``report = await
    sender.send()`` looks up the MX in the lab DNS and delivers; ``report.status(rcpt)`` is
    "delivered", "rejected", "deferred" or "lost".  Uses ``dns``."""

    def make(host: str = "sender", **config) -> Sender:
        return Sender(
            dataclasses.replace(seed_scenario.sender, **config),
            resolve=resolver_for(lab, host),
            socket_factory=lab.socket_factory(host),
        )

    return make


@pytest.fixture
def capture(lab: Lab, tmp_path: Path) -> Iterator[Capture]:
    """A live capture of the ``lab``'s bridge into tmp_path/capture.pcapng, running before the
    test body starts.  ``capture.stop()`` ends it (every frame the kernel delivered written,
    or ``CaptureIncomplete``); then read ``capture.path`` with
    ``harness.ladder.dissect.dissect(str(capture.path), harness.runner.host_names(
    lab.topology))``.  Stopped after the test otherwise."""
    with Capture(lab, tmp_path / CAPTURE) as cap:
        yield cap


@pytest.fixture
def scenario_run(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[..., RunResult]:
    """``scenario_run(source=None)`` — run a scenario end to end in a fresh lab of its own
    and return its ``RunResult`` (``ok``, ``verdict``, ``problems``, ``report.outcomes``,
    ``stored``, ``ladder``, ``folder``).  ``source``: None (the seed), a path (``Path``, or a
    ``str`` without "=" or a newline), a dict of TOML-shaped data (``{"receiver":
    {"users": ["c3po"]}}``) or a TOML string; every key has a default, see the README's
    table of scenario keys.  A dict or string is validated as a file is, its relative paths
    taken from the test file's folder.  ``result.assert_ok()`` fails with the outcomes, the
    problems (the ladder diff against ``[expect] golden``) and where the artefacts are kept.
    Each call gets its own folder under tmp_path.  Needs root."""
    update = request.config.getoption("--update-golden")
    numbers = itertools.count(1)

    def run(source: ScenarioSource = None) -> RunResult:
        scenario = _scenario(source, request.path)
        result = run_scenario(scenario, tmp_path / f"run-{next(numbers)}", update_golden=update)
        result.keep = lambda done: _keep_artefacts(done, request.node.nodeid)
        return result

    return run


def _scenario(source: ScenarioSource, test_file: Path) -> Scenario:
    """A scenario from what ``scenario_run`` was given (its docstring says how each is read)."""
    if isinstance(source, dict):
        return scenario_from_data(copy.deepcopy(source), test_file)
    if isinstance(source, str) and ("=" in source or "\n" in source):
        return scenario_from_text(source, test_file)
    return load_scenario(source)


@pytest.fixture
def assert_ladder(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``assert_ladder(result, golden, strict=False)`` — the run's ladder must match the
    golden capture's (``harness.ladder.compare``: addresses, ports and times normalised;
    ``strict`` compares the full text of every step).  A failure is the packetdrill-style
    diff, then the artefacts' path.  With ``pytest --update-golden`` it re-records the
    golden from the run instead."""
    update = request.config.getoption("--update-golden")

    def check(result: RunResult, golden: str | Path, *, strict: bool = False) -> None:
        golden = Path(golden)
        if update:
            record_golden(result.pcap, golden)
            return
        expected = dissect(str(golden), host_names(result.scenario.topology))
        verdict = compare(result.ladder, expected, strict=strict)
        if not verdict.ok:
            kept = _keep_artefacts(result, request.node.nodeid, golden)
            diff = format_diff(verdict, str(kept / CAPTURE), str(golden))
            pytest.fail(f"{diff}\nartefacts: {kept}", pytrace=False)

    return check


@pytest.fixture
def replay(tmp_path: Path) -> Callable[..., object]:
    """``replay(capture, *, scenario=None, lab_id=None, target=None, rerun=False, **options)``
    — replay a capture's client side in a fresh lab (``harness.replay.run.ReplayOptions``
    are the options), into the running ``lab up`` lab ``lab_id`` at its host ``target``,
    or re-run it with both scripted peers (``rerun``)."""
    from harness.replay.attach import replay_into
    from harness.replay.rerun import rerun as rerun_capture
    from harness.replay.run import ReplayOptions
    from harness.replay.run import replay as run_replay

    runs = iter(range(1, 1000))

    def run(
        capture: str | Path,
        *,
        scenario: str | Path | None = None,
        lab_id: str | None = None,
        target: str | None = None,
        rerun: bool = False,
        **options,
    ):
        folder = tmp_path / f"replay-{next(runs)}"
        given = (Path(capture), load_scenario(scenario), folder, ReplayOptions(**options))
        if rerun:
            return rerun_capture(*given)
        if lab_id is not None or target is not None:
            return replay_into(*given, lab_id or "", target or "")
        return run_replay(*given)

    return run


def _keep_artefacts(result: RunResult, nodeid: str, golden: Path | None = None) -> Path:
    """Copy what ``KEPT`` names of the run folder to runs/pytest-artefacts/<test>/, with the
    golden's ladder (``golden`` or the scenario's ``[expect] golden``); its absolute path."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in nodeid)
    folder = ARTEFACTS / safe
    if folder.exists():
        shutil.rmtree(folder)  # an earlier session's files are not this run's
    folder.mkdir(parents=True)
    for pattern in KEPT:
        for path in result.folder.glob(pattern):
            shutil.copyfile(path, folder / str(path.relative_to(result.folder)).replace("/", "-"))
    golden = golden or result.scenario.expect.golden
    if golden is not None and golden.is_file():
        ladder = dissect(str(golden), host_names(result.scenario.topology))
        for suffix, fmt in (("txt", "text"), ("svg", "svg")):
            (folder / f"golden-ladder.{suffix}").write_text(render(ladder, fmt), encoding="utf-8")
    return folder.resolve()
