"""``smtp-harness dns ...``: run the fake DNS server by hand.

Rules this module keeps:

* Bad input (zone directory, ``--listen``, ``--fault``, ``--log``) is a one-line
  ``HarnessError``; the top-level CLI prints it and exits 2.
* ``serve`` prints one line per query on stdout and runs until Ctrl-C (SIGINT: the normal
  way to stop it, exit 0) or SIGTERM (exit 143), then closes its sockets.  Both are
  caught from the command's first line, so one during start-up ends it right after
  start-up, without a traceback.
* Our own faults are errors: if the server recorded any (``internal_faults``), each is
  one line on stderr and the exit code is 3, whatever stopped it.
"""

from __future__ import annotations

import ipaddress
import signal
import sys
import threading

import click

from harness.dns.faults import FaultRule, FaultRules
from harness.dns.querylog import QueryLog
from harness.dns.server import DnsServer
from harness.dns.zones import ZoneSet
from harness.errors import HarnessError
from harness.verdict import UNTIL_CTRL_C_HELP, ExitCode


@click.group()
def dns() -> None:
    """The fake DNS server."""


@dns.command(epilog=UNTIL_CTRL_C_HELP)
@click.argument("zonedir")
@click.option(
    "--listen",
    multiple=True,
    required=True,
    metavar="ADDR:PORT",
    help="Address to serve on over UDP and TCP (repeatable; IPv6 as [::1]:53).",
)
@click.option(
    "--fault",
    multiple=True,
    metavar="NAME/TYPE=ACTION[:ARG]",
    help="Fault rule, e.g. receiver.com/MX=servfail or receiver.com/*=delay:300.",
)
@click.option("--log", "log_path", metavar="FILE", help="Also append each query as JSON.")
def serve(
    zonedir: str, listen: tuple[str, ...], fault: tuple[str, ...], log_path: str | None
) -> None:
    """Serve the *.zone files in ZONEDIR until Ctrl-C (exit 0) or SIGTERM (exit 143)."""
    with _StopSignal() as stop:
        zones = ZoneSet.from_dir(zonedir)
        addresses = [parse_listen(text) for text in listen]
        faults = FaultRules(FaultRule.parse(spec) for spec in fault)
        log = QueryLog(log_path, maxlen=1000, on_entry=lambda entry: click.echo(entry.line()))
        try:
            with DnsServer(zones, faults, log) as server:
                server.start(addresses)
                for host, port in server.addresses:
                    click.echo(f"serving {len(zones)} zones on {_show(host, port)} (udp+tcp)")
                signum = stop.wait()
        finally:
            log.close()
    for internal in server.internal_faults:
        click.echo(f"smtp-harness: internal fault: {internal.line()}", err=True)
    if server.internal_faults:
        sys.exit(ExitCode.HARNESS_ERROR)
    sys.exit(ExitCode.OK if signum == signal.SIGINT else ExitCode.SIGTERM)


def parse_listen(text: str) -> tuple[str, int]:
    """``127.0.0.1:53`` or ``[::1]:53`` as (address, port)."""
    host, _, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    try:
        address = ipaddress.ip_address(host)
        if (address.version == 6 and not bracketed) or not port.isdigit() or int(port) > 65535:
            raise ValueError
    except ValueError:
        raise HarnessError(
            f"--listen {text!r}: expected ADDR:PORT, e.g. 127.0.0.1:53 or [::1]:53"
        ) from None
    return host, int(port)


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _StopSignal:
    """Within the ``with``, SIGINT and SIGTERM are noted; ``wait`` returns the first one."""

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> _StopSignal:
        self._event = threading.Event()
        self._signum = signal.SIGINT
        self._old = {signum: signal.signal(signum, self._note) for signum in self._SIGNALS}
        return self

    def __exit__(self, *_: object) -> None:
        for signum, handler in self._old.items():
            signal.signal(signum, handler)

    def _note(self, signum: int, _frame: object) -> None:
        if not self._event.is_set():
            self._signum = signum
        self._event.set()

    def wait(self) -> int:
        self._event.wait()
        return self._signum
