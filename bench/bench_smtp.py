"""Benchmark: our scripted receiver against aiosmtpd and Postfix's smtp-sink, under
Postfix's smtp-source.

Rules this benchmark keeps:

* Same load for all three: ``smtp-source -s SESSIONS -m 2000 -f luke@sender.com
  -t c3po@receiver.com`` (one message per session, HELO/MAIL/RCPT/DATA/QUIT), from the
  unpacked postfix package (``harness.mta.debs``), on 127.0.0.1 only, bounded by count
  and by a timeout.
* Each server runs in its own subprocess (this script re-run with ``--serve``, or
  ``smtp-sink`` itself), so none shares a GIL with another or with the driver.
* Fair: every server accepts and keeps nothing on disk.  Ours runs as a lab run would,
  minus the files: every check on (grammar, sequence, the state table, the event log in
  memory, each message kept as a ``StoredMessage``), no maildir, no log file, no DNS.
  ``ours+files`` adds what a run writes (a JSON-lines log and a maildir in a tmp folder).
* Two loads: ``-s 20`` (20 sessions in parallel) and ``-s 1`` (one at a time); each
  figure is the median of ``--repeat`` runs against a warm server, the servers taking
  turns in a rotating order.
* Prints messages/s for each server and the ratios ours/aiosmtpd and ours/smtp-sink.
* ``--baseline DIR`` adds ``baseline``: the receiver of another checkout (an earlier
  commit, e.g. ``git archive REV | tar -x -C DIR``) served as ``ours`` is, measured in
  the same interleaved runs, and prints ours/baseline: a refactor's cost, machine load
  cancelled out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run as a script: import harness from the checkout

from harness.mta import debs  # noqa: E402

MESSAGES = 2000
LOADS = (20, 1)  # smtp-source -s: sessions in parallel
SERVERS = ("ours", "ours+files", "aiosmtpd", "smtp-sink")
SOURCE_ARGS = ["-f", "luke@sender.com", "-t", "c3po@receiver.com"]
RUN_TIMEOUT = 20.0  # seconds per smtp-source run; a slower server fails the bench
# asyncio reads a socket into a fresh 256 KiB buffer.  Whether glibc serves that from the
# heap or by mmap/mremap/munmap (3 syscalls and fresh pages per read) depends on a dynamic
# threshold set by whatever the process freed before (measured: aiosmtpd's process reads
# from the heap, ours paid 6 mmap+mremap+munmap a message).  A fixed threshold makes it
# the same for every Python server (and a trim threshold above it, or brk churns instead).
SERVER_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
SERVER_ENV["MALLOC_TRIM_THRESHOLD_"] = str(2 << 20)
SERVER_ENV["PYTHONHASHSEED"] = "0"  # one hash layout for every server process and run


def serve(kind: str) -> None:
    """Run one Python server on an ephemeral loopback port; print the port; serve until
    stdin ends; then print how many messages it accepted."""
    if kind == "aiosmtpd":
        _serve_aiosmtpd()
    else:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(_serve_ours(Path(tmp) if kind == "ours+files" else None))


async def _serve_ours(files: Path | None) -> None:
    from harness.smtp.receiver import Receiver, ReceiverConfig

    config = ReceiverConfig(
        ptr_at="never",
        maildir=files / "maildir" if files else None,
        log_path=files / "receiver.jsonl" if files else None,
    )
    receiver = Receiver(config)
    _, port = await receiver.start("127.0.0.1", 0)
    print(port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await receiver.stop()
    print(len(receiver.stored), flush=True)


class _Discard:
    """aiosmtpd's Sink, counting: accept every message, keep nothing."""

    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        self.count += 1
        return "250 OK"


