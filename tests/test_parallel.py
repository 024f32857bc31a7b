"""Worker processes by flow (harness.ladder.parallel): the output of N processes is the output
of one, byte for byte; a worker's end is said, and nothing is left behind.

The captures are real files read by real worker processes; the many-session capture is the
bench's generator (interleaved sessions that end by linger at other sessions' packets, and
some still open at the end of the file), written to the test's folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from array import array
from pathlib import Path

import pytest
from conftest import CLI, ROOT

from harness.ladder import parallel
from harness.ladder.packets import TCP, Packet
from harness.ladder.parallel import Told, Totals, merge, owned_by, owner
from harness.verdict import ExitCode

sys.path.insert(0, str(ROOT / "bench"))
import bench_pcap

CAPTURES = [  # a TLS session (key log in the file), DNS, damage and warnings, many flows
    ROOT / "pcaps" / "seed.pcap",
    *sorted((ROOT / "tests" / "crafted").rglob("*.pcap*")),
    *sorted((ROOT / "tests" / "data" / "zeek").glob("*.pcap*")),
]
COMMANDS = {
    "ladder-jsonl": ["ladder", "--format", "jsonl"],
    "check": ["check"],
    "check-jsonl": ["check", "--format", "jsonl"],
}


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20,000 packets of 8 interleaved SMTP sessions at a time (about 830 sessions)."""
    path = tmp_path_factory.mktemp("many") / "many.pcap"
    bench_pcap.write_frames(path, bench_pcap.frames(20_000))
    return path


def _run(args: list[str], capture: Path, jobs: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args, "--jobs", str(jobs), str(capture)], capture_output=True, timeout=600
    )


def _same(args: list[str], capture: Path, jobs: int) -> bytes:
    """The output of *jobs* processes, once it is known to be one process's."""
    one, several = _run(args, capture, 1), _run(args, capture, jobs)
    assert several.stderr == one.stderr
    assert several.returncode == one.returncode
    assert several.stdout == one.stdout
    return several.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_many_sessions_in_three_processes_are_one_processs_output(many: Path, command: str) -> None:
    out = _same(COMMANDS[command], many, 3)
    summary = json.loads(out.splitlines()[-1]) if command != "check" else None
    if summary is not None:  # they read every session, not none
        syns = sum(frame[47] == 0x02 for frame in bench_pcap.frames(20_000))  # TCP flags
        assert summary["sessions"] == syns > 800


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.name)
def test_each_test_capture_in_two_processes_is_one_processs_output(capture: Path) -> None:
    for command in ("ladder-jsonl", "check"):
        _same(COMMANDS[command], capture, 2)


def _packet(src: bytes, dst: bytes, sport: int, dport: int) -> Packet:
    return Packet(1, 0, src, dst, TCP, sport, dport, 0, 0, 0, 0, b"")


def test_a_flow_is_one_workers_both_ways() -> None:
    a, b = bytes([192, 0, 2, 7]), bytes([198, 51, 100, 25])
    for workers in (2, 3, 5):
        for port in range(1024, 1100):
            assert owner(_packet(a, b, port, 25), workers) == owner(
                _packet(b, a, 25, port), workers
            )


def test_a_worker_s_kept_owners_are_the_hash_s_answers_past_their_limit() -> None:
    """``owned_by`` keeps each direction's answer, at most ``OWNERS_KEPT``, then forgets them:
    over three times that many flows, asked twice each way, it answers as ``owner`` does."""
    server = bytes([198, 51, 100, 25])
    keeps = [owned_by(me, 2) for me in (0, 1)]
    for _ in range(2):
        for i in range(3 * parallel.OWNERS_KEPT):
            client, port = bytes([192, 0, 2, i % 250]), 1024 + i
            want = owner(_packet(client, server, port, 25), 2)
            for me, keep in enumerate(keeps):
                assert keep(client, server, port, 25) == (want == me)
                assert keep(server, client, 25, port) == (want == me)


def test_flows_whose_address_and_port_step_together_still_spread() -> None:
    """The bench's clients step address and port by one each: a sum of the two keeps its
    parity, so an unmixed modulo gave every flow to one worker (found on the bench)."""
    server = bytes([198, 51, 100, 25])
    shares = [
        owner(_packet(bytes([192, 0, 2, 1 + i]), server, 1024 + i, 25), 2) for i in range(200)
    ]
    assert 70 < shares.count(0) < 130


