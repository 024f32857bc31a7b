"""Postfix 3.7 from Debian's package: one private instance per run, as sender or receiver.

Rules kept here:
1. Binaries come from the unpacked ``postfix`` package; ``main.cf`` and ``master.cf`` are
   written fresh for every run, never copied from /etc.  Every path Postfix writes (queue,
   data, mailboxes, log) is under the run folder; its compiled-in paths (daemon, command,
   shlib, meta directories) point into the unpacked tree, and ``LD_LIBRARY_PATH`` reaches
   its daemons and postdrop through ``import_environment`` and ``export_environment``
   (Postfix clears its children's environment; the binaries' RUNPATH is /usr/lib/postfix).
2. No chroot, DNS only: the smtp client asks MX then A (it ignores glue) through
   the host's resolv.conf, i.e. the lab DNS.  Knobs (``harness.mta.base.KNOBS``):
   ``family`` is ``inet_protocols`` (ipv4, or all: then the receiver listens on the
   host's IPv6 address too); ``vrfy = "disabled"`` is ``disable_vrfy_command = yes``;
   ``timeouts = "short"`` sets ``smtp_connect_timeout`` (default 30 s) and
   ``smtp_data_xfer_timeout`` / ``smtp_data_done_timeout`` (180 s, 600 s).
   The daemons run with a private /etc/hosts naming only localhost and the site itself,
   so smtpd's PTR lookup of its client at connect goes to the lab DNS instead of the
   lab's hosts file.
   TLS (``TLS_POLICY``): as receiver ``tls = "off"`` is ``smtpd_tls_security_level =
   none`` (no STARTTLS), ``"offer"`` is ``may`` with ``smtpd_tls_chain_files`` (the key,
   then the chain: the run's certificate for the host name, as ``certificate`` says).  As
   sender ``starttls`` is ``smtp_tls_security_level``: never = ``none``, opportunistic =
   ``may`` (TLS when offered, plaintext after a failed handshake too), required =
   ``encrypt`` (TLS or defer, no certificate check), verify = ``verify`` with
   ``smtp_tls_CAfile`` the run's CA and ``smtp_tls_verify_cert_match = hostname`` (the MX
   host name, from the insecure MX lookup).  With TLS in either role the ``tlsmgr``
   service runs and both sides log at ``*_tls_loglevel = 1`` (the TLS connection line:
   protocol, cipher, peer certificate's CN and whether it was verified).
3. The site's domain is delivered by virtual(8) into Maildir mailboxes under the folder,
   one per ``site.users`` (named by ``quoting.mailbox_folder``, never by the user name),
   owned by the ``postfix`` user; any other address there is unknown: 550 at RCPT and at
   VRFY (``smtpd_reject_unlisted_recipient``).  As sender the site's user is luke, so the
   bounce for a rejected recipient stays local, off the wire.
4. The daemons run as ``postfix`` and open absolute paths, but a run folder may sit below
   a folder only root can enter (pytest's 0700 tmp dirs).  So every Postfix command runs in
   the host's mount namespace (``ip netns exec`` makes a private one) with the folder
   bind-mounted on ``VIEW``, a fixed, world-traversable, empty directory: main.cf names
   ``VIEW`` paths, Python reads the real ones.  Parallel runs do not clash: each mount is
   private to its namespace, gone with it.
5. The queue directories are created here as ``post-install`` would, and ``quick-start``
   skips postfix-script's integrity checks: a fresh instance starts in ~0.2 s, not 2.3 s.
6. What Postfix adds to a message (``trace_fields``, removed by ``as_sent``): as sender,
   one leading ``Received`` field (cleanup(8), folded); as receiver, the file virtual(8)
   writes starts with ``Return-Path``, ``X-Original-To``, ``Delivered-To`` (virtual) and
   ``Received`` (smtpd, folded), then the message as received with LF line ends.
7. Postfix prints its errors to a TTY only: everything goes to ``maillog_file`` (the run's
   ``postfix.log``), and a failure quotes that log's last line.
8. Scenario values (``harness.mta.quoting``): host name and domain must be host names
   (Postfix's own rule for myhostname and mydomain); every main.cf value is written with
   ``$`` doubled; a user is a key of the mailbox table (``user@domain`` in lower case, as
   virtual(8) looks it up: no blank, no leading ``#``), and its mailbox folder is named by
   ``quoting.mailbox_folder``.
9. ``queue()`` is ``postqueue -j`` (one JSON object a message, a ``delay_reason`` per
   recipient that was tried); the status code is the one in that reason, else the
   ``dsn=`` of the last log line Postfix wrote for that queue id and recipient.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import ClassVar

from harness.errors import HarnessError
from harness.mta import base, debs, process, quoting
from harness.mta.base import MtaAdapter, Site

USER, GROUP, SETGID_GROUP = "postfix", "postfix", "postdrop"
VIEW = Path("/run/smtp-harness/postfix")  # where the daemons see the run folder (rule 4)
# run in the host: the folder on VIEW, then our hosts file on /etc/hosts (rules 2 and 4)
ENTER = 'mount --bind "$1" "$2" && mount --bind "$2/etc/hosts" /etc/hosts && shift 2 && exec "$@"'
QUEUES = ("active", "bounce", "corrupt", "defer", "deferred", "flush", "hold", "incoming")
QUEUES += ("private", "saved", "trace")  # all owned by postfix, mode 0700
PENDING_QUEUES = ("maildrop", "incoming", "active")  # in the order mail moves through them
# a log line about one recipient: "<queue id>: to=<address>, ... dsn=X.Y.Z, status=..."
_LOG_RECIPIENT = re.compile(r" (\w+): to=<([^>]*)>, .*?\bdsn=(\d\.\d+\.\d+), status=")

# master.cf: service type private unpriv chroot wakeup maxproc command (rule 2: chroot n)
MASTER_CF = """\
{port:<9} inet  n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
virtual   unix  - n n - - virtual
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""
TLSMGR = "tlsmgr    unix  - - n 1000? 1 tlsmgr\n"  # TLS session cache and PRNG (rule 2)