def _serve_aiosmtpd() -> None:
    from aiosmtpd.controller import Controller

    handler = _Discard()
    port = _free_port()
    controller = Controller(
        handler, hostname="127.0.0.1", port=port, server_hostname="mail.receiver.com"
    )
    controller.start()
    print(port, flush=True)
    sys.stdin.read()
    controller.stop()
    print(handler.count, flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(
    kind: str, postfix: Path, baseline: Path | None = None
) -> Iterator[tuple[int, list[int]]]:
    """A fresh ``kind`` server: (its port, a list that gets its accepted count, if known)."""
    counted: list[int] = []
    if kind == "smtp-sink":
        port = _free_port()
        sink = debs.binary(postfix, "smtp-sink")
        command = [str(sink), "-u", "nobody", f"127.0.0.1:{port}", "1000"]
        proc = subprocess.Popen(command, env=debs.environment(postfix))
        try:
            _wait_listening(port)
            yield port, counted
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        return
    command = [sys.executable, __file__, "--serve", kind]
    if kind == "baseline":
        assert baseline is not None  # main() adds the kind only with --baseline
        command = [sys.executable, str(baseline / "bench/bench_smtp.py"), "--serve", "ours"]
    proc = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=SERVER_ENV
    )
    try:
        yield int(proc.stdout.readline()), counted
    finally:
        proc.stdin.close()
        counted += [int(line) for line in proc.stdout.read().split()]
        proc.wait(timeout=10)


def _wait_listening(port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise SystemExit(f"smtp-sink did not listen on 127.0.0.1:{port}")


def measure(postfix: Path, port: int, sessions: int) -> float:
    """Messages per second of one smtp-source run."""
    source = debs.binary(postfix, "smtp-source")
    command = [str(source), "-s", str(sessions), "-m", str(MESSAGES), *SOURCE_ARGS]
    started = time.perf_counter()
    done = subprocess.run(
        [*command, f"127.0.0.1:{port}"],
        env=debs.environment(postfix),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"smtp-source failed: {done.stderr.strip()}")
    return MESSAGES / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per server and load")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset")
    parser.add_argument("--serve", choices=["ours", "ours+files", "aiosmtpd"], help="internal")
    parser.add_argument("--baseline", type=Path, help="another checkout's receiver to compare")
    args, _ = parser.parse_known_args()  # bench/run.py passes its own arguments through
    if args.serve:
        serve(args.serve)
        return
    kinds = [kind for kind in SERVERS if kind in args.servers.split(",")]
    if args.baseline:
        kinds.append("baseline")
    postfix = debs.unpacked("postfix")
    runs: dict[tuple[str, int], list[float]] = {(k, s): [] for k in kinds for s in LOADS}
    with ExitStack() as stack:
        servers = {
            kind: stack.enter_context(server(kind, postfix, args.baseline)) for kind in kinds
        }
        # interleaved, so that a busy neighbour on the machine slows every server alike, and
        # in a rotating order, so that none always runs first (measured: the same code ran
        # 0.89x as fast as itself at -s 1 when it always went first)
        order = list(servers.items())
        for repeat in range(args.repeat):
            for sessions in LOADS:
                shift = repeat % len(order)
                for kind, (port, _) in order[shift:] + order[:shift]:
                    runs[kind, sessions].append(measure(postfix, port, sessions))
    for kind, (_, counted) in servers.items():
        expected = MESSAGES * len(LOADS) * args.repeat
        if counted and counted[0] != expected:
            raise SystemExit(f"{kind} accepted {counted[0]} messages, expected {expected}")
    rates = {key: statistics.median(values) for key, values in runs.items()}
    for sessions in LOADS:
        print(f"smtp -s {sessions:<2} " + _figures(rates, kinds, sessions))


def _figures(rates: dict[tuple[str, int], float], kinds: list[str], sessions: int) -> str:
    """msg/s of each server, then ours/aiosmtpd, ours/smtp-sink and ours/baseline (when both
    ran)."""
    words = [f"{kind} {rates[kind, sessions]:6.0f}" for kind in kinds]
    line = "  ".join(words) + " msg/s"
    if "ours" in kinds:
        for peer in ("aiosmtpd", "smtp-sink", "baseline"):
            if peer in kinds:
                line += f"  ours/{peer} {rates['ours', sessions] / rates[peer, sessions]:4.2f}x"
    return line


if __name__ == "__main__":
    main()
