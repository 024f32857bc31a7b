"""Runs killed at random points, and what each left behind (``tools/torture.py``).

Rules kept here:

1. A run is ``smtp-harness run SCENARIO`` as a user starts it, in a subprocess, killed
   after a random delay (from a seeded ``random.Random``) between 0 and the median time
   of ``UNKILLED`` unkilled runs of the same scenario (judged too), stratified: of N
   runs, the k-th is drawn from the k-th N-th of that time, so that start-up, lab,
   exchange and teardown are all hit even when N is small.  SIGINT goes to the run's
   process group, as a terminal's Ctrl-C does; SIGTERM and SIGKILL to the run's pid, as
   ``kill`` does.
2. Each run has a state folder of its own (``SMTP_HARNESS_STATE``), so every lab record in
   it is that run's, and ``lab clean`` in it reclaims that run's labs only.  While the run
   lives, a watcher reads those records every few milliseconds: the lab ids, the inodes of
   their namespaces (a namespace outlives its name while a process is in it) and the
   children recorded.  Leaks are judged by those ids, inodes and pids, never by
   machine-wide totals: other people's labs come and go.  Inodes are reused once a
   namespace is freed, so one now named for another lab is not the run's, and a process
   started before the run is not either.
3. Left behind is counted per kind: network namespaces (``/run/netns/<id>-*``),
   ``/etc/netns/<id>-*`` entries, lab records, live processes in the run's namespaces or
   recorded as its children (an MTA it started is both), and mounts that name the lab or
   the run folder.  After SIGKILL the count is taken twice: as the kill left it (noted:
   that is what ``lab clean`` is for), then after ``lab clean`` (run while the killed
   owner is still an unreaped zombie, the normal case right after a kill), judged.
4. Exit codes: 130 for SIGINT and 143 for SIGTERM (or the signal's own death, which a shell
   also shows as 128 + N, when it came before the handler was installed); the code of the
   unkilled runs only when the run had finished first: it ended before its signal, or had
   written its verdict (``run.json``) before it came, so that a lost signal (the run going
   on to its verdict) is a wrong exit.  Never a traceback on stderr; a run still alive
   ``HANG_S`` after its signal is killed and counted as a wrong exit.
5. Whatever a run left is removed after it is counted, by ``lab clean`` (which acts on the
   run's records only), and its folder too unless it holds a finding; a folder a mount
   names is never removed (removing through a bind mount would delete its source).  A
   process still left is named on stderr, never killed from here: that it is the run's
   is an inference (rule 2), and other people's processes are not ours to end.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from torture_figure import Figure, detail, noted

from harness.lab.netns import NETNS_RUN_DIR, netns_inode
from harness.lab.registry import ID_PREFIX, process_start, running
from harness.verdict import ExitCode

CLI = str(Path(sys.executable).with_name("smtp-harness"))
ROOT = Path(__file__).resolve().parent.parent
ETC_NETNS = Path("/etc/netns")
POLL_S = 0.002  # the watcher's period: a lab lives for hundreds of milliseconds at least
UNKILLED = 3  # unkilled runs per scenario: their median time bounds the kill delays
HANG_S = 60.0  # a run that has not exited this long after its signal hangs
CLEAN_S = 60.0  # bound on `lab clean`
KINDS = ("network namespaces", "/etc/netns entries", "lab records", "processes", "mounts")
# what a run signalled mid-way may exit with (rule 4); Popen says -N for death by signal N
ACCEPTED = {
    signal.SIGINT: (ExitCode.SIGINT, -signal.SIGINT),
    signal.SIGTERM: (ExitCode.SIGTERM, -signal.SIGTERM),
    signal.SIGKILL: (-signal.SIGKILL,),
}


class Watch(threading.Thread):
    """What a run's records name, read while the run lives (rule 2)."""

    def __init__(self, state: Path) -> None:
        super().__init__(name="torture-watch", daemon=True)
        self.state = state
        self.labs: set[str] = set()
        self.inodes: set[int] = set()
        self.pids: set[tuple[int, int]] = set()
        self.since = 0  # the run's start time, in clock ticks since boot
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(POLL_S):
            self.look()
        self.look()

    def stop(self) -> None:
        self._done.set()
        self.join()

    def look(self) -> None:
        for path in self.state.glob(f"{ID_PREFIX}*"):
            self.labs.add(path.name.partition(".")[0])
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # being written, or gone meanwhile: the next look sees it
            for ns in record.get("namespaces", []):
                inode = netns_inode(ns)
                if inode is not None:
                    self.inodes.add(inode)
            self.pids.update((pid, start) for pid, start in record.get("pids", []))


