"""``smtp-harness dns ...``: run the fake DNS server by hand.

Rules this module keeps:

* Bad input (zone directory, ``--listen``, ``--fault``, ``--log``) is a one-line
  ``HarnessError``; the top-level CLI prints it and exits 2.
* ``serve`` prints one line per query on stdout and runs until SIGINT or SIGTERM, then
  closes its sockets and exits 0.
"""

from __future__ import annotations

import ipaddress
import signal
import threading

import click

from harness.dns.faults import FaultRule, FaultRules
from harness.dns.querylog import QueryLog
from harness.dns.server import DnsServer
from harness.dns.zones import ZoneSet
from harness.errors import HarnessError


@click.group()
def dns() -> None:
    """The fake DNS server."""


@dns.command()
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
    """Serve the *.zone files in ZONEDIR until interrupted."""
    zones = ZoneSet.from_dir(zonedir)
    addresses = [parse_listen(text) for text in listen]
    faults = FaultRules(FaultRule.parse(spec) for spec in fault)
    log = QueryLog(log_path, maxlen=1000, on_entry=lambda entry: click.echo(entry.line()))
    try:
        with DnsServer(zones, faults, log) as server:
            server.start(addresses)
            for host, port in server.addresses:
                click.echo(f"serving {len(zones)} zones on {_show(host, port)} (udp+tcp)")
            _wait_for_signal()
    finally:
        log.close()


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


def _wait_for_signal() -> None:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
