"""Worker processes by flow: one capture read by several processes, each following its share
of the connections, merged into exactly the output one process writes.

Rules this module keeps:

- A flow is never split.  A packet belongs to worker ``owner(packet, workers)``, a function
  of its 4-tuple that is the same in both directions (addresses XOR-ed, ports added, then
  mixed; worker 0, which also merges and writes, takes a slightly smaller share), so
  every packet of a TCP connection, and of a UDP DNS exchange, goes to one worker.  Each
  worker reads the whole file and follows only its own flows; another's TCP packet is not
  decoded (``Decoder.decode_all`` hands ``owned_by`` its raw fields first, and gives the
  record back) and only ticks the clock (``Reassembler.tick``), so a worker finishes its
  connections (linger, idle) at the packet one process would.  A frame the fast path
  cannot place (VLAN, IPv6, tunnels, fragments, damage) is decoded whole first, as before.
- Numbers are one process's.  One process numbers steps, connections and sessions in the
  order it makes them, and that order is a key: the number of the packet being read when a
  step was made, then, for a step of a connection the clock finished (closed for linger,
  idle, the end of the capture), the number of that connection's first packet (one process
  finishes those in that order, before the packet's own steps), else ``OWN`` (the packet's
  own connection, after them).  Keys of two workers never tie (a packet and a connection
  belong to one worker), and a worker makes its steps in key order.  So a merge of the
  workers' keys gives each step the number one process gives it; a connection is numbered
  by its first packet, a session by the key it ended at.
- By batch of BATCH packets: at the end of each, a worker tells the coordinator (worker 0,
  the process the command runs in) the keys of the steps, connections and flow ends it
  made in it; once every worker has told it a batch, the coordinator merges the batch and
  sends each worker its numbers.  A worker renumbers a flow once it has ended and its batch
  is numbered, renders it (``Render``: ladder lines, a session's judgement) and sends the
  text; the coordinator writes a batch's texts in the merged order.  A worker runs at most
  LEAD batches ahead of its numbers, so it holds its open flows and a few batches of ended
  ones, never the file.
- Warnings: the file's (the reader's, the decoder's) are counted by the coordinator alone;
  every worker's own (reassembly, SMTP, TLS) are added, with the connection numbers in
  their text renumbered.  The summary lists them sorted, so it is the same for any number
  of workers.
- A worker's fault ends the command as the same fault of one process does: bad input (a
  ``HarnessError``, e.g. an unreadable file) is bad input, a bug is an ``InternalError``
  naming it.  A worker that ends without its output is our fault.  Workers are fresh
  interpreters (``python -m harness.ladder.parallel FD``), each on one end of a socket
  pair: they import only the dissector (and the judges for ``check``), and end with the
  command (killed by pid if they have not ended when it does).
"""

from __future__ import annotations

import contextlib
import gc
import os
import queue
import re
import socket
import subprocess
import sys
import threading
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, NoReturn

from harness.capture.pcapfile import Record
from harness.errors import HarnessError, InternalError, InternalFault
from harness.ladder.model import Coverage, Step
from harness.ladder.packets import UDP, Decoder, Keep, Packet
from harness.ladder.pipe import Pipe
from harness.ladder.sessions import SESSION_KINDS, Flow, Splitter
from harness.ladder.tcpstream import Event, Reassembler
from harness.render.flows import Render, Rendered, flow_renderer

BATCH = 2048  # packets between two merges
LEAD = 2  # batches a worker may run ahead of its numbers
OWN = (1 << 40) - 1  # the key's second part for a packet's own connection
MIN_BYTES = 4 << 20  # a smaller file is read by one process: a worker's start costs more
# a worker's share of the flows, in parts: the coordinator also merges and writes every
# worker's output (7% more CPU than its worker with equal shares, on the bench's
# many-session file), so it follows 19 parts of flows to each other worker's 20
SHARE, COORDINATOR_PARTS = 20, 19
_LESS = SHARE - COORDINATOR_PARTS
OWNERS_KEPT = 4096  # flow directions whose owner a worker keeps (under 1 MiB)
_GOLDEN, _MASK64 = 0x9E3779B97F4A7C15, (1 << 64) - 1
_LABEL = re.compile("\x00([0-9]+)\x00")
_int = int.from_bytes


