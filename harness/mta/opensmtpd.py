"""OpenSMTPD 6.8 from Debian's package (unpacked, never installed), as sender or receiver.

Rules kept here:
- smtpd's spool (/var/spool/smtpd), control socket (/var/run/smtpd.sock) and delivery
  helpers (/usr/libexec/opensmtpd) are compiled in.  It runs in the private mount namespace
  ``ip netns exec`` gives it, plus a UTS namespace of its own: a tmpfs over /var/spool and
  over /run, the unpacked usr/libexec bound over /usr/libexec, ``folder/maildir`` bound
  on ``MAILBOXES``, and the site's hostname as the kernel hostname.  The machine's files are
  never written, two instances never share a spool or a socket, and every mount dies with
  the process tree.
- Those mounts exist only in that namespace: whatever talks to the daemon (``smtpctl``)
  enters it with ``nsenter -m -t PID`` (a second ``ip netns exec`` would not see the socket).
- ``smtpd -d`` is the very process ``lab.popen`` started (``ip netns exec``, ``unshare`` and
  ``sh`` all exec), in a session of its own; its stderr is ``log_path``.  ``stop()`` sends it
  SIGTERM and waits; whatever outlives the grace period is killed by process group, which
  only smtpd's own children share.
- Readiness is read from the host's TCP tables (``harness.mta.process``), never probed with
  a connection: smtpd would ask the lab DNS for the prober's PTR, a query the run never made.
- Mailboxes (both roles) are a userbase table: each of ``site.users`` has as its home a
  maildir under ``folder/maildir`` named by ``quoting.mailbox_folder`` (never by the user
  name), written as the ``opensmtpd`` user (smtpd refuses to run a maildir delivery as
  root).  Any other local part of ``site.domain`` is refused at RCPT (550).
  As sender, bounces to the sender's own domain are delivered there too (or dropped when
  their user is not one of ``site.users``): they never leave the host.
- Names come from the site (listener hostname, relay HELO, kernel hostname); nothing of
  the machine's hostname reaches the wire.  Every one is a double-quoted smtpd.conf string
  (``harness.mta.quoting``): the host name is a host name of at most 64 characters (it is
  the kernel hostname too), the domain a host name (``for domain`` matches wildcards), a
  user a key of the userbase file table (no blank, no ``:``, no leading ``#``).
- What smtpd prepends (``trace_fields``, removed by ``as_sent``): relaying, its Received
  field, folded over 3 lines ("from <helo> (<rdns> [<addr>]) / by <hostname> (OpenSMTPD)
  with ESMTP id <8 hex>; / <date>").  Delivering to a maildir: Return-Path (only for a
  non-empty sender: a bounce has none), Delivered-To, Received (as above; 4 lines, with
  "for <rcpt>", for a message enqueued locally), then the message with LF line ends.  The
  rest is byte for byte what the client sent, dot-stuffing undone.
- ``queue()`` is ``smtpctl show queue``, read inside smtpd's mount namespace while it runs
  (one envelope a line, ``|``-separated, smtpctl(8)): the reason is the envelope's error
  line, e.g. "451 4.3.0 Try later"; the queue id the message id (the envelope id's first
  8 hex digits).
- Knobs (``harness.mta.base.KNOBS``): ``family = "ipv4"`` relays from the site's IPv4
  address (``src``), ``"any"`` lets smtpd choose (it tries the MX's AAAA first), and the
  receiver has a ``listen on`` line per address of ``site.addresses``.  ``vrfy`` changes
  nothing: smtpd 6.8 has no VRFY at all (500, "check" and "disabled" alike).
  ``timeouts = "short"``: smtpd 6.8 has no option for either timeout (mta_session.c
  sets a fixed 300 s I/O timeout, for connecting and for each reply), so the data timeout
  stays 300 s; its connect is the kernel's (``tcp_syn_retries`` 6: about 127 s), so the
  sender's host gets ``net.ipv4.tcp_syn_retries = 2`` (SYNs at 0, 1 and 3 s, given up at
  7 s), a sysctl of that host's network namespace only.
- TLS (``TLS_POLICY``; OpenSMTPD's own OpenSSL code, not libtls): as receiver ``tls =
  "offer"`` is a ``pki`` named by the host name (the chain and key: root.s 0600 copies,
  read by the parent process) and ``tls pki`` on each ``listen on`` line; ``"off"`` has
  neither.  Measured: with an ECDSA key (the lab's) the handshake fails in smtpd's privsep
  signing ("elliptic curve routines::missing private key": its ECDSA engine hack does not
  work with Debian 12's OpenSSL 3), so ``tls = "offer"`` is refused at scenario load.  An
  RSA-2048 leaf fails the same way ("rsa routines::missing private key", measured): the
  privsep key engine, not the key type, is what OpenSSL 3 breaks.
  As sender (``relay`` action, by MX): opportunistic is smtpd's default (STARTTLS when
  offered, no certificate required); required is ``relay tls no-verify`` (mandatory
  STARTTLS, any certificate); verify is ``relay tls`` (mandatory STARTTLS, the chain
  verified against the run's CA, given by ``ca`` for the site's host name).  smtpd.conf(5)
  of 6.8 has no way to turn STARTTLS off on an MX relay (``smtp+notls://`` is for a fixed
  relay host only): ``never`` is refused against a receiver that offers STARTTLS
  (``tls_refusal``), and against one that does not it is what runs, recorded as such.
- Waits: its resolver (libasr: resolv.conf's defaults, 4 tries, the timeout doubling from
  5 s) gives up on an unanswered MX question only after 5+10+20+40 = 75 s (measured:
  queries at 0, 5, 15 and 35 s), and a permanent failure becomes a bounce a second after
  the envelope leaves the queue (bounce.c batches them): hence ``delivery_timeout_s``
  and ``bounce_delay_s``.
"""

