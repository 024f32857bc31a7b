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
- Readiness is read from the host's TCP table (/proc/PID/net/tcp), never probed with a
  connection: smtpd would ask the lab DNS for the prober's PTR, a query the run never made.
- Mailboxes (both roles) are a userbase table: each of ``site.users`` is a maildir under
  ``folder/maildir``, written as the ``opensmtpd`` user (smtpd refuses to run a maildir
  delivery as root).  Any other local part of ``site.domain`` is refused at RCPT (550).
  As sender, bounces to the sender's own domain are delivered there too (or dropped when
  their user is not one of ``site.users``): they never leave the host.
- Names come from the site (listener hostname, relay HELO, kernel hostname); nothing of
  the machine's hostname reaches the wire.
- Knobs (``harness.mta.base.KNOBS``): ``family = "ipv4"`` relays from the site's IPv4
  address (``src``), ``"any"`` lets smtpd choose (it tries the MX's AAAA first), and the
  receiver has a ``listen on`` line per address of ``site.addresses``.  ``vrfy`` changes
  nothing: smtpd 6.8 has no VRFY at all (500, "check" and "disabled" alike).
- Waits: its resolver (libasr: resolv.conf's defaults, 4 tries, the timeout doubling from
  5 s) gives up on an unanswered MX question only after 5+10+20+40 = 75 s (measured:
  queries at 0, 5, 15 and 35 s), and a permanent failure becomes a bounce a second after
  the envelope leaves the queue (bounce.c batches them): hence ``delivery_timeout_s``
  and ``bounce_delay_s``.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import os
import pwd
import re
import signal
import smtplib
import socket
import struct
import subprocess
import time
from pathlib import Path

from harness.errors import HarnessError
from harness.lab.netns import SocketFactory
from harness.mta import debs
from harness.mta.base import MtaAdapter, MtaUnavailable, Site

SUBMISSION_PORT = 2525  # sender role: submit() hands messages over on 127.0.0.1 here
MAILBOXES = "/var/spool/mailboxes"  # where smtpd sees folder/maildir (inside its tmpfs)
START_TIMEOUT_S = 10.0
SUBMIT_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0
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
# The trace fields smtpd prepends, in this order, one of each (``as_sent`` removes them).
# Relaying: its Received field, folded over 3 lines ("from <helo> (<rdns> [<addr>]) / by
# <hostname> (OpenSMTPD) with ESMTP id <8 hex>; / <date>").  Delivering to a maildir:
# Return-Path (only for a non-empty sender: a bounce has none), Delivered-To, Received (as
# above; 4 lines, with "for <rcpt>", for a message enqueued locally), then the message with
# LF line ends.  The rest is byte for byte what the client sent, dot-stuffing undone.
TRACE_FIELDS = {"sender": ("Received",), "receiver": ("Return-Path", "Delivered-To", "Received")}
_TCP_LISTEN = "0A"
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
table users file:{users}
{listen}action "local" maildir "{mailboxes}/%{{user.username}}" userbase <users>
match from {origin} for domain "{domain}" action "local"
"""
_RELAY = """\
action "relay" relay helo {hostname}{source}
match from local for any action "relay"
"""


class Adapter(MtaAdapter):
    name = "opensmtpd"
    packages = ("opensmtpd",)
    delivery_timeout_s = 90.0  # the resolver's 75 s, and a margin
    bounce_delay_s = 3.0

    def __init__(self, site: Site, role: str) -> None:
        super().__init__(site, role)
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def prepare(cls) -> None:
        _trees()

    @classmethod
    def version(cls) -> str:
        changelog = _unpack("opensmtpd") / "usr/share/doc/opensmtpd/changelog.Debian.gz"
        first = gzip.decompress(changelog.read_bytes()).decode().partition("\n")[0]
        found = re.match(r"opensmtpd \(([^)-]+)", first)  # "opensmtpd (6.8.0p2-4) unstable"
        if not found:
            raise MtaUnavailable(f"opensmtpd: no version in {changelog}: {first!r}")
        return found.group(1)

    # --- life cycle -----------------------------------------------------------------------
    def start(self) -> None:
        if self._proc is not None:
            raise HarnessError("opensmtpd: already started")
        trees = _trees()
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "smtpd.conf"
        config.write_text(self._config())
        self._maildir().mkdir(exist_ok=True)
        os.chown(self._maildir(), *_delivery_ids())
        launch = ["unshare", "--uts", "sh", "-c", _LAUNCH, "opensmtpd", self.site.hostname]
        launch += [str(trees[0] / "usr/libexec"), str(self._maildir())]
        smtpd = [str(debs.binary(trees[0], "smtpd")), "-d", "-v", "-f", str(config)]
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
        try:
            self._wait_listening()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _kill_group(proc.pid)

    # --- using it -------------------------------------------------------------------------
    def submit(self, mail_from: str, recipients: list[str], message: bytes) -> None:
        """Sender role: SMTP to 127.0.0.1:SUBMISSION_PORT inside the host (CRLF line ends)."""
        if self.role != "sender":
            raise HarnessError("opensmtpd: submit() is for the sender role")
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
        return all(_deferred(line) for line in self.queue())

    def queue(self) -> list[str]:
        """``smtpctl show queue``: one envelope a line, ``|``-separated (see smtpctl(8))."""
        proc = self._running()
        trees = _trees()
        smtpctl = debs.binary(trees[0], "smtpctl")
        argv = ["nsenter", "-m", "-t", str(proc.pid)]
        argv += ["setpriv", f"--egid={QUEUE_GROUP}", "--keep-groups", str(smtpctl)]
        done = subprocess.run(
            [*argv, "show", "queue"], capture_output=True, text=True, env=debs.environment(*trees)
        )
        if done.returncode != 0:
            raise HarnessError(f"opensmtpd: smtpctl show queue: {done.stderr.strip()}")
        return done.stdout.splitlines()

    def mailbox(self, user: str) -> list[bytes]:
        """Both roles: what smtpd delivered to local ``user`` (as sender: bounces), oldest
        first, as stored (LF line ends, trace fields included)."""
        folder = self._maildir() / user
        files = [p for sub in ("new", "cur") for p in (folder / sub).glob("*") if p.is_file()]
        files.sort(key=lambda p: (p.stat().st_mtime_ns, p.name))
        return [p.read_bytes() for p in files]

    def as_sent(self, stored: bytes) -> bytes:
        """The role's ``TRACE_FIELDS`` removed, in wire form (CRLF); a copy that does not
        start with them comes back in wire form only, so the comparison shows it."""
        wire = re.sub(rb"\r?\n", b"\r\n", stored) if self.role == "receiver" else stored
        rest = wire
        for name in TRACE_FIELDS[self.role]:
            field = re.match(rb"%s:[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*" % name.encode(), rest)
            if field is None and name != "Return-Path":
                return wire
            rest = rest[field.end() :] if field else rest
        return rest

    # --- helpers --------------------------------------------------------------------------
    def _config(self) -> str:
        uid, gid = _delivery_ids()
        users = self.folder / "users"
        users.write_text("".join(f"{u} {uid}:{gid}:{MAILBOXES}\n" for u in self.site.users))
        sender = self.role == "sender"
        listen = f"port {self._port()} hostname {self.site.hostname}"
        where = ["lo"] if sender else self.site.addresses
        config = _CONFIG.format(
            users=users,
            listen="".join(f"listen on {w} {listen}\n" for w in where),
            mailboxes=MAILBOXES,
            origin="local" if sender else "any",
            domain=self.site.domain,
        )
        if not sender:
            return config
        return config + _RELAY.format(hostname=self.site.hostname, source=self._source())

    def _source(self) -> str:
        """``family = "ipv4"``: relay from the site's IPv4 address only (with "any"
        OpenSMTPD takes the MX's AAAA address first, as any dual-stack host would)."""
        return "" if self.site.knob("family") == "any" else f" src {self.site.address}"

    def _maildir(self) -> Path:
        return self.folder / "maildir"

    def _port(self) -> int:
        return SUBMISSION_PORT if self.role == "sender" else self.site.port

    def _wait_listening(self) -> None:
        address = "127.0.0.1" if self.role == "sender" else self.site.address
        wanted = f"{_hex_address(address)}:{self._port():04X}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _listening(self._running().pid, wanted):
            if time.monotonic() > deadline:
                raise HarnessError(f"opensmtpd: not listening on {address}:{self._port()}")
            time.sleep(0.01)

    def _running(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            raise HarnessError(f"opensmtpd: smtpd is not running; see {self.log_path}")
        return self._proc


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
def _trees() -> tuple[Path, ...]:
    """opensmtpd's unpacked tree, then the library packages it lacks here; the system
    users exist afterwards.  Once per process (a failure is not cached)."""
    trees = [_unpack("opensmtpd")]
    missing = _missing_libraries(trees)
    unknown = [soname for soname in missing if soname not in LIBRARIES]
    if unknown:
        raise MtaUnavailable(f"opensmtpd: no package known for {', '.join(unknown)}")
    trees += [_unpack(package) for package in dict.fromkeys(LIBRARIES[s] for s in missing)]
    still = _missing_libraries(trees)
    if still:
        raise MtaUnavailable(f"opensmtpd: smtpd still lacks {', '.join(still)}")
    _ensure_system_users()
    return tuple(trees)


def _unpack(package: str) -> Path:
    try:
        return debs.unpacked(package)
    except HarnessError as exc:
        raise MtaUnavailable(f"opensmtpd: {exc}") from None


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


def _ensure_system_users() -> None:
    """The users compiled into smtpd, as Debian's postinst makes them (no login, no home)."""
    CHROOT.mkdir(parents=True, exist_ok=True)
    for user in SYSTEM_USERS:
        if _known_user(user):
            continue
        argv = ["useradd", "--system", "--user-group", "--no-create-home"]
        argv += ["--home-dir", str(CHROOT), "--shell", "/usr/sbin/nologin", user]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0 and not _known_user(user):  # a parallel run may have won
            raise MtaUnavailable(f"opensmtpd: useradd {user}: {done.stderr.strip()}")


def _known_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _delivery_ids() -> tuple[int, int]:
    entry = pwd.getpwnam(SYSTEM_USERS[0])
    return entry.pw_uid, entry.pw_gid


def _deferred(line: str) -> bool:
    """An envelope that was tried and now waits for a retry (fields: smtpctl(8) show queue;
    index 10 is the retry count, 11 the run state)."""
    fields = line.split("|")
    return fields[11] == "pending" and int(fields[10]) > 0


def _hex_address(address: str) -> str:
    """An IPv4 address as /proc/net/tcp prints it (the host-order integer, in hex)."""
    return f"{struct.unpack('<I', socket.inet_aton(address))[0]:08X}"


def _listening(pid: int, local: str) -> bool:
    """Whether ``local`` (HEXADDR:HEXPORT) listens in ``pid``'s network namespace."""
    try:
        rows = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(row.split()[1] == local and row.split()[3] == _TCP_LISTEN for row in rows)


def _kill_group(pgid: int) -> None:
    """SIGKILL whatever is left of smtpd's process group (its children, if it died first).
    The group id stays reserved while any member lives, so it is never someone else's."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