def owner(packet: Packet, workers: int) -> int:
    """The worker that follows *packet*'s flow: the same for both directions, and mixed
    (Fibonacci hashing), so flows that differ in step in address and port still spread."""
    return flow_owner(packet.src, packet.dst, packet.sport, packet.dport, workers)


def flow_owner(src: bytes, dst: bytes, sport: int, dport: int, workers: int) -> int:
    """``owner`` of the flow of these packed addresses and ports: the hash's place among
    SHARE parts per worker, worker 0 (the coordinator) having COORDINATOR_PARTS of them."""
    mixed = ((_int(src, "big") ^ _int(dst, "big")) + sport + dport) * _GOLDEN & _MASK64
    place = (mixed * (workers * SHARE - _LESS)) >> 64  # the top bits, the best mixed
    return 0 if place < COORDINATOR_PARTS else 1 + (place - COORDINATOR_PARTS) // SHARE


def owned_by(me: int, workers: int) -> Keep:
    """Whether worker *me* follows the flow of (src, dst, sport, dport): ``Decoder.decode_all``
    hands it the fields of each TCP frame before decoding the rest.  Each direction's answer
    is kept (a third of the hash's cost, for every frame of the file), at most OWNERS_KEPT
    of them, then forgotten."""
    known: dict[tuple[bytes, bytes, int, int], bool] = {}

    def keep(src: bytes, dst: bytes, sport: int, dport: int) -> bool:
        key = (src, dst, sport, dport)
        mine = known.get(key)
        if mine is None:
            if len(known) >= OWNERS_KEPT:
                known.clear()
            mine = known[key] = flow_owner(src, dst, sport, dport, workers) == me
        return mine

    return keep


def jobs_for(path: str, asked: int | None) -> int:
    """How many processes read *path*: as asked, else one per core (two at most: a third
    reads the file once more for little) for a file big enough to pay for their start."""
    if asked is not None:
        return asked
    try:
        big = os.stat(path).st_size >= MIN_BYTES and os.path.isfile(path)
    except OSError:
        return 1
    return min(2, len(os.sched_getaffinity(0))) if big else 1


@contextlib.contextmanager
def few_collections() -> Iterator[None]:
    """The cyclic GC set for a stream of short-lived objects, as it was after: what start-up
    made is frozen (never traversed again), young objects are collected 14x less often, old
    ones 5x and 10x (7% of a stream's time; a connection's objects hold no cycles)."""
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


# --- the merge: pure, the same in every worker count -------------------------------------


@dataclass(frozen=True)
class Told:
    """What one worker made in one batch, by key, in the order it made them."""

    steps: array  # of step keys
    conns: array  # of connections' first packet numbers
    ends: list[tuple[int, bool]]  # (key, is a session) of each flow that ended


@dataclass(frozen=True)
class Numbers:
    """One worker's numbers for one batch: its steps', its connections', its sessions'."""

    steps: array
    conns: array
    sessions: array


@dataclass
class Totals:
    """What the merges have numbered so far."""

    steps: int = 0
    conns: int = 0
    sessions: int = 0
    flows: int = 0


def _ranks(lists: list[array], base: int) -> list[array]:
    """For each list, the rank (from base + 1) of its items among all lists' items; equal
    items keep their lists' order (they come from one list: keys never tie across)."""
    combined = [item for items in lists for item in items]
    ranks = array("q", bytes(8 * len(combined)))
    for rank, at in enumerate(sorted(range(len(combined)), key=combined.__getitem__), base + 1):
        ranks[at] = rank
    out, start = [], 0
    for items in lists:
        out.append(ranks[start : start + len(items)])
        start += len(items)
    return out