from __future__ import annotations

import functools
import gzip
import os
import pwd
import re
import smtplib
import socket
import subprocess
from pathlib import Path
from typing import ClassVar

from harness.errors import HarnessError
from harness.lab.netns import SocketFactory
from harness.mta import base, debs, process, quoting
from harness.mta.base import MtaAdapter, Site

SUBMISSION_PORT = 2525  # sender role: submit() hands messages over on 127.0.0.1 here
MAILBOXES = "/var/spool/mailboxes"  # where smtpd sees folder/maildir (inside its tmpfs)
SUBMIT_TIMEOUT_S = 30.0
SYN_RETRIES_SHORT = 2  # timeouts = "short": the kernel gives up a connect at 1 + 2 + 4 s
QUEUE_GROUP = "opensmtpq"  # smtpctl must run with this effective group (setgid in Debian)
SYSTEM_USERS = ("opensmtpd", QUEUE_GROUP)  # compiled in, as is their chroot:
CHROOT = Path("/var/lib/opensmtpd/empty")
# sonames smtpd/smtpctl need -> the Debian 12 package holding them (unpacked when missing)
LIBRARIES = {
    "libevent-2.1.so.7": "libevent-2.1-7",
    "libssl.so.3": "libssl3",
    "libcrypto.so.3": "libssl3",
    "libdb-5.3.so": "libdb5.3",
}
# smtpctl show queue, one envelope a line (smtpctl.c, show_queue_envelope): these fields
# by index, then the error line (which may hold "|" itself) from index 13 on
_ID, _RECIPIENT, _RETRIES, _STATE, _ERROR = 0, 5, 10, 11, 13
# in smtpd's own UTS and mount namespaces: hostname, mounts, then smtpd itself ("$@")
_LAUNCH = f"""set -e
hostname "$1"
mount -t tmpfs -o mode=0755 opensmtpd-spool /var/spool
mount -t tmpfs -o mode=0755 opensmtpd-run /run
mount --bind "$2" /usr/libexec
mkdir {MAILBOXES}
mount --bind "$3" {MAILBOXES}
shift 3
exec "$@"
"""
_CONFIG = """\
table users {users}
{listen}action "local" maildir "%{{user.directory}}" userbase <users>
match from {origin} for domain {domain} action "local"
"""
_RELAY = """\
action "relay" relay helo {hostname}{source}{tls}
match from local for any action "relay"
"""
_RELAY_TLS = {"never": "", "opportunistic": "", "required": " tls no-verify", "verify": " tls"}
ECDSA = (
    'tls = "offer": OpenSMTPD 6.8 with OpenSSL 3 cannot sign in its privsep process (the '
    'handshake fails: "missing private key", with an ECDSA key and with an RSA one alike)'
)
NEVER = (
    "starttls = never: OpenSMTPD 6.8 cannot turn STARTTLS off when it relays by MX "
    "(smtp+notls:// needs a fixed relay host), and this receiver offers STARTTLS"
)