def test_the_merge_numbers_as_one_process_does() -> None:
    """Keys (packet << 40 | first packet of a connection the clock finished, or OWN): one
    process made worker 1's step of packet 3 between worker 0's steps of packets 2 and 5;
    its connection (first packet 3) second; its session ended first."""
    own = (1 << 40) - 1
    w0 = Told(array("q", [2 << 40 | own, 2 << 40 | own, 5 << 40 | own]), array("q", [2]), [])
    w0.ends.append((5 << 40 | own, True))
    w1 = Told(array("q", [3 << 40 | own, 5 << 40 | 3]), array("q", [3]), [(5 << 40 | 3, True)])
    totals = Totals(steps=10, conns=4, sessions=1, flows=2)
    numbers, order = merge([w0, w1], totals)
    assert list(numbers[0].steps) == [11, 12, 15] and list(numbers[1].steps) == [13, 14]
    assert list(numbers[0].conns) == [5] and list(numbers[1].conns) == [6]
    assert list(numbers[1].sessions) == [2] and list(numbers[0].sessions) == [3]
    assert order == [(1, 0), (0, 0)]
    assert totals == Totals(steps=15, conns=6, sessions=3, flows=4)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200,000 packets: a read in two processes that lasts seconds."""
    path = tmp_path_factory.mktemp("big") / "big.pcap"
    bench_pcap.write_frames(path, bench_pcap.frames(200_000))
    return path


def _with_worker(
    capture: Path, args: list[str], stop: bool = False
) -> tuple[subprocess.Popen, int]:
    """A command on *capture* in two processes, and its worker's pid once it reads; with
    *stop*, the worker is stopped (SIGSTOP) as soon as it is seen, so it cannot have
    finished its share however slow the machine, while the command reads on to the end of
    its lead and waits for it."""
    proc = subprocess.Popen(
        [*CLI, *args, "--jobs", "2", str(capture)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # a group of its own, as a terminal's job
    )
    for _ in range(600):
        workers = _children(proc.pid)
        if workers:
            if stop:
                os.kill(workers[0], signal.SIGSTOP)
            time.sleep(0.5)  # it is reading (or stopped while the command reads)
            return proc, workers[0]
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("no worker started")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("stopped", [False, True], ids=["running", "while-the-command-waits"])
def test_a_worker_killed_is_our_fault_said_in_one_line(big: Path, stopped: bool) -> None:
    """The worker, stopped as soon as it is seen (it cannot have finished its share, however
    loaded the machine), is killed: while the command reads on, or while the command is
    stopped too, so that it is gone before the command looks (the command may be sending it
    its job or numbers then, into a broken pipe, or hear of its end first).  One line, our
    fault, either way."""
    proc, worker = _with_worker(big, ["check"], stop=True)
    if stopped:
        os.kill(proc.pid, signal.SIGSTOP)
    os.kill(worker, signal.SIGKILL)
    if stopped:
        for _ in range(100):
            if _gone(worker) or Path(f"/proc/{worker}/stat").read_text().split()[2] == "Z":
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGCONT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == ExitCode.HARNESS_ERROR
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "worker 1 ended before its output" in lines[0]
    assert "Traceback" not in stderr.decode()


@pytest.mark.parametrize(
    ("sig", "group"),
    [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGINT, True)],
    ids=["sigterm", "sigint", "ctrl-c-to-the-group"],
)
def test_a_signal_ends_the_command_and_its_workers(
    big: Path, sig: signal.Signals, group: bool
) -> None:
    """Ctrl-C reaches the workers too (the terminal signals the process group): they leave
    it to the command, which ends them and exits with the signal's code, not as our fault."""
    proc, worker = _with_worker(big, ["ladder", "--format", "jsonl"])
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=300)
    expected = ExitCode.SIGTERM if sig == signal.SIGTERM else ExitCode.SIGINT
    assert proc.returncode == expected, stderr
    assert b"Traceback" not in stderr
    for _ in range(100):
        if _gone(worker):
            break
        time.sleep(0.05)
    assert _gone(worker)


def test_a_pipe_gives_the_messages_in_order_then_eof_at_the_close() -> None:
    """``harness.ladder.pipe``: what one end sends the other receives, in order and equal; a
    closed end, or one closed in the middle of a message, is ``EOFError`` to the other."""
    import pickle
    import socket
    import threading

    from harness.ladder.pipe import Pipe

    ours, theirs = (Pipe(s) for s in socket.socketpair())
    messages = [("told", 1, {"a": [1, 2]}), b"x" * 3_000_000, None]  # beyond a socket buffer
    sender = threading.Thread(target=lambda: [ours.send(m) for m in messages], daemon=True)
    sender.start()  # a send waits while the socket's buffer is full: the reader drains it
    assert [theirs.recv() for _ in messages] == messages
    sender.join(timeout=60)
    assert not sender.is_alive()
    ours.close()
    with pytest.raises(EOFError):
        theirs.recv()
    theirs.close()
    left, right = socket.socketpair()
    data = pickle.dumps("a whole message")
    left.sendall(len(data).to_bytes(8, "big") + data[:5])  # cut after five octets
    left.close()
    with pytest.raises(EOFError):
        Pipe(right).recv()