def merge(told: list[Told], totals: Totals) -> tuple[list[Numbers], list[tuple[int, int]]]:
    """Every worker's numbers for one batch, and the order its flows are written in:
    (worker, its flow's place among its flows of the batch); ``totals`` move on."""
    steps = _ranks([t.steps for t in told], totals.steps)
    conns = _ranks([t.conns for t in told], totals.conns)
    ends = [
        (key, w, j, session) for w, t in enumerate(told) for j, (key, session) in enumerate(t.ends)
    ]
    ends.sort()
    sessions = [array("q") for _ in told]
    for _key, w, _j, session in ends:
        if session:
            totals.sessions += 1
            sessions[w].append(totals.sessions)
    totals.steps += sum(len(t.steps) for t in told)
    totals.conns += sum(len(t.conns) for t in told)
    totals.flows += len(ends)
    numbers = [Numbers(*n) for n in zip(steps, conns, sessions, strict=True)]
    return numbers, [(w, j) for _key, w, j, _session in ends]


# --- a worker: its share of the flows, renumbered ----------------------------------------


class Share:
    """One worker's part in a dissector's pass: which packets it follows, the key of each
    step it makes, its batches.  ``Dissector.share`` calls it; ``Worker`` drives it."""

    def __init__(self, worker: Worker, me: int, workers: int) -> None:
        self.worker, self.me, self.workers = worker, me, workers
        self.clock = 0  # the key of the steps being made
        self.keys = array("q")  # of the steps made in this batch
        self.born = array("q")  # each connection's first packet, by its (local) id
        self.last = 0  # the number of the last packet read
        self.batch_end = BATCH  # the last packet number of this batch
        self._d: Splitter = worker.splitter
        self._reassembler: Reassembler | None = None

    def file_warnings(self, warnings: Counter[str], reassembler: Reassembler) -> Counter[str]:
        """Where the reader and decoder count theirs: the coordinator's warnings only."""
        reassembler.born = self.born
        return warnings if self.me == 0 else Counter()

    def label(self, conn: int) -> str:
        """A connection named in a warning, renumbered at the end (``Worker.warnings``)."""
        return f"\x00{conn}\x00"

    def stepped(self) -> None:
        self.keys.append(self.clock)

    def steps(
        self, decoder: Decoder, records: Iterator[Record], reassembler: Reassembler
    ) -> Iterator[Step]:
        """The steps the records make in this worker: its own flows', and those of its
        connections a TCP packet's time finishes (any flow's: another's is not decoded)."""
        tick, feed, d = reassembler.tick, reassembler.feed, self._d
        workers, me = self.workers, self.me
        for packet in decoder.decode_all(records, owned_by(me, workers)):
            number = packet[0]
            while number > self.batch_end:
                self.worker.batch_done()
                self.batch_end += BATCH
            self.last = number
            if packet.__class__ is not Record and packet[4] == UDP:
                if flow_owner(packet[2], packet[3], packet[5], packet[6], workers) == me:
                    self.clock = number << 40 | OWN
                    yield from d._udp(packet)
                continue
            if packet[1] >= reassembler.sweep_at:
                for event in tick(packet[1]):
                    yield from self._finished(number, event)
            if packet.__class__ is not Record:  # a record: another worker's TCP packet
                self.clock = number << 40 | OWN
                for event in feed(packet):
                    yield from d._tcp(event)

    def flushing(self, event: Event) -> None:
        """An event of the end of the capture: keyed as if a packet after the last one
        finished its connection."""
        self.clock = (self.last + 1) << 40 | self.born[event.conn.id - 1]

    def _finished(self, number: int, event: Event) -> Iterator[Step]:
        self.clock = number << 40 | self.born[event.conn.id - 1]
        yield from self._d._tcp(event)