class Adapter(MtaAdapter):
    name = "postfix"
    packages: ClassVar[tuple[str, ...]] = ("postfix",)
    carriers: ClassVar[dict[str, quoting.Carrier]] = {
        "host name": quoting.HOST_NAME,
        "domain": quoting.HOST_NAME,
        "user": quoting.POSTFIX_KEY,
    }
    TIMEOUT_OPTIONS: ClassVar[dict[str, tuple[str, ...]]] = {
        "connect": ("smtp_connect_timeout",),
        "data": ("smtp_data_xfer_timeout", "smtp_data_done_timeout"),
    }
    trace_fields: ClassVar[dict[str, tuple[str, ...]]] = {  # rule 6
        "sender": ("Received",),  # cleanup(8), for mail submitted with sendmail(1)
        "receiver": ("Return-Path", "X-Original-To", "Delivered-To", "Received"),
    }
    mailbox_line_end = b"\n"
    TLS_POLICY: ClassVar[dict[str, dict[str, str]]] = {  # rule 2
        "tls": {
            "off": "smtpd_tls_security_level = none",
            "offer": "smtpd_tls_security_level = may, smtpd_tls_chain_files = key, chain",
        },
        "starttls": {
            "never": "smtp_tls_security_level = none",
            "opportunistic": "smtp_tls_security_level = may",
            "required": "smtp_tls_security_level = encrypt",
            "verify": "smtp_tls_security_level = verify, smtp_tls_verify_cert_match = hostname",
        },
    }
    _SECURITY_LEVEL: ClassVar[dict[str, str]] = {
        "never": "none",
        "opportunistic": "may",
        "required": "encrypt",
        "verify": "verify",
    }

    def __init__(self, site: Site, role: str) -> None:
        super().__init__(site, role)
        self._master: int | None = None  # the running master's pid (and process group)

    @classmethod
    def prepare(cls) -> None:
        try:
            debs.unpacked("postfix")
            process.ensure_group(SETGID_GROUP)
            process.ensure_group(GROUP)
            process.ensure_user(USER, "/nonexistent", group=GROUP)
        except HarnessError as exc:
            raise base.MtaUnavailable(f"postfix: {exc}") from None
        VIEW.mkdir(mode=0o755, parents=True, exist_ok=True)
        for folder in (VIEW, *VIEW.parents):
            if not folder.stat().st_mode & 0o001:
                raise base.MtaUnavailable(f"postfix: {folder} must be searchable by user {USER}")

    @classmethod
    def version(cls) -> str:
        root = debs.unpacked("postfix")
        done = debs.run(root, "postconf", "-c", str(root / "etc/postfix"), "-dh", "mail_version")
        if done.returncode != 0:
            raise base.MtaUnavailable(f"postfix: postconf: {done.stderr.strip()}")
        return done.stdout.strip()

    # --- paths --------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        """The unpacked package (a single stat once it is there)."""
        return debs.unpacked("postfix")

    @property
    def etc(self) -> Path:
        return self.folder / "etc"

    @property
    def spool(self) -> Path:
        return self.folder / "spool"

    # --- life cycle ---------------------------------------------------------------------
    def launch(self) -> None:
        self._postfix("start")
        self._master = self._master_pid()
        self._wait_listening()

    def stop(self) -> None:
        master, self._master = self._master, None
        if master is not None:  # SIGTERM is what `postfix stop` does, minus its 1 s sleeps
            process.end_group(master)

    # --- sender role --------------------------------------------------------------------
    def _submit(self, mail_from: str, recipients: list[str], message: bytes) -> None:
        # sendmail(1) reads a message with LF or CRLF line ends; -i: a lone "." is content
        argv = [str(debs.binary(self.root, "sendmail")), "-C", f"{VIEW}/etc", "-i"]
        done = self._run([*argv, "-f", mail_from, "--", *recipients], input=message, text=False)
        if done.returncode != 0:
            raise HarnessError(
                f"postfix: sendmail exited {done.returncode}: {self.last_log_line()}"
            )

    # --- both roles ---------------------------------------------------------------------
    def idle(self) -> bool:
        """Nothing in maildrop, incoming or active (deferred mail waits for a retry).  Two
        passes, each in the order mail moves: a message renamed between queues while the
        first pass runs, or a bounce created meanwhile, is seen by the second."""
        return not (self._pending() or self._pending())

    def _pending(self) -> bool:
        return any(any((self.spool / q).rglob("*")) for q in PENDING_QUEUES)

    def queue(self) -> list[base.QueuedRecipient]:
        """Rule 9."""
        argv = [str(debs.binary(self.root, "postqueue")), "-c", f"{VIEW}/etc", "-j"]
        done = self._run(argv)
        if done.returncode != 0:
            raise base.unreadable(self.name, "postqueue -j", done)
        return parse_postqueue(done.stdout, self._log_status_codes())

    def _log_status_codes(self) -> dict[tuple[str, str], str]:
        """(queue id, lower-cased recipient) -> the dsn= of its last log line."""
        try:
            log = self.log_path.read_text(errors="replace")
        except OSError as exc:
            raise base.QueueUnreadable(f"postfix: cannot read {self.log_path}: {exc}") from None
        return {(q, rcpt.lower()): dsn for q, rcpt, dsn in _LOG_RECIPIENT.findall(log)}

    # --- configuration ------------------------------------------------------------------
    def _write_config(self) -> None:
        """The instance's tree (rule 5), main.cf, master.cf, the mailbox map and hosts."""
        uid, gid = pwd.getpwnam(USER).pw_uid, grp.getgrnam(GROUP).gr_gid
        setgid = grp.getgrnam(SETGID_GROUP).gr_gid
        if self.folder.exists():  # an earlier run into the same run folder
            shutil.rmtree(self.folder)
        self.etc.mkdir(parents=True)
        self.folder.chmod(0o755)
        for sub in ("spool", "spool/pid"):
            (self.folder / sub).mkdir(mode=0o755)
        for queue in QUEUES:
            _owned_dir(self.spool / queue, 0o700, uid, gid)
        _owned_dir(self.spool / "maildrop", 0o730, uid, setgid)
        _owned_dir(self.spool / "public", 0o710, uid, setgid)
        _owned_dir(self.folder / "lib", 0o700, uid, gid)
        _owned_dir(self.mailboxes, 0o700, uid, gid)
        (self.spool / "quick-start").touch()
        site = self.site
        # virtual(8) looks its recipient up in lower case, and texthash keeps keys as given
        boxes = [
            f"{u}@{site.domain}".lower() + f" {quoting.mailbox_folder(u)}/\n" for u in site.users
        ]
        (self.etc / "mailboxes").write_text("".join(boxes))
        hosts = f"127.0.0.1 localhost\n{site.address} {site.hostname}\n"
        (self.etc / "hosts").write_text(hosts)
        tls = self.tls_files(uid, gid)
        master = MASTER_CF.format(port=site.port) + (TLSMGR if tls else "")
        (self.etc / "master.cf").write_text(master)
        main = (self._main_cf(uid, gid) | self._tls_cf(tls)).items()
        (self.etc / "main.cf").write_text(
            "".join(f"{k} = {quoting.postfix_value(v)}\n" for k, v in main)
        )
        for written in self.etc.iterdir():
            _backdate(written)

    def _main_cf(self, uid: int, gid: int) -> dict[str, str]:
        """Parameter -> the value it must have (``_write_config`` quotes it, rule 8)."""
        site, tree = self.site, self.root
        listen = ", ".join(site.addresses) if self.role == "receiver" else "loopback-only"
        library_path = ":".join(str(d) for d in debs.library_dirs(tree))
        return {
            "compatibility_level": "3.6",
            "config_directory": f"{VIEW}/etc",
            "queue_directory": f"{VIEW}/spool",
            "data_directory": f"{VIEW}/lib",
            "daemon_directory": str(tree / "usr/lib/postfix/sbin"),
            "command_directory": str(tree / "usr/sbin"),
            "shlib_directory": str(tree / "usr/lib/postfix"),
            "meta_directory": str(tree / "etc/postfix"),
            "sendmail_path": str(tree / "usr/sbin/sendmail"),
            "mail_owner": USER,
            "setgid_group": SETGID_GROUP,
            "import_environment": f"MAIL_CONFIG MAIL_DEBUG LANG=C LD_LIBRARY_PATH={library_path}",
            "export_environment": f"TZ MAIL_CONFIG LANG LD_LIBRARY_PATH={library_path}",
            "maillog_file": f"{VIEW}/{self.log_path.name}",
            "maillog_file_prefixes": str(VIEW),
            "myhostname": site.hostname,
            "mydomain": site.domain,
            "myorigin": site.domain,
            "mydestination": "",
            "relayhost": "",
            "inet_interfaces": listen,
            "inet_protocols": "all" if site.knob("family") == "any" else "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtp_host_lookup": "dns",
            "smtp_dns_support_level": "enabled",
            "smtputf8_enable": "no",
            "alias_maps": "",
            "alias_database": "",
            "local_transport": "error:local delivery is disabled",
            "virtual_mailbox_domains": site.domain,
            "virtual_mailbox_maps": f"texthash:{VIEW}/etc/mailboxes",
            "virtual_mailbox_base": f"{VIEW}/mail",
            "virtual_minimum_uid": str(uid),
            "virtual_uid_maps": f"static:{uid}",
            "virtual_gid_maps": f"static:{gid}",
            "smtpd_reject_unlisted_recipient": "yes",
            "disable_vrfy_command": "yes" if site.knob("vrfy") == "disabled" else "no",
            **self.timeout_options(),
        }

    def _tls_cf(self, tls: base.TlsFiles | None) -> dict[str, str]:
        """The TLS parameters of rule 2, paths as the daemons see them (on ``VIEW``)."""
        level = self._SECURITY_LEVEL[self.starttls]
        if tls is None:
            return {"smtp_tls_security_level": level, "smtpd_tls_security_level": "none"}
        view = f"{VIEW}/tls"
        params = {
            "smtp_tls_security_level": level,
            "smtp_tls_CAfile": f"{view}/{tls.ca.name}",
            "smtp_tls_verify_cert_match": "hostname",
            "smtp_tls_loglevel": "1",
            "smtpd_tls_security_level": "none",
        }
        if tls.chain is not None and tls.key is not None:
            chain = f"{view}/{tls.key.name}, {view}/{tls.chain.name}"
            params |= {"smtpd_tls_security_level": "may", "smtpd_tls_chain_files": chain}
            params["smtpd_tls_loglevel"] = "1"
        return params

    # --- running ------------------------------------------------------------------------
    def _run(self, argv: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        """A Postfix program in the site's host, seeing the folder on VIEW (rules 2, 4)."""
        enter = ["sh", "-c", ENTER, "sh", str(self.folder), str(VIEW)]
        env = debs.environment(self.root)
        return self.site.lab.run(self.site.host, [*enter, *argv], env=env, **kwargs)

    def _postfix(self, command: str) -> None:
        postfix = str(debs.binary(self.root, "postfix"))
        done = self._run([postfix, "-c", f"{VIEW}/etc", command])
        if done.returncode != 0:
            said = done.stderr.strip().splitlines()
            raise HarnessError(
                f"postfix {command} in {self.site.host} failed: "
                f"{said[-1] if said else ''} (log: {self.last_log_line()})"
            )

    def _master_pid(self) -> int:
        path = self.spool / "pid" / "master.pid"
        try:
            return int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            raise HarnessError(
                f"postfix: no master pid in {path}: {self.last_log_line()}"
            ) from None

    def _wait_listening(self) -> None:
        """Until the master's listening sockets are in its namespace's TCP table (rule 2 of
        ``harness.mta.process``: smtpd would look a prober up and put that on the wire)."""
        master = self._master
        assert master is not None
        where = self.site.addresses if self.role == "receiver" else ["127.0.0.1"]
        self.await_listening(master, lambda: process.alive(master), where)


def parse_postqueue(text: str, log_codes: dict[tuple[str, str], str]) -> list[base.QueuedRecipient]:
    """``postqueue -j`` output (one JSON object a line) -> one entry per recipient; the
    status code from the delay reason, else from ``log_codes`` (rule 9)."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            message = json.loads(line)
            queue_id, queue_name = message["queue_id"], message["queue_name"]
            recipients = [(r["address"], r.get("delay_reason", "")) for r in message["recipients"]]
        except (ValueError, KeyError, TypeError) as exc:
            why = f"postfix: postqueue -j line {number}: {exc!r}: {line[:200]}"
            raise base.QueueUnreadable(why) from None
        for address, reason in recipients:
            logged = log_codes.get((queue_id, address.lower()))
            said = reason or f"in the {queue_name} queue, not tried yet"
            code = base.status_code_in(reason) or logged
            found.append(base.QueuedRecipient(address, queue_id, said, code))
    return found


# --- helpers ------------------------------------------------------------------------------
def _owned_dir(path: Path, mode: int, uid: int, gid: int) -> None:
    path.mkdir()
    os.chown(path, uid, gid)
    path.chmod(mode)


def _backdate(path: Path) -> None:
    """Postfix waits (0.3 s polls, up to ~2 s) while main.cf or a texthash table is younger
    than a second or two, in case an editor is still writing it: ours are finished."""
    past = time.time() - 60
    os.utime(path, (past, past))
