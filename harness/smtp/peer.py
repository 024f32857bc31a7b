"""What the scripted receiver and sender share: injected I/O and their JSON-lines logs.

Rules kept here:

1. Peers never call ``socket.socket`` or a resolver directly: a ``SocketFactory`` and an
   async ``Resolve`` are injected, so the same peer runs on loopback in a test and inside
   a lab namespace with the lab's DNS (``harness.dns.stub.aquery`` fits ``Resolve`` once
   its server address is bound with ``functools.partial``).
2. A log entry is a flat JSON object with the seconds since the log started (``t``, to the
   microsecond) and a ``kind``; entries are kept in memory and, when a path is given,
   appended to it one line each.  The file is flushed after each entry or, with
   ``per_turn=True`` inside an event loop, once per loop turn in which entries were added
   (one flush for the batch of entries a wakeup produces): either way everything is on
   disk by the time the peer waits.
3. TLS (RFC 3207) is the stdlib's ``ssl`` under ``loop.start_tls``: a server context serves
   the run's chain and key; a client context verifies against the run's CA and the MX
   host's name (``verify``) or takes any certificate (``CERT_NONE``, no name check: the
   other policies, RFC 7435 §3).  Both write their secrets in the NSS key log format to
   the run's key log, made mode 0600 before the ssl module appends to it (it would make
   it world-readable).  ``tls_summary`` is what the logs say of a finished handshake.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

from dnslib import DNSRecord

SocketFactory = Callable[[int, int], socket.socket]
Resolve = Callable[[str, str], Awaitable[DNSRecord]]


def family_of(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class EventLog:
    """An ordered list of JSON-able entries, mirrored to a JSON-lines file if asked."""

    def __init__(self, path: Path | None = None, *, per_turn: bool = False) -> None:
        self.entries: list[dict[str, Any]] = []
        self._start = time.monotonic()
        self._file: TextIO | None = path.open("a", encoding="utf-8") if path else None
        self._per_turn = per_turn
        self._flush_due = False  # a flush is scheduled for the end of this loop turn

    def add(self, kind: str, **fields: Any) -> dict[str, Any]:
        return self._keep({"t": self._seconds(), "kind": kind, **fields})

    def for_session(self, session: int) -> Callable[..., dict[str, Any]]:
        """``add`` with ``session=session`` in every entry: what a session logs, ~15 entries
        a message, each built as one dict (a ``partial`` would build two)."""

        def add(kind: str, **fields: Any) -> dict[str, Any]:
            return self._keep({"t": self._seconds(), "kind": kind, "session": session, **fields})

        return add

    def _seconds(self) -> float:
        return int((time.monotonic() - self._start) * 1e6) / 1e6  # round() costs 3x more

    def _keep(self, entry: dict[str, Any]) -> dict[str, Any]:
        self.entries.append(entry)
        if self._file:
            self._file.write(json.dumps(entry, default=str) + "\n")
            self._flush_soon()
        return entry

    def _flush_soon(self) -> None:
        if self._flush_due:
            return
        try:
            loop = asyncio.get_running_loop() if self._per_turn else None
        except RuntimeError:  # not inside an event loop: nothing would run the callback
            loop = None
        if loop is None:
            self.flush()
        else:
            self._flush_due = True
            loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_due = False
        if self._file:
            self._file.flush()

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None


def server_context(chain: Path, key: Path, keylog: Path | None) -> ssl.SSLContext:
    """A TLS server serving ``chain`` with ``key`` (rule 3)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain, key)
    return _logging_keys(context, keylog)


def client_context(ca: Path | None, keylog: Path | None) -> ssl.SSLContext:
    """A TLS client: verifying against ``ca`` and the server's name, or (``ca`` None)
    taking any certificate (rule 3)."""
    if ca is not None:
        return _logging_keys(ssl.create_default_context(cafile=ca), keylog)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # not the machine's trust store
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return _logging_keys(context, keylog)


def _logging_keys(context: ssl.SSLContext, keylog: Path | None) -> ssl.SSLContext:
    if keylog is not None:
        os.close(os.open(keylog, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        os.chmod(keylog, 0o600)
        context.keylog_filename = str(keylog)
    return context


def tls_summary(transport: asyncio.BaseTransport) -> dict[str, Any]:
    """The TLS version and cipher a handshake gave, and (on the client's side) the name it
    sent (SNI)."""
    tls = transport.get_extra_info("ssl_object")
    return {"version": tls.version(), "cipher": tls.cipher()[0], "sni": tls.server_hostname}
