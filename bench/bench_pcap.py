"""Benchmark: our pcap reader + decoder + TCP reassembly against dpkt, tshark and scapy;
then the product path, ``smtp-harness ladder --format jsonl`` and ``smtp-harness check``,
against tshark reading the same SMTP fields.

Rules this script keeps:

- The input is generated, never captured: interleaved SMTP sessions (handshake, commands,
  replies, a message, QUIT, FIN both ways) written as raw bytes under .cache/bench/ and
  reused on later runs.  The sessions file holds short sessions (greeting, EHLO, QUIT),
  ``MANY_OPEN`` of them open at once.
- Each reader runs in a child process of its own, so its peak RSS (ru_maxrss, from wait4)
  is its own; a reader's figure is the best of REPEATS runs.
- The first table ("reassembly") is the reader, decoder and TCP reassembly alone: no SMTP,
  no ladder, no output.  Ours does more than its peers there (decode every layer,
  reassemble, emit events); dpkt and scapy only get each packet's TCP flags and payload,
  tshark prints them.
- The product path is what a user runs: both commands as processes, their output to
  /dev/null, timed by wall clock with start-up included, best of REPEATS rounds (each round
  runs tshark and both commands in turn), against ``tshark -r FILE -Y smtp
  -T fields -e tcp.stream -e smtp.req.command -e smtp.req.parameter -e
  smtp.response.code -e smtp.rsp.parameter`` (the same information) on the same file.  The
  ratio is tshark's best time over ours (above 1: we are faster), the rounds' own ratios'
  range beside it (the spread the machine's drift leaves); peak RSS is the highest of the
  rounds, summed over our processes: each one's VmHWM, polled while it runs (with no
  workers, the command's ru_maxrss).  Our package is byte-compiled first, as an install
  leaves it.
- scapy is timed on the first 10,000 packets (it is ~20x slower) and its rate scaled.
  Python readers are timed inside the child (no interpreter start-up); tshark by wall clock,
  its ~0.3 s start-up included, as a user would run it.

- ``--quick`` (or ``BENCH_QUICK=1`` in the environment) is the figure to work by: the product
  path alone on the --packets file, one round, in a minute or two.
  ``--product``: the product path alone on all three files, REPEATS rounds each (the
  targets' figures).

Usage: .venv/bin/python bench/bench_pcap.py [--packets 100000] [--big 1000000]
       [--sessions 100000] [--quick | --product]
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "bench"
REPEATS = 3
SCAPY_PACKETS = 10_000
CONCURRENT = 8  # sessions interleaved packet by packet
MANY_OPEN = 1000  # in the sessions file
TSHARK_SMTP = ["-Y", "smtp", "-T", "fields", "-e", "tcp.stream", "-e", "smtp.req.command"]
TSHARK_SMTP += ["-e", "smtp.req.parameter", "-e", "smtp.response.code", "-e", "smtp.rsp.parameter"]
PRODUCT = {  # name -> argv before the file
    "tshark": ["tshark", "-r"],
    "ladder --format jsonl": [str(ROOT / ".venv" / "bin" / "smtp-harness"), "ladder"],
    "check": [str(ROOT / ".venv" / "bin" / "smtp-harness"), "check"],
}
STEP_NS = 100_000  # capture time between packets

sys.path.insert(0, str(ROOT))

from harness.capture.pcapfile import PcapWriter  # noqa: E402

_BODY = b"".join(
    b"Line %04d of a message that is long enough to fill segments.\r\n" % i for i in range(60)
)
_SESSION = [  # (from client?, flags, payload); flags as in the TCP header
    (True, 0x02, b""),
    (False, 0x12, b""),
    (True, 0x10, b""),
    (False, 0x18, b"220 mx.example.net ESMTP ready\r\n"),
    (True, 0x10, b""),
    (True, 0x18, b"EHLO client.example.org\r\n"),
    (False, 0x18, b"250-mx.example.net\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 8BITMIME\r\n"),
    (True, 0x18, b"MAIL FROM:<alice@example.org>\r\n"),
    (False, 0x18, b"250 2.1.0 Ok\r\n"),
    (True, 0x18, b"RCPT TO:<bob@example.net>\r\n"),
    (False, 0x18, b"250 2.1.5 Ok\r\n"),
    (True, 0x18, b"DATA\r\n"),
    (False, 0x18, b"354 End data with <CR><LF>.<CR><LF>\r\n"),
    (True, 0x10, _BODY[:1400]),
    (True, 0x10, _BODY[1400:2800]),
    (True, 0x18, _BODY[2800:] + b".\r\n"),
    (False, 0x10, b""),
    (False, 0x18, b"250 2.0.0 Ok: queued as 4BC2D1E3F\r\n"),
    (True, 0x18, b"QUIT\r\n"),
    (False, 0x18, b"221 2.0.0 Bye\r\n"),
    (False, 0x11, b""),
    (True, 0x10, b""),
    (True, 0x11, b""),
    (False, 0x10, b""),
]
_SHORT = [*_SESSION[:7], *_SESSION[18:]]  # greeting, EHLO, QUIT: 12 packets


def frames(count: int, session_script: list = _SESSION, concurrent: int = CONCURRENT):
    """Yield *count* Ethernet frames of interleaved SMTP sessions."""
    eth = bytes.fromhex("020000000002020000000001") + b"\x08\x00"
    server = bytes([198, 51, 100, 25])
    sessions: list[list] = []
    started = 0
    while count:
        while len(sessions) < concurrent:
            client = bytes([192, 0, 2, 1 + started % 200])
            sport = 1024 + started % 60000
            sessions.append([0, client, sport, 1000 + started * 7919, 5000 + started * 104729])
            started += 1
        for session in list(sessions):
            step, client, sport, cseq, sseq = session
            from_client, flags, payload = session_script[step]
            if from_client:
                src, dst, ports, seq, ack = client, server, (sport, 25), cseq, sseq
            else:
                src, dst, ports, seq, ack = server, client, (25, sport), sseq, cseq
            seq, ack = seq & 0xFFFFFFFF, ack & 0xFFFFFFFF
            tcp = struct.pack("!HHIIBBHHH", *ports, seq, ack, 0x50, flags, 64240, 0, 0)
            length = 40 + len(payload)
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, length, 0, 0x4000, 64, 6, 0, src, dst)
            yield eth + ip + tcp + payload
            advance = len(payload) + (1 if flags & 0x03 else 0)
            session[3 if from_client else 4] += advance
            session[0] += 1
            if session[0] == len(session_script):
                sessions.remove(session)
            count -= 1
            if not count:
                return


def generate(count: int, sessions: int = 0) -> Path:
    """The path of a cached pcap of *count* packets (or of *sessions* short sessions,
    ``MANY_OPEN`` open at once), written if missing."""
    name = f"smtp-{sessions}-sessions" if sessions else f"smtp-{count}"
    path = CACHE / f"{name}.pcap"
    made = frames(sessions * len(_SHORT), _SHORT, MANY_OPEN) if sessions else frames(count)
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        write_frames(tmp, made)
        tmp.rename(path)
    return path


def write_frames(path: Path, made: Iterable[bytes]) -> None:
    """A pcap of *frames*, STEP_NS apart (the tests' many-session captures use it too)."""
    with open(path, "wb") as f:
        writer = PcapWriter(f)
        for i, frame in enumerate(made):
            writer.write(1_700_000_000_000_000_000 + i * STEP_NS, frame)


# --- the readers, each run in a child: ``bench_pcap.py --run NAME FILE`` prints packets/s


def run_ours(path: str) -> int:
    from harness.capture.pcapfile import read
    from harness.ladder.packets import Decoder
    from harness.ladder.tcpstream import reassemble

    decoder = Decoder()
    data = 0
    for event in reassemble(decoder.decode_all(read(path))):
        if event.kind == "data":
            data += event.length
    assert not decoder.warnings, decoder.warnings
    return data


def run_dpkt(path: str) -> int:
    import dpkt

    data = 0
    with open(path, "rb") as f:
        for _ts, buf in dpkt.pcap.Reader(f):
            segment = dpkt.ethernet.Ethernet(buf).data.data
            _flags, payload = segment.flags, segment.data
            data += len(payload)
    return data


def run_scapy(path: str) -> int:
    from scapy.layers.inet import TCP
    from scapy.utils import PcapReader

    data = 0
    with PcapReader(path) as reader:
        for packet in reader:
            segment = packet[TCP]
            _flags, payload = segment.flags, bytes(segment.payload)
            data += len(payload)
    return data


RUNNERS = {"reassembly": run_ours, "dpkt": run_dpkt, "scapy": run_scapy}


def _child(name: str, path: str) -> None:
    start = time.perf_counter()
    data = RUNNERS[name](path)
    print(json.dumps({"seconds": time.perf_counter() - start, "bytes": data}))


def _measure(name: str, path: Path, packets: int) -> tuple[float, int]:
    """(best packets/s, peak RSS in KiB) of *name* reading *path*, each run a child."""
    best, rss = 0.0, 0
    for _ in range(REPEATS):
        if name == "tshark":
            argv = ["tshark", "-r", str(path), "-T", "fields", "-e", "tcp.flags"]
            argv += ["-e", "tcp.payload"]
            out = subprocess.DEVNULL
        else:
            argv = [sys.executable, __file__, "--run", name, str(path)]
            out = subprocess.PIPE
        seconds, peak, stdout = _child_run(argv, out)
        if stdout:
            seconds = json.loads(stdout)["seconds"]  # time inside the reader, not start-up
        best, rss = max(best, packets / seconds), max(rss, peak)
    return best, rss


def _child_run(argv: list[str], out: int) -> tuple[float, int, bytes]:
    """(wall seconds, peak RSS in KiB summed over the child and its workers, stdout) of one
    child; a failure ends the bench.  ``smtp-harness check`` exits 1 when a check failed:
    that is a result, not a failure."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdout=out, stderr=subprocess.DEVNULL)
    workers = _Workers(child.pid)
    stdout = child.stdout.read() if child.stdout else b""
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        raise SystemExit(f"{' '.join(argv)} failed (status {status})")
    peaks = workers.stop()
    # wait4's ru_maxrss is the largest of the child and its workers: alone, it is exact
    rss = sum(peaks.values()) if len(peaks) > 1 else max(usage.ru_maxrss, *peaks.values(), 0)
    return seconds, rss, stdout


class _Workers(threading.Thread):
    """The peak RSS (VmHWM, KiB) of *pid* and of each process under it, read every 20 ms
    while they run (the last 20 ms of a process's growth may be missed)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peaks, self.done = pid, {}, threading.Event()
        self.start()

    def run(self) -> None:
        while not self.done.wait(0.02):
            for pid in [self.pid, *_descendants(self.pid)]:
                self.peaks[pid] = max(self.peaks.get(pid, 0), _peak_kib(pid))

    def stop(self) -> dict[int, int]:
        self.done.set()
        self.join()
        return {pid: peak for pid, peak in self.peaks.items() if peak}


def _descendants(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    found = [int(c) for c in children]
    return found + [d for c in found for d in _descendants(c)]


def _peak_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    line = next((li for li in status.splitlines() if li.startswith("VmHWM:")), "VmHWM: 0 kB")
    return int(line.split()[1])


def product(path: Path, rounds: int) -> dict[str, list[tuple[float, int]]]:
    """name -> [(wall seconds, peak RSS in KiB)] of each ``PRODUCT`` command on *path*, one
    per round; each round runs every command once, in turn, so a drift of the machine's
    speed (it moves by a quarter within minutes here) falls on all of them alike.  The
    package is byte-compiled first, as an install leaves it: with PYTHONDONTWRITEBYTECODE
    set and no __pycache__, each start would compile it again."""
    compileall = [sys.executable, "-m", "compileall", "-q", str(ROOT / "harness")]
    subprocess.run(compileall, check=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": ""})
    found: dict[str, list[tuple[float, int]]] = {name: [] for name in PRODUCT}
    for _ in range(rounds):
        for name, argv in PRODUCT.items():
            extra = TSHARK_SMTP if name == "tshark" else name.split()[1:]
            seconds, rss, _ = _child_run([*argv, str(path), *extra], subprocess.DEVNULL)
            found[name].append((seconds, rss))
    return found


def _print_product(path: Path, figures: dict[str, list[tuple[float, int]]]) -> None:
    """Each command's best time and highest peak RSS; the ratio is of the best times, with
    the range of the rounds' own ratios beside it when there were several."""
    rounds = len(figures["tshark"])
    print(f"product path on {path.name} (wall clock, start-up included, best of {rounds}):")
    tshark = [seconds for seconds, _ in figures["tshark"]]
    for name, runs in figures.items():
        seconds, rss = min(s for s, _ in runs), max(r for _, r in runs)
        line = f"  {name:22} {seconds:7.1f} s   peak RSS {rss / 1024:6.1f} MiB"
        if name != "tshark":
            line += f"   tshark/ours {min(tshark) / seconds:5.2f}x"
            if rounds > 1:
                ratios = [t / s for t, (s, _) in zip(tshark, runs, strict=True)]
                line += f" (rounds {min(ratios):.2f}x-{max(ratios):.2f}x)"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=100_000)
    parser.add_argument("--big", type=int, default=1_000_000, help="size for the RSS check")
    parser.add_argument("--sessions", type=int, default=100_000, help="short sessions file")
    parser.add_argument(
        "--quick",
        action="store_true",
        default=bool(os.environ.get("BENCH_QUICK")),
        help="the product path on the --packets file only, one run each",
    )
    parser.add_argument("--product", action="store_true", help="the product path alone")
    parser.add_argument("--run", nargs=2, metavar=("READER", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        return _child(*args.run)
    began = time.perf_counter()
    if args.quick or args.product:
        files = [generate(args.packets)]
        if args.product:
            files += [generate(args.big), generate(0, sessions=args.sessions)]
        for path in files:
            _print_product(path, product(path, 1 if args.quick else REPEATS))
        return None
    small, sample, big = generate(args.packets), generate(SCAPY_PACKETS), generate(args.big)
    many = generate(0, sessions=args.sessions)
    print(f"input: {small.name}, {sample.name}, {big.name}, {many.name} in {CACHE}")
    print("reassembly (reader + decoder + TCP reassembly: no SMTP, no output):")
    rates, rss = {}, {}
    for name in ("reassembly", "dpkt", "tshark"):
        rates[name], rss[name] = _measure(name, small, args.packets)
    rates["scapy"], rss["scapy"] = _measure("scapy", sample, SCAPY_PACKETS)
    for name, rate in rates.items():
        print(f"  {name:10} {rate:10,.0f} packets/s   peak RSS {rss[name] / 1024:6.1f} MiB")
    for peer in ("dpkt", "tshark", "scapy"):
        print(f"  reassembly/{peer:7} {rates['reassembly'] / rates[peer]:6.2f}x")
    big_rate, big_rss = _measure("reassembly", big, args.big)
    print(f"  reassembly peak RSS at {args.packets:,} packets: {rss['reassembly'] / 1024:.1f} MiB")
    print(f"  reassembly peak RSS at {args.big:,} packets: {big_rss / 1024:.1f} MiB")
    print(f"  ({big_rate:,.0f} packets/s)")
    for path in (small, big, many):
        _print_product(path, product(path, REPEATS))
    print(f"total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
