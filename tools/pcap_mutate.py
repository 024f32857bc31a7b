"""Mutated captures for fuzzing the pcap reader and the dissector.

``mutants(seed, rng)`` yields ``Mutant(kinds, data)`` forever: the seed capture (pcap or
pcapng bytes) with one to three mutations stacked, each drawn from ``MUTATIONS``.  The
same seed and the same ``random.Random`` state give the same mutants, so a crash is
reproduced from (seed file, RNG seed, index).  A torture script reuses it; so does
``tools/pcap_fuzz.py``.

Rules kept here:

1. Every mutation is total: whatever the input (even one an earlier mutation broke), it
   returns bytes; mutations that need records fall back to a bit flip when none parse.
2. Mutations aim where parsers decide: file-level bytes (bit flips, byte values, inserted
   and deleted runs, truncation), records (dropped, duplicated, swapped, moved; the
   pcap record's caplen/origlen and pcapng block lengths) and, in Ethernet/IPv4 frames,
   the fields the decoder and reassembler read (IP total length and header length, TCP
   header length, flags, sequence and acknowledgement numbers, UDP length, the payload).
3. Values are drawn from edges first (0, 1, max, off-by-one of the true value, a sign
   bit) as often as uniformly: those are where bounds checks are wrong.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterator
from typing import NamedTuple

_PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": "<",
    b"\xa1\xb2\xc3\xd4": ">",
    b"\x4d\x3c\xb2\xa1": "<",
    b"\xa1\xb2\x3c\x4d": ">",
}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
_INTERESTING = (0, 1, 2, 0x7F, 0x80, 0xFF)


class Mutant(NamedTuple):
    kinds: tuple[str, ...]  # the mutations applied, in order
    data: bytes


class _Records(NamedTuple):
    """A capture cut into its header and its records (pcap) or blocks (pcapng)."""

    head: bytes
    records: list[bytes]
    order: str  # struct byte order of the lengths
    pcapng: bool


def mutants(seed: bytes, rng: random.Random, stack: int = 3) -> Iterator[Mutant]:
    """Mutants of *seed*, forever; each applies 1 to *stack* mutations."""
    names = list(MUTATIONS)
    while True:
        data, kinds = seed, []
        for _ in range(rng.randint(1, stack)):
            name = rng.choice(names)
            data = MUTATIONS[name](data, rng)
            kinds.append(name)
        yield Mutant(tuple(kinds), data)


def split(data: bytes) -> _Records | None:
    """The records of a pcap or the blocks of a pcapng file; None if it does not parse."""
    if data[:4] in _PCAP_MAGIC and len(data) >= 24:
        return _split_pcap(data, _PCAP_MAGIC[data[:4]])
    if data[:4] == _PCAPNG_SHB and len(data) >= 12:
        order = "<" if data[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
        return _split_pcapng(data, order)
    return None


def _split_pcap(data: bytes, order: str) -> _Records | None:
    pos, records = 24, []
    while pos + 16 <= len(data):
        caplen = struct.unpack_from(order + "I", data, pos + 8)[0]
        end = pos + 16 + caplen
        if end > len(data):
            break
        records.append(data[pos:end])
        pos = end
    if not records:
        return None
    return _Records(data[:24], records + ([data[pos:]] if pos < len(data) else []), order, False)


def _split_pcapng(data: bytes, order: str) -> _Records | None:
    pos, blocks = 0, []
    while pos + 12 <= len(data):
        length = struct.unpack_from(order + "I", data, pos + 4)[0]
        if length < 12 or pos + length > len(data):
            break
        blocks.append(data[pos : pos + length])
        pos += length
    if len(blocks) < 2:
        return None
    # the section header stays first: only what follows it is moved about
    return _Records(blocks[0], blocks[1:] + ([data[pos:]] if pos < len(data) else []), order, True)


def _join(parts: _Records) -> bytes:
    return parts.head + b"".join(parts.records)


def _edge(rng: random.Random, true: int, bits: int) -> int:
    """A value for a field of *bits* bits whose sound value is *true* (rule 3)."""
    top = (1 << bits) - 1
    edges = (0, 1, true - 1, true + 1, top, top >> 1, (top >> 1) + 1, true * 2, true >> 1)
    if rng.random() < 0.5:
        return rng.choice(edges) & top
    return rng.randint(0, top)


# --- file-level mutations


def bit_flip(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 4, 8))):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def byte_set(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 4))):
        out[rng.randrange(len(out))] = rng.choice((*_INTERESTING, rng.randrange(256)))
    return bytes(out)


def insert_bytes(data: bytes, rng: random.Random) -> bytes:
    at = rng.randint(0, len(data))
    junk = rng.choice((b"\x00", b"\r\n", b"\n", b"\xff" * 4, rng.randbytes(rng.randint(1, 64))))
    return data[:at] + junk + data[at:]


def delete_bytes(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    at = rng.randrange(len(data))
    return data[:at] + data[at + rng.randint(1, 64) :]


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randint(0, len(data))]


# --- record-level mutations


def _on_records(change: Callable[[_Records, random.Random], _Records]):
    """A record mutation, falling back to a bit flip where no records parse (rule 1)."""

    def mutation(data: bytes, rng: random.Random) -> bytes:
        parts = split(data)
        if parts is None or not parts.records:
            return bit_flip(data, rng)
        return _join(change(parts, rng))

    mutation.__name__ = change.__name__
    return mutation


def _drop(parts: _Records, rng: random.Random) -> _Records:
    records = list(parts.records)
    for _ in range(rng.choice((1, 1, 2, 5))):
        if records:
            del records[rng.randrange(len(records))]
    return parts._replace(records=records)


def _duplicate(parts: _Records, rng: random.Random) -> _Records:
    records = list(parts.records)
    at = rng.randrange(len(records))
    records.insert(rng.randint(0, len(records)), records[at])
    return parts._replace(records=records)


def _swap(parts: _Records, rng: random.Random) -> _Records:
    records = list(parts.records)
    i, j = rng.randrange(len(records)), rng.randrange(len(records))
    records[i], records[j] = records[j], records[i]
    return parts._replace(records=records)


def _move(parts: _Records, rng: random.Random) -> _Records:
    records = list(parts.records)
    record = records.pop(rng.randrange(len(records)))
    records.insert(rng.randint(0, len(records)), record)
    return parts._replace(records=records)


def _length(parts: _Records, rng: random.Random) -> _Records:
    """A pcap record's caplen or origlen, or a pcapng block's leading or trailing length."""
    records = list(parts.records)
    at = rng.randrange(len(records))
    record = bytearray(records[at])
    if parts.pcapng:
        choices = [4, len(record) - 4] if len(record) >= 12 else []
    else:
        choices = [8, 12] if len(record) >= 16 else []
    if choices:
        pos = rng.choice(choices)
        true = struct.unpack_from(parts.order + "I", record, pos)[0]
        struct.pack_into(parts.order + "I", record, pos, _edge(rng, true, 32))
    records[at] = bytes(record)
    return parts._replace(records=records)


# --- frame-level mutations (Ethernet + IPv4 in a classic pcap)


def _on_frame(change: Callable[[bytearray, int, random.Random], None]):
    """A mutation of one Ethernet/IPv4 frame's headers; a bit flip if there is none."""

    def mutation(data: bytes, rng: random.Random) -> bytes:
        parts = split(data)
        frames = [] if parts is None or parts.pcapng else _ipv4_frames(parts)
        if not frames:
            return bit_flip(data, rng)
        at = rng.choice(frames)
        record = bytearray(parts.records[at])
        change(record, 16 + 14, rng)
        records = list(parts.records)
        records[at] = bytes(record)
        return _join(parts._replace(records=records))

    mutation.__name__ = change.__name__
    return mutation