@dataclass
class Killed:
    """One run: when it was signalled, how it ended, what it left."""

    folder: Path
    sig: signal.Signals | None  # None: the unkilled run
    delay: float
    seconds: float = 0.0  # from start to exit
    signalled: bool = False
    finished_first: bool = False  # its verdict was written before the signal came
    code: int | None = None  # None: it hung
    traceback: bool = False
    saw_lab: bool = False
    left: Counter[str] = field(default_factory=Counter)  # at exit (after SIGKILL: before clean)
    cleaned: int | None = None  # `lab clean`'s exit code, after SIGKILL; None if it hung
    left_after_clean: Counter[str] = field(default_factory=Counter)

    @property
    def judged_left(self) -> Counter[str]:
        return self.left_after_clean if self.sig is signal.SIGKILL else self.left

    def exit_ok(self, own: int | None) -> bool:
        """Whether the exit code is the signal's, or ``own`` (the unkilled runs' code) for a
        run that had finished first (rule 4)."""
        if not self.signalled:
            return self.code == own
        return self.code in ACCEPTED[self.sig] or (self.finished_first and self.code == own)

    def wrong(self, own: int | None) -> bool:
        clean_failed = self.sig is signal.SIGKILL and self.cleaned != 0
        left = self.judged_left.total() > 0
        return not self.exit_ok(own) or self.traceback or clean_failed or left

    def describe(self) -> str:
        left = {kind: n for kind, n in self.judged_left.items() if n}
        return (
            f"{self.folder}: delay {self.delay:.3f} s, signalled {self.signalled} "
            f"(its verdict written before: {self.finished_first}), "
            f"exit {self.code}, traceback {self.traceback}, lab clean {self.cleaned}, left {left}"
        )


class Batch:
    """Runs of one scenario: unkilled ones first (their exit code and time), then killed ones."""

    def __init__(self, scenario: Path, work: Path) -> None:
        self.scenario = scenario
        self.work = work
        self.numbers = iter(range(1, 1 << 30))
        self.unkilled = [self.one(None, 0.0, ExitCode.OK) for _ in range(UNKILLED)]
        self.duration = statistics.median(k.seconds for k in self.unkilled)
        self.own = Counter(k.code for k in self.unkilled).most_common(1)[0][0]

    def one(self, sig: signal.Signals | None, delay: float, own: int | None) -> Killed:
        """Start a run, signal it after ``delay`` s (unless it ended first), count leftovers."""
        folder = self.work / f"{self.scenario.stem}-{next(self.numbers)}"
        state = folder / "labs"
        state.mkdir(parents=True)
        env = {**os.environ, "SMTP_HARNESS_STATE": str(state)}
        killed = Killed(folder, sig, delay)
        watch = Watch(state)
        with (folder / "stderr.txt").open("wb") as stderr:
            proc = subprocess.Popen(
                [CLI, "run", str(self.scenario), "--out", str(folder / "run")],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                cwd=ROOT, env=env, start_new_session=True,
            )  # fmt: skip
        began = time.monotonic()
        watch.since = process_start(proc.pid) or 0  # not reaped yet: its stat is there
        watch.start()
        try:
            _signal(proc, killed)
            _ending(proc, killed, watch, env)
            killed.seconds = time.monotonic() - began
        except BaseException:  # Ctrl-C or SIGTERM of the torture: leave nothing either
            proc.kill()
            _tidy(watch, folder, env, keep=True)
            raise
        finally:
            watch.stop()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        killed.saw_lab = bool(watch.labs)
        killed.traceback = b"Traceback" in (folder / "stderr.txt").read_bytes()
        _tidy(watch, folder, env, keep=killed.wrong(own))
        return killed


