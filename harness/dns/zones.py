"""Zones: the data the fake DNS server is authoritative for.

Rules this module keeps:

* The zone-file syntax is dnslib's (``ZoneParser``); we never tokenise zone text ourselves.
* One zone per file.  A directory holds ``<origin>.zone`` files; the file name gives the
  starting ``$ORIGIN`` and a ``$ORIGIN`` line inside may change it.  The zone's apex is the
  owner of its one SOA record; every other record must lie at or below that apex.
* Names are compared case-insensitively (RFC 4343) through ``name_key``; the records keep
  the case they were written with.
* Bad input is a one-line ``HarnessError`` naming the file and, where known, the line.
* Changes made after loading (``add``, ``remove``, ``set_glue``, ``serve_glue``) bump
  ``version`` so that whoever caches answers (the server) knows to forget them.
* Glue is a name's own A/AAAA records, unless ``serve_glue`` gave that name another
  address: then that address alone, while questions about the name itself still get its
  own records (inconsistent glue, RFC 2181 §5.4.1).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dnslib import QTYPE, RR, DNSBuffer, DNSError, DNSLabel, ZoneParser

from harness.errors import HarnessError

Key = tuple[bytes, ...]
# Called with "<source>:<line>" and each record as a zone file is loaded (the scenario
# loader checks addresses this way); it raises HarnessError to refuse the record.
RecordCheck = Callable[[str, RR], None]
MAX_TTL = 2**31 - 1  # RFC 2181 §8

# What dnslib's parser raises on bad text: its own DNSError, ValueError from int()/the
# lexer/unhexlify, IndexError/KeyError from a short or odd record line.
_PARSE_ERRORS = (DNSError, ValueError, IndexError, KeyError, AttributeError, TypeError)


def name_key(name: DNSLabel | str) -> Key:
    """The case-folded labels of ``name``: the one way names are compared."""
    if not isinstance(name, DNSLabel):
        name = DNSLabel(name)
    return tuple(label.lower() for label in name.label)


def qtype_code(qtype: str) -> int:
    """The numeric type for a mnemonic such as ``"MX"`` (or ``"TYPE65280"``)."""
    try:
        return getattr(QTYPE, qtype.upper())
    except DNSError:
        raise HarnessError(f"unknown DNS type {qtype!r}") from None


@dataclass
class Zone:
    """One zone: its SOA, its RRsets by name and type, and its glue switch."""

    origin: DNSLabel
    soa: RR
    glue: bool = True
    rrsets: dict[Key, dict[int, list[RR]]] = field(default_factory=dict)
    # Every owner name and each of its ancestors down to the apex: a name in here without
    # RRsets is an empty non-terminal (NODATA, not NXDOMAIN).
    names: frozenset[Key] = frozenset()
    # The SOA as it goes in negative answers: TTL min(SOA TTL, MINIMUM) (RFC 2308 §5).
    negative_soa: RR = field(init=False)

    def __post_init__(self) -> None:
        ttl = min(self.soa.ttl, self.soa.rdata.times[-1])
        self.negative_soa = RR(self.soa.rname, QTYPE.SOA, ttl=ttl, rdata=self.soa.rdata)

    def contains(self, key: Key) -> bool:
        depth = len(self.origin.label)
        return len(key) >= depth and key[len(key) - depth :] == name_key(self.origin)

    def add(self, rr: RR, *, source: str) -> None:
        key = name_key(rr.rname)
        if not self.contains(key):
            raise HarnessError(f"{source}: {rr.rname} is outside zone {self.origin}")
        types = self.rrsets.setdefault(key, {})
        is_cname = rr.rtype == QTYPE.CNAME
        if any((t == QTYPE.CNAME) != is_cname for t in types):
            raise HarnessError(f"{source}: {rr.rname} has a CNAME and other records")
        rrset = types.get(rr.rtype, [])
        if rr not in rrset:
            types[rr.rtype] = [*rrset, rr]
        self.names = self.names | self._ancestors(key)

    def remove(self, key: Key, rtype: int | None) -> None:
        """Remove the RRset of ``rtype`` at ``key`` (every RRset there if ``rtype`` is None).

        The SOA stays: negative answers need it.
        """
        types = self.rrsets.get(key, {})
        for t in [t for t in types if rtype in (None, t) and t != QTYPE.SOA]:
            del types[t]
        if not types:
            self.rrsets.pop(key, None)
        self.names = frozenset().union(*(self._ancestors(k) for k in self.rrsets))

    def _ancestors(self, key: Key) -> frozenset[Key]:
        """``key`` and every name between it and the apex."""
        return frozenset(key[i:] for i in range(len(key) - len(self.origin.label) + 1))


class ZoneSet:
    """The zones one server answers for, found by longest suffix."""

    def __init__(self) -> None:
        self._zones: dict[Key, Zone] = {}
        self._glue: dict[Key, list[RR]] = {}  # name -> the glue served instead of its own
        self._lock = threading.Lock()
        self.version = 0

    @classmethod
    def from_dir(cls, path: str | Path) -> ZoneSet:
        zones = cls()
        zones.load_dir(path)
        return zones

    def load_dir(self, path: str | Path, check: RecordCheck | None = None) -> None:
        """Load every ``*.zone`` file in ``path`` (each record through ``check`` first)."""
        directory = Path(path)
        if not directory.is_dir():
            raise HarnessError(f"{directory}: not a directory of zone files")
        files = sorted(directory.glob("*.zone"))
        if not files:
            raise HarnessError(f"{directory}: no *.zone files")
        for file in files:
            self.load_file(file, check)

    def load_file(self, path: str | Path, check: RecordCheck | None = None) -> Zone:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise HarnessError(f"{path}: cannot read zone file: {exc}") from None
        origin = path.name.removesuffix(".zone") if path.name.endswith(".zone") else ""
        return self.load_text(text, origin=origin, source=str(path), check=check)

    def load_text(
        self,
        text: str,
        *,
        origin: str = "",
        source: str = "<zone>",
        check: RecordCheck | None = None,
    ) -> Zone:
        """Add the zone written in ``text`` (zone-file syntax, exactly one SOA)."""
        lines = parse_records_with_lines(text, origin=origin, source=source)
        if check is not None:
            for line, rr in lines:
                check(f"{source}:{line}", rr)
        records = [rr for _, rr in lines]
        soas = [rr for rr in records if rr.rtype == QTYPE.SOA]
        if len(soas) != 1:
            raise HarnessError(f"{source}: a zone needs exactly one SOA record, found {len(soas)}")
        zone = Zone(origin=soas[0].rname, soa=soas[0])
        for rr in records:
            zone.add(rr, source=source)
        with self._lock:
            apex = name_key(zone.origin)
            if apex in self._zones:
                raise HarnessError(f"{source}: zone {zone.origin} is already loaded")
            self._zones[apex] = zone
            self.version += 1
        return zone

    def add(self, records: str | RR | Iterable[RR], *, replace: bool = False) -> None:
        """Add records to the loaded zones; ``replace`` drops the RRsets they override.

        ``records`` is zone-file text with absolute names, one RR, or several RRs.
        """
        if isinstance(records, str):
            records = parse_records(records, source="<records>")
        elif isinstance(records, RR):
            records = [records]
        records = list(records)
        if any(rr.rtype == QTYPE.SOA for rr in records):
            raise HarnessError("an SOA record can only change in its zone file")
        with self._lock:
            for rr in records:
                zone = self._zone_for(rr.rname)
                if replace:
                    zone.remove(name_key(rr.rname), rr.rtype)
            for rr in records:
                self._zone_for(rr.rname).add(rr, source="<records>")
            self.version += 1

    def remove(self, name: str, rtype: str = "*") -> None:
        """Remove the ``rtype`` RRset at ``name`` (all of its RRsets for ``"*"``)."""
        code = None if rtype == "*" else qtype_code(rtype)
        if code == QTYPE.SOA:
            raise HarnessError("an SOA record can only change in its zone file")
        with self._lock:
            self._zone_for(name).remove(name_key(name), code)
            self.version += 1

    def set_glue(self, origin: str, enabled: bool) -> None:
        """Whether MX/NS answers from zone ``origin`` carry addresses in the additional section."""
        with self._lock:
            zone = self._zones.get(name_key(origin))
            if zone is None:
                raise HarnessError(f"no zone {origin!r} loaded")
            zone.glue = enabled
            self.version += 1

    def serve_glue(self, name: str, address: str) -> None:
        """Serve ``address`` as the only glue of ``name`` (a name in our zones)."""
        rtype = "AAAA" if ":" in address else "A"
        owner = name.rstrip(".") + "."
        (rr,) = parse_records(f"{owner} 300 IN {rtype} {address}", source=f"glue {name}")
        with self._lock:
            self._zone_for(owner)
            self._glue[name_key(owner)] = [rr]
            self.version += 1

    def glue(self, name: DNSLabel) -> list[RR]:
        """The A/AAAA records that go with ``name`` in an additional section (rules above)."""
        key = name_key(name)
        if key in self._glue:
            return self._glue[key]
        zone = self.find(name)
        rrsets = zone.rrsets.get(key, {}) if zone else {}
        return [rr for t in (QTYPE.A, QTYPE.AAAA) for rr in rrsets.get(t, [])]

    def find(self, name: DNSLabel | str) -> Zone | None:
        """The zone that holds ``name`` (the one with the longest matching apex)."""
        key = name_key(name)
        for i in range(len(key) + 1):
            zone = self._zones.get(key[i:])
            if zone is not None:
                return zone
        return None

    def __iter__(self) -> Iterator[Zone]:
        return iter(list(self._zones.values()))

    def __len__(self) -> int:
        return len(self._zones)

    def _zone_for(self, name: DNSLabel | str) -> Zone:
        zone = self.find(name)
        if zone is None:
            raise HarnessError(f"{name} is outside every loaded zone")
        return zone


def parse_records(text: str, *, origin: str = "", source: str = "<zone>") -> list[RR]:
    """Parse zone-file text with dnslib, turning its errors into one line with a line number."""
    return [rr for _, rr in parse_records_with_lines(text, origin=origin, source=source)]


def parse_records_with_lines(
    text: str, *, origin: str = "", source: str = "<zone>"
) -> list[tuple[int, RR]]:
    """``parse_records``, each record with the line its last word is on."""
    parser = ZoneParser(text, origin=origin)
    position = [0]
    parser.i = _track_position(parser.l, position)
    records = []
    try:
        for rr in parser:
            records.append((text.count("\n", 0, position[0]) + 1, rr))
    except _PARSE_ERRORS as exc:
        line = text.count("\n", 0, position[0]) + 1
        reason = "too few fields" if isinstance(exc, IndexError) else _one_line(exc)
        raise HarnessError(f"{source}:{line}: bad zone record: {reason}") from None
    return records


def wire_problem(rr: RR) -> str | None:
    """Why ``rr`` cannot go into an answer (a TTL beyond RFC 2181 §8, a field too wide for
    its wire format: dnslib parses what it cannot pack), or None."""
    if not 0 <= rr.ttl <= MAX_TTL:
        return f"TTL {rr.ttl} is not 0..{MAX_TTL} (RFC 2181 §8)"
    try:
        rr.pack(DNSBuffer())
    except (*_PARSE_ERRORS, struct.error, OverflowError) as exc:
        return f"cannot be put on the wire: {_one_line(exc)}"
    return None


def _track_position(lexer, position: list[int]) -> Iterator[tuple[str, str]]:
    """Pass the lexer's tokens through, noting where the last word ended.

    dnslib's parser reports no positions; the lexer reads a StringIO and keeps peeked
    characters in ``q``, so the end of the last word is ``tell() - len(q)``.
    """
    for token in lexer:
        if token[0] == "ATOM":
            position[0] = lexer.f.tell() - len(lexer.q)
        yield token


def _one_line(exc: Exception, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
