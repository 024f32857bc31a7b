"""Sendmail 8.17 (Debian's sendmail-bin, unpacked) as the sending or the receiving MTA.

Rules kept here:
- Each instance runs its own copy of the binary, ``folder/sendmail``, without the package's
  setgid bit: glibc ignores ``LD_LIBRARY_PATH`` for a set-id program, and libwrap.so.0 is
  found only through it (unpacked from libwrap0).  The copy also names our processes:
  whatever runs ``folder/sendmail`` is this instance's and nobody else's.
- The configuration is generated per start with m4 from the unpacked sendmail-cf tree
  (``sendmail.mc`` -> ``sendmail.cf``) and passed with ``-C``; every path Sendmail would
  take from /etc/mail or /var points into ``self.folder`` (queue, pid and status files,
  service switch, dead.letter, local mailer).  Sendmail runs as root throughout.
- m4 runs as root and would run whatever a scenario value smuggled into it (``esyscmd``,
  or ``dnl``, ``divert``, ``LOCAL_CONFIG`` rescanned at any depth): no value of the site
  and no path ever enters the m4 source.  ``sendmail.mc`` holds only placeholders
  (``quoting.cf_placeholders``), replaced in the generated ``sendmail.cf``, where a value
  is one or more words of letters, digits and ``/._+:-`` (no ``$`` macro reference, no
  blank): the host name and domain must be host names, a user letters, digits, ``_`` and
  ``-`` between dots (the local mailer's folder names too).
- Every Sendmail process runs through ``ip netns exec`` (the host's resolv.conf) inside a
  ``sh -c`` that first bind-mounts our ``hosts`` file over /etc/hosts in that private mount
  namespace.  The lab's hosts file names every lab host, so glibc would answer Sendmail's A,
  AAAA and PTR lookups from it instead of asking the lab DNS.  Ours names localhost and
  the site itself (with the kernel hostname as an alias: Sendmail looks its own name up at
  start-up, and must not ask the DNS for it).  Sendmail's own map lookups use DNS only.
- Sendmail's behaviour on the wire is its default: EHLO ``$j`` (= ``site.hostname``),
  AAAA before A, PIPELINING when offered, canonification lookups of envelope domains,
  VRFY answered, PTR lookup at connect.  Knobs (``harness.mta.base.KNOBS``):
  ``family = "ipv4"`` is ``ClientPortOptions=Family=inet`` as sender and one ``inet``
  daemon as receiver; ``"any"`` leaves the client alone (IPv6 first) and adds an ``inet6``
  daemon on the host's IPv6 address; ``vrfy = "disabled"`` adds ``novrfy`` to
  ``PrivacyOptions`` (252, "Cannot VRFY user"); ``timeouts = "short"`` defines
  ``confTO_CONNECT`` (``Timeout.connect``, default 0: the kernel's, about 2 min),
  ``confTO_DATABLOCK`` and ``confTO_DATAFINAL`` (1 h each), our numbers only.  Changed on
  purpose: no IDENT callback
  (``Timeout.ident=0``, as Debian ships it); no interface probing at start-up (PTR queries
  for the host's own addresses); load-average limits out of reach (a busy shared machine
  must not turn a delivery into a deferral); interactive delivery (a received message is in
  its mailbox before the 250 to the final dot; a submitted one is tried before ``submit``
  returns).
- TLS (``TLS_POLICY``; Sendmail's STARTTLS, OpenSSL): as receiver ``tls = "offer"`` is
  ``confSERVER_CERT``/``confSERVER_KEY`` (root's copies of the chain and key) with
  ``confCACERT``/``confCACERT_PATH``; ``"off"`` sets none of them (no STARTTLS).
  Measured: Sendmail loads only the leaf of ``ServerCertFile``, and OpenSSL completes the
  served chain from the CA file, so as receiver that file is the run's root plus the
  chain's certificates after the leaf (``server-ca.pem``: the intermediate, none for
  ``no-intermediate``, which is then served alone as it should be).  It refuses a
  certificate or key below a world-writable directory (pytest's /tmp folders):
  ``DontBlameSendmail = TrustStickyBit`` takes a sticky one as safe, as /tmp is.
  As sender Sendmail's default is opportunistic (STARTTLS when offered, any certificate:
  ``${verify}`` is only recorded); ``never`` is a ``try_tls`` ruleset (``LOCAL_TRY_TLS``)
  answering an error for every server, which is how an access map's ``Try_TLS:`` NO entry
  turns STARTTLS off (a 4.7.0 one: with a 5xx, measured, Sendmail delivers in plaintext
  and still exits 65, EX_DATAERR);
  ``required`` and ``verify`` are ``tls_server`` rules (``LOCAL_TLS_SERVER``, what a
  ``TLS_Srv:`` entry does): required defers (4.7.0) unless TLS is in use (``${verify}``
  OK, NO, NOT or FAIL: any certificate; a 454 to STARTTLS is TEMP, measured, and NONE
  is no STARTTLS offered); verify defers unless ``${verify}`` is OK (the chain verified
  against ``confCACERT``) and the certificate's CN is the MX host name (``${server_name}``).
  The rules are constant text: no scenario value is in them.
- Local users are ``site.users`` and nobody else (others: 550 5.1.1 at VRFY and RCPT); as
  sender that is the local sender, whose mailbox gets the bounces.  The ``local`` mailer is
  ``folder/deliver``: one file per message under ``mail/<user>/new`` (the user name in
  lower case: ``quoting.mailbox_folder``), CRLF line ends (the message's form in DATA).
  A mailbox it cannot write is a temporary failure (EX_TEMPFAIL: the message stays
  queued), as Postfix and Exim treat it.
- What Sendmail adds (``trace_fields``, removed by ``as_sent``): as sender one leading
  ``Received:`` field (folded); as receiver ``Return-Path:`` (mailer flag P) and
  ``Received:`` (folded), in that order.  A message without ``Date:``, ``From:`` or
  ``Message-Id:`` also gets them, after ``Received:`` (mailer flags D, F, M): those stay,
  a real difference.
- The log, ``sendmail.log``: Sendmail's ``-X`` traffic log of every process (each SMTP line
  in and out, and each local delivery, tagged with the pid) plus everything the processes
  print.  There is no syslog here.
- The daemon is ready once its socket listens (``harness.mta.process``, no probe).
  ``stop()`` ends it and every process of ours still running (an open session's child
  outlives its daemon's SIGTERM): SIGTERM, then SIGKILL, by pid.
- ``queue()`` is ``sendmail -bp -v`` (mailq, verbose: reasons are not cut to the line's
  width): per message its queue id and the reason Sendmail recorded for the message, in
  parentheses (e.g. "(Deferred: 451 4.3.0 Try later)"), then its recipients, each with a
  reason of its own when there is one (else the message's).
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import ClassVar

from harness.errors import HarnessError
from harness.mta import base, debs, process, quoting
from harness.mta.base import MtaAdapter, Site

SENDMAIL = "usr/libexec/sendmail/sendmail"
HELPFILE = "etc/mail/helpfile"
CF_DIR = "usr/share/sendmail/cf"
CHANGELOG = "usr/share/doc/sendmail-bin/changelog.Debian.gz"
# sysexits.h after a delivery attempt: the message was taken and its outcome is on the wire,
# in a DSN or in the queue (EX_OK, EX_NOUSER, EX_NOHOST, EX_UNAVAILABLE, EX_TEMPFAIL)
DELIVERY_STATUSES = frozenset({0, 67, 68, 69, 75})
# EX_OSERR, EX_IOERR: a write to the server failed (an RST mid-message: "putbody: write
# error", "timeout writing message"); the attempt was made, deferred when the queue holds it
WRITE_FAILURES = frozenset({71, 74})
_BIND_HOSTS = 'mount --bind "$0" /etc/hosts && exec "$@"'
# mailq -v: "<id>[*X-] <size> <priority> <date> <sender>", an optional "(<reason>)" of the
# message, then each recipient (indented with tabs) with an optional "(<reason>)" of its own
_MAILQ_MESSAGE = re.compile(r"(\w{8,})[*X-]? +\d+ .*")
_MAILQ_REASON = re.compile(r"\s+\((.*)\)")
_MAILQ_RECIPIENT = re.compile(r"\t+<?([^<>\s]+)>?")
_MAILQ_FRAME = re.compile(
    r"\s*(/\S+ \(\d+ requests?\)|/\S+ is empty|-+Q-ID-+ .*|Total requests: \d+)"
)

# the local mailer: $1 is the recipient's local part ($u, lower-cased by Sendmail)
_DELIVER = """#!/bin/sh
# smtp-harness: Sendmail's local mailer, one file per message, named in delivery order.
case "$1" in ''|.*|*[!a-z0-9._+-]*) echo "$1: not a mailbox name" >&2; exit 67;; esac
box="MAILDIR/$1"
mkdir -p "$box/tmp" "$box/new" || exit 75
name="$(date +%s%N).$$"
cat > "$box/tmp/$name" && mv "$box/tmp/$name" "$box/new/$name" || exit 75
"""

# ruleset ParseLocal (98): the site's users go to the local mailer, other locals are unknown
_ONLY_USERS = """LOCAL_RULE_0
R$={HarnessUsers} < @ $=w . >\t$#local $: $1
R$={HarnessUsers}\t\t$#local $: $1
R$+ < @ $=w . >\t\t$#error $@ 5.1.1 $: "550 User unknown"
R$-\t\t\t$#error $@ 5.1.1 $: "550 User unknown"
"""


# the client's STARTTLS policy (rules above): constant m4 text, tab between LHS and RHS
_CLIENT_TLS = {
    "never": """LOCAL_TRY_TLS