class Worker:
    """A dissector's pass over its share of the flows, each flow renumbered and rendered
    once its batch is numbered; ``told`` and ``numbers`` are the coordinator's or a pipe."""

    def __init__(self, splitter: Splitter, render: Render, me: int, workers: int) -> None:
        self.splitter, self.render = splitter, render
        self.share = splitter.share = Share(self, me, workers)
        self.batch = 0  # the batch being read
        self._ended: list[Flow] = []  # flows ended in this batch
        self._ends: list[tuple[int, bool]] = []
        self._conns_told = 0
        self._waiting: dict[int, list[Flow]] = {}  # by batch: ended, not yet numbered
        self._step_map = array("q")  # local step index - self._step_base -> its number
        self._step_base = 1
        self._conn_map = array("q")  # local connection id - 1 -> its number

    # what a worker does with a batch and where its numbers come from: by its kind
    def told(self, batch: int, told: Told) -> None:
        raise NotImplementedError

    def numbers(self, block: bool) -> tuple[int, Numbers] | None:
        raise NotImplementedError

    def rendered(self, batch: int, texts: list[Rendered]) -> None:
        raise NotImplementedError

    def run(self, path: str) -> None:
        with few_collections():
            for flow in self.splitter.flows(path):
                self._ended.append(flow)
                self._ends.append((self.share.clock, flow.kind in SESSION_KINDS))
        self.batch_done()
        while self._waiting:
            self._number(block=True)

    def batch_done(self) -> None:
        """Tell the batch just read; render what the numbers that came allow."""
        share = self.share
        conns = share.born[self._conns_told :]
        self._conns_told = len(share.born)
        told = Told(share.keys, conns, self._ends)
        self._waiting[self.batch] = self._ended
        share.keys, self._ended, self._ends = array("q"), [], []
        self.told(self.batch, told)
        self.batch += 1
        while self._number(block=len(self._waiting) > LEAD):
            pass

    def _number(self, block: bool) -> bool:
        """Apply the next batch's numbers, if they came (waiting for them if *block*)."""
        got = self.numbers(block)
        if got is None:
            return False
        batch, numbers = got
        self._step_map.extend(numbers.steps)
        self._conn_map.extend(numbers.conns)
        sessions = iter(numbers.sessions)
        flows = self._waiting.pop(batch)
        texts = [self.render(self._renumbered(flow, sessions)) for flow in flows]
        self.rendered(batch, texts)
        self._trim()
        return True

    def _renumbered(self, flow: Flow, sessions: Iterator[int]) -> Flow:
        """*flow* with the numbers one process gives it.  Its steps are still ours alone:
        renumbered in place (a frozen step is otherwise rebuilt field by field)."""
        step_map, base = self._step_map, self._step_base
        conn = None if flow.conn is None else self._conn_map[flow.conn - 1]
        for step in flow.steps:
            object.__setattr__(step, "index", step_map[step.index - base])
            if step.conn is not None:
                object.__setattr__(step, "conn", conn)
        if flow.coverage:  # a connection's flow: its one coverage
            (old,) = flow.coverage.values()
            unacked = tuple(step_map[i - base] for i in old.unacked)
            flow.coverage = {conn: Coverage(conn, old.units, unacked)}  # type: ignore[dict-item]
        flow.conn = conn
        flow.session = next(sessions) if flow.kind in SESSION_KINDS else None
        return flow

    def _trim(self) -> None:
        """Forget the numbers of steps no flow still holds."""
        held = [self.splitter.oldest_held()]
        held += [f.steps[0].index for flows in self._waiting.values() for f in flows if f.steps]
        held += [f.steps[0].index for f in self._ended if f.steps]
        oldest = min(
            (i for i in held if i is not None), default=self._step_base + len(self._step_map)
        )
        drop = oldest - self._step_base
        if drop > 0:
            del self._step_map[:drop]
            self._step_base = oldest

    def warnings(self) -> Counter[str]:
        """This worker's warnings, with connections named by their numbers."""
        conns = self._conn_map
        out: Counter[str] = Counter()
        for text, n in self.splitter.warnings.items():
            out[_LABEL.sub(lambda m: str(conns[int(m[1]) - 1]), text)] += n
        return out


