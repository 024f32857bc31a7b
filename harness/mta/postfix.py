"""Postfix 3.7 from Debian's package: one private instance per run, as sender or receiver.

Rules kept here:
1. Binaries come from the unpacked ``postfix`` package; ``main.cf`` and ``master.cf`` are
   written fresh for every run, never copied from /etc.  Every path Postfix writes (queue,
   data, mailboxes, log) is under the run folder; its compiled-in paths (daemon, command,
   shlib, meta directories) point into the unpacked tree, and ``LD_LIBRARY_PATH`` reaches
   its daemons and postdrop through ``import_environment`` and ``export_environment``
   (Postfix clears its children's environment; the binaries' RUNPATH is /usr/lib/postfix).
2. No chroot, no TLS, DNS only: the smtp client asks MX then A (it ignores glue) through
   the host's resolv.conf, i.e. the lab DNS.  Knobs (``harness.mta.base.KNOBS``):
   ``family`` is ``inet_protocols`` (ipv4, or all: then the receiver listens on the
   host's IPv6 address too); ``vrfy = "disabled"`` is ``disable_vrfy_command = yes``.
   The daemons run with a private /etc/hosts naming only localhost and the site itself,
   so smtpd's PTR lookup of its client at connect goes to the lab DNS instead of the
   lab's hosts file.
3. The site's domain is delivered by virtual(8) into Maildir mailboxes under the folder,
   one per ``site.users``, owned by the ``postfix`` user; any other address there is
   unknown: 550 at RCPT and at VRFY (``smtpd_reject_unlisted_recipient``).  As sender the
   site's user is luke, so the bounce for a rejected recipient stays local, off the wire.
4. The daemons run as ``postfix`` and open absolute paths, but a run folder may sit below
   a folder only root can enter (pytest's 0700 tmp dirs).  So every Postfix command runs in
   the host's mount namespace (``ip netns exec`` makes a private one) with the folder
   bind-mounted on ``VIEW``, a fixed, world-traversable, empty directory: main.cf names
   ``VIEW`` paths, Python reads the real ones.  Parallel runs do not clash: each mount is
   private to its namespace, gone with it.
5. The queue directories are created here as ``post-install`` would, and ``quick-start``
   skips postfix-script's integrity checks: a fresh instance starts in ~0.2 s, not 2.3 s.
6. What Postfix adds to a message, and ``as_sent`` removes to compare it byte for byte:
   as sender, one leading ``Received`` field (cleanup(8), folded); as receiver, the file
   virtual(8) writes starts with ``Return-Path``, ``X-Original-To``, ``Delivered-To``
   (virtual) and ``Received`` (smtpd, folded), then the message as received with LF line
   ends.  Exactly
   those leading fields are removed and CRLF restored; any other difference is real.
7. Postfix prints its errors to a TTY only: everything goes to ``maillog_file`` (the run's
   ``postfix.log``), and a failure quotes that log's last line.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import ClassVar

from harness.errors import HarnessError
from harness.mta import debs
from harness.mta.base import MtaAdapter, MtaUnavailable, Site

USER, GROUP, SETGID_GROUP = "postfix", "postfix", "postdrop"
VIEW = Path("/run/smtp-harness/postfix")  # where the daemons see the run folder (rule 4)
# run in the host: the folder on VIEW, then our hosts file on /etc/hosts (rules 2 and 4)
ENTER = 'mount --bind "$1" "$2" && mount --bind "$2/etc/hosts" /etc/hosts && shift 2 && exec "$@"'
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
POLL_S = 0.02
PENDING_QUEUES = ("maildrop", "incoming", "active")  # in the order mail moves through them
QUEUES = ("active", "bounce", "corrupt", "defer", "deferred", "flush", "hold", "incoming")
QUEUES += ("private", "saved", "trace")  # all owned by postfix, mode 0700
TRACE_FIELDS = {  # rule 6: what each role's copy starts with, in order
    "sender": (b"received",),  # cleanup(8), for mail submitted with sendmail(1)
    "receiver": (b"return-path", b"x-original-to", b"delivered-to", b"received"),
}

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


class Adapter(MtaAdapter):
    name = "postfix"
    packages: ClassVar[tuple[str, ...]] = ("postfix",)

    def __init__(self, site: Site, role: str) -> None:
        super().__init__(site, role)
        self._master: int | None = None  # the running master's pid (and process group)

    @classmethod
    def prepare(cls) -> None:
        try:
            debs.unpacked("postfix")
        except HarnessError as exc:
            raise MtaUnavailable(f"postfix: {exc}") from None
        _ensure_group(SETGID_GROUP)
        _ensure_group(GROUP)
        _ensure_user(USER)
        VIEW.mkdir(mode=0o755, parents=True, exist_ok=True)
        for folder in (VIEW, *VIEW.parents):
            if not folder.stat().st_mode & 0o001:
                raise MtaUnavailable(f"postfix: {folder} must be searchable by user {USER}")

    @classmethod
    def version(cls) -> str:
        root = debs.unpacked("postfix")
        done = debs.run(root, "postconf", "-c", str(root / "etc/postfix"), "-dh", "mail_version")
        if done.returncode != 0:
            raise MtaUnavailable(f"postfix: postconf: {done.stderr.strip()}")
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

    @property
    def mail(self) -> Path:
        return self.folder / "mail"

    # --- life cycle ---------------------------------------------------------------------
    def start(self) -> None:
        self.prepare()
        self._layout()
        self._postfix("start")
        self._master = self._master_pid()
        self._wait_listening()

    def stop(self) -> None:
        master, self._master = self._master, None
        if master is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(master, signal.SIGTERM)  # what `postfix stop` does, minus its 1 s sleeps
        _end_group(master, time.monotonic() + STOP_TIMEOUT_S)

    # --- sender role --------------------------------------------------------------------
    def submit(self, mail_from: str, recipients: list[str], message: bytes) -> None:
        if self.role != "sender":
            super().submit(mail_from, recipients, message)
        # sendmail(1) reads a message with LF or CRLF line ends; -i: a lone "." is content
        argv = [str(debs.binary(self.root, "sendmail")), "-C", f"{VIEW}/etc", "-i"]
        done = self._run([*argv, "-f", mail_from, "--", *recipients], input=message, text=False)
        if done.returncode != 0:
            raise HarnessError(f"postfix: sendmail exited {done.returncode}: {self._last_log()}")

    # --- both roles ---------------------------------------------------------------------
    def idle(self) -> bool:
        """Nothing in maildrop, incoming or active (deferred mail waits for a retry).  Two
        passes, each in the order mail moves: a message renamed between queues while the
        first pass runs, or a bounce created meanwhile, is seen by the second."""
        return not (self._pending() or self._pending())

    def _pending(self) -> bool:
        return any(any((self.spool / q).rglob("*")) for q in PENDING_QUEUES)

    def mailbox(self, user: str) -> list[bytes]:
        """The Maildir's messages as virtual(8) stored them (rule 6), oldest first; as
        sender, luke's bounces (rule 3)."""
        new = self.mail / user / "new"
        if not new.is_dir():
            return []
        files = sorted(new.iterdir(), key=lambda p: (p.stat().st_mtime_ns, p.name))
        return [p.read_bytes() for p in files]

    def as_sent(self, stored: bytes) -> bytes:
        """Rule 6: the leading trace fields removed, in wire form; a copy that does not start
        with them is returned in wire form only (the comparison then shows the difference)."""
        wire = stored.replace(b"\n", b"\r\n") if self.role == "receiver" else stored
        lines = wire.split(b"\r\n")
        for name in TRACE_FIELDS[self.role]:
            if not lines[0].lower().startswith(name + b":"):
                return wire
            lines = _drop_field(lines)
        return b"\r\n".join(lines)

    # --- configuration ------------------------------------------------------------------
    def _layout(self) -> None:
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
        _owned_dir(self.mail, 0o700, uid, gid)
        (self.spool / "quick-start").touch()
        boxes = "".join(f"{u}@{self.site.domain} {u}/\n" for u in self.site.users)
        (self.etc / "mailboxes").write_text(boxes)
        hosts = f"127.0.0.1 localhost\n{self.site.address} {self.site.hostname}\n"
        (self.etc / "hosts").write_text(hosts)
        (self.etc / "master.cf").write_text(MASTER_CF.format(port=self.site.port))
        main = "".join(f"{k} = {v}\n" for k, v in self._main_cf(uid, gid).items())
        (self.etc / "main.cf").write_text(main)
        for written in self.etc.iterdir():
            _backdate(written)

    def _main_cf(self, uid: int, gid: int) -> dict[str, str]:
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
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
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
        }

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
                f"{said[-1] if said else ''} (log: {self._last_log()})"
            )

    def _master_pid(self) -> int:
        path = self.spool / "pid" / "master.pid"
        try:
            return int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            raise HarnessError(f"postfix: no master pid in {path}: {self._last_log()}") from None

    def _wait_listening(self) -> None:
        """Until the master's listening socket is in its namespace's TCP table (no probe
        connection: smtpd would look the prober up and put that on the wire)."""
        address = "127.0.0.1" if self.role == "sender" else self.site.address
        wanted = f"{_hex_address(address)}:{self.site.port:04X}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if _listening(self._master, wanted):
                return
            time.sleep(POLL_S)
        raise HarnessError(f"postfix: nothing listens on {address}:{self.site.port}")

    def _last_log(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return lines[-1] if lines else "empty log"


# --- helpers ------------------------------------------------------------------------------
def _ensure_group(name: str) -> None:
    try:
        grp.getgrnam(name)
    except KeyError:
        _system(["groupadd", "--system", name])


def _ensure_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        home = ["--home-dir", "/nonexistent", "--no-create-home", "--shell", "/usr/sbin/nologin"]
        _system(["useradd", "--system", "--gid", GROUP, *home, name])


def _system(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode not in (0, 9):  # 9: created meanwhile by a parallel run
        raise MtaUnavailable(f"postfix: {' '.join(argv)}: {done.stderr.strip()}")


def _owned_dir(path: Path, mode: int, uid: int, gid: int) -> None:
    path.mkdir()
    os.chown(path, uid, gid)
    path.chmod(mode)


def _backdate(path: Path) -> None:
    """Postfix waits (0.3 s polls, up to ~2 s) while main.cf or a texthash table is younger
    than a second or two, in case an editor is still writing it: ours are finished."""
    past = time.time() - 60
    os.utime(path, (past, past))


def _drop_field(lines: list[bytes]) -> list[bytes]:
    """Lines after the first header field and its continuation lines."""
    rest = lines[1:]
    while rest and rest[0][:1] in (b" ", b"\t"):
        rest = rest[1:]
    return rest


def _hex_address(address: str) -> str:
    """An IPv4 address as /proc/net/tcp writes it (host byte order, little-endian)."""
    return "".join(f"{int(octet):02X}" for octet in reversed(address.split(".")))


def _listening(pid: int | None, local: str) -> bool:
    try:
        table = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(row.split()[1] == local and row.split()[3] == "0A" for row in table)


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        # after "(comm)": state ppid pgrp; a zombie has ended (whoever adopted it reaps it)
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _end_group(pgid: int, deadline: float) -> None:
    """Wait for the master's process group to go; SIGKILL what is left at the deadline."""
    while time.monotonic() < deadline:
        if not _group_members(pgid):
            return
        time.sleep(POLL_S)
    for pid in _group_members(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
