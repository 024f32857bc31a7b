"""A pcapng writer, by hand with ``struct`` (draft-ietf-opsawg-pcapng; scapy cannot write
name blocks), and the rewrite that turns a run's raw capture into its final one.

Rules kept here:
- One section, little-endian: a Section Header Block (its options: ``shb_userappl``, then
  one ``opt_comment`` per line given, e.g. the scenario and the verdict), one Interface
  Description Block (Ethernet, ``if_name``, ``if_tsresol`` = 9: nanoseconds, so no
  timestamp is rounded), then an optional Name Resolution Block, then Enhanced Packet
  Blocks.  The name block comes before every packet, so a reader in one pass (tshark) has
  the names for the first frame.  TLS key logs (NSS format) go in one Decryption Secrets
  Block (secrets type ``TLSK``, draft §4.7) right after it, before every packet too, so
  tshark and Wireshark decrypt the TLS inside with no option.  A file with secrets is mode
  0600 from its first byte (test keys of the run, but key material all the same).
- A name record holds one address (IPv4 or IPv6) and its names, each UTF-8 and
  zero-terminated (draft §4.5), in the order given.  The name a reader shows is the last
  one: Wireshark lets each name of a record replace the one before, and
  ``pcapfile.annotations`` reads them the same way.  An empty name map writes no name
  block.
- Every block is padded to 32 bits and its length repeated at its end; every option value
  is padded to 32 bits; an option list ends with ``opt_endofopt``.  An option value longer
  than 65,535 octets cannot be written: it is cut at a UTF-8 boundary, never made invalid.
- ``rewrite`` never leaves a half-written final file: it writes a temporary file beside
  the target and renames it over the target (atomic on one file system); on any failure
  the temporary file is removed and the target is as it was.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from harness.capture.pcapfile import LINKTYPE_ETHERNET, MAX_CAPLEN, read

# block types
SHB, IDB, NRB, EPB, DSB = 0x0A0D0D0A, 1, 4, 6, 0x0A
SECRETS_TLS_KEY_LOG = 0x544C534B  # "TLSK"
BYTE_ORDER_MAGIC = 0x1A2B3C4D
# option codes
OPT_ENDOFOPT, OPT_COMMENT = 0, 1
SHB_USERAPPL = 4
IF_NAME, IF_TSRESOL = 2, 9
TSRESOL_NS = 9  # 10^-9 s
# name resolution record types
NRB_END, NRB_IPV4, NRB_IPV6 = 0, 1, 2
MAX_OPTION = 0xFFFF

Names = Mapping[str, Sequence[str]]  # address -> its names, the one to show last


def _padded(value: bytes) -> bytes:
    return value + b"\0" * (-len(value) % 4)


def _cut(text: str) -> bytes:
    """``text`` as UTF-8, at most MAX_OPTION octets, cut only between characters."""
    data = text.encode("utf-8", "backslashreplace")
    return data[:MAX_OPTION].decode("utf-8", "ignore").encode("utf-8")


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + _padded(value)


def _options(options: Iterable[tuple[int, bytes]]) -> bytes:
    body = b"".join(_option(code, value) for code, value in options)
    return body + struct.pack("<HH", OPT_ENDOFOPT, 0) if body else b""


def _block(btype: int, body: bytes) -> bytes:
    length = 12 + len(_padded(body))
    return struct.pack("<II", btype, length) + _padded(body) + struct.pack("<I", length)


def section_header(application: str, comments: Sequence[str] = ()) -> bytes:
    """An SHB of unknown section length, with ``shb_userappl`` and one comment per item."""
    options = [(SHB_USERAPPL, _cut(application)), *((OPT_COMMENT, _cut(c)) for c in comments)]
    body = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) + _options(options)
    return _block(SHB, body)


def interface(name: str, linktype: int = LINKTYPE_ETHERNET, snaplen: int = MAX_CAPLEN) -> bytes:
    """An IDB with nanosecond timestamps."""
    options = [(IF_NAME, _cut(name)), (IF_TSRESOL, bytes([TSRESOL_NS]))]
    return _block(IDB, struct.pack("<HHI", linktype, 0, snaplen) + _options(options))


def name_resolution(names: Names) -> bytes:
    """An NRB with one record per address (its names in order), or nothing for no names."""
    records = b""
    for address, hostnames in names.items():
        packed = ipaddress.ip_address(address).packed
        kind = NRB_IPV4 if len(packed) == 4 else NRB_IPV6
        value = packed + b"".join(_cut(n).replace(b"\0", b"") + b"\0" for n in hostnames)
        records += _option(kind, value)  # a record is laid out as an option is
    if not records:
        return b""
    return _block(NRB, records + struct.pack("<HH", NRB_END, 0))


def decryption_secrets(keylog: bytes) -> bytes:
    """A DSB holding a TLS key log, or nothing for an empty one."""
    if not keylog:
        return b""
    return _block(DSB, struct.pack("<II", SECRETS_TLS_KEY_LOG, len(keylog)) + keylog)


_EPB_HEAD = struct.Struct("<IIIIIII")  # type, length, interface, time high/low, caplen, origlen
_TRAILER = struct.Struct("<I")
_PADDING = (b"", b"\0\0\0", b"\0\0", b"\0")  # by the data's length mod 4


def packet(
    time: int, data: bytes, origlen: int | None = None, comments: Sequence[str] = ()
) -> bytes:
    """An EPB on interface 0; ``time`` in nanoseconds since the epoch."""
    size = len(data)
    options = _options((OPT_COMMENT, _cut(c)) for c in comments) if comments else b""
    pad = _PADDING[size & 3]
    length = 32 + size + len(pad) + len(options)
    head = _EPB_HEAD.pack(EPB, length, 0, time >> 32, time & 0xFFFF_FFFF, size, origlen or size)
    return b"".join((head, data, pad, options, _TRAILER.pack(length)))


class PcapngWriter:
    """Write a pcapng file: ``PcapngWriter(file, ...)`` then ``write(time, data, origlen)``
    per frame (the same calls as ``pcapfile.PcapWriter``)."""

    def __init__(
        self,
        file: BinaryIO,
        *,
        application: str = "smtp-harness",
        comments: Sequence[str] = (),
        iface: str = "br0",
        names: Names | None = None,
        snaplen: int = MAX_CAPLEN,
        secrets: bytes = b"",
    ) -> None:
        self._file = file
        file.write(section_header(application, comments) + interface(iface, snaplen=snaplen))
        file.write(name_resolution(names or {}) + decryption_secrets(secrets))

    def write(
        self, time: int, data: bytes, origlen: int | None = None, comments: Sequence[str] = ()
    ) -> None:
        """Append one frame; *time* is in nanoseconds since the epoch."""
        self._file.write(packet(time, data, origlen, comments))


def rewrite(
    source: str | os.PathLike,
    target: str | os.PathLike,
    *,
    application: str,
    section_comments: Sequence[str],
    names: Names,
    comments: Mapping[int, Sequence[str]],
    secrets: bytes = b"",
) -> None:
    """Copy the Ethernet capture ``source`` to ``target`` as pcapng with names, comments
    (``comments``: frame number -> its comments) and TLS key log ``secrets``, atomically
    (rules above)."""
    target = Path(target)
    temporary = target.with_name(f".{target.name}.tmp")
    mode = 0o600 if secrets else 0o644  # a key log is read by its owner only
    try:
        temporary.unlink(missing_ok=True)
        with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as f:
            os.fchmod(f.fileno(), mode)
            writer = PcapngWriter(
                f,
                application=application,
                comments=section_comments,
                names=names,
                secrets=secrets,
            )
            for record in read(str(source)):
                writer.write(
                    record.time, record.data, record.origlen, comments.get(record.number, ())
                )
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
