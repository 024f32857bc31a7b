"""Fuzzing as a standing test (issue 9): the pcap reader, the dissector and the SMTP core's
Observer on inputs nobody wrote, a bounded budget each in every run.

What may happen: a ladder, or a ``PcapError`` of one line naming the file and an offset;
every document rendered is valid UTF-8 and the JSON ladder reads back equal (the oracle is
``tools/pcap_fuzz.py``'s ``examine``, the mutations ``tools/pcap_mutate.py``'s, which the
offline run of 100,000+ mutants uses too).  Every input that ever broke one of these
rules is kept in ``tests/data/fuzz/`` and replayed here.
"""

from __future__ import annotations

import importlib.util
import itertools
import random
import sys

import dnslib
import pytest
from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ladder_pcaps import CORPUS, FUZZ, dns_zoo_capture, seed_capture

from harness.capture.pcapfile import PcapError, read
from harness.ladder.dissect import describe_dns
from harness.smtp.events import ConnectionClosed, Direction
from harness.smtp.protocol import Observer


def _tool(name: str):
    """A module of tools/ (not a package: the offline scripts import each other by path)."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "tools"))


mutate, fuzz = _tool("pcap_mutate"), _tool("pcap_fuzz")
BUDGET = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
SMALL_CORPUS = ["smtp-bdat-gap.pcap", "smtp-starttls.pcap", "smtp-bdat-cmd-invalid.pcapng"]


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> list[bytes]:
    """Small captures of every kind the dissector knows: the seed exchange cut into
    9-byte segments, DNS of every record type, a gap, STARTTLS, BDAT, pcapng."""
    scratch = tmp_path_factory.mktemp("seeds")
    made = [seed_capture(scratch / "seed.pcap", cut=9), dns_zoo_capture(scratch / "zoo.pcap")]
    return [p.read_bytes() for p in made] + [(CORPUS / n).read_bytes() for n in SMALL_CORPUS]


def _mutant(seeds: list[bytes], rng: random.Random) -> bytes:
    return next(mutate.mutants(rng.choice(seeds), rng)).data


@pytest.mark.parametrize("path", sorted(FUZZ.glob("*.pcap*")), ids=lambda p: p.name)
def test_every_input_that_broke_the_dissector_is_kept_and_passes(path):
    assert fuzz.examine(str(path)) is None


@BUDGET
@given(rng=st.randoms(use_true_random=False))
def test_mutated_captures_give_a_ladder_or_a_one_line_pcap_error(tmp_path, seeds, rng):
    path = tmp_path / "mutant.pcap"
    path.write_bytes(_mutant(seeds, rng))
    assert fuzz.examine(str(path)) is None


@BUDGET
@given(rng=st.randoms(use_true_random=False))
def test_the_reader_yields_records_in_order_or_one_pcap_error(tmp_path, seeds, rng):
    path = tmp_path / "mutant.pcap"
    data = _mutant(seeds, rng)
    path.write_bytes(data)
    numbers = []
    try:
        for record in read(str(path)):
            numbers.append(record.number)
            assert 0 <= record.offset < len(data) and len(record.data) == record.caplen
    except PcapError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(f"{path}: offset ")
    assert numbers == list(range(1, len(numbers) + 1))


_WORDS = [b"220-a\r\n", b"220 b\r\n", b"250 ok\r\n", b"354 go\r\n", b"EHLO x\r\n", b"DATA\r\n"]
_WORDS += [b"BDAT 5 LAST\r\n", b"STARTTLS\r\n", b".\r\n", b"\r\n.\r\n", b"\r", b"\n", b"\x00"]
# b"" is the end of a direction: given only at the end (feeding after it is a caller's bug)
_CHUNKS = st.one_of(st.binary(min_size=1, max_size=40), st.sampled_from(_WORDS))


@BUDGET
@given(
    script=st.lists(
        st.tuples(st.sampled_from(list(Direction)), st.one_of(_CHUNKS, st.integers(1, 50))),
        max_size=40,
    ),
    close=st.lists(st.sampled_from(list(Direction)), unique=True),
)
def test_the_observer_takes_any_bytes_gaps_and_ends(script, close):
    """Arbitrary bytes and gaps, each direction ended or not: events only, never an
    exception; offsets never go back; a closed direction says so once, last."""
    obs, events = Observer(), []
    for direction, what in script:
        if isinstance(what, int):
            events += obs.skip(direction, what)
        else:
            events += obs.feed(direction, what)
    for direction in close:
        events += obs.feed(direction, b"")
    for direction in Direction:
        mine = [e for e in events if e.direction is direction]
        closed = [i for i, e in enumerate(mine) if isinstance(e, ConnectionClosed)]
        assert len(closed) <= 1 and closed in ([], [len(mine) - 1])
        assert not closed or direction in close


@pytest.fixture(scope="module")
def dns_messages(tmp_path_factory) -> list[bytes]:
    path = dns_zoo_capture(tmp_path_factory.mktemp("zoo") / "zoo.pcap")
    return [r.data[14 + 20 + 8 :] for r in read(str(path))]


@BUDGET
@given(rng=st.randoms(use_true_random=False))
def test_any_dns_message_dnslib_parses_is_described_in_utf8(dns_messages, rng):
    data = bytearray(rng.choice(dns_messages))
    for _ in range(rng.choice((1, 2, 4))):
        data[rng.randrange(len(data))] = rng.randrange(256)
    try:
        record = dnslib.DNSRecord.parse(bytes(data))
    except Exception:
        return
    kind, text, detail = describe_dns(record)
    text.encode("utf-8")
    for _, value in detail:
        for part in value if isinstance(value, tuple) else (value,):
            for item in part if isinstance(part, tuple) else (part,):
                assert not isinstance(item, str) or item.encode("utf-8")
    assert kind == ("dns-answer" if record.header.qr else "dns-query")


def _first(n: int, seed: bytes, rng_seed: int) -> list:
    return list(itertools.islice(mutate.mutants(seed, random.Random(rng_seed)), n))


def test_the_mutator_is_deterministic_and_changes_its_input(seeds):
    first = _first(50, seeds[0], 3)
    assert first == _first(50, seeds[0], 3)
    assert sum(m.data != seeds[0] for m in first) >= 45
    assert {k for m in _first(400, seeds[0], 4) for k in m.kinds} == set(mutate.MUTATIONS)
