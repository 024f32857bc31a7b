"""A lab: the topology's hosts, each in its own network namespace, on one private bridge.

Rules kept here:
- Nothing is created in the root namespace.  The bridge lives in ``<id>-lan``; each host is
  ``<id>-<host>`` with one veth (``eth0``) into the bridge; no host has a default route.
- Every resource is recorded in the lab's ownership record before it exists (registry.py)
  and is removed by ``down()`` — on normal exit, on an exception, on Ctrl-C and on SIGTERM
  (``harness.signals.end`` handles the ending signals while a lab is up, and holds them
  from the first step of its teardown to the last) — or by ``clean_stale()`` after a SIGKILL.
- Teardown ends the lab's processes before it deletes a namespace's name: its recorded
  (pid, start time) pairs and whatever lives in its namespaces, and nothing else, listed
  afresh until none is left (one may fork as it is stopped); SIGTERM, then SIGKILL, each
  through a pidfd checked against the start time, so a reused pid is never signalled.  One
  that cannot be ended keeps the namespaces named and the record kept, and the error names
  its pid: a second ``lab clean`` tries again.
- Programs we do not write see the lab's DNS because they run through ``ip netns exec``,
  which bind-mounts ``/etc/netns/<ns>/resolv.conf`` and ``hosts``.  Our own code gets
  sockets created inside a host (netns.socket_in) instead.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from harness import signals
from harness.errors import LabError
from harness.lab import netns
from harness.lab.registry import Record, all_records, new_record, process_start, running
from harness.lab.topology import Host, Topology, default_topology

ETC_NETNS = Path("/etc/netns")
KILL_GRACE_S = 1.0  # how long SIGTERM's grace lasts, and each round of SIGKILL
KILL_ROUNDS = 3  # rounds of SIGKILL (the processes listed afresh each) before giving up


def _ip_batch(commands: Sequence[str], netns_name: str | None = None, force: bool = False) -> str:
    """Run several iproute2 commands in one ``ip -batch`` process; what it said, if it
    failed (with ``force``, which goes on past a failure: otherwise a ``LabError``)."""
    argv = ["ip"] + (["-n", netns_name] if netns_name else []) + (["-force"] if force else [])
    argv += ["-batch", "-"]
    # In a session of its own: a Ctrl-C at the terminal is the harness's to handle (a teardown
    # holds it until the lab is gone); an `ip` it killed would leave namespaces behind.
    proc = subprocess.run(
        argv, input="\n".join(commands) + "\n", capture_output=True, text=True,
        start_new_session=True,
    )  # fmt: skip
    if proc.returncode == 0:
        return ""
    detail = (proc.stderr or proc.stdout).strip().splitlines()
    said = f"ip {' '.join(argv[1:-2])}: {detail[-1] if detail else f'exit {proc.returncode}'}"
    if not force:
        raise LabError(said)
    return said


class Lab:
    """Bring a topology up with ``with Lab(topology) as lab:``; it is gone afterwards."""

    def __init__(self, topology: Topology | None = None, purpose: str = "run") -> None:
        self.topology = topology or default_topology()
        self.purpose = purpose
        self.record: Record | None = None
        self._old_handlers: dict[int, object] = {}

    # --- naming -------------------------------------------------------------------------
    @property
    def id(self) -> str:
        if self.record is None:
            raise LabError("lab is not up")
        return self.record.lab_id

    @property
    def lan_ns(self) -> str:
        return f"{self.id}-lan"

    def ns(self, host: str) -> str:
        self.topology.host(host)
        return f"{self.id}-{host}"

    def host(self, name: str) -> Host:
        return self.topology.host(name)

    def port(self, host: str) -> str:
        """The bridge's port to ``host`` (in the ``-lan`` namespace): its egress is the
        host's link inbound."""
        return f"p{self.topology.hosts.index(self.topology.host(host))}"

    # --- life cycle ---------------------------------------------------------------------
    def __enter__(self) -> Lab:
        self._trap_signals()
        try:
            self.up()
        except BaseException as exc:
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    @signals.holding  # from its first step: a signal landing now waits for the teardown
    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            self._down_and_restore(exc)
            signals.raise_noted()  # a signal that cancelled an event loop in the block
        finally:
            signals.release()

    def _down_and_restore(self, exc: BaseException | None) -> None:
        """Teardown, then the old handlers; a teardown that fails while a signal ends the
        block leaves the signal deciding the exit code, with the failure as its note."""
        try:
            try:
                self._teardown()
            finally:
                self._restore_signals()
        except LabError as error:
            if signals.signal_of(exc) is None:
                raise
            exc.add_note(f"smtp-harness: {error}")  # type: ignore[union-attr]

    def up(self) -> None:
        _require_root()
        rec = self.record = new_record(self.purpose)  # assigned first: down() sees it
        rec.hosts = {h.name: f"{rec.lab_id}-{h.name}" for h in self.topology.hosts}
        rec.namespaces = [self.lan_ns, *rec.hosts.values()]
        rec.paths = [str(ETC_NETNS / ns) for ns in rec.hosts.values()]
        rec.save()
        _ip_batch([f"netns add {ns}" for ns in rec.namespaces])
        self._quiet_ipv6()
        self._wire_bridge()
        for host in self.topology.hosts:
            self._configure_host(host)
            self._write_resolver_files(host)

    @signals.holding
    def down(self) -> None:
        """Remove everything the lab made.  Safe to call twice and after a failed ``up``; a
        signal landing meanwhile is delivered once all is gone."""
        try:
            self._teardown()
        finally:
            signals.release()

    def _teardown(self) -> None:
        if self.record is not None:
            teardown(self.record)
            self.record = None

    # --- building blocks ----------------------------------------------------------------
    def _quiet_ipv6(self) -> None:
        """No IPv6 on bridge ports; hosts send no router solicitations and skip DAD."""
        for key in ("all", "default"):
            netns.write_sysctl(self.lan_ns, f"net.ipv6.conf.{key}.disable_ipv6", "1")
        for ns in self.record.hosts.values():
            netns.write_sysctl(ns, "net.ipv6.conf.default.router_solicitations", "0")
            netns.write_sysctl(ns, "net.ipv6.conf.default.accept_dad", "0")

    def _wire_bridge(self) -> None:
        cmds = [
            "link set lo up",
            "link add br0 type bridge stp_state 0 forward_delay 0 mcast_snooping 0",
            "link set br0 up",
        ]
        for host in self.topology.hosts:
            port = self.port(host.name)
            cmds += [
                f"link add {port} type veth peer name eth0 netns {self.ns(host.name)}",
                f"link set {port} master br0",
                f"link set {port} up",
            ]
        _ip_batch(cmds, self.lan_ns)

    def _configure_host(self, host: Host) -> None:
        cmds = ["link set lo up", f"addr add {host.ipv4}/{self.topology.ipv4_prefix} dev eth0"]
        if host.ipv6:
            cmds.append(f"addr add {host.ipv6}/{self.topology.ipv6_prefix} dev eth0 nodad")
        cmds.append("link set eth0 up")
        _ip_batch(cmds, self.ns(host.name))

    def _write_resolver_files(self, host: Host) -> None:
        etc = ETC_NETNS / self.ns(host.name)
        etc.mkdir(parents=True, exist_ok=True)
        dns = self.topology.dns_server
        lines = [f"nameserver {_address(dns.ipv4)}", "options timeout:1 attempts:2"] if dns else []
        (etc / "resolv.conf").write_text("".join(f"{x}\n" for x in lines))
        (etc / "hosts").write_text(hosts_file(self.topology.hosts))

    # --- using the hosts ----------------------------------------------------------------
    def exec_argv(self, host: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(host), *argv]

    def run(self, host: str, argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
        """Run a command to completion inside ``host`` (with the lab's resolv.conf)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.exec_argv(host, argv), **kwargs)

    def popen(self, host: str, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        """Start a long-running command inside ``host``; ``down()`` will end it."""
        proc = subprocess.Popen(self.exec_argv(host, argv), **kwargs)
        start = process_start(proc.pid)
        if start is not None:
            self.record.pids.append((proc.pid, start))
            self.record.save()
        return proc

    def socket_factory(self, host: str) -> netns.SocketFactory:
        """A ``socket.socket`` stand-in whose sockets live in ``host``."""
        return netns.socket_factory(self.ns(host))

    # --- signals ------------------------------------------------------------------------
    def _trap_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in signals.ENDING:
            if signal.getsignal(sig) != signal.SIG_IGN:
                self._old_handlers[sig] = signal.signal(sig, signals.end)

    def _restore_signals(self) -> None:
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers.clear()


# --- /etc/netns/<ns>/{hosts,resolv.conf}: the topology is validated on load; this is the
# last guard before a name becomes a line in a file that every program in the host reads.
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def hosts_file(hosts: Sequence[Host]) -> str:
    """The lab's /etc/hosts: every host's addresses with its FQDN and name (RFC 1123)."""
    lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost"]
    for h in hosts:
        names = [_hostname(n, h.name) for n in (h.fqdn, h.name) if n]
        lines += [f"{_address(a)} {' '.join(names)}" for a in h.addresses]
    return "".join(f"{line}\n" for line in lines)


def _hostname(name: str, host: str) -> str:
    if not isinstance(name, str) or len(name) > 253 or not _HOSTNAME.fullmatch(name):
        raise LabError(f"host {host!r}: refusing to write {name!r} into /etc/hosts")
    return name


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise LabError(f"refusing to write {text!r} as an address") from None


def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces); run as root")


# --- teardown, shared by Lab.down and `lab clean` ----------------------------------------
def teardown(rec: Record) -> None:
    """Remove every resource ``rec`` names; the record goes last, once all is gone."""
    own = [ns for ns in rec.namespaces if ns.startswith(rec.lab_id + "-")]
    _end_processes(rec, own)
    existing = [ns for ns in own if netns.netns_inode(ns) is not None]
    said = _ip_batch([f"netns delete {ns}" for ns in existing], force=True) if existing else ""
    for path in rec.paths:
        _remove_path(path, rec.lab_id)
    left = [ns for ns in own if netns.netns_inode(ns) is not None]
    if left:
        why = f" ({said})" if said else ""
        raise LabError(f"lab {rec.lab_id}: could not delete namespaces {', '.join(left)}{why}")
    rec.delete()


def _remove_path(path: str, lab_id: str) -> None:
    p = Path(path)
    if lab_id not in p.name and lab_id not in str(p.parent):
        return  # never remove what does not carry the lab's id
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


Process = tuple[int, int]  # (pid, start time): a pid alone may have been reused


def _end_processes(rec: Record, namespaces: list[str]) -> None:
    """End the lab's processes, listed afresh each round (one may fork as it is stopped):
    SIGTERM to each once while KILL_GRACE_S lasts, then up to KILL_ROUNDS rounds of SIGKILL;
    a ``LabError`` naming the pids still alive after that."""
    inodes = {netns.netns_inode(ns) for ns in namespaces} - {None}
    grace, termed, kills = time.monotonic() + KILL_GRACE_S, set(), 0
    while procs := _lab_processes(rec, inodes):
        if time.monotonic() < grace:
            _signal_and_wait(procs, procs - termed, signal.SIGTERM, grace)
            termed |= procs
        elif kills < KILL_ROUNDS:
            _signal_and_wait(procs, procs, signal.SIGKILL, time.monotonic() + KILL_GRACE_S)
            kills += 1
        else:
            pids = ", ".join(str(pid) for pid, _ in sorted(procs))
            raise LabError(
                f"lab {rec.lab_id}: could not end pids {pids}; its namespaces keep their "
                "names (run `smtp-harness lab clean` again)"
            )


def _lab_processes(rec: Record, inodes: set[int]) -> set[Process]:
    """The lab's live processes (its recorded ones, whatever lives in its namespaces), but
    never us.  A scan that finds none is made twice: a process forked during a scan may take
    a pid the scan has passed (pids wrap at pid_max)."""
    return _scan(rec, inodes) or _scan(rec, inodes)


def _scan(rec: Record, inodes: set[int]) -> set[Process]:
    listed = {(pid, start) for pid, start in rec.pids}
    listed |= {(pid, process_start(pid)) for pid in _pids_in(inodes)}
    return {
        (pid, start)
        for pid, start in listed
        if start is not None and pid != os.getpid() and running(pid, start)
    }


def _signal_and_wait(procs: set[Process], told: set[Process], sig: int, until: float) -> None:
    """Send ``sig`` to ``told``, then wait until every one of ``procs`` has exited or it is
    ``until``.  Each is held by a pidfd opened before its start time is checked, so neither
    the signal nor the wait can reach a process that took a reused pid."""
    pidfds = {proc: fd for proc in procs if (fd := _pidfd(proc)) is not None}
    try:
        for proc in told & pidfds.keys():
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfds[proc], sig)
        _wait_exited(list(pidfds.values()), until)
    finally:
        for fd in pidfds.values():
            os.close(fd)


def _pidfd(proc: Process) -> int | None:
    """A pidfd for ``proc``, or None if it is gone (or its pid is another process now)."""
    pid, start = proc
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    if running(pid, start):
        return fd
    os.close(fd)
    return None


def _wait_exited(pidfds: list[int], until: float) -> None:
    """Wait until every pidfd is readable (its process has exited), or it is ``until``."""
    poller = select.poll()
    for fd in pidfds:
        poller.register(fd, select.POLLIN)
    waiting = len(pidfds)
    while waiting and (left := until - time.monotonic()) > 0:
        for fd, _ in poller.poll(left * 1000):
            poller.unregister(fd)
            waiting -= 1


def _pids_in(inodes: set[int]) -> set[int]:
    """The pids whose network namespace is one of ``inodes``."""
    if not inodes:
        return set()
    found = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            link = os.readlink(f"/proc/{entry.name}/ns/net")
        except OSError:
            continue
        if int(link[5:-1]) in inodes:  # "net:[4026532281]"
            found.add(int(entry.name))
    return found


def clean_stale() -> list[str]:
    """Tear down every lab whose owner process is gone; return their ids."""
    cleaned = []
    for rec in all_records():
        if not rec.owner_alive():
            teardown(rec)
            cleaned.append(rec.lab_id)
    return cleaned
