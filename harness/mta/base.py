"""What every real-MTA adapter offers: one file per MTA implements ``MtaAdapter``.

Rules kept here:
- An adapter runs one private instance of its MTA for one run: configuration, spool, queue,
  mailboxes and logs all live under the run's folder (``self.folder``), never in /etc or
  /var of the machine.  Binaries come from Debian packages unpacked into the project's cache
  (``harness.mta.debs``), never installed; ``packages`` names them, the MTA's own first
  (``package_version``), and ``debs()`` lists each .deb used, with its sha256.
- Daemons run inside the right lab host through ``lab.popen`` / ``lab.run`` (``ip netns
  exec``: the host's resolv.conf, a private mount namespace), so the lab's teardown ends
  them even after a crash; ``stop()`` ends them cleanly first (``harness.mta.process``:
  readiness read from the kernel, never probed; stopping by pid).
- Names come from the scenario, never from the kernel hostname (shared by every namespace).
  They are untrusted: ``write_config`` refuses what the MTA's configuration language cannot
  carry (``carriers``, the same refusal ``accepts`` gives at scenario load) and quotes the
  rest for that language (``harness.mta.quoting``).
- An adapter that cannot run here raises ``MtaUnavailable`` with the reason: never a skip.
- Every adapter keeps its MTA's own log at ``self.log_path`` (an artefact of the run).
- Knobs: ``Site.extra`` holds only the keys of ``KNOBS``, each with one of its values
  (checked when the ``Site`` is made); every adapter honours every knob in its own
  configuration language, and documents how.  Defaults: ``vrfy = "check"`` (the MTA
  answers VRFY as it does by default), ``family = "ipv4"`` (IPv4 only: deterministic
  addresses on the wire in both roles), ``timeouts = "default"`` (the MTA's own; "short",
  as sender, writes ``TIMEOUT_OPTIONS`` with the seconds of ``SHORT_TIMEOUTS_S``, numbers
  of ours, through ``quoting.duration``: no scenario value reaches them).
- What an MTA adds to a message is data (``trace_fields`` per role, in order;
  ``optional_trace_fields``; ``mailbox_line_end``): ``as_sent`` removes exactly those
  leading fields, and nothing else.
- A run waiting on the MTA says what it waits for: ``waiting(what)`` prints one line on
  stderr ("waiting for exim (receiver): to listen on 192.0.2.25:25") once the wait has
  lasted ``NOTICE_AFTER_S``, and nothing for a wait shorter than that; above a progress
  bar drawn there, never inside its line (``harness.progress.notice``).
- ``queue()`` reads what the MTA's queue holds, in the MTA's own words, before ``stop()``;
  a queue it cannot read is ``QueueUnreadable`` (naming the command, its exit status and
  its last line), never an empty list.
- TLS (knobs ``tls``/``certificate`` as receiver, ``starttls`` as sender): every adapter maps
  each value onto its MTA's own policy, written in its ``TLS_POLICY`` table (value -> the
  MTA's words, what ``tls_policy()`` records for run.json) and its docstring.  A value the
  MTA cannot express is refused at scenario load (``accepts``, one line, with the reason):
  never a different policy in silence.  The MTA reads its own copies of the run's
  credentials (``tls_files``: ``folder/tls``, 0711, the key 0600, owned by the user the MTA
  reads them as; the CA certificate is public, 0644), never the run's ``tls`` folder.

Roles: as *sender* the MTA on mail.sender.com gets luke's message through ``submit`` and
delivers it by MX; its bounces (RFC 3464 DSNs) are delivered locally, to luke's mailbox.
As *receiver* the MTA on mail.receiver.com listens on port 25 of its host and has the
local users it is given.  ``mailbox(user)``, ``idle()`` and ``queue()`` work in both roles.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from harness import message, progress
from harness.errors import HarnessError, InternalError, Unsupported
from harness.lab import Lab
from harness.mta import debs, process, quoting
from harness.mta.debs import Deb
from harness.tls.pki import CertVariant, LabPki, ServerCredentials

ROLES = ("sender", "receiver")
# knob -> its values, the default first.  vrfy (receiver): "disabled" is the MTA's own way
# of turning VRFY off.  family (both roles): "ipv4" only, or "any" (the receiver listens on
# the host's IPv6 address too; the sender uses AAAA records as the MTA does by default).
# tls (receiver): "offer" advertises STARTTLS (RFC 3207) with the run's certificate for its
# hostname, broken as "certificate" says (harness.tls.pki.CertVariant).  starttls (sender):
# the sender's policy - "never" (no TLS), "opportunistic" (TLS when offered, else plain:
# RFC 7435), "required" (TLS or defer, any certificate), "verify" (TLS with a certificate
# that chains to the run's CA and names the MX host, else defer).  timeouts (sender role):
# "short" makes its client give up as ``SHORT_TIMEOUTS_S`` says, where the MTA has a knob
# for it (``TIMEOUT_OPTIONS``), so a check of a silent peer fits a run.
KNOBS: dict[str, tuple[str, ...]] = {
    "vrfy": ("check", "disabled"),
    "family": ("ipv4", "any"),
    "tls": ("off", "offer"),
    "certificate": tuple(CertVariant),
    "starttls": ("never", "opportunistic", "required", "verify"),
    "timeouts": ("default", "short"),
}
# what -> seconds: connecting (a SYN never answered), and sending the message (a zero window)
# or waiting for the reply to its final "."
SHORT_TIMEOUTS_S = {"connect": 5, "data": 8}
DELIVERY_TIMEOUT_S = 30.0  # default: the longest a delivery attempt may take to settle
NOTICE_AFTER_S = 2.0  # a wait on the MTA longer than this is announced


class MtaUnavailable(HarnessError):
    """This MTA cannot run on this machine (package missing, unpack failed, ...)."""


class QueueUnreadable(InternalError):
    """The MTA's queue or log could not be read: the outcome cannot be known (an error)."""


