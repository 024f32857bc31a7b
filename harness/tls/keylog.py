"""TLS secrets in the NSS key log format, keyed by client random: what the ladder decrypts with.

Rules this module keeps:

- The format is NSS's (the one ``SSLKEYLOGFILE`` and Python's ``SSLContext.keylog_filename``
  write): one ``LABEL CLIENT_RANDOM SECRET`` per line, both values in hex, ``#`` comment
  lines and blank lines ignored.  ``CLIENT_RANDOM`` (TLS 1.2: the 48-octet master secret)
  and the TLS 1.3 traffic secrets (``Label``) are kept; other labels (early data,
  exporters, OpenSSL's ``CLIENT_TRAFFIC_SECRET_N`` after a key update) are read and
  ignored, as Wireshark does.
- A key log is untrusted input: a bad line (a label not of ``A-Z 0-9 _``, a missing field,
  a value that is not hex, a client random that is not 32 octets, a secret of the wrong
  size for its label) is a one-line ``HarnessError`` naming the file and the line, never a
  traceback.
- Secrets are found by the ClientHello's random (``KeyLog.get``); several files merge, a
  later line for the same random and label wins (as Wireshark reads them).
- A pcapng's Decryption Secrets Blocks (type 0x0A) of secrets type TLS key log
  (0x544c534b) are key logs too (``from_capture``): the blocks are found by their headers
  alone, the packets are not read.
"""

from __future__ import annotations

import binascii
import os
import re
import struct
from collections.abc import Iterable
from enum import StrEnum
from typing import BinaryIO

from harness.errors import HarnessError


class Label(StrEnum):
    """The labels the decrypter uses."""

    CLIENT_RANDOM = "CLIENT_RANDOM"  # TLS 1.2: the master secret
    CLIENT_HANDSHAKE = "CLIENT_HANDSHAKE_TRAFFIC_SECRET"
    SERVER_HANDSHAKE = "SERVER_HANDSHAKE_TRAFFIC_SECRET"
    CLIENT_TRAFFIC = "CLIENT_TRAFFIC_SECRET_0"
    SERVER_TRAFFIC = "SERVER_TRAFFIC_SECRET_0"


_LABEL = re.compile(rb"[A-Z0-9_]+")
MASTER_SECRET_SIZE = 48
TRAFFIC_SECRET_SIZES = frozenset({32, 48})  # SHA-256 and SHA-384 suites
RANDOM_SIZE = 32
DSB_TYPE = 0x0000000A  # pcapng Decryption Secrets Block
TLS_KEY_LOG = 0x544C534B  # its secrets type "TLSK"
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
_MAX_BLOCK = 64 << 20

Secrets = dict[Label, bytes]


class KeyLog:
    """Secrets by client random (rules above)."""

    def __init__(self) -> None:
        self._secrets: dict[bytes, Secrets] = {}

    def __len__(self) -> int:
        return len(self._secrets)

    def get(self, client_random: bytes) -> Secrets:
        """The secrets logged for *client_random* (empty when none were)."""
        return self._secrets.get(client_random, {})

    def add_text(self, text: bytes, source: str) -> None:
        """Every line of *text* (a key log named *source* in errors)."""
        for number, line in enumerate(text.splitlines(), 1):
            entry = _parse_line(line, f"{source}:{number}")
            if entry is not None:
                label, client_random, secret = entry
                self._secrets.setdefault(client_random, {})[label] = secret

    def merge(self, other: KeyLog) -> None:
        """Every secret of *other* too (its own win)."""
        for client_random, secrets in other._secrets.items():
            self._secrets.setdefault(client_random, {}).update(secrets)

    def add_file(self, path: str | os.PathLike) -> None:
        try:
            with open(path, "rb") as f:
                text = f.read()
        except OSError as exc:
            raise HarnessError(f"{path}: cannot read the key log: {exc.strerror or exc}") from None
        self.add_text(text, str(path))

    @classmethod
    def from_files(cls, paths: Iterable[str | os.PathLike]) -> KeyLog:
        keylog = cls()
        for path in paths:
            keylog.add_file(path)
        return keylog


def _parse_line(line: bytes, where: str) -> tuple[Label, bytes, bytes] | None:
    """(label, client random, secret) of one line; None for a comment, a blank line or a
    label the decrypter does not use."""
    fields = line.split()
    if not fields or fields[0].startswith(b"#"):
        return None
    name = fields[0].decode("ascii", "backslashreplace")
    if not _LABEL.fullmatch(fields[0]):
        raise HarnessError(f"{where}: not a key log label: {name!r}")
    if len(fields) != 3:
        raise HarnessError(
            f"{where}: expected LABEL CLIENT_RANDOM SECRET, got {len(fields)} fields"
        )
    client_random = _hex(fields[1], where, "client random")
    secret = _hex(fields[2], where, "secret")
    if len(client_random) != RANDOM_SIZE:
        raise HarnessError(f"{where}: the client random has {len(client_random)} octets, not 32")
    if name not in Label.__members__.values():
        return None
    label = Label(name)
    sizes = {MASTER_SECRET_SIZE} if label is Label.CLIENT_RANDOM else TRAFFIC_SECRET_SIZES
    if len(secret) not in sizes:
        raise HarnessError(f"{where}: a {name} secret of {len(secret)} octets")
    return label, client_random, secret


def _hex(value: bytes, where: str, what: str) -> bytes:
    try:
        return binascii.unhexlify(value)
    except (binascii.Error, ValueError):
        raise HarnessError(f"{where}: the {what} is not hex") from None


def from_capture(path: str | os.PathLike) -> KeyLog:
    """The TLS key logs of a pcapng's Decryption Secrets Blocks (empty for a pcap)."""
    keylog = KeyLog()
    try:
        with open(path, "rb") as f:
            if f.read(4) != _PCAPNG_MAGIC:
                return keylog
            _read_blocks(f, str(path), keylog)
    except OSError as exc:
        raise HarnessError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return keylog


def _read_blocks(f: BinaryIO, path: str, keylog: KeyLog) -> None:
    """Each Decryption Secrets Block's TLS key log into ``keylog``; a damaged block ends
    the scan (the capture reader reports the damage), a damaged secrets block is bad input."""
    order, pos = "<", f.seek(0)
    while len(head := f.read(12)) == 12:
        if head[:4] == _PCAPNG_MAGIC:
            order = ">" if head[8:12] == b"\x1a\x2b\x3c\x4d" else "<"
        btype, blen = struct.unpack_from(order + "II", head)
        if blen < 12 or blen % 4 or blen > _MAX_BLOCK:
            return  # the capture reader reports a damaged file; the secrets end here
        if btype == DSB_TYPE:
            where = f"{path}: secrets block at offset {pos}"
            body = head[8:12] + f.read(blen - 16) if blen >= 20 else b""
            if len(body) < 8:
                raise HarnessError(f"{where}: {blen} octets, too short for its fields")
            secrets_type, size = struct.unpack_from(order + "II", body)
            if 8 + size > len(body):
                raise HarnessError(f"{where}: {size} octets of secrets in a {blen}-octet block")
            if secrets_type == TLS_KEY_LOG:
                keylog.add_text(body[8 : 8 + size], where)
        pos += blen
        f.seek(pos)