R$*\t$#error $@ 4.7.0 $: "454 STARTTLS is off here: starttls = never"
""",
    "opportunistic": "",
    "required": """LOCAL_TLS_SERVER
RNONE\t$#error $@ 4.7.0 $: "454 STARTTLS is required here: the server offers none"
ROK\t$@ OK
RNO\t$@ OK
RNOT\t$@ OK
RFAIL\t$@ OK
R$*\t$#error $@ 4.7.0 $: "454 STARTTLS is required here: it was not used"
""",
    "verify": """LOCAL_TLS_SERVER
R$*\t$: $1 $| $&{cn_subject}
ROK $| $&{server_name}\t$@ OK
ROK $| $*\t$#error $@ 4.7.0 $: "454 the server certificate does not name the server"
R$* $| $*\t$#error $@ 4.7.0 $: "454 a verified server certificate is required here"
""",
}


class Adapter(MtaAdapter):
    name = "sendmail"
    packages = ("sendmail-bin", "sendmail-cf", "m4", "libwrap0")
    carriers: ClassVar[dict[str, quoting.Carrier]] = {
        "host name": quoting.HOST_NAME,
        "domain": quoting.HOST_NAME,
        "user": quoting.CF_WORD,
    }
    TIMEOUT_OPTIONS: ClassVar[dict[str, tuple[str, ...]]] = {
        "connect": ("confTO_CONNECT",),
        "data": ("confTO_DATABLOCK", "confTO_DATAFINAL"),
    }
    trace_fields: ClassVar[dict[str, tuple[str, ...]]] = {
        "sender": ("Received",),
        "receiver": ("Return-Path", "Received"),
    }

    TLS_POLICY: ClassVar[dict[str, dict[str, str]]] = {  # rules above
        "tls": {
            "off": "no confSERVER_CERT: STARTTLS not offered",
            "offer": "confSERVER_CERT, confSERVER_KEY, confCACERT",
        },
        "starttls": {
            "never": "try_tls: error for every server (Try_TLS: NO)",
            "opportunistic": "its default: STARTTLS when offered, any certificate",
            "required": "tls_server: defer unless ${verify} OK, NO, NOT or FAIL",
            "verify": "tls_server: defer unless ${verify} OK and ${cn_subject} = ${server_name}",
        },
    }

    def __init__(self, site: Site, role: str) -> None:
        super().__init__(site, role)
        self.binary = self.folder / "sendmail"
        self.cf = self.folder / "sendmail.cf"
        self.spool = self.folder / "mqueue"
        self.daemon: subprocess.Popen | None = None
        self.env: dict[str, str] = {}

    # --- the machine ------------------------------------------------------------------
    @classmethod
    def prepare(cls) -> None:
        try:
            roots = [debs.unpacked(package) for package in cls.packages]
        except HarnessError as exc:
            raise base.MtaUnavailable(f"sendmail: {exc}") from exc
        ldd = ["ldd", str(roots[0] / SENDMAIL)]
        env = debs.environment(*roots)
        done = subprocess.run(ldd, capture_output=True, text=True, env=env, check=False)
        missing = [line.split()[0] for line in done.stdout.splitlines() if "not found" in line]
        if done.returncode != 0 or missing:
            why = ", ".join(missing) or done.stderr.strip()
            raise base.MtaUnavailable(f"sendmail: libraries not found: {why}")

    @classmethod
    def version(cls) -> str:
        """The upstream version, from the package's changelog ("8.17.1.9")."""
        with gzip.open(debs.unpacked("sendmail-bin") / CHANGELOG, "rt") as changelog:
            first = changelog.readline()  # sendmail (8.17.1.9-2+deb12u2) bookworm; ...
        return first.split("(", 1)[1].split("-", 1)[0]

    # --- life cycle -------------------------------------------------------------------
    def launch(self) -> None:
        self.env = debs.environment(*(debs.unpacked(p) for p in self.packages))
        if self.role == "receiver":
            self._start_daemon()

    def stop(self) -> None:
        daemon, self.daemon = self.daemon, None
        process.terminate(processes_of(self.binary), children=[daemon] if daemon else [])

    # --- sender role ------------------------------------------------------------------
    def _submit(self, mail_from: str, recipients: list[str], message: bytes) -> None:
        """``sendmail -odi``: tries every recipient before returning; errors are mailed
        back (-oem); a lone "." line is message text (-oi).  An I/O error to the server
        with the message queued is a deferral, not a failed submission."""
        done = self._run(["-odi", "-oi", "-oem", "-f", mail_from, "--", *recipients], message)
        if done.returncode in WRITE_FAILURES and self.queue():
            return
        if done.returncode not in DELIVERY_STATUSES:
            raise HarnessError(f"sendmail: submit exited {done.returncode}: {_last(done)}")

    # --- both roles -------------------------------------------------------------------
    def idle(self) -> bool:
        """No queued message is held by a delivering process (``mailq`` marks those with
        "*"); deferred ones wait for a queue run that nobody starts."""
        return not any(_held(line) for line in self._mailq().splitlines())

    def queue(self) -> list[base.QueuedRecipient]:
        """``mailq``: every recipient of every queued message, with the message's reason."""
        return parse_mailq(self._mailq())

    def _mailq(self) -> str:
        done = self._run(["-bp", "-v"])  # verbose: the reason is not cut to the line's width
        if done.returncode != 0:
            raise base.unreadable(self.name, "sendmail -bp -v", done)
        return done.stdout.decode(errors="replace")

    # --- helpers ----------------------------------------------------------------------
    def _write_config(self) -> None:
        for folder in (self.folder, self.spool, self.mailboxes):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.copyfile(debs.unpacked("sendmail-bin") / SENDMAIL, self.binary)
        self.binary.chmod(0o755)
        deliver = self.folder / "deliver"
        deliver.write_text(_DELIVER.replace("MAILDIR", str(self.mailboxes)))
        deliver.chmod(0o755)
        (self.folder / "service.switch").write_text("hosts\tdns\naliases\tfiles\n")
        (self.folder / "hosts").write_text(self._hosts())
        values = self._cf_values() | self._tls_values(self.tls_files())
        tokens = quoting.cf_placeholders(values)
        mc = self.folder / "sendmail.mc"
        mc.write_text(self._mc(tokens))
        m4 = debs.unpacked("m4") / "usr/bin/m4"
        done = subprocess.run([str(m4), str(mc)], capture_output=True, check=False)
        if done.returncode != 0:
            raise HarnessError(f"sendmail: m4 {mc}: {_last(done)}")
        self.cf.write_text(quoting.cf_fill(done.stdout.decode(), tokens, values))

    def _hosts(self) -> str:
        names = f"{self.site.hostname} {os.uname().nodename}"
        own = [(address, names) for address in self.site.lab.host(self.site.host).addresses]
        lines = [("127.0.0.1", "localhost"), ("::1", "localhost"), *own]
        return "".join(f"{address}\t{name}\n" for address, name in lines)

    def _cf_values(self) -> dict[str, str]:
        """Every value of sendmail.cf that is not constant, by placeholder name."""
        site, folder = self.site, self.folder
        addresses = self.site.addresses if self.role == "receiver" else []
        return {
            "hostname": site.hostname,
            "domain": site.domain,
            "users": " ".join(site.users),
            "queue": str(self.spool),
            "pid": str(folder / "sendmail.pid"),
            "status": str(folder / "sendmail.st"),
            "help": str(debs.unpacked("sendmail-bin") / HELPFILE),
            "switch": str(folder / "service.switch"),
            "dead": str(folder / "dead.letter"),
            "deliver": str(folder / "deliver"),
            **{f"address{i}": address for i, address in enumerate(addresses)},
        }

    def _tls_values(self, tls: base.TlsFiles | None) -> dict[str, str]:
        """The TLS files' paths, by placeholder name (none without TLS)."""
        if tls is None:
            return {}
        values = {"ca": str(tls.ca), "ca_path": str(tls.ca.parent)}
        if tls.chain is not None and tls.key is not None:
            leaf = self.site.pki.server(self.site.hostname, self.site.knob("certificate")).leaf
            issuers = tls.chain.read_bytes().replace(leaf.read_bytes(), b"", 1)
            served = tls.ca.with_name("server-ca.pem")
            served.write_bytes(tls.ca.read_bytes() + issuers)
            values |= {"ca": str(served), "cert": str(tls.chain), "key": str(tls.key)}
        return values

    def _tls_lines(self, tokens: dict[str, str]) -> list[str]:
        """The m4 lines of the TLS knobs (rules above): defines, then the client's rules
        (after the MAILER lines, as cf.m4 wants)."""
        lines = []
        if "ca" in tokens:
            lines += [f"define(`confCACERT', `{tokens['ca']}')dnl"]
            lines += [f"define(`confCACERT_PATH', `{tokens['ca_path']}')dnl"]
        if "cert" in tokens:
            lines += [f"define(`confSERVER_CERT', `{tokens['cert']}')dnl"]
            lines += [f"define(`confSERVER_KEY', `{tokens['key']}')dnl"]
            lines += ["define(`confDONT_BLAME_SENDMAIL', `TrustStickyBit')dnl"]  # rules above
        return lines

    def _mc(self, tokens: dict[str, str]) -> str:
        """The m4 source of sendmail.cf for this site and role: constant text and
        ``tokens``, nothing else (see the rules)."""
        defines = {
            "confDOMAIN_NAME": tokens["hostname"],
            "QUEUE_DIR": tokens["queue"],
            "confPID_FILE": tokens["pid"],
            "STATUS_FILE": tokens["status"],
            "HELP_FILE": tokens["help"],
            "ALIAS_FILE": "",
            "confSERVICE_SWITCH_FILE": tokens["switch"],
            "confDEAD_LETTER_DROP": tokens["dead"],
            "confDONT_PROBE_INTERFACES": "True",
            "confTO_IDENT": "0",
            "confQUEUE_LA": "1000",
            "confREFUSE_LA": "1000",
            "confDELIVERY_MODE": "interactive",
            "LOCAL_MAILER_PATH": tokens["deliver"],
            "LOCAL_MAILER_ARGS": "deliver $u",
            "LOCAL_MAILER_FLAGS": "PSn9",  # S: stay root, n: no "From " line
            "LOCAL_MAILER_EOL": "\\r\\n",
        }
        cf_dir = debs.unpacked("sendmail-cf") / CF_DIR
        quoting.require_plain(self.name, cf_dir)
        lines = ["divert(0)dnl", f"include(`{cf_dir}/m4/cf.m4')dnl"]
        lines += [f"define(`{name}', `{value}')dnl" for name, value in defines.items()]
        lines += [
            "MODIFY_MAILER_FLAGS(`LOCAL', `-Aw5:/|@')dnl",  # no aliases, no passwd entry
            "FEATURE(`no_default_msa')dnl",
            f"LOCAL_DOMAIN(`{tokens['domain']}')dnl",
            f"LOCAL_DOMAIN(`{tokens['hostname']}')dnl",
        ]
        lines += self._knob_lines(tokens) + self._tls_lines(tokens)
        lines += ["LOCAL_CONFIG", "C{HarnessUsers}" + tokens["users"], _ONLY_USERS]
        lines += ["MAILER(`local')dnl", "MAILER(`smtp')dnl", _CLIENT_TLS[self.starttls], ""]
        return "\n".join(lines)

    def _knob_lines(self, tokens: dict[str, str]) -> list[str]:
        """The m4 lines for the site's knobs: daemons (receiver) or client family, VRFY."""
        site, lines = self.site, []
        if self.role == "receiver":
            for i, address in enumerate(site.addresses):
                family = "inet6" if ":" in address else "inet"
                where = f"Addr={tokens[f'address{i}']}, Port={site.port}"
                lines.append(f"DAEMON_OPTIONS(`Family={family}, Name=MTA-{family}, {where}')dnl")
        elif site.knob("family") == "ipv4":
            lines.append("CLIENT_OPTIONS(`Family=inet')dnl")
        if site.knob("vrfy") == "disabled":
            lines.append("define(`confPRIVACY_FLAGS', `authwarnings,novrfy')dnl")
        timeouts = self.timeout_options().items()
        lines += [f"define(`{name}', `{value}')dnl" for name, value in timeouts]
        return lines

    def _start_daemon(self) -> None:
        with self.log_path.open("ab") as log:
            self.daemon = self.site.lab.popen(
                self.site.host,
                self._argv("-bD"),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        daemon = self.daemon
        self.await_listening(daemon.pid, lambda: daemon.poll() is None)

    def _argv(self, *args: str) -> list[str]:
        command = [str(self.binary), "-C", str(self.cf), "-X", str(self.log_path), *args]
        return ["sh", "-c", _BIND_HOSTS, str(self.folder / "hosts"), *command]

    def _run(self, args: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess:
        argv = self._argv(*args)
        done = self.site.lab.run(self.site.host, argv, input=stdin, text=False, env=self.env)
        with self.log_path.open("ab") as log:
            log.write(done.stdout + done.stderr)
        return done


def parse_mailq(listing: str) -> list[base.QueuedRecipient]:
    """``sendmail -bp -v`` output -> one entry per recipient of each queued message, with
    its own reason when mailq gives one, else its message's (rules above); a line of no
    known form is ``QueueUnreadable``."""
    found: list[list[str]] = []  # [recipient, queue id, reason]
    queue_id, reason, last = "", "", None
    for line in listing.splitlines():
        message, because = _MAILQ_MESSAGE.fullmatch(line), _MAILQ_REASON.fullmatch(line)
        recipient = _MAILQ_RECIPIENT.fullmatch(line)
        if message:
            queue_id, reason, last = message.group(1), "no reason recorded yet", None
        elif because and queue_id:
            if last is None:
                reason = because.group(1)
            else:
                last[2] = because.group(1)
        elif recipient and queue_id:
            last = [recipient.group(1), queue_id, reason]
            found.append(last)
        elif line.strip() and not _MAILQ_FRAME.fullmatch(line):
            raise base.QueueUnreadable(
                f"sendmail: sendmail -bp -v: unexpected line {line.strip()!r}"
            )
    return [base.QueuedRecipient(r, q, why, base.status_code_in(why)) for r, q, why in found]


def processes_of(binary: Path) -> list[int]:
    """Live pids running ``binary`` (an instance's private copy of sendmail)."""
    return process.pids_where(lambda proc: os.readlink(f"{proc}/exe") == str(binary))


def _held(line: str) -> bool:
    """A mailq job line whose id ends with "*": a process is delivering it."""
    words = line.split()
    return bool(words) and words[0].endswith("*") and words[0][:-1].isalnum()


def _last(done: subprocess.CompletedProcess) -> str:
    text = done.stderr if isinstance(done.stderr, str) else done.stderr.decode(errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"