def _signal(proc: subprocess.Popen, killed: Killed) -> None:
    """Send ``killed.sig`` after ``killed.delay`` unless the run ended first (rule 1)."""
    if killed.sig is None:
        return
    try:
        proc.wait(timeout=killed.delay)
        return
    except subprocess.TimeoutExpired:
        pass
    killed.signalled = True
    sent = time.time()
    with contextlib.suppress(ProcessLookupError):
        if killed.sig is signal.SIGINT:
            os.killpg(proc.pid, killed.sig)
        else:
            proc.send_signal(killed.sig)
    with contextlib.suppress(FileNotFoundError):
        killed.finished_first = (killed.folder / "run" / "run.json").stat().st_mtime < sent


def _ending(proc: subprocess.Popen, killed: Killed, watch: Watch, env: dict[str, str]) -> None:
    """How the run ended and what it left; after SIGKILL, `lab clean` first (rule 3)."""
    if killed.sig is not signal.SIGKILL:
        killed.code = _wait(proc)
        watch.stop()  # from here on only this thread reads the records
        killed.left = _left(watch, killed.folder)
        return
    _until_zombie(proc.pid)
    watch.stop()
    killed.left = _left(watch, killed.folder)
    killed.cleaned = _lab_clean(env)
    killed.left_after_clean = _left(watch, killed.folder)
    killed.code = proc.wait()


def killed_runs(scenario: Path, runs: int, rng: random.Random, work: Path) -> Iterator[Figure]:
    """The figures of ``runs`` runs of ``scenario`` per signal (rule 1)."""
    batch = Batch(scenario, work)
    name, own, unkilled = scenario.stem, batch.own, batch.unkilled
    label = f"run {name}, unkilled"
    yield Figure(f"{label}: exit 0", sum(k.code == ExitCode.OK for k in unkilled), len(unkilled))
    yield Figure(f"{label}: tracebacks on stderr", sum(k.traceback for k in unkilled))
    yield from _left_figures(f"{label}: left", _sum(k.left for k in unkilled))
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        done = []
        for number in range(1, runs + 1):
            delay = batch.duration * (number - 1 + rng.random()) / runs  # stratified (rule 1)
            killed = batch.one(sig, delay, own)
            done.append(killed)
            if killed.wrong(own):
                detail(f"run {name} {sig.name} #{number}: {killed.describe()}")
        yield from _figures(f"run {name}, {sig.name}", done, batch)


def _figures(label: str, done: list[Killed], batch: Batch) -> Iterator[Figure]:
    sig, own = done[0].sig, batch.own
    codes = "killed" if sig is signal.SIGKILL else f"exit {ACCEPTED[sig][0]}"
    after = f"signalled 0-{batch.duration * 1000:.0f} ms after start"
    yield noted(f"{label}: runs, {after}", len(done))
    yield noted(f"{label}: runs that ended before their signal", sum(not k.signalled for k in done))
    yield noted(f"{label}: runs whose lab the watcher saw", sum(k.saw_lab for k in done))
    yield Figure(
        f"{label}: {codes}, or {own} (the unkilled runs') if it had finished",
        sum(k.exit_ok(own) for k in done),
        len(done),
    )
    yield Figure(f"{label}: tracebacks on stderr", sum(k.traceback for k in done))
    if sig is signal.SIGKILL:
        for kind, n in _sum(k.left for k in done).items():  # the detectors see (rule 3)
            yield noted(f"{label}: left before lab clean: {kind}", n)
        yield Figure(f"{label}: lab clean exit 0", sum(k.cleaned == 0 for k in done), len(done))
        yield from _left_figures(
            f"{label}: left after lab clean", _sum(k.left_after_clean for k in done)
        )
    else:
        yield from _left_figures(f"{label}: left", _sum(k.left for k in done))


