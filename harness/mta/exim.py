"""Exim 4.96 (Debian's exim4-daemon-light, unpacked) as the sending or the receiving MTA.

Rules kept here:

1. One configuration for both roles, written fresh into the folder by ``start()``: the
   site's domain is local (its users get Maildir mailboxes under ``mail/``; as sender,
   every other local part of its domain lands in ``mail/postmaster``, so its bounces are
   kept), every other domain goes out by MX (dnslookup router, smtp transport: EHLO with
   the site's hostname, never TLS).  Spool, pid file, log (``exim.log``: main and panic
   log) and the daemon's stderr (``exim.stderr``) live in the folder; nothing in /etc or
   /var.  Knobs (``harness.mta.base.KNOBS``): ``family = "any"`` is
   ``disable_ipv6 = false`` and, as receiver, the host's IPv6 address in
   ``local_interfaces``; ``vrfy = "disabled"`` leaves ``acl_smtp_vrfy`` unset, Exim's own
   way of refusing VRFY (its default: "252 Administrative prohibition").
2. As sender Exim runs no daemon: ``submit()`` runs ``exim -odi``, which returns once the
   delivery attempt is over (a bounce it generates is delivered locally, in the
   background); what could not be delivered stays deferred in the spool: no queue runner
   retries it.  As receiver a foreground daemon (``-bdf -q1m``) listens on the site's
   address and port; ``start()`` returns once its socket is in LISTEN state, read from
   the daemon's own /proc/PID/net/tcp (a probe connection would be logged and would make
   Exim ask the lab DNS for the PTR of the receiver's own address).
3. The receiver looks up the client's PTR, and the A of the name it gets, at connect
   (``host_lookup = *``), before its 220; it answers VRFY by routing the address
   (``acl_smtp_vrfy = accept``; a bare local part from a remote host gets 501, Exim's
   default) and refuses at RCPT what it cannot route (``verify = recipient``) or is not
   for its domain.  No ident (RFC 1413) callback, no TLS: and no TLS set-up at
   all, so the daemon does not spend half a second making a self-signed certificate.
4. A stored message is the bytes received after DATA (CRLF line ends: ``use_crlf``) behind
   exactly the trace fields in ``PREPENDED``, in that order: Return-path, Envelope-to and
   Delivery-date (added by the Maildir transport, as Debian's own configuration does) and
   one Received (added at reception).  As sender, Exim prepends one Received field
   (``from root by <hostname> with local``) to what it relays and changes nothing else in
   the seed message.  ``original()`` / ``as_sent()`` strip exactly those fields.
5. Exim runs from a copy of the package's binary without its setuid bit: Exim drops to
   Debian-exim and re-executes itself (deliveries, bounces), and a setuid binary started
   by that user runs in secure mode, which ignores the ``LD_LIBRARY_PATH`` pointing at
   the unpacked libidn12.  With the copy nothing regains root, so deliveries run as
   Debian-exim (``deliver_drop_privilege``) and the folder must be reachable by that
   user (checked by ``start()``).  Everything else is the package's: its binary's bytes,
   its compiled-in user and paths.
6. ``stop()`` ends the daemon (SIGTERM, SIGKILL after a grace) and then, by pid, every
   process still running this instance's configuration (deliveries it forked).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import re
import shutil
import signal
import struct
import subprocess
import time
from pathlib import Path

from harness.errors import HarnessError
from harness.mta import debs
from harness.mta.base import MtaAdapter, MtaUnavailable, Site

USER = "Debian-exim"  # compiled into Debian's binary
DAEMON_PACKAGE = "exim4-daemon-light"
LIBRARY_PACKAGES = ("libidn12",)  # not installed on a fresh Debian 12
COPY = debs.CACHE.parent / "exim" / "exim4"  # the package's binary without setuid (rule 5)
LOGS = ("main", "panic")  # log_file_path = <folder>/%slog: both are links to exim.log
CATCHALL = "postmaster"  # as sender: the mailbox of its domain's other local parts
PREPENDED = ("return-path", "envelope-to", "delivery-date", "received")  # to what it stores
RELAYED = ("received",)  # to what it relays as sender
START_TIMEOUT_S = 10.0
STOP_GRACE_S = 5.0
POLL_S = 0.01
_TCP_LISTEN = "0A"


class Adapter(MtaAdapter):
    name = "exim"
    packages = (DAEMON_PACKAGE, "exim4-base", *LIBRARY_PACKAGES)

    def __init__(self, site: Site, role: str) -> None:
        super().__init__(site, role)
        self.folder = site.folder.resolve()  # Exim changes its working directory
        self.log_path = self.folder / self.log_path.name
        self.config = self.folder / "exim.conf"
        self.spool = self.folder / "spool"
        self.maildir = self.folder / "mail"
        self._daemon: subprocess.Popen[bytes] | None = None

    # --- the machine -------------------------------------------------------------------------
    @classmethod
    def prepare(cls) -> None:
        try:
            for package in cls.packages:
                debs.unpacked(package)
            _ensure_user()
            _copy_binary()
        except (HarnessError, OSError) as exc:
            raise MtaUnavailable(f"exim: {exc}") from None
        missing = _missing_libraries()
        if missing:
            raise MtaUnavailable(f"exim: shared libraries not found: {', '.join(missing)}")

    @classmethod
    def version(cls) -> str:
        cls.prepare()
        done = _run([str(COPY), "-C", "/dev/null", "-bV"])
        found = re.search(r"^Exim version (\S+)", done.stdout, re.MULTILINE)
        if found is None:
            raise MtaUnavailable(f"exim -bV: {_tail(done.stderr or done.stdout)}")
        return found[1]

    # --- life cycle --------------------------------------------------------------------------
    def start(self) -> None:
        self.prepare()
        self._write_tree()
        done = _run([*self._exim(), "-bV"])
        if done.returncode != 0:
            raise HarnessError(f"exim: {self.config}: {_tail(done.stderr or done.stdout)}")
        if self.role == "receiver":
            self._start_daemon()

    def stop(self) -> None:
        daemon, self._daemon = self._daemon, None
        if daemon is not None:
            _end(daemon.pid, daemon)
        for pid in self._stragglers():
            _end(pid)

    # --- sender role -------------------------------------------------------------------------
    def submit(self, mail_from: str, recipients: list[str], message: bytes) -> None:
        if self.role != "sender":
            super().submit(mail_from, recipients, message)
        argv = [*self._exim(), "-odi", "-oi", "-f", mail_from, "--", *recipients]
        done = self.site.lab.run(
            self.site.host, argv, input=message, text=False, env=_environment()
        )
        if done.returncode != 0:
            raise HarnessError(f"exim: submit: {_tail(done.stderr.decode(errors='replace'))}")

    # --- both roles ---------------------------------------------------------------------------
    def idle(self) -> bool:
        """Every message in the spool is frozen, or has been tried and is not being
        delivered now (deferred until a retry that only a queue runner makes).  As
        receiver, every message accepted so far is delivered or deferred."""
        return all(self._settled(header) for header in (self.spool / "input").glob("*-H"))

    def mailbox(self, user: str) -> list[bytes]:
        """The files Exim delivered to ``user``, oldest first, as stored (see ``original``);
        as sender, the bounces for what ``user`` submitted."""
        new = self.maildir / user / "new"
        files = sorted(new.iterdir(), key=_delivery_order) if new.is_dir() else []
        return [f.read_bytes() for f in files]

    def as_sent(self, stored: bytes) -> bytes:
        """``stored`` without what Exim prepended in this role (rule 4); unchanged if those
        fields are not there, so that a comparison with the message sent fails."""
        try:
            return original(stored, RELAYED if self.role == "sender" else PREPENDED)
        except HarnessError:
            return stored

    # --- the instance ------------------------------------------------------------------------
    def _exim(self) -> list[str]:
        return [str(COPY), "-C", str(self.config)]

    def _write_tree(self) -> None:
        """The folder, the spool and mailboxes Debian-exim owns, the log and the config."""
        for folder in (self.folder, self.spool, self.maildir):
            folder.mkdir(parents=True, exist_ok=True)
        _require_reachable(self.folder)
        exim = pwd.getpwnam(USER)
        self.log_path.touch()
        for path in (self.spool, self.maildir, self.log_path):
            os.chown(path, exim.pw_uid, exim.pw_gid)
        for kind in LOGS:
            link = self.folder / f"{kind}log"
            link.unlink(missing_ok=True)
            link.symlink_to(self.log_path.name)
        self.config.write_text(self._config_text())
        self.config.chmod(0o644)  # Exim refuses a configuration others may write

    def _config_text(self) -> str:
        main = "".join(f"{key} = {value}\n" for key, value in self._main_options().items())
        routers = [LOCAL_USERS.format(users=" : ".join(self.site.users))] if self.site.users else []
        if self.role == "sender":
            routers.append(LOCAL_CATCHALL)
        return CONFIG.format(
            main=main,
            domain=self.site.domain,
            local_routers="\n".join(routers),
            hostname=self.site.hostname,
            mail=self.maildir,
            catchall=CATCHALL,
            user=USER,
        )

    def _main_options(self) -> dict[str, str]:
        site = self.site
        ours = {
            "primary_hostname": site.hostname,
            "qualify_domain": site.domain,
            "exim_path": str(COPY),
            "spool_directory": str(self.spool),
            "log_file_path": f"{self.folder}/%slog",
            "write_rejectlog": "false",
            "pid_file_path": str(self.folder / "exim.pid"),
            "keep_environment": "LD_LIBRARY_PATH",
            "deliver_drop_privilege": "true",
            "disable_ipv6": "false" if site.knob("family") == "any" else "true",
            "local_interfaces": "<; " + " ; ".join(site.addresses),
            "host_lookup": "*",
            "rfc1413_hosts": "",
            "acl_smtp_rcpt": "check_rcpt",
            "acl_smtp_vrfy": "accept",
            "tls_advertise_hosts": "",
            # expanded, so never preloaded; and never used, since TLS is never offered
            "tls_certificate": "$config_dir/unused.pem",
            "tls_verify_certificates": "",
        }
        if site.knob("vrfy") == "disabled":
            del ours["acl_smtp_vrfy"]
        return ours

    def _start_daemon(self) -> None:
        argv = [*self._exim(), "-bdf", "-oX", str(self.site.port), "-q1m"]
        with (self.folder / "exim.stderr").open("wb") as stderr:
            self._daemon = self.site.lab.popen(
                self.site.host,
                argv,
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                env=_environment(),
            )
        self._await_listening(self._daemon)

    def _await_listening(self, daemon: subprocess.Popen[bytes]) -> None:
        want = _tcp_endpoint(self.site.address, self.site.port)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if daemon.poll() is not None:
                self._daemon = None
                raise HarnessError(f"exim: the daemon exited ({daemon.returncode}): {self._why()}")
            if want in _listening(daemon.pid):
                return
            time.sleep(POLL_S)
        self.stop()
        raise HarnessError(f"exim: nothing listens on {self.site.address}:{self.site.port}")

    def _why(self) -> str:
        for path in (self.folder / "exim.stderr", self.log_path):
            text = path.read_text(errors="replace") if path.is_file() else ""
            if text.strip():
                return _tail(text)
        return "no message"

    def _settled(self, header: Path) -> bool:
        """Frozen, or tried (its message log has more than its arrival) and not locked by a
        delivery process; gone meanwhile (delivered) counts too."""
        message_id = header.name.removesuffix("-H")
        try:
            if "\n-frozen " in header.read_text(errors="replace"):
                return True
            msglog = (self.spool / "msglog" / message_id).read_text(errors="replace")
            busy = _locked(self.spool / "input" / f"{message_id}-D")
        except FileNotFoundError:
            return not header.exists()
        return len(msglog.splitlines()) > 1 and not busy

    def _stragglers(self) -> list[int]:
        """Pids of processes still running with this instance's configuration."""
        wanted = f"\0-C\0{self.config}\0".encode()
        found = []
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                with contextlib.suppress(OSError):
                    if wanted in Path(entry.path, "cmdline").read_bytes():
                        found.append(int(entry.name))
        return found