class Adapter(MtaAdapter):
    name = "opensmtpd"
    packages = ("opensmtpd",)
    carriers: ClassVar[dict[str, quoting.Carrier]] = {
        "host name": quoting.host_names(64),
        "domain": quoting.HOST_NAME,
        "user": quoting.SMTPD_KEY,
    }
    trace_fields: ClassVar[dict[str, tuple[str, ...]]] = {
        "sender": ("Received",),
        "receiver": ("Return-Path", "Delivered-To", "Received"),
    }
    optional_trace_fields = frozenset({"Return-Path"})
    mailbox_line_end = b"\n"
    delivery_timeout_s = 90.0  # the resolver's 75 s, and a margin
    bounce_delay_s = 3.0
    TLS_POLICY: ClassVar[dict[str, dict[str, str]]] = {  # rules above
        "tls": {"off": "listen on ... (no tls)", "offer": "pki NAME cert/key, listen on ... tls"},
        "starttls": {
            "never": "relay (its default, opportunistic STARTTLS: it cannot be turned off; "
            "accepted only against a receiver that does not offer STARTTLS)",
            "opportunistic": "relay (its default: STARTTLS when offered)",
            "required": "relay tls no-verify",
            "verify": "relay tls, ca NAME cert (the run's CA)",
        },
    }

    def __init__(self, site: Site, role: str) -> None:
        super().__init__(site, role)
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def prepare(cls) -> None:
        _trees()

    @classmethod
    def used_packages(cls) -> tuple[str, ...]:
        return _packages()

    @classmethod
    def version(cls) -> str:
        changelog = _unpack("opensmtpd") / "usr/share/doc/opensmtpd/changelog.Debian.gz"
        first = gzip.decompress(changelog.read_bytes()).decode().partition("\n")[0]
        found = re.match(r"opensmtpd \(([^)-]+)", first)  # "opensmtpd (6.8.0p2-4) unstable"
        if not found:
            raise base.MtaUnavailable(f"opensmtpd: no version in {changelog}: {first!r}")
        return found.group(1)

    @property
    def mailboxes(self) -> Path:
        return self.folder / "maildir"

    @classmethod
    def tls_refusal(cls, role: str, knobs: dict[str, str], peer_offers_tls: bool) -> str | None:
        """``never`` against a receiver offering STARTTLS, and ``tls = "offer"`` (rules
        above)."""
        if role == "receiver":
            return ECDSA if knobs.get("tls", "off") == "offer" else None
        never = knobs.get("starttls", "never") == "never"
        return NEVER if never and peer_offers_tls else None

    # --- life cycle -----------------------------------------------------------------------
    def start(self) -> None:
        if self._proc is not None:  # before anything is rewritten or stopped
            raise HarnessError("opensmtpd: already started")
        super().start()

    def launch(self) -> None:
        if self.short_timeouts:
            self._shorten_connect()
        trees = _trees()
        launch = ["unshare", "--uts", "sh", "-c", _LAUNCH, "opensmtpd", self.site.hostname]
        launch += [str(trees[0] / "usr/libexec"), str(self.mailboxes)]
        config = str(self.folder / "smtpd.conf")
        smtpd = [str(debs.binary(trees[0], "smtpd")), "-d", "-v", "-f", config]
        with self.log_path.open("ab") as log:
            self._proc = self.site.lab.popen(
                self.site.host,
                [*launch, *smtpd],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=debs.environment(*trees),
                start_new_session=True,
            )
        self._wait_listening()

    def _shorten_connect(self) -> None:
        """The host's kernel gives up a connect after ``SYN_RETRIES_SHORT`` retries."""
        setting = f"net.ipv4.tcp_syn_retries={SYN_RETRIES_SHORT}"
        done = self.site.lab.run(self.site.host, ["sysctl", "-q", "-w", setting])
        if done.returncode != 0:
            raise HarnessError(f"opensmtpd: sysctl {setting} failed: {done.stderr.strip()}")

    def stop(self) -> None:
        """SIGTERM to smtpd, then whatever of its process group outlives the grace (the
        group is smtpd's own session: only its children share it)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            process.end_group(proc.pid, child=proc)

    # --- using it -------------------------------------------------------------------------
    def _submit(self, mail_from: str, recipients: list[str], message: bytes) -> None:
        """SMTP to 127.0.0.1:SUBMISSION_PORT inside the host (CRLF line ends)."""
        data = re.sub(rb"\r?\n", b"\r\n", message)  # smtplib sends bytes as they are
        client = _Submission(self.site.lab.socket_factory(self.site.host))
        try:
            client.connect("127.0.0.1", SUBMISSION_PORT)
            refused = client.sendmail(mail_from, recipients, data)
            client.quit()
        except (smtplib.SMTPException, OSError) as exc:
            raise HarnessError(f"opensmtpd: submission failed: {exc}") from None
        finally:
            client.close()
        if refused:
            raise HarnessError(f"opensmtpd: submission refused {sorted(refused)}")

    def idle(self) -> bool:
        """Both roles: no envelope in flight or waiting for its first attempt (deferred
        ones, already tried, wait for a retry far beyond any run)."""
        return all(_deferred(fields) for fields in self._envelopes())

    def queue(self) -> list[base.QueuedRecipient]:
        """Every envelope ``smtpctl show queue`` lists, with its error line (rules above)."""
        return [queued(fields) for fields in self._envelopes()]

    def _envelopes(self) -> list[list[str]]:
        """``smtpctl show queue`` inside smtpd's mount namespace: each envelope's fields."""
        if self._proc is None:
            raise base.QueueUnreadable("opensmtpd: smtpctl show queue: smtpd never started")
        if self._proc.poll() is not None:
            raise base.MtaDied(
                f"smtpd exited ({self._proc.returncode}) during the run, and its queue (in its "
                f"own mount namespace) with it; its log: {self.last_log_line()}"
            )
        trees = _trees()
        argv = ["nsenter", "-m", "-t", str(self._proc.pid), "setpriv", f"--egid={QUEUE_GROUP}"]
        argv += ["--keep-groups", str(debs.binary(trees[0], "smtpctl")), "show", "queue"]
        done = subprocess.run(argv, capture_output=True, text=True, env=debs.environment(*trees))
        if done.returncode != 0:
            raise base.unreadable(self.name, "smtpctl show queue", done)
        return parse_envelopes(done.stdout)

    # --- helpers --------------------------------------------------------------------------
    def _write_config(self) -> None:
        """smtpd.conf, the userbase table and the mailbox folders (rules above)."""
        uid, gid = _delivery_ids()
        self.mailboxes.mkdir(parents=True, exist_ok=True)
        os.chown(self.mailboxes, uid, gid)
        rows = []
        for user in self.site.users:
            box = quoting.mailbox_folder(user)
            (self.mailboxes / box).mkdir(exist_ok=True)
            os.chown(self.mailboxes / box, uid, gid)
            rows.append(f"{user} {uid}:{gid}:{MAILBOXES}/{box}\n")
        users = self.folder / "users"
        users.write_text("".join(rows))
        tls = self.tls_files()  # root: smtpd loads a CA file only when root owns it
        (self.folder / "smtpd.conf").write_text(self._tls_config(tls) + self._config(users))

    def _tls_config(self, tls: base.TlsFiles | None) -> str:
        """The ``pki`` (receiver offering TLS) and ``ca`` (sender) lines, named by the host
        name."""
        if tls is None:
            return ""
        name, string = quoting.smtpd_string(self.site.hostname), quoting.smtpd_string
        if tls.chain is not None and tls.key is not None:
            cert, key = string(str(tls.chain)), string(str(tls.key))
            return f"pki {name} cert {cert}\npki {name} key {key}\n"
        return f"ca {name} cert {string(str(tls.ca))}\n"

    def _config(self, users: Path) -> str:
        site, string = self.site, quoting.smtpd_string
        sender = self.role == "sender"
        listen = f"port {self._port()} hostname {string(site.hostname)}"
        if self.offers_tls:
            listen += f" tls pki {string(site.hostname)}"
        where = ["lo"] if sender else site.addresses
        config = _CONFIG.format(
            users=string(f"file:{users}"),
            listen="".join(f"listen on {w} {listen}\n" for w in where),
            origin="local" if sender else "any",
            domain=string(site.domain),
        )
        if not sender:
            return config
        return config + _RELAY.format(
            hostname=string(site.hostname), source=self._source(), tls=_RELAY_TLS[self.starttls]
        )

    def _source(self) -> str:
        """``family = "ipv4"``: relay from the site's IPv4 address only (with "any"
        OpenSMTPD takes the MX's AAAA address first, as any dual-stack host would)."""
        return "" if self.site.knob("family") == "any" else f" src {self.site.address}"

    def _port(self) -> int:
        return SUBMISSION_PORT if self.role == "sender" else self.site.port

    def _wait_listening(self) -> None:
        proc = self._proc
        assert proc is not None
        where = ["127.0.0.1"] if self.role == "sender" else self.site.addresses
        self.await_listening(proc.pid, lambda: proc.poll() is None, where, self._port())