class MtaDied(Exception):
    """The MTA's daemon exited during the run, not stopped by us (a crash: its fault, not
    ours); with it went the queue of its private tree, so what it had not delivered is
    lost (``harness.mta.roles``)."""


_STATUS_CODE = re.compile(r"(?<![\d.])[245]\.\d{1,3}\.\d{1,3}(?!\.?\d)")  # RFC 3463 §2


@dataclass(frozen=True)
class QueuedRecipient:
    """A recipient still in the MTA's queue, as the MTA itself lists it."""

    recipient: str
    queue_id: str
    reason: str  # the MTA's own words: its queue listing's or log's reason for the delay
    status_code: str | None = None  # an RFC 3463 enhanced status code in that reason


def unreadable(mta: str, command: str, done: subprocess.CompletedProcess) -> QueueUnreadable:
    """The error for a queue listing that failed: the command, its exit status and its
    last line of complaint (stderr, else stdout)."""
    said = [done.stderr, done.stdout]
    text = next((t if isinstance(t, str) else t.decode(errors="replace") for t in said if t), "")
    lines = [line.strip() for line in text.splitlines() if line.strip()] or ["no message"]
    return QueueUnreadable(f"{mta}: {command} exited {done.returncode}: {lines[-1]}")


def status_code_in(*texts: str) -> str | None:
    """The first RFC 3463 enhanced status code (class 2, 4 or 5) in ``texts``, if any."""
    for text in texts:
        found = _STATUS_CODE.search(text)
        if found:
            return found.group()
    return None