def original(stored: bytes, prepended: tuple[str, ...] = PREPENDED) -> bytes:
    """The message as the client sent it after DATA (CRLF line ends) from a stored file:
    ``stored`` without the trace fields Exim prepends (rule 4); ``prepended=RELAYED`` for
    what Exim relayed as sender.  ``HarnessError`` if they are not exactly those."""
    rest = stored
    for name in prepended:
        found, length = _first_field(rest)
        if found != name:
            raise HarnessError(f"exim: stored message: expected {name}:, found {found!r}")
        rest = rest[length:]
    return rest


def _first_field(data: bytes) -> tuple[str, int]:
    """The lower-case name of the first header field and its length, continuation lines
    included; ("", 0) if there is none."""
    name, colon, _ = data.partition(b":")
    end = data.find(b"\r\n")
    while end != -1 and data[end + 2 : end + 3] in (b" ", b"\t"):
        end = data.find(b"\r\n", end + 2)
    if not colon or end == -1 or b"\r\n" in name:
        return "", 0
    return name.decode(errors="replace").lower(), end + 2


# --- the machine --------------------------------------------------------------------------------
def _environment() -> dict[str, str]:
    return debs.environment(*(debs.unpacked(p) for p in (DAEMON_PACKAGE, *LIBRARY_PACKAGES)))


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=_environment(), check=False)