class _Submission(smtplib.SMTP):
    """smtplib over a socket created inside the lab host (its loopback is the sender's)."""

    def __init__(self, socket_factory: SocketFactory) -> None:
        self._factory = socket_factory
        super().__init__(local_hostname="localhost")

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = self._factory(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(SUBMIT_TIMEOUT_S)
        sock.connect((host, port))
        return sock


@functools.cache
def _packages() -> tuple[str, ...]:
    """opensmtpd, then the library packages it lacks on this machine; the system users
    exist afterwards.  Once per process (a failure is not cached)."""
    packages = ["opensmtpd"]
    missing = _missing_libraries([_unpack("opensmtpd")])
    unknown = [soname for soname in missing if soname not in LIBRARIES]
    if unknown:
        raise base.MtaUnavailable(f"opensmtpd: no package known for {', '.join(unknown)}")
    packages += dict.fromkeys(LIBRARIES[s] for s in missing)
    still = _missing_libraries([_unpack(package) for package in packages])
    if still:
        raise base.MtaUnavailable(f"opensmtpd: smtpd still lacks {', '.join(still)}")
    try:
        for user in SYSTEM_USERS:  # as Debian's postinst makes them
            process.ensure_user(user, str(CHROOT))
        CHROOT.mkdir(parents=True, exist_ok=True)
    except (HarnessError, OSError) as exc:
        raise base.MtaUnavailable(f"opensmtpd: {exc}") from None
    return tuple(packages)


def _trees() -> tuple[Path, ...]:
    """The unpacked trees of ``_packages()``, opensmtpd's first."""
    return tuple(_unpack(package) for package in _packages())


def _unpack(package: str) -> Path:
    try:
        return debs.unpacked(package)
    except HarnessError as exc:
        raise base.MtaUnavailable(f"opensmtpd: {exc}") from None


def _missing_libraries(trees: list[Path]) -> list[str]:
    """The sonames ``ldd`` cannot find for smtpd and smtpctl, with the trees' libraries."""
    missing: list[str] = []
    for name in ("smtpd", "smtpctl"):
        done = subprocess.run(
            ["ldd", str(debs.binary(trees[0], name))],
            capture_output=True,
            text=True,
            env=debs.environment(*trees),
        )
        for line in done.stdout.splitlines():
            soname, _, where = line.strip().partition(" => ")
            if where.startswith("not found") and soname not in missing:
                missing.append(soname)
    return missing


def _delivery_ids() -> tuple[int, int]:
    entry = pwd.getpwnam(SYSTEM_USERS[0])
    return entry.pw_uid, entry.pw_gid


def _deferred(fields: list[str]) -> bool:
    """An envelope that was tried and now waits for a retry."""
    return fields[_STATE] == "pending" and int(fields[_RETRIES]) > 0


def parse_envelopes(listing: str) -> list[list[str]]:
    """``smtpctl show queue`` output -> each envelope's fields; a line that is not an
    envelope is ``QueueUnreadable``."""
    envelopes = [line.split("|") for line in listing.splitlines()]
    for fields in envelopes:
        if len(fields) <= _ERROR or not re.fullmatch(r"[0-9a-f]{16}", fields[_ID]):
            raise base.QueueUnreadable(f"opensmtpd: smtpctl show queue: {'|'.join(fields)!r}")
    return envelopes


def queued(fields: list[str]) -> base.QueuedRecipient:
    """One envelope as the queue entry of its recipient: its error line is the reason."""
    error = "|".join(fields[_ERROR:])
    state = f"{fields[_STATE]}, {fields[_RETRIES]} attempts, no error line yet"
    return base.QueuedRecipient(
        fields[_RECIPIENT], fields[_ID][:8], error or state, base.status_code_in(error)
    )
