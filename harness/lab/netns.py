"""Entering network namespaces from Python.

Rules kept here:
- setns(2) moves only the calling *thread*; everything in this module switches in, does one
  thing, and switches back before returning, so no caller is ever left inside a lab host
  (a signal landing while it switches is held until the thread is back: harness.signals).
- A socket keeps the namespace it was created in, so "a socket in host H" is: enter H,
  create the socket, leave.  Binding and using it can then happen on any thread.
- Python 3.11 has no ``os.setns``: libc's setns is called through ctypes.
"""

from __future__ import annotations

import ctypes
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from harness import signals
from harness.errors import LabError

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]

SocketFactory = Callable[..., socket.socket]


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise LabError(f"setns failed: {os.strerror(err)}")


def netns_path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


@contextmanager
@signals.holding  # a signal while the thread switches waits until it is back home
def entered(name: str) -> Iterator[None]:
    """Run the body of the ``with`` on this thread inside network namespace ``name``."""
    try:
        target = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise LabError(f"network namespace {name!r} does not exist") from None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        yield
    finally:
        _setns(home)
        os.close(target)
        os.close(home)
        signals.release()  # one that landed while this switched: the thread is home now


def socket_in(
    name: str, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM, proto: int = 0
) -> socket.socket:
    """A new socket that lives in network namespace ``name``."""
    with entered(name):
        return socket.socket(family, type, proto)


def socket_factory(name: str) -> SocketFactory:
    """A ``socket.socket``-compatible callable making sockets inside ``name``."""

    def make(
        family: int = socket.AF_INET, type: int = socket.SOCK_STREAM, proto: int = 0
    ) -> socket.socket:
        return socket_in(name, family, type, proto)

    return make


def write_sysctl(name: str, key: str, value: str) -> None:
    """Set a net.* sysctl inside namespace ``name`` (/proc/sys/net follows the thread)."""
    path = "/proc/sys/" + key.replace(".", "/")
    with entered(name), open(path, "w") as f:
        f.write(value)


def netns_inode(name: str) -> int | None:
    try:
        return os.stat(netns_path(name)).st_ino
    except FileNotFoundError:
        return None
