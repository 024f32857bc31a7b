"""Messages between the processes of one command: pickled objects over a stream socket.

Rules this module keeps:

- A message is its pickle after an 8-octet big-endian length; ``recv`` gives the objects in
  the order ``send`` took them, and raises ``EOFError`` when the peer has closed its end
  (also in the middle of a message: a peer that died mid-send sent nothing usable).
- One thread sends and one receives on each end (sends are not interleaved).
- It is what ``multiprocessing.connection.Connection`` does for us, without the
  ``multiprocessing`` package, whose import costs every worker ~2 MiB of resident memory
  (issue 10's RSS is summed over the processes).
"""

from __future__ import annotations

import contextlib
import pickle
import socket

_LENGTH = 8


class Pipe:
    """One end of a socket pair, carrying pickled messages."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._reader = sock.makefile("rb")

    @classmethod
    def from_fd(cls, fd: int) -> Pipe:
        """The end of a socket pair a parent passed as file descriptor *fd*."""
        return cls(socket.socket(fileno=fd))

    def send(self, message: object) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self._sock.sendall(len(data).to_bytes(_LENGTH, "big"))
        self._sock.sendall(data)

    def recv(self) -> object:
        size = int.from_bytes(self._exactly(_LENGTH), "big")
        return pickle.loads(self._exactly(size))

    def _exactly(self, size: int) -> bytes:
        data = self._reader.read(size)
        if len(data) < size:
            raise EOFError("the other end closed the pipe")
        return data

    def close(self) -> None:
        """Close this end; a thread blocked in ``recv`` on it gets ``EOFError``."""
        with contextlib.suppress(OSError):  # the peer has gone already
            self._sock.shutdown(socket.SHUT_RDWR)
        self._reader.close()
        self._sock.close()