def _ensure_user() -> None:
    if _user_exists():
        return
    argv = ["useradd", "--system", "--user-group", "--no-create-home"]
    argv += ["--home-dir", "/var/spool/exim4", "--shell", "/usr/sbin/nologin", USER]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0 and not _user_exists():  # another process may have made it
        raise MtaUnavailable(f"exim: cannot create user {USER}: {_tail(done.stderr)}")


def _user_exists() -> bool:
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return False
    return True


def _copy_binary() -> None:
    """(Re)make ``COPY`` when it differs from the package's exim4; atomic (rename)."""
    source = debs.binary(debs.unpacked(DAEMON_PACKAGE), "exim4")
    if COPY.is_file() and _same_file(COPY.stat(), source.stat()):
        return
    COPY.parent.mkdir(parents=True, exist_ok=True)
    scratch = COPY.with_name(f"{COPY.name}.{os.getpid()}")
    shutil.copy2(source, scratch)
    scratch.chmod(0o755)
    scratch.replace(COPY)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns) == (b.st_size, b.st_mtime_ns)


def _missing_libraries() -> list[str]:
    done = subprocess.run(["ldd", str(COPY)], capture_output=True, text=True, env=_environment())
    return [line.split()[0] for line in done.stdout.splitlines() if "not found" in line]