def _ipv4_frames(parts: _Records) -> list[int]:
    """Indexes of the records holding an Ethernet frame with a whole IPv4 + TCP/UDP header."""
    if struct.unpack_from(parts.order + "I", parts.head, 20)[0] & 0x03FF_FFFF != 1:
        return []
    return [
        i
        for i, r in enumerate(parts.records)
        if len(r) >= 16 + 14 + 20 + 20 and r[16 + 12 : 16 + 14] == b"\x08\x00" and r[30] == 0x45
    ]


def _field(record: bytearray, pos: int, fmt: str, rng: random.Random) -> None:
    bits = struct.calcsize(fmt) * 8
    true = struct.unpack_from("!" + fmt, record, pos)[0]
    struct.pack_into("!" + fmt, record, pos, _edge(rng, true, bits))


def _ip_length(record: bytearray, ip: int, rng: random.Random) -> None:
    if rng.random() < 0.7:
        _field(record, ip + 2, "H", rng)  # total length
    else:
        record[ip] = 0x40 | rng.randrange(16)  # header length


def _tcp_header(record: bytearray, ip: int, rng: random.Random) -> None:
    tcp = ip + (record[ip] & 0x0F) * 4
    if record[ip + 9] == 17:  # UDP: its length
        _field(record, tcp + 4, "H", rng)
        return
    what = rng.choice(("seq", "ack", "flags", "offset"))
    if what == "seq":
        _shift(record, tcp + 4, rng)
    elif what == "ack":
        _shift(record, tcp + 8, rng)
    elif what == "flags":
        record[tcp + 13] = rng.choice((0x02, 0x12, 0x10, 0x11, 0x04, 0x14, 0x18, 0x01, 0xFF, 0))
    else:
        record[tcp + 12] = rng.randrange(16) << 4


def _shift(record: bytearray, pos: int, rng: random.Random) -> None:
    """Move a 32-bit sequence number a little, a lot, or across the wrap."""
    value = struct.unpack_from("!I", record, pos)[0]
    delta = rng.choice((1, -1, 2, 100, -100, 1 << 16, 1 << 26, 1 << 31, rng.getrandbits(32)))
    struct.pack_into("!I", record, pos, (value + delta) & 0xFFFF_FFFF)


def _payload(record: bytearray, ip: int, rng: random.Random) -> None:
    """Bytes of the application payload: CR, LF, NUL, a dot, a digit, a high byte."""
    tcp = ip + (record[ip] & 0x0F) * 4
    start = tcp + (8 if record[ip + 9] == 17 else (record[tcp + 12] >> 4) * 4)
    if start >= len(record):
        return
    for _ in range(rng.choice((1, 2, 4))):
        at = rng.randrange(start, len(record))
        record[at] = rng.choice(
            (0x0D, 0x0A, 0x00, 0x2E, 0x20, 0x2D, 0x30 + rng.randrange(10), 0xC3, 0xFF)
        )


MUTATIONS: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "bit-flip": bit_flip,
    "byte-set": byte_set,
    "insert": insert_bytes,
    "delete": delete_bytes,
    "truncate": truncate,
    "drop-record": _on_records(_drop),
    "duplicate-record": _on_records(_duplicate),
    "swap-records": _on_records(_swap),
    "move-record": _on_records(_move),
    "record-length": _on_records(_length),
    "ip-length": _on_frame(_ip_length),
    "tcp-header": _on_frame(_tcp_header),
    "payload": _on_frame(_payload),
}