# --- workers in processes ----------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """What a worker process is given: the capture, its place, how to read and render."""

    path: str
    me: int
    workers: int
    splitter: dict[str, Any]  # Splitter's keyword arguments
    hosts: dict[str, str]
    mode: str  # "ladder" or "check"
    fmt: str  # check's format: "text" or "jsonl"
    source: str = ""

    def renderer(self, hosts: dict[str, str]) -> Render:
        """How this job renders a flow (``flow_renderer``), hosts named by *hosts*."""
        return flow_renderer(self.mode, self.fmt, self.source, hosts)


def _splitter(job: Job) -> Splitter:
    return Splitter(job.hosts, **job.splitter)


class _Piped(Worker):
    """A worker in a process of its own: told and numbered over its end of a socket pair;
    a thread takes the numbers as they come, so the coordinator's sends never wait."""

    def __init__(self, job: Job, pipe: Pipe) -> None:
        splitter = _splitter(job)
        super().__init__(splitter, job.renderer(splitter.hosts), job.me, job.workers)
        self.pipe = pipe
        self.inbox: queue.Queue = queue.Queue()
        threading.Thread(target=self._receive, daemon=True).start()

    def _receive(self) -> None:
        try:
            while True:
                self.inbox.put(self.pipe.recv())
        except (EOFError, OSError):
            self.inbox.put(None)

    def told(self, batch: int, told: Told) -> None:
        self.pipe.send(("told", batch, told))

    def numbers(self, block: bool) -> tuple[int, Numbers] | None:
        try:
            got = self.inbox.get(block=block)
        except queue.Empty:
            return None
        if got is None:
            raise SystemExit(0)  # the coordinator has gone: nothing to do it for
        return got

    def rendered(self, batch: int, texts: list[Rendered]) -> None:
        self.pipe.send(("rendered", batch, texts))


def _child(fd: int) -> None:
    """A worker process's life: its job, its pass, its warnings; a fault said, not shown."""
    pipe = Pipe.from_fd(fd)
    try:
        job: Job = pipe.recv()
        worker = _Piped(job, pipe)
        worker.run(job.path)
        pipe.send(("end", worker.warnings()))
    except HarnessError as exc:
        pipe.send(("input", str(exc)))
    except (KeyboardInterrupt, SystemExit, BrokenPipeError, EOFError):
        pass
    except Exception as exc:  # a bug of ours: the coordinator names it
        pipe.send(("fault", InternalFault.from_exception("worker", exc).summary))


