"""The processes of a real MTA: readiness read from the kernel, stopping them, system users.

Rules kept here:
1. Readiness is read, never probed: an endpoint is ready once a socket in LISTEN state for
   it (or for the wildcard address on its port) is in ``/proc/PID/net/tcp`` or ``tcp6``,
   the TCP tables of the network namespace PID lives in.  A probe connection would be an
   SMTP session of its own: the MTA would log it and ask the lab DNS for the prober's PTR,
   a query the run never made.
2. A process is alive while ``/proc/PID/stat`` exists and its state is not Z: a zombie has
   ended (its parent reaps it).  Our own children are reaped through their ``Popen``.
3. Stopping is always by pid: SIGTERM, a grace, SIGKILL for what is left, and a bounded
   wait for that too.  A process group is signalled only through the pids that are in it
   now (``group_members``): its id stays reserved while any member lives, so it is never
   someone else's.
4. System users and groups are created as Debian's maintainer scripts do (``useradd
   --system``, no home, no login); one created meanwhile by a parallel run is no error.
   A failure is a ``HarnessError`` naming the command and its complaint (the adapter's
   ``prepare`` says which MTA cannot run).
"""

from __future__ import annotations

import contextlib
import grp
import ipaddress
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from harness.errors import HarnessError

POLL_S = 0.01
GRACE_S = 5.0  # SIGTERM -> SIGKILL
START_TIMEOUT_S = 15.0  # start -> listening
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column
_WILDCARD = {4: "0.0.0.0", 6: "::"}


# --- readiness (rule 1) ---------------------------------------------------------------------
def tcp_endpoint(address: str, port: int) -> str:
    """``address:port`` as /proc/net/tcp{,6} writes it: each 32-bit word of the address in
    host byte order (little-endian here), in hex, then the port in hex."""
    packed = ipaddress.ip_address(address).packed
    words = (packed[i : i + 4] for i in range(0, len(packed), 4))
    return "".join(f"{int.from_bytes(w, 'little'):08X}" for w in words) + f":{port:04X}"


def listening(pid: int) -> set[str]:
    """The endpoints in LISTEN state in the network namespace of process ``pid`` (empty
    when it is gone)."""
    found = set()
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        found |= {cols[1] for cols in (row.split() for row in rows) if cols[3] == _LISTEN}
    return found


def is_listening(pid: int, address: str, port: int) -> bool:
    """Rule 1: ``address:port``, or the wildcard address on ``port``, listens."""
    wildcard = _WILDCARD[ipaddress.ip_address(address).version]
    return bool(listening(pid) & {tcp_endpoint(address, port), tcp_endpoint(wildcard, port)})


def await_listening(
    name: str,
    pid: int,
    endpoints: Iterable[tuple[str, int]],
    *,
    running: Callable[[], bool],
    why: Callable[[], str],
    timeout_s: float = START_TIMEOUT_S,
) -> None:
    """Until every endpoint listens in ``pid``'s namespace.  ``HarnessError`` naming the
    MTA and ``why()`` (its last log line) if the process ends first or time runs out."""
    wanted = list(endpoints)
    deadline = time.monotonic() + timeout_s
    while True:
        missing = [(a, p) for a, p in wanted if not is_listening(pid, a, p)]
        if not missing:
            return
        where = ", ".join(f"{a}:{p}" for a, p in missing)
        if not running():
            raise HarnessError(f"{name}: exited before listening on {where}: {why()}")
        if time.monotonic() > deadline:
            raise HarnessError(f"{name}: nothing listens on {where} after {timeout_s:.0f} s")
        time.sleep(POLL_S)


# --- processes (rules 2 and 3) --------------------------------------------------------------
def alive(pid: int) -> bool:
    """Rule 2."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat.rpartition(b")")[2].split()[0] != b"Z"


def group_members(pgid: int) -> list[int]:
    """The live pids whose process group is ``pgid``."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_bytes().rpartition(b")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":  # after "(comm)": state ppid pgrp
            members.append(int(entry.name))
    return members


def pids_where(predicate: Callable[[str], bool]) -> list[int]:
    """Live pids (not this process) for which ``predicate(/proc/PID path)`` holds; a
    process that ends while it is asked about is left out."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if predicate(entry.path) and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def terminate(
    pids: Iterable[int], *, children: Iterable[subprocess.Popen] = (), grace_s: float = GRACE_S
) -> None:
    """Rule 3: SIGTERM every pid (and every child), SIGKILL whatever is alive after the
    grace; children are reaped."""
    owned = list(children)
    left = set(pids) | {child.pid for child in owned}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = _signal_and_wait(left, sig, owned, grace_s)
        if not left:
            return


def end_group(
    leader: int, *, child: subprocess.Popen | None = None, grace_s: float = GRACE_S
) -> None:
    """SIGTERM the group's leader (it ends its own children), wait for the whole group to
    go, then SIGKILL whatever of it is left (rule 3)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(leader, signal.SIGTERM)
    owned = [child] if child is not None else []
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        _reap(owned)
        if not group_members(leader):
            return
        time.sleep(POLL_S)
    _signal_and_wait(set(group_members(leader)), signal.SIGKILL, owned, grace_s)


def _signal_and_wait(
    pids: set[int], sig: int, children: list[subprocess.Popen], grace_s: float
) -> set[int]:
    """Send ``sig`` to ``pids``; those still alive when the grace is over."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + grace_s
    while True:
        _reap(children)
        pids = {pid for pid in pids if alive(pid)}
        if not pids or time.monotonic() > deadline:
            return pids
        time.sleep(POLL_S)


def _reap(children: list[subprocess.Popen]) -> None:
    for child in children:
        child.poll()


# --- system users (rule 4) ------------------------------------------------------------------
def ensure_group(name: str) -> None:
    if not _known(grp.getgrnam, name):
        _create(["groupadd", "--system", name], grp.getgrnam, name)


def ensure_user(name: str, home: str, group: str | None = None) -> None:
    """A system user ``name``: in its own group, or in ``group`` (which must exist)."""
    if _known(pwd.getpwnam, name):
        return
    membership = ["--user-group"] if group is None else ["--gid", group]
    argv = ["useradd", "--system", *membership, "--no-create-home", "--home-dir", home]
    _create([*argv, "--shell", "/usr/sbin/nologin", name], pwd.getpwnam, name)


def _known(lookup: Callable[[str], object], name: str) -> bool:
    try:
        lookup(name)
    except KeyError:
        return False
    return True


def _create(argv: list[str], lookup: Callable[[str], object], name: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0 and not _known(lookup, name):  # a parallel run may have won
        said = done.stderr.strip().splitlines()
        raise HarnessError(f"{' '.join(argv)}: {said[-1] if said else 'failed'}")