def _require_reachable(folder: Path) -> None:
    """Deliveries run as Debian-exim: every folder above ours must let others through."""
    path = folder.resolve()
    for parent in (path, *path.parents):
        if not parent.stat().st_mode & 0o001:
            raise HarnessError(f"exim: {USER} cannot reach {folder}: {parent} is not o+x")


def _locked(path: Path) -> bool:
    """Whether some process holds a lock on ``path`` (Exim locks a message's -D file while
    it delivers it); asks with F_GETLK, so it takes no lock itself."""
    query = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    fd = os.open(path, os.O_RDONLY)
    try:
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
    finally:
        os.close(fd)
    return struct.unpack("hhqqi", answer)[0] != fcntl.F_UNLCK


# --- processes ----------------------------------------------------------------------------------
def _end(pid: int, proc: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM, then SIGKILL after the grace; reap it if it is our child."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline:
            if not _running(pid, proc):
                return
            time.sleep(POLL_S)


def _running(pid: int, proc: subprocess.Popen[bytes] | None) -> bool:
    if proc is not None:
        return proc.poll() is None
    try:
        return b") Z" not in Path(f"/proc/{pid}/stat").read_bytes()[:64]
    except FileNotFoundError:
        return False


def _tcp_endpoint(address: str, port: int) -> str:
    """An IPv4 endpoint as /proc/net/tcp writes it (address in host byte order, hex)."""
    packed = bytes(int(part) for part in address.split("."))
    return f"{int.from_bytes(packed, 'little'):08X}:{port:04X}"


def _listening(pid: int) -> set[str]:
    """Endpoints in LISTEN state in the network namespace of process ``pid``."""
    try:
        lines = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return set()
    return {cols[1] for cols in (line.split() for line in lines) if cols[3] == _TCP_LISTEN}


def _delivery_order(path: Path) -> tuple[int, int, str]:
    """Exim's Maildir names start "<seconds>.M<microseconds>P<pid>": sort by that time."""
    found = re.match(r"(\d+)\.M(\d+)P", path.name)
    return (int(found[1]), int(found[2]), path.name) if found else (0, 0, path.name)


def _tail(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


CONFIG = """\
# Written by harness/mta/exim.py for one run; the rules are in that file's header.
{main}domainlist local_domains = {domain}

begin acl

check_rcpt:
  deny    message = relay not permitted
          domains = ! +local_domains
  require verify = recipient
  accept

begin routers

outbound:
  driver = dnslookup
  domains = ! +local_domains
  transport = remote_smtp
  no_more

{local_routers}
begin transports

remote_smtp:
  driver = smtp
  helo_data = {hostname}
  hosts_avoid_tls = *
  tls_verify_certificates =

local_maildir:
  driver = appendfile
  directory = {mail}/${{if def:local_part_data {{$local_part_data}}{{{catchall}}}}}
  maildir_format
  create_directory
  use_crlf
  user = {user}
  group = {user}
  return_path_add
  envelope_to_add
  delivery_date_add

begin retry

*  *  F,1h,1m
"""

LOCAL_USERS = """\
local_users:
  driver = accept
  domains = +local_domains
  local_parts = {users}
  transport = local_maildir
"""

LOCAL_CATCHALL = """\
local_catchall:
  driver = accept
  domains = +local_domains
  transport = local_maildir
"""
