"""Exim 4.96 (Debian's exim4-daemon-light, unpacked) as the sending or the receiving MTA.

Rules kept here:

1. One configuration for both roles, written fresh into the folder by ``start()``: the
   site's domain is local (its users get Maildir mailboxes under ``mail/``; as sender,
   every other local part of its domain lands in ``mail/postmaster``, so its bounces are
   kept), every other domain goes out by MX (dnslookup router, smtp transport: EHLO with
   the site's hostname, TLS as rule 9 says).  Spool, pid file, log (``exim.log``: main and panic
   log) and the daemon's stderr (``exim.stderr``) live in the folder; nothing in /etc or
   /var.  Knobs (``harness.mta.base.KNOBS``): ``family = "any"`` is
   ``disable_ipv6 = false`` and, as receiver, the host's IPv6 address in
   ``local_interfaces``; ``vrfy = "disabled"`` leaves ``acl_smtp_vrfy`` unset, Exim's own
   way of refusing VRFY (its default: "252 Administrative prohibition");
   ``timeouts = "short"`` sets the smtp transport's ``connect_timeout`` (default 5 min),
   ``data_timeout`` (5 min, each block of the message) and ``final_timeout`` (10 min, the
   reply to the final ".").
2. As sender Exim runs no daemon: ``submit()`` runs ``exim -odi``, which returns once the
   delivery attempt is over (a bounce it generates is delivered locally, in the
   background); what could not be delivered stays deferred in the spool: no queue runner
   retries it.  As receiver a foreground daemon (``-bdf -q1m``) listens on the site's
   addresses and port; ``start()`` returns once its sockets are in LISTEN state
   (``harness.mta.process``: a probe connection would be logged and would make Exim ask
   the lab DNS for the PTR of the receiver's own address).
3. The receiver looks up the client's PTR, and the A of the name it gets, at connect
   (``host_lookup = *``), before its 220; it answers VRFY by routing the address
   (``acl_smtp_vrfy = accept``; a bare local part from a remote host gets 501, Exim's
   default) and refuses at RCPT what it cannot route (``verify = recipient``) or is not
   for its domain.  No ident (RFC 1413) callback; with ``tls = "off"`` no TLS set-up at
   all, so the daemon does not spend half a second making a self-signed certificate.
4. A stored message is the bytes received after DATA (CRLF line ends: ``use_crlf``) behind
   exactly the trace fields in ``trace_fields["receiver"]``, in that order: Return-path,
   Envelope-to and Delivery-date (added by the Maildir transport, as Debian's own
   configuration does) and one Received (added at reception).  As sender, Exim prepends
   one Received field (``from root by <hostname> with local``) to what it relays and
   changes nothing else in the seed message.
5. Exim runs from a copy of the package's binary without its setuid bit: Exim drops to
   Debian-exim and re-executes itself (deliveries, bounces), and a setuid binary started
   by that user runs in secure mode, which ignores the ``LD_LIBRARY_PATH`` pointing at
   the unpacked libidn12.  With the copy nothing regains root, so deliveries run as
   Debian-exim (``deliver_drop_privilege``) and the folder must be reachable by that
   user (checked by ``start()``).  Everything else is the package's: its binary's bytes,
   its compiled-in user and paths.
6. ``stop()`` ends the daemon and, by pid, every process still running this instance's
   configuration (deliveries it forked): SIGTERM, SIGKILL after a grace.
7. Scenario values never meet Exim's macros, lists or expansions (``harness.mta.quoting``):
   the host name and domain are written double-quoted into ``primary_hostname`` and
   ``qualify_domain`` (neither is expanded); the local domain and the users are quoted keys
   of lsearch files (``domains``, ``users``: the data of a user is its mailbox folder,
   ``quoting.mailbox_folder``); every list and expanded option names them by variable or
   lookup only (``$primary_hostname``, ``lsearch;$config_dir/users``), and every path by
   ``$config_dir``.  Only control characters are refused.
8. ``queue()`` is ``exim -bp`` (the messages in the spool and their undelivered
   recipients); the reason is the last ``==`` (deferred) line of the main log for that
   message and recipient: what follows the address, e.g. ``R=outbound T=remote_smtp defer
   (-44) H=mail.receiver.com [192.0.2.25]: SMTP error ... 451 4.3.0 Try later``.
9. TLS (``TLS_POLICY``; GnuTLS): as receiver ``tls = "offer"`` is ``tls_advertise_hosts =
   *`` with ``tls_certificate``/``tls_privatekey`` (copies owned by Debian-exim, who reads
   them in the receiving process), ``"off"`` advertises nothing and loads nothing.  As
   sender the smtp transport's ``starttls``: never = ``hosts_avoid_tls = *``;
   opportunistic = TLS when offered, plaintext when not or when the handshake fails
   (``tls_tempfail_tryclear``, its default), the certificate checked against the run's CA
   for the log only (``tls_try_verify_hosts = *``: ``CV=yes|no``); required =
   ``hosts_require_tls = *`` (any certificate); verify = ``hosts_require_tls = *``,
   ``tls_verify_hosts = *``, ``tls_verify_certificates`` the run's CA and
   ``tls_verify_cert_hostnames = *`` (the MX host name).
10. As receiver offering TLS, GnuTLS writes the daemon's TLS secrets in the NSS key log
   format: ``SSLKEYLOGFILE`` (kept through ``keep_environment``) names ``spool/keylog.txt``
   (0600, Debian-exim's), copied by ``stop()`` to ``<run>/tls/exim-keylog.txt`` (0600),
   where the ladder finds every key log of the run.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import re
import shutil
import struct
import subprocess
from pathlib import Path
from typing import ClassVar

from harness.errors import HarnessError
from harness.mta import base, debs, process, quoting
from harness.mta.base import MtaAdapter, Site

USER = "Debian-exim"  # compiled into Debian's binary
DAEMON_PACKAGE = "exim4-daemon-light"
LIBRARY_PACKAGES = ("libidn12",)  # not installed on a fresh Debian 12
COPY = debs.CACHE.parent / "exim" / "exim4"  # the package's binary without setuid (rule 5)
LOGS = ("main", "panic")  # log_file_path = <folder>/%slog: both are links to exim.log
CATCHALL = "postmaster"  # as sender: the mailbox of its domain's other local parts
# exim -bp (rule 8): "<age> <size> <id> <sender>[ *** frozen ***]", then its recipients,
# each "        D <address>" once delivered, "          <address>" while it is not
_BP_MESSAGE = re.compile(r" *\d+[smhdw] +\S+ (\S+) <([^>]*)>.*")
_BP_RECIPIENT = re.compile(r" {8}([D ]) (\S.*)")
# a main log line of a deferral: "<date> <time> <id> == <address> [<original>] <why>"
_LOG_DEFER = re.compile(r"^\S+ \S+ (\S+) == (\S+) (?:<[^>]*> )?(.*)$", re.MULTILINE)


class Adapter(MtaAdapter):
    name = "exim"
    packages = (DAEMON_PACKAGE, "exim4-base", *LIBRARY_PACKAGES)
    carriers: ClassVar[dict[str, quoting.Carrier]] = {
        "host name": quoting.ANY,
        "domain": quoting.ANY,
        "user": quoting.ANY,
    }
    TIMEOUT_OPTIONS: ClassVar[dict[str, tuple[str, ...]]] = {
        "connect": ("connect_timeout", "command_timeout"),  # rule 1: Fast Open
        "data": ("data_timeout", "final_timeout"),
    }
    trace_fields: ClassVar[dict[str, tuple[str, ...]]] = {  # rule 4
        "sender": ("Received",),
        "receiver": ("Return-path", "Envelope-to", "Delivery-date", "Received"),
    }

    TLS_POLICY: ClassVar[dict[str, dict[str, str]]] = {  # rule 9
        "tls": {
            "off": "tls_advertise_hosts = (empty)",
            "offer": "tls_advertise_hosts = *, tls_certificate, tls_privatekey",
        },
        "starttls": {
            "never": "hosts_avoid_tls = *",
            "opportunistic": "TLS when offered, tls_tempfail_tryclear, tls_try_verify_hosts = *",
            "required": "hosts_require_tls = *",
            "verify": "hosts_require_tls = *, tls_verify_hosts = *, tls_verify_cert_hostnames",
        },
    }

    def __init__(self, site: Site, role: str) -> None:
        super().__init__(site, role)
        self.config = self.folder / "exim.conf"
        self.spool = self.folder / "spool"
        self._daemon: subprocess.Popen[bytes] | None = None

    # --- the machine -------------------------------------------------------------------------
    @classmethod
    def prepare(cls) -> None:
        try:
            for package in cls.packages:
                debs.unpacked(package)
            process.ensure_user(USER, "/var/spool/exim4")
            _copy_binary()
        except (HarnessError, OSError) as exc:
            raise base.MtaUnavailable(f"exim: {exc}") from None
        missing = _missing_libraries()
        if missing:
            raise base.MtaUnavailable(f"exim: shared libraries not found: {', '.join(missing)}")

    @classmethod
    def version(cls) -> str:
        cls.prepare()
        done = _run([str(COPY), "-C", "/dev/null", "-bV"])
        found = re.search(r"^Exim version (\S+)", done.stdout, re.MULTILINE)
        if found is None:
            raise base.MtaUnavailable(f"exim -bV: {_tail(done.stderr or done.stdout)}")
        return found[1]

    # --- life cycle --------------------------------------------------------------------------
    def launch(self) -> None:
        done = _run([*self._exim(), "-bV"])
        if done.returncode != 0:
            raise HarnessError(f"exim: {self.config}: {_tail(done.stderr or done.stdout)}")
        if self.role == "receiver":
            self._start_daemon()

    def stop(self) -> None:
        daemon, self._daemon = self._daemon, None
        process.terminate(self._stragglers(), children=[daemon] if daemon else [])
        self._copy_keylog()

    # --- sender role -------------------------------------------------------------------------
    def _submit(self, mail_from: str, recipients: list[str], message: bytes) -> None:
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

    def queue(self) -> list[base.QueuedRecipient]:
        """Rule 8."""
        done = _run([*self._exim(), "-bp"])
        if done.returncode != 0:
            raise base.unreadable(self.name, "exim -bp", done)
        try:
            log = self.log_path.read_text(errors="replace")
        except OSError as exc:
            raise base.QueueUnreadable(f"exim: cannot read {self.log_path}: {exc}") from None
        return parse_queue(done.stdout, log)

    # --- the instance ------------------------------------------------------------------------
    def _exim(self) -> list[str]:
        return [str(COPY), "-C", str(self.config)]

    def _write_config(self) -> None:
        """The folder, the spool and mailboxes Debian-exim owns, the log, the lookup files
        and the configuration (rule 7)."""
        for folder in (self.folder, self.spool, self.mailboxes):
            folder.mkdir(parents=True, exist_ok=True)
        _require_reachable(self.folder)
        exim = pwd.getpwnam(USER)
        self.log_path.touch()
        for path in (self.spool, self.mailboxes, self.log_path):
            os.chown(path, exim.pw_uid, exim.pw_gid)
        for kind in LOGS:
            link = self.folder / f"{kind}log"
            link.unlink(missing_ok=True)
            link.symlink_to(self.log_path.name)
        site = self.site
        users = (f"{quoting.exim_string(u)}: {quoting.mailbox_folder(u)}\n" for u in site.users)
        (self.folder / "users").write_text("".join(users))
        (self.folder / "domains").write_text(quoting.exim_string(site.domain) + "\n")
        self.tls_files(exim.pw_uid, exim.pw_gid)
        if self.offers_tls:
            self.keylog.unlink(missing_ok=True)
            os.close(os.open(self.keylog, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            os.chown(self.keylog, exim.pw_uid, exim.pw_gid)
        main = "".join(f"{key} = {value}\n" for key, value in self._main_options().items())
        transport = "".join(f"  {key} = {value}\n" for key, value in self.timeout_options().items())
        catchall = LOCAL_CATCHALL if self.role == "sender" else ""
        client = "".join(f"  {key} = {value}\n" for key, value in self._client_tls().items())
        self.config.write_text(
            CONFIG.format(
                main=main,
                transport=transport + client,
                catchall=catchall,
                catchall_box=CATCHALL,
                user=USER,
            )
        )
        self.config.chmod(0o644)  # Exim refuses a configuration others may write

    def _main_options(self) -> dict[str, str]:
        """Option -> its value as written (rule 7: quoted, or a reference)."""
        site = self.site
        ours = {
            "primary_hostname": quoting.exim_string(site.hostname),
            "qualify_domain": quoting.exim_string(site.domain),
            "exim_path": quoting.exim_string(str(COPY)),
            "spool_directory": "$config_dir/spool",
            "log_file_path": "$config_dir/%slog",
            "write_rejectlog": "false",
            "pid_file_path": "$config_dir/exim.pid",
            "keep_environment": "LD_LIBRARY_PATH : SSLKEYLOGFILE",
            "deliver_drop_privilege": "true",
            "disable_ipv6": "false" if site.knob("family") == "any" else "true",
            "local_interfaces": "<; " + " ; ".join(site.addresses),
            "host_lookup": "*",
            "rfc1413_hosts": "",
            "acl_smtp_rcpt": "check_rcpt",
            "acl_smtp_vrfy": "accept",
            "tls_advertise_hosts": "",
            # expanded, so never preloaded; and never used while TLS is not offered
            "tls_certificate": "$config_dir/unused.pem",
            "tls_verify_certificates": "",
        }
        if self.offers_tls:
            ours |= {
                "tls_advertise_hosts": "*",
                "tls_certificate": "$config_dir/tls/server.crt",
                "tls_privatekey": "$config_dir/tls/server.key",
            }
        if site.knob("vrfy") == "disabled":
            del ours["acl_smtp_vrfy"]
        return ours

    def _client_tls(self) -> dict[str, str]:
        """The smtp transport's TLS options for ``starttls`` (rule 9)."""
        policy = self.starttls
        if policy == "never":
            return {"hosts_avoid_tls": "*", "tls_verify_certificates": ""}
        options = {"tls_verify_certificates": "$config_dir/tls/ca.pem"}
        if policy in ("required", "verify"):
            options["hosts_require_tls"] = "*"
        if policy == "verify":
            options |= {"tls_verify_hosts": "*", "tls_verify_cert_hostnames": "*"}
        return options

    @property
    def keylog(self) -> Path:
        """Rule 10: where GnuTLS writes the daemon's TLS secrets."""
        return self.spool / "keylog.txt"

    def _copy_keylog(self) -> None:
        """Rule 10: the daemon's key log into the run's tls folder, mode 0600."""
        pki = self.site.pki
        if not self.offers_tls or pki is None or not self.keylog.is_file():
            return
        target = pki.folder / "exim-keylog.txt"
        target.unlink(missing_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(self.keylog.read_bytes())

    def _start_daemon(self) -> None:
        argv = [*self._exim(), "-bdf", "-oX", str(self.site.port), "-q1m"]
        with (self.folder / "exim.stderr").open("wb") as stderr:
            self._daemon = self.site.lab.popen(
                self.site.host,
                argv,
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                env=_environment() | self._keylog_environment(),
            )
        daemon = self._daemon
        self.await_listening(daemon.pid, lambda: daemon.poll() is None, why=self._why)

    def _keylog_environment(self) -> dict[str, str]:
        return {"SSLKEYLOGFILE": str(self.keylog)} if self.offers_tls else {}

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
        return process.pids_where(lambda proc: wanted in Path(proc, "cmdline").read_bytes())


def parse_queue(listing: str, log: str) -> list[base.QueuedRecipient]:
    """``exim -bp`` output and the main log -> the undelivered recipients (rule 8)."""
    deferred = {(m, a.lower()): why for m, a, why in _LOG_DEFER.findall(log)}
    found: list[base.QueuedRecipient] = []
    message, frozen = None, False
    for line in listing.splitlines():
        head, rcpt = _BP_MESSAGE.fullmatch(line), _BP_RECIPIENT.fullmatch(line)
        if head:
            message, frozen = head.group(1), line.endswith("*** frozen ***")
        elif rcpt and message and rcpt.group(1) == " ":
            address = rcpt.group(2)
            why = deferred.get((message, address.lower()))
            said = why or ("frozen" if frozen else "not tried yet")
            found.append(base.QueuedRecipient(address, message, said, base.status_code_in(said)))
        elif line.strip() and not rcpt:
            raise base.QueueUnreadable(f"exim: exim -bp: unexpected line {line.strip()!r}")
    return found


# --- the machine --------------------------------------------------------------------------------
def _environment() -> dict[str, str]:
    return debs.environment(*(debs.unpacked(p) for p in (DAEMON_PACKAGE, *LIBRARY_PACKAGES)))


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=_environment(), check=False)


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


def _tail(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


CONFIG = """\
# Written by harness/mta/exim.py for one run; the rules are in that file's header.
{main}domainlist local_domains = lsearch;$config_dir/domains

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

local_users:
  driver = accept
  domains = +local_domains
  local_parts = lsearch;$config_dir/users
  transport = local_maildir
{catchall}
begin transports

remote_smtp:
  driver = smtp
  helo_data = $primary_hostname
{transport}
local_maildir:
  driver = appendfile
  directory = $config_dir/mail/${{if def:local_part_data {{$local_part_data}}{{{catchall_box}}}}}
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

LOCAL_CATCHALL = """
local_catchall:
  driver = accept
  domains = +local_domains
  transport = local_maildir
"""
