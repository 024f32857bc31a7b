"""The query log: what the fake DNS was asked and what it did about it.

Rules this module keeps:

* One entry per query received, written before the reply is sent: once a client holds
  its answer, the entry is there to read (no waiting in tests).
* ``rcode`` is None when nothing was sent back (a ``drop`` fault, an undecodable packet).
* ``fault`` names the scenario's fault rule that applied; ``internal`` is the one-line
  summary of our own fault (the server answered SERVFAIL): never the client's doing.
* Appending is thread-safe and cheap (the server calls it on every query); reading
  returns a snapshot.
* Optionally each entry is also written as one JSON line to a file, and handed to a
  callback (the CLI prints it).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from harness.errors import HarnessError


class QueryEntry(NamedTuple):
    time: float
    client: tuple[str, int]
    transport: str  # "udp" or "tcp"
    qname: str
    qtype: str
    rcode: str | None
    answers: tuple[str, ...]
    fault: str | None
    internal: str | None = None

    def line(self) -> str:
        """One human line: time, client, transport, question, outcome."""
        stamp = time.strftime("%H:%M:%S", time.localtime(self.time))
        outcome = self.rcode or "no reply"
        parts = [f"{stamp}.{int(self.time % 1 * 1000):03d}", f"{self.client[0]}#{self.client[1]}"]
        parts += [self.transport, self.qname or "-", self.qtype or "-", outcome]
        if self.answers:
            parts.append("[" + "; ".join(self.answers) + "]")
        if self.fault:
            parts.append(f"fault={self.fault}")
        if self.internal:
            parts.append(f"internal fault: {self.internal}")
        return " ".join(parts)

    def to_json(self) -> str:
        return json.dumps(self._asdict())


class QueryLog:
    """Thread-safe list of ``QueryEntry``; ``maxlen`` keeps only the newest entries."""

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        maxlen: int | None = None,
        on_entry: Callable[[QueryEntry], None] | None = None,
    ) -> None:
        self._entries: deque[QueryEntry] = deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self._on_entry = on_entry
        self._file = None
        if path is not None:
            try:
                self._file = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
            except OSError as exc:
                raise HarnessError(f"{path}: cannot open query log: {exc.strerror}") from None

    def append(self, entry: QueryEntry) -> None:
        with self._lock:
            self._entries.append(entry)
            if self._file is not None:
                self._file.write(entry.to_json() + "\n")
        if self._on_entry is not None:
            self._on_entry(entry)

    def entries(self) -> list[QueryEntry]:
        with self._lock:
            return list(self._entries)

    def find(self, qname: str | None = None, qtype: str | None = None) -> list[QueryEntry]:
        """Entries for ``qname`` (case-insensitive, trailing dot optional) and ``qtype``."""
        want = qname.rstrip(".").lower() if qname is not None else None
        return [
            e
            for e in self.entries()
            if (want is None or e.qname.rstrip(".").lower() == want)
            and (qtype is None or e.qtype == qtype.upper())
        ]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __len__(self) -> int:
        return len(self._entries)
