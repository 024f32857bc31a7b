"""pytest plugin for smtp-harness (registered through the ``pytest11`` entry point).

Fixtures are the public test API:
- ``lab`` — a running lab with the seed's topology (sender, dns, receiver), torn down after
  the test whatever happens; ``lab_factory`` builds more (other topologies, two at once).
- ``dns`` — the lab DNS (fixtures/zones) serving on the lab's DNS host.
- ``smtp_receiver`` / ``smtp_sender`` — factories of scripted peers bound to the lab: sockets
  in their hosts, resolvers asking the lab DNS; start them with ``asyncio.run``.
- ``capture`` — a live capture of the lab bridge (``capture.pcap`` in the test's tmp dir).
- ``scenario_run`` — run a scenario file (or the seed) end to end; returns a ``RunResult``
  whose ``ladder`` is the dissected capture.
- ``assert_ladder(result, golden)`` — compare a run's ladder with a golden pcap; a failure
  message is the packetdrill-style diff, and the run's pcap and SVG ladder are kept as
  artefacts under runs/pytest-artefacts/ (the path ends the message, so --junitxml has it).
  ``--update-golden`` re-records the golden capture instead.
- ``replay(capture, **options)`` — ``smtp-harness replay CAPTURE --as client --lab`` with
  the same options (``mta``, ``scenario``, ``session``, ``timing``, ``keep_going``,
  ``maps``); returns a ``ReplayResult`` (``verdict``, ``diff``, ``diff_text``, ``client``).
"""

from __future__ import annotations

import dataclasses
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
from harness.runner import RunResult, host_names, lab_dns, resolver_for, run_scenario
from harness.scenario import Scenario, load_scenario
from harness.smtp.receiver import Receiver, ReceiverConfig
from harness.smtp.sender import Sender

ARTEFACTS = Path("runs") / "pytest-artefacts"


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
    with ExitStack() as stack:

        def make(topology: Topology | None = None) -> Lab:
            return stack.enter_context(Lab(topology))

        yield make


@pytest.fixture
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    return lab_factory()


@pytest.fixture
def seed_scenario() -> Scenario:
    return load_scenario(None)


@pytest.fixture
def dns(lab: Lab, seed_scenario: Scenario) -> Iterator[DnsServer]:
    with lab_dns(lab, seed_scenario) as server:
        yield server


@pytest.fixture
def smtp_receiver(lab: Lab, dns: DnsServer, tmp_path: Path) -> Callable[..., Receiver]:
    """``smtp_receiver(**config)`` — a receiver for the lab's receiver host (not started)."""

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
    """``smtp_sender(**config)`` — the seed's sender, with overrides, for the sender host."""

    def make(host: str = "sender", **config) -> Sender:
        return Sender(
            dataclasses.replace(seed_scenario.sender, **config),
            resolve=resolver_for(lab, host),
            socket_factory=lab.socket_factory(host),
        )

    return make


@pytest.fixture
def capture(lab: Lab, tmp_path: Path) -> Iterator[Capture]:
    with Capture(lab, tmp_path / "capture.pcap") as cap:
        yield cap


@pytest.fixture
def scenario_run(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[..., RunResult]:
    """``scenario_run(path=None)`` — run a scenario (default: the seed) in a fresh lab."""
    update = request.config.getoption("--update-golden")

    def run(path: str | Path | None = None) -> RunResult:
        return run_scenario(load_scenario(path), tmp_path / "run", update_golden=update)

    return run


@pytest.fixture
def assert_ladder(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``assert_ladder(result, golden)`` — the run's wire must match the golden capture."""
    update = request.config.getoption("--update-golden")

    def check(result: RunResult, golden: str | Path, *, strict: bool = False) -> None:
        golden = Path(golden)
        if update:
            golden.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(result.pcap, golden)
            return
        expected = dissect(str(golden), host_names(result.scenario.topology))
        verdict = compare(result.ladder, expected, strict=strict)
        if not verdict.ok:
            kept = _keep_artefacts(result, request.node.nodeid)
            diff = format_diff(verdict, str(kept / "capture.pcap"), str(golden))
            pytest.fail(f"{diff}\nartefacts: {kept}", pytrace=False)

    return check


@pytest.fixture
def replay(tmp_path: Path) -> Callable[..., object]:
    """``replay(capture, *, scenario=None, **options)`` — replay a capture's client side in
    a fresh lab (``harness.replay.run.ReplayOptions`` are the options)."""
    from harness.replay.run import ReplayOptions
    from harness.replay.run import replay as run_replay

    runs = iter(range(1, 1000))

    def run(capture: str | Path, *, scenario: str | Path | None = None, **options):
        folder = tmp_path / f"replay-{next(runs)}"
        return run_replay(Path(capture), load_scenario(scenario), folder, ReplayOptions(**options))

    return run


def _keep_artefacts(result: RunResult, nodeid: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in nodeid)
    folder = ARTEFACTS / safe
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("capture.pcap", "ladder.svg", "ladder.txt"):
        shutil.copyfile(result.folder / name, folder / name)
    return folder.resolve()