class Coordinator(Worker):
    """Worker 0, in the command's process: merges every batch, hands the numbers out, and
    writes the texts in order (``out``).  ``run`` returns the worst exit code rendered."""

    def __init__(self, job: Job, splitter: Splitter, out: Any, progress: Any = None) -> None:
        super().__init__(splitter, job.renderer(splitter.hosts), 0, job.workers)
        self.job, self.out, self.progress = job, out, progress
        self.totals = Totals()
        self.code, self.failed = 0, 0
        self._procs: list[subprocess.Popen] = []
        self._pipes: list[Pipe] = []
        self._inbox: queue.Queue = queue.Queue()
        self._told: dict[int, dict[int, Told]] = {}  # batch -> worker -> what it told
        self._merged = 0  # the next batch to merge
        self._order: dict[int, list[tuple[int, int]]] = {}  # batch -> merged flow order
        self._texts: dict[int, dict[int, list[Rendered]]] = {}
        self._mine: list[tuple[int, Numbers]] = []  # numbers for worker 0, not yet taken
        self._written = 0  # the next batch to write
        self._ended_workers: list[Counter[str]] = []

    def __enter__(self) -> Coordinator:
        for me in range(1, self.job.workers):
            self._start(me)
        return self

    def __exit__(self, *exc: object) -> None:
        for pipe in self._pipes:
            pipe.close()
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    def _start(self, me: int) -> None:
        ours, theirs = socket.socketpair()
        fd = theirs.fileno()
        command = [sys.executable, "-m", "harness.ladder.parallel", str(fd)]
        # a process group of its own: Ctrl-C (to the terminal's group) is the command's to
        # take, which ends its workers on its way out
        proc = subprocess.Popen(
            command,
            pass_fds=[fd],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            process_group=0,
        )
        theirs.close()
        self._procs.append(proc)
        pipe = Pipe(ours)
        self._pipes.append(pipe)
        try:
            pipe.send(replace(self.job, me=me))
        except OSError:  # it ended before it was told its job
            self._lost(me)
        threading.Thread(target=self._receive, args=(me, pipe), daemon=True).start()

    def _receive(self, me: int, pipe: Pipe) -> None:
        try:
            while True:
                message = pipe.recv()
                self._inbox.put((me, message))
                if message[0] != "told" and message[0] != "rendered":
                    return
        except Exception:  # EOF, or what the pipe gave cannot be read: it has gone
            self._inbox.put((me, ("gone",)))

    # --- worker 0's side
    def told(self, batch: int, told: Told) -> None:
        """Its own batch told; what the others sent meanwhile taken, never waited for (it
        runs ahead as a worker does, waiting only in ``numbers``)."""
        self._take(0, ("told", batch, told))
        while not self._inbox.empty():
            self._take(*self._inbox.get())

    def numbers(self, block: bool) -> tuple[int, Numbers] | None:
        while not self._mine:
            if not block:
                return None
            self._take(*self._inbox.get())
        return self._mine.pop(0)

    def rendered(self, batch: int, texts: list[Rendered]) -> None:
        self._take(0, ("rendered", batch, texts))

    def run(self, path: str) -> int:  # type: ignore[override]
        super().run(path)
        while self._written < self.batch or len(self._ended_workers) < self.job.workers - 1:
            self._take(*self._inbox.get())
        return self.code

    def warnings_all(self) -> dict[str, int]:
        """Every worker's warnings, the file's once; sorted."""
        total = self.warnings()
        for counter in self._ended_workers:
            total.update(counter)
        return dict(sorted(total.items()))

    # --- the merge
    def _take(self, me: int, message: tuple) -> None:
        kind = message[0]
        if kind == "told":
            _, batch, told = message
            self._told.setdefault(batch, {})[me] = told
            while len(self._told.get(self._merged, ())) == self.job.workers:
                self._merge(self._merged)
                self._merged += 1
        elif kind == "rendered":
            self._texts.setdefault(message[1], {})[me] = message[2]
            self._write()
        elif kind == "end":
            self._ended_workers.append(message[1])
        elif kind == "input":
            raise HarnessError(message[1])
        elif kind == "fault":
            raise InternalError(f"harness fault on {self.job.path}: worker {me}: {message[1]}")
        else:
            self._lost(me)

    def _lost(self, me: int) -> NoReturn:
        """Worker *me* ended before it said it was done (its pipe closed): our fault."""
        code = self._procs[me - 1].wait()
        raise InternalError(f"worker {me} ended before its output (exit code {code})")

    def _merge(self, batch: int) -> None:
        told = self._told.pop(batch)
        numbers, order = merge([told[w] for w in range(self.job.workers)], self.totals)
        self._order[batch] = order
        self._mine.append((batch, numbers[0]))
        for me, pipe in enumerate(self._pipes, 1):
            try:
                pipe.send((batch, numbers[me]))
            except OSError:  # it ended, and its end of the pipe with it, before we were told
                self._lost(me)
        if self.progress is not None:
            self.progress.advance(
                self.share.last - self.progress.done, sessions=self.totals.sessions
            )

    def _write(self) -> None:
        """Write each batch whose texts have all come, in the merged order."""
        while len(self._texts.get(self._written, ())) == self.job.workers:
            texts = self._texts.pop(self._written)
            for w, j in self._order.pop(self._written):
                text, code, failed = texts[w][j]
                if text:
                    self.out.write(text)
                self.code, self.failed = max(self.code, code), self.failed + failed
            self._written += 1


if __name__ == "__main__":  # a worker: the module by its name, so its classes unpickle
    from harness.ladder.parallel import _child as child

    child(int(sys.argv[1]))
