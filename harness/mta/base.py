"""What every real-MTA adapter offers: one file per MTA implements ``MtaAdapter``.

Rules kept here:
- An adapter runs one private instance of its MTA for one run: configuration, spool, queue,
  mailboxes and logs all live under the run's folder (``self.folder``), never in /etc or
  /var of the machine.  Binaries come from Debian packages unpacked into the project's cache
  (``harness.mta.debs``), never installed.
- Daemons run inside the right lab host through ``lab.popen`` / ``lab.run`` (``ip netns
  exec``: the host's resolv.conf, a private mount namespace), so the lab's teardown ends
  them even after a crash; ``stop()`` ends them cleanly first.
- Names come from the scenario, never from the kernel hostname (shared by every namespace).
- An adapter that cannot run here raises ``MtaUnavailable`` with the reason: never a skip.
- Every adapter keeps its MTA's own log at ``self.log_path`` (an artefact of the run).

Roles: as *sender* the MTA on mail.sender.com gets luke's message through ``submit`` and
delivers it by MX; as *receiver* the MTA on mail.receiver.com listens on port 25 of its
host, has the local users it is given, and ``mailbox(user)`` reads back what it delivered.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from harness.errors import HarnessError
from harness.lab import Lab

ROLES = ("sender", "receiver")


class MtaUnavailable(HarnessError):
    """This MTA cannot run on this machine (package missing, unpack failed, ...)."""


@dataclass
class Site:
    """Where and as whom an MTA runs in this run."""

    lab: Lab
    host: str  # the lab host (network namespace) it runs in
    folder: Path  # its private tree: config, spool, mailboxes, log
    hostname: str  # e.g. mail.sender.com (HELO name / greeting name)
    domain: str  # e.g. sender.com (its own mail domain)
    users: tuple[str, ...] = ()  # receiver role: the local mailboxes (c3po, r2d2)
    port: int = 25
    extra: dict[str, str] = field(default_factory=dict)  # adapter-specific knobs

    @property
    def address(self) -> str:
        return self.lab.host(self.host).ipv4

    @property
    def dns(self) -> str:
        return self.lab.topology.dns_server.ipv4


class MtaAdapter(ABC):
    """One real MTA.  Life cycle: ``prepare`` (once per machine), ``start``, use, ``stop``."""

    name: ClassVar[str]  # "postfix", "exim", "opensmtpd", "sendmail"
    packages: ClassVar[tuple[str, ...]]  # Debian packages unpacked for it

    def __init__(self, site: Site, role: str) -> None:
        if role not in ROLES:
            raise HarnessError(f"{self.name}: role {role!r}: expected one of {ROLES}")
        self.site = site
        self.role = role
        self.folder = site.folder
        self.log_path = site.folder / f"{self.name}.log"

    @classmethod
    @abstractmethod
    def prepare(cls) -> None:
        """Unpack the packages and create the system users the binaries expect; idempotent.
        Raise ``MtaUnavailable`` with the reason when it cannot run here."""

    @classmethod
    @abstractmethod
    def version(cls) -> str:
        """The MTA's version, read from the unpacked package (e.g. "3.7.11")."""

    @abstractmethod
    def start(self) -> None:
        """Write a fresh configuration under ``folder`` and start the MTA in ``site.host``;
        as receiver, return only once it accepts connections on ``site.port``."""

    @abstractmethod
    def stop(self) -> None:
        """Stop every process this instance started; safe to call twice."""

    def submit(self, mail_from: str, recipients: list[str], message: bytes) -> None:
        """Sender role: hand the message to the MTA for delivery by MX."""
        raise HarnessError(f"{self.name}: submit() is for the sender role")

    def idle(self) -> bool:
        """Sender role: True once nothing is left in the active queue (delivered, bounced,
        or deferred until a later retry)."""
        raise HarnessError(f"{self.name}: idle() is for the sender role")

    def mailbox(self, user: str) -> list[bytes]:
        """Receiver role: the messages delivered to local ``user``, oldest first, as stored."""
        raise HarnessError(f"{self.name}: mailbox() is for the receiver role")

    def as_sent(self, stored: bytes) -> bytes:
        """The message as its author submitted it, from a copy this MTA relayed (sender
        role: as a peer stored it) or stored (receiver role: from ``mailbox``): without the
        trace header fields the MTA prepends, in wire form (CRLF line ends).  The runner
        compares this with the scenario's message byte for byte.  Default: no change."""
        return stored

    def __enter__(self) -> MtaAdapter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def adapters() -> dict[str, type[MtaAdapter]]:
    """Every adapter, by name (imported lazily: each pulls its own module)."""
    import importlib

    found = {}
    for name in ("postfix", "exim", "opensmtpd", "sendmail"):
        try:
            module = importlib.import_module(f"harness.mta.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"harness.mta.{name}":
                raise  # the adapter exists but is broken: say so
            continue
        found[name] = module.Adapter
    return found