@dataclass(frozen=True)
class TlsFiles:
    """An MTA's own copies of the run's TLS files (``MtaAdapter.tls_files``)."""

    ca: Path  # the run's root: a verifying client's trust anchor
    chain: Path | None = None  # receiver with tls = "offer": the served chain, leaf first
    key: Path | None = None  # its private key, mode 0600


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
    pki: LabPki | None = None  # the run's PKI: set when a tls/starttls knob needs TLS

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
    packages: ClassVar[tuple[str, ...]]  # Debian packages unpacked for it, its own first
    # kind of scenario value ("host name", "domain", "user") -> what its config can carry
    carriers: ClassVar[dict[str, quoting.Carrier]]
    # role -> the header fields it prepends, in order, to what it relays (sender role: as a
    # peer stored it) or stores (receiver role: as ``mailbox`` returns it)
    trace_fields: ClassVar[dict[str, tuple[str, ...]]]
    optional_trace_fields: ClassVar[frozenset[str]] = frozenset()  # those it may leave out
    mailbox_line_end: ClassVar[bytes] = b"\r\n"  # how the copies ``mailbox`` reads end lines
    # the longest a delivery attempt may take until ``idle()`` (its resolver's retries)
    delivery_timeout_s: ClassVar[float] = DELIVERY_TIMEOUT_S
    # the longest the MTA may take, once ``idle()``, to put a bounce in the sender's mailbox
    bounce_delay_s: ClassVar[float] = 0.0
    # a ``SHORT_TIMEOUTS_S`` key -> the MTA's own options for it (none: it has no knob)
    TIMEOUT_OPTIONS: ClassVar[dict[str, tuple[str, ...]]] = {}
    # knob -> value -> the MTA's own words for that TLS policy (rules above)
    TLS_POLICY: ClassVar[dict[str, dict[str, str]]]

    def __init__(self, site: Site, role: str) -> None:
        if role not in ROLES:
            raise HarnessError(f"{self.name}: role {role!r}: expected one of {ROLES}")
        self.site = site
        self.role = role
        self.folder = site.folder.resolve()  # MTAs refuse relative paths; some change dirs
        self.log_path = self.folder / f"{self.name}.log"

    # --- the machine ----------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def prepare(cls) -> None:
        """Unpack the packages and create the system users the binaries expect; idempotent.
        Raise ``MtaUnavailable`` with the reason when it cannot run here."""

    @classmethod
    @abstractmethod
    def version(cls) -> str:
        """The MTA's upstream version, read from the unpacked package (e.g. "3.7.11")."""

    @classmethod
    def package_version(cls) -> str:
        """The exact Debian version of the MTA's own package (e.g. "4.96-15+deb12u11"),
        from its .deb's control data."""
        return debs.deb(cls.packages[0]).version

    @classmethod
    def debs(cls) -> tuple[Deb, ...]:
        """Every .deb this adapter runs from: package, version, file name, sha256."""
        return tuple(debs.deb(package) for package in cls.used_packages())

    @classmethod
    def used_packages(cls) -> tuple[str, ...]:
        """The packages unpacked for it on this machine (default: ``packages``)."""
        return cls.packages

    # --- scenario values --------------------------------------------------------------------
    @classmethod
    def accepts(
        cls,
        role: str,
        hostname: str,
        domain: str,
        users: tuple[str, ...],
        knobs: dict[str, str] | None = None,
        peer_offers_tls: bool = False,
    ) -> None:
        """Raise ``HarnessError`` naming the value when this MTA's configuration language
        cannot carry one of these scenario names safely, or the MTA cannot keep the TLS
        policy its ``knobs`` ask for against a peer that does (or does not) offer STARTTLS
        (called at scenario load, before any lab exists; ``write_config`` refuses the
        same)."""
        named = "HELO name" if role == "sender" else "host name"
        values = [(named, "host name", hostname), ("domain", "domain", domain)]
        values += [("user", "user", user) for user in users]
        for kind, carrier, value in values:
            quoting.require(cls.name, kind, value, cls.carriers[carrier])
        refusal = cls.tls_refusal(role, knobs or {}, peer_offers_tls)
        if refusal:
            raise Unsupported(f"{cls.name}: {refusal}")

    @classmethod
    def tls_refusal(cls, role: str, knobs: dict[str, str], peer_offers_tls: bool) -> str | None:
        """Why this MTA cannot keep the TLS policy of ``knobs`` (None: it can)."""
        return None

    def tls_policy(self) -> dict[str, str]:
        """The TLS policy in force, for run.json: per TLS knob of the role, its value and
        what it became in the MTA's own configuration (``TLS_POLICY``)."""
        site, knobs = self.site, ("tls",) if self.role == "receiver" else ("starttls",)
        policy = {knob: site.knob(knob) for knob in knobs}
        if policy.get("tls") == "offer":
            policy["certificate"] = site.knob("certificate")
        for knob in knobs:
            policy[f"{knob} means"] = self.TLS_POLICY[knob][site.knob(knob)]
        return policy

    @property
    def offers_tls(self) -> bool:
        """As receiver with ``tls = "offer"``: STARTTLS is advertised."""
        return self.role == "receiver" and self.site.knob("tls") == "offer"

    @property
    def starttls(self) -> str:
        """The sender's policy (``never`` as receiver: a receiver sends no mail out)."""
        return self.site.knob("starttls") if self.role == "sender" else "never"

    def tls_files(self, uid: int | None = None, gid: int | None = None) -> TlsFiles | None:
        """Copies of what the MTA needs of the run's PKI under ``folder/tls`` (0711; the
        key 0600, the CA 0644), owned by ``uid``:``gid`` when the MTA reads them as that
        user (or root, when not given; OpenSMTPD takes a CA file only from root): the CA,
        and as receiver offering TLS the chain and key for its host name, broken as the
        ``certificate`` knob says.  None when the knobs ask for no TLS."""
        site = self.site
        if not (self.offers_tls or self.starttls != "never"):
            return None
        if site.pki is None:
            raise InternalError(f"{self.name}: TLS knobs set but the site has no PKI")
        own = self.folder / "tls"
        own.mkdir(mode=0o711, exist_ok=True)
        copies = {"ca": _private_copy(site.pki.ca, own / "ca.pem", uid, gid)}
        copies["ca"].chmod(0o644)  # a certificate: public
        if self.offers_tls:
            creds: ServerCredentials = site.pki.server(site.hostname, site.knob("certificate"))
            copies["chain"] = _private_copy(creds.chain, own / "server.crt", uid, gid)
            copies["key"] = _private_copy(creds.key, own / "server.key", uid, gid)
        if uid is not None:
            os.chown(own, uid, -1 if gid is None else gid)
        return TlsFiles(**copies)

    def write_config(self) -> None:
        """Write this instance's configuration under ``folder``: every scenario value
        quoted for the MTA's language, or refused as ``accepts`` refuses it (the scenario
        loader asked already: this is defence in depth).  ``start()`` calls it."""
        site = self.site
        self.accepts(self.role, site.hostname, site.domain, site.users, site.extra)
        quoting.require_plain(self.name, self.folder)
        self._write_config()

    @abstractmethod
    def _write_config(self) -> None:
        """``write_config`` once the values are known to be carried."""

    @property
    def short_timeouts(self) -> bool:
        """Whether the site asks for ``timeouts = "short"`` (sender role only)."""
        return self.role == "sender" and self.site.knob("timeouts") == "short"

    def timeout_options(self) -> dict[str, str]:
        """Option -> its value (``quoting.duration``) for the knob ``timeouts = "short"`` as
        sender; {} otherwise (the MTA's own defaults)."""
        if not self.short_timeouts:
            return {}
        return {
            option: quoting.duration(SHORT_TIMEOUTS_S[what])
            for what, options in self.TIMEOUT_OPTIONS.items()
            for option in options
        }

    # --- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Write a fresh configuration under ``folder`` and start the MTA in ``site.host``
        (``launch``); as receiver, return only once it accepts connections on
        ``site.port``.  Whatever a failed (or interrupted) start began is stopped again."""
        self.prepare()
        self.write_config()
        try:
            self.launch()
        except BaseException:
            self.stop()
            raise

    @abstractmethod
    def launch(self) -> None:
        """``start`` once the configuration is written: the MTA's processes."""

    @abstractmethod
    def stop(self) -> None:
        """Stop every process this instance started; safe to call twice."""

    def submit(self, mail_from: str, recipients: list[str], message: bytes) -> None:
        """Sender role: hand the message to the MTA for delivery by MX."""
        if self.role != "sender":
            raise HarnessError(f"{self.name}: submit() is for the sender role")
        self._submit(mail_from, recipients, message)

    @abstractmethod
    def _submit(self, mail_from: str, recipients: list[str], message: bytes) -> None:
        """``submit`` as sender."""

    # --- what it did ------------------------------------------------------------------------
    @abstractmethod
    def queue(self) -> list[QueuedRecipient]:
        """Both roles: what the MTA's queue holds now, per recipient, with the reason the
        MTA gives; read before ``stop()``.  Raise ``QueueUnreadable`` if it cannot be read."""

    @abstractmethod
    def idle(self) -> bool:
        """Both roles: True once nothing is left in the active queue (delivered, bounced,
        or deferred until a later retry).  As sender, a bounce generated meanwhile is in
        the queue too (unless ``bounce_delay_s`` says it may come later)."""

    @property
    def mailboxes(self) -> Path:
        """The folder holding one Maildir per local user (``quoting.mailbox_folder``)."""
        return self.folder / "mail"

    def mailbox(self, user: str) -> list[bytes]:
        """Both roles: the messages delivered to local ``user``, oldest first, as stored.
        As receiver: what a peer sent to ``user``; as sender: the bounces (DSNs) for mail
        that ``user`` submitted."""
        box = self.mailboxes / quoting.mailbox_folder(user)
        files = [p for sub in ("new", "cur") for p in (box / sub).glob("*") if p.is_file()]
        files.sort(key=lambda p: (p.stat().st_mtime_ns, p.name))
        return [p.read_bytes() for p in files]

    def allowances(self, role: str) -> tuple[message.Allowance, ...]:
        """What this MTA may change in a message in ``role``, each with its reason: as
        sender, its trace fields and Date/Message-ID where absent; as receiver, exactly the
        trace and delivery fields it prepends (``harness.message``)."""
        fields = self.trace_fields[role]
        return message.originating(fields) if role == "sender" else message.prepended(fields)

    def as_sent(self, stored: bytes) -> bytes:
        """The message as its author submitted it, from a copy this MTA relayed (sender
        role: as a peer stored it) or stored (receiver role: from ``mailbox``): without the
        role's ``trace_fields``, in wire form (CRLF line ends).  A copy that does not start
        with them comes back in wire form only, so the runner's comparison shows it."""
        wire = stored
        if self.role == "receiver" and self.mailbox_line_end == b"\n":
            wire = stored.replace(b"\n", b"\r\n")
        names, optional = self.trace_fields[self.role], self.optional_trace_fields
        rest = without_leading_fields(wire, names, optional)
        return wire if rest is None else rest

    def await_listening(
        self,
        pid: int,
        running: Callable[[], bool],
        addresses: list[str] | None = None,
        port: int | None = None,
        why: Callable[[], str] | None = None,
    ) -> None:
        """Until process ``pid`` listens on ``port`` (the site's) of every one of
        ``addresses`` (the site's), read from the kernel (``process.await_listening``);
        ``HarnessError`` with ``why()`` (the log's last line) if it ends first."""
        where = self.site.addresses if addresses is None else addresses
        endpoints = [(address, self.site.port if port is None else port) for address in where]
        listed = ", ".join(f"{address}:{port}" for address, port in endpoints)
        with self.waiting(f"to listen on {listed}"):
            process.await_listening(
                self.name, pid, endpoints, running=running, why=why or self.last_log_line
            )

    @contextmanager
    def waiting(self, what: str, after_s: float = NOTICE_AFTER_S) -> Iterator[None]:
        """Around a wait on the MTA: ``what`` it waits for is printed if it lasts."""
        line = f"waiting for {self.name} ({self.role}): {what}"
        notice = threading.Timer(after_s, progress.notice, (line,))
        notice.daemon = True
        notice.start()
        try:
            yield
        finally:
            notice.cancel()

    def last_log_line(self) -> str:
        """The last line of the MTA's log (for error messages)."""
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return f"no log at {self.log_path}"
        return lines[-1].strip() if lines else f"{self.log_path} is empty"

    def __enter__(self) -> MtaAdapter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _private_copy(source: Path, target: Path, uid: int | None, gid: int | None) -> Path:
    """``source`` copied to ``target``, mode 0600 before a byte is written, owned by
    ``uid``:``gid`` (when given)."""
    target.unlink(missing_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(source.read_bytes())
    if uid is not None:
        os.chown(target, uid, -1 if gid is None else gid)
    return target


def without_leading_fields(
    message: bytes, names: tuple[str, ...], optional: frozenset[str] = frozenset()
) -> bytes | None:
    """``message`` (CRLF line ends) without the header fields ``names`` at its start, in
    that order, each with its continuation lines; a field in ``optional`` may be absent.
    None when the message does not start so."""
    rest = message
    for name in names:
        length = _field_length(rest, name)
        if length is None and name not in optional:
            return None
        rest = rest[length or 0 :]
    return rest


def _field_length(data: bytes, name: str) -> int | None:
    """The length of header field ``name`` (any case) at the start of ``data``."""
    prefix = name.encode() + b":"
    if data[: len(prefix)].lower() != prefix.lower():
        return None
    end = data.find(b"\r\n")
    while end != -1 and data[end + 2 : end + 3] in (b" ", b"\t"):
        end = data.find(b"\r\n", end + 2)
    return None if end == -1 else end + 2


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
