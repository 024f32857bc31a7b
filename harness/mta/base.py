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
- Knobs: ``Site.extra`` holds only the keys of ``KNOBS``, each with one of its values
  (checked when the ``Site`` is made); every adapter honours every knob in its own
  configuration language, and documents how.  Defaults: ``vrfy = "check"`` (the MTA
  answers VRFY as it does by default), ``family = "ipv4"`` (IPv4 only: deterministic
  addresses on the wire in both roles).

Roles: as *sender* the MTA on mail.sender.com gets luke's message through ``submit`` and
delivers it by MX; its bounces (RFC 3464 DSNs) are delivered locally, to luke's mailbox.
As *receiver* the MTA on mail.receiver.com listens on port 25 of its host and has the
local users it is given.  ``mailbox(user)`` and ``idle()`` work in both roles.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from harness.errors import HarnessError, InternalError
from harness.lab import Lab

ROLES = ("sender", "receiver")
# knob -> its values, the default first.  vrfy (receiver): "disabled" is the MTA's own way
# of turning VRFY off.  family (both roles): "ipv4" only, or "any" (the receiver listens on
# the host's IPv6 address too; the sender uses AAAA records as the MTA does by default).
KNOBS: dict[str, tuple[str, ...]] = {"vrfy": ("check", "disabled"), "family": ("ipv4", "any")}
DELIVERY_TIMEOUT_S = 30.0  # default: the longest a delivery attempt may take to settle


class MtaUnavailable(HarnessError):
    """This MTA cannot run on this machine (package missing, unpack failed, ...)."""


class QueueUnreadable(InternalError):
    """The MTA's queue or log could not be read: the outcome cannot be known (an error)."""


@dataclass(frozen=True)
class QueuedRecipient:
    """A recipient still in the MTA's queue, as the MTA itself lists it."""

    recipient: str
    queue_id: str
    reason: str  # the MTA's own words: its queue listing's or log's reason for the delay
    status_code: str | None = None  # an RFC 3463 enhanced status code in that reason


@dataclass
class Site:
    """Where and as whom an MTA runs in this run."""

    lab: Lab
    host: str  # the lab host (network namespace) it runs in
    folder: Path  # its private tree: config, spool, mailboxes, log
    hostname: str  # e.g. mail.sender.com (HELO name / greeting name)
    domain: str  # e.g. sender.com (its own mail domain)
    users: tuple[str, ...] = ()  # local mailboxes: c3po, r2d2 (receiver); luke (sender)
    port: int = 25
    extra: dict[str, str] = field(default_factory=dict)  # KNOBS only (rules above)

    def __post_init__(self) -> None:
        for knob, value in self.extra.items():
            if knob not in KNOBS:
                raise HarnessError(f"site knob {knob!r}: expected one of {sorted(KNOBS)}")
            if value not in KNOBS[knob]:
                raise HarnessError(f"site knob {knob} = {value!r}: expected one of {KNOBS[knob]}")

    def knob(self, name: str) -> str:
        """The value of knob ``name`` (its default when not given)."""
        return self.extra.get(name, KNOBS[name][0])

    @property
    def address(self) -> str:
        return self.lab.host(self.host).ipv4

    @property
    def addresses(self) -> list[str]:
        """The host's addresses the MTA may use: IPv4 only, or IPv4 and IPv6 (``family``)."""
        host = self.lab.host(self.host)
        return host.addresses if self.knob("family") == "any" else [host.ipv4]

    @property
    def dns(self) -> str:
        return self.lab.topology.dns_server.ipv4


class MtaAdapter(ABC):
    """One real MTA.  Life cycle: ``prepare`` (once per machine), ``start``, use, ``stop``."""

    name: ClassVar[str]  # "postfix", "exim", "opensmtpd", "sendmail"
    packages: ClassVar[tuple[str, ...]]  # Debian packages unpacked for it
    # the longest a delivery attempt may take until ``idle()`` (its resolver's retries)
    delivery_timeout_s: ClassVar[float] = DELIVERY_TIMEOUT_S
    # the longest the MTA may take, once ``idle()``, to put a bounce in the sender's mailbox
    bounce_delay_s: ClassVar[float] = 0.0

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

    @classmethod
    def accepts(cls, role: str, hostname: str, domain: str, users: tuple[str, ...]) -> None:
        """Raise ``HarnessError`` naming the value when this MTA's configuration language
        cannot carry one of these scenario names safely (called at scenario load, before any
        lab exists).  Default: every name that passed the scenario's grammar is fine."""
        return None

    def queue(self) -> list[QueuedRecipient]:
        """Both roles: what the MTA's queue holds now, per recipient, with the reason the
        MTA gives; read before ``stop()``.  Raise ``QueueUnreadable`` if it cannot be read."""
        raise QueueUnreadable(f"{self.name}: reading the queue is not implemented")

    @abstractmethod
    def idle(self) -> bool:
        """Both roles: True once nothing is left in the active queue (delivered, bounced,
        or deferred until a later retry).  As sender, a bounce generated meanwhile is in
        the queue too (unless ``bounce_delay_s`` says it may come later)."""

    @abstractmethod
    def mailbox(self, user: str) -> list[bytes]:
        """Both roles: the messages delivered to local ``user``, oldest first, as stored.
        As receiver: what a peer sent to ``user``; as sender: the bounces (DSNs) for mail
        that ``user`` submitted."""

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