def _left_figures(label: str, left: Counter[str]) -> Iterator[Figure]:
    for kind in KINDS:
        yield Figure(f"{label}: {kind}", left[kind])


def _sum(counters: Iterable[Counter[str]]) -> Counter[str]:
    total = Counter({kind: 0 for kind in KINDS})
    for counter in counters:
        total.update(counter)
    return total


def _wait(proc: subprocess.Popen) -> int | None:
    """The run's exit code, or None if it hangs (it is killed then)."""
    try:
        return proc.wait(timeout=HANG_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def _until_zombie(pid: int) -> None:
    """Wait for the SIGKILLed run to be a zombie: dead, and not reaped (rule 3)."""
    deadline = time.monotonic() + HANG_S
    while running(pid) and time.monotonic() < deadline:
        time.sleep(POLL_S)


def _lab_clean(env: dict[str, str]) -> int | None:
    try:
        done = subprocess.run(
            [CLI, "lab", "clean"], capture_output=True, cwd=ROOT, env=env, timeout=CLEAN_S
        )
    except subprocess.TimeoutExpired:
        return None
    if b"Traceback" in done.stderr or done.returncode:
        detail(f"lab clean exit {done.returncode}: {done.stderr.decode(errors='replace')[-300:]}")
    return done.returncode


def _left(watch: Watch, folder: Path) -> Counter[str]:
    """What the run left, per kind (rule 3)."""
    watch.look()
    left: Counter[str] = Counter()
    for lab_id in watch.labs:
        left["network namespaces"] += len(list(Path(NETNS_RUN_DIR).glob(f"{lab_id}-*")))
        left["/etc/netns entries"] += len(list(ETC_NETNS.glob(f"{lab_id}-*")))
        left["lab records"] += len(list(watch.state.glob(f"{lab_id}.*")))
    left["processes"] = len(_processes(watch))
    left["mounts"] = len(_mounts(watch, folder))
    return left


def _processes(watch: Watch) -> set[int]:
    """Live processes recorded as the run's children, or started since the run and living
    in one of its namespaces (rule 3)."""
    found = {pid for pid, start in watch.pids if running(pid, start)}
    inodes = watch.inodes - _named_elsewhere(watch.labs)
    if not inodes:
        return found
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and _netns_of(entry.name) in inodes:
            pid, start = int(entry.name), process_start(int(entry.name))
            if start is not None and start >= watch.since and running(pid, start):
                found.add(pid)
    return found


def _named_elsewhere(labs: set[str]) -> set[int]:
    """Inodes of namespaces named for other labs: a freed namespace's inode is reused."""
    ours = tuple(f"{lab_id}-" for lab_id in labs) or ("\0",)
    others = [name for name in os.listdir(NETNS_RUN_DIR) if not name.startswith(ours)]
    return {netns_inode(name) for name in others} - {None}  # the nsfs inode, through the mount


def _command_line(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return "(gone)"


def _netns_of(pid: str) -> int | None:
    try:
        return int(os.readlink(f"/proc/{pid}/ns/net")[5:-1])  # "net:[4026532281]"
    except (OSError, ValueError):
        return None


def _mounts(watch: Watch, folder: Path) -> list[str]:
    names = [*watch.labs, str(folder)]
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if any(name in line for name in names)]


def _tidy(watch: Watch, folder: Path, env: dict[str, str], keep: bool) -> None:
    """Remove what the run left once it is counted (rule 5)."""
    if _left(watch, folder).total():
        _lab_clean(env)
    for pid in _processes(watch):
        detail(f"{folder}: process {pid} left: {_command_line(pid)}")
    if _mounts(watch, folder):
        detail(f"{folder}: kept, a mount names it")
    elif not keep:
        shutil.rmtree(folder, ignore_errors=True)
