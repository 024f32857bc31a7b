"""The pcapng writer (harness.capture.pcapng) and the reading of what it adds: names,
packet comments, the section header (pcapfile.annotations); tshark as the second opinion."""

from __future__ import annotations

import os
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from harness.capture import pcapng
from harness.capture.pcapfile import PcapError, PcapWriter, annotations, read
from harness.capture.pcapng import PcapngWriter, rewrite

T0 = 1_700_000_000_123_456_789  # ns: not a whole microsecond, so rounding would show
FRAMES = [
    bytes(Ether() / IP(src="192.0.2.10", dst="192.0.2.25") / TCP(dport=25, flags="S")),
    bytes(Ether() / IPv6(src="2001:db8::10", dst="2001:db8::25") / TCP(dport=25, flags="S")),
    bytes(Ether() / IP(src="192.0.2.25", dst="192.0.2.10") / TCP(sport=25, flags="SA")),
]
NAMES = {
    "192.0.2.25": ["mail.receiver.com", "receiver"],
    "2001:db8::25": ["mail.receiver.com", "receiver"],
    "192.0.2.10": ["sender"],
    "2001:db8::10": ["sender"],
}
COMMENTS = {1: ["step 3: SYN to port 25"], 3: ["step 4: SYN-ACK", "step 5: é ✓"]}
TSHARK = shutil.which("tshark")


def write_pcapng(path: Path, names=NAMES, comments=COMMENTS, section=("scenario seed",)) -> Path:
    with open(path, "wb") as f:
        writer = PcapngWriter(f, application="smtp-harness 9", comments=section, names=names)
        for i, frame in enumerate(FRAMES, 1):
            writer.write(T0 + i, frame, len(frame) + i, comments.get(i, ()))
    return path


def test_frames_round_trip_with_nanoseconds_and_true_lengths(tmp_path) -> None:
    records = list(read(str(write_pcapng(tmp_path / "c.pcapng"))))
    assert [r.data for r in records] == FRAMES
    assert [r.time for r in records] == [T0 + 1, T0 + 2, T0 + 3]
    assert [r.origlen - r.caplen for r in records] == [1, 2, 3]


def test_annotations_read_back_names_comments_and_section(tmp_path) -> None:
    notes = annotations(str(write_pcapng(tmp_path / "c.pcapng")))
    assert notes.names == {
        "192.0.2.25": "receiver",  # the last name of a record, as Wireshark shows it
        "2001:db8::25": "receiver",
        "192.0.2.10": "sender",
        "2001:db8::10": "sender",
    }
    assert notes.comments == {1: ("step 3: SYN to port 25",), 3: ("step 4: SYN-ACK", "step 5: é ✓")}
    assert notes.application == "smtp-harness 9"
    assert notes.section_comments == ("scenario seed",)


def test_a_pcap_has_no_annotations(tmp_path) -> None:
    path = tmp_path / "c.pcap"
    with open(path, "wb") as f:
        PcapWriter(f).write(T0, FRAMES[0])
    assert annotations(str(path)) == ({}, {}, "", ())


def block_types(data: bytes) -> list[int]:
    types, pos = [], 0
    while pos < len(data):
        btype, length = struct.unpack_from("<II", data, pos)
        types.append(btype)
        pos += length
    return types


def test_the_name_block_comes_before_every_packet(tmp_path) -> None:
    data = write_pcapng(tmp_path / "c.pcapng").read_bytes()
    assert block_types(data) == [pcapng.SHB, pcapng.IDB, pcapng.NRB] + [pcapng.EPB] * 3


def test_no_names_writes_no_name_block(tmp_path) -> None:
    data = write_pcapng(tmp_path / "c.pcapng", names={}).read_bytes()
    assert block_types(data) == [pcapng.SHB, pcapng.IDB] + [pcapng.EPB] * 3


def test_names_that_are_not_printable_or_hold_spaces_are_left_out(tmp_path) -> None:
    names = {"192.0.2.25": ["ok"], "192.0.2.10": ["a b"], "2001:db8::25": ["bad\x1b[31m"]}
    assert annotations(str(write_pcapng(tmp_path / "c.pcapng", names=names))).names == {
        "192.0.2.25": "ok"
    }


def big_endian_capture() -> bytes:
    """A big-endian pcapng with an NRB after a packet, by hand (not our writer)."""

    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        return struct.pack(">II", btype, len(body) + 12) + body + struct.pack(">I", len(body) + 12)

    def option(code: int, value: bytes) -> bytes:
        return struct.pack(">HH", code, len(value)) + value + b"\0" * (-len(value) % 4)

    shb = block(
        pcapng.SHB, struct.pack(">IHHq", 0x1A2B3C4D, 1, 0, -1) + option(1, b"be") + option(0, b"")
    )
    idb = block(pcapng.IDB, struct.pack(">HHI", 1, 0, 0))
    frame = FRAMES[0]
    epb = block(
        pcapng.EPB,
        struct.pack(">IIIII", 0, 0, 1, len(frame), len(frame))
        + frame + b"\0" * (-len(frame) % 4) + option(1, b"hello") + option(0, b""),
    )  # fmt: skip
    records = option(1, bytes([192, 0, 2, 9]) + b"nine\0") + option(0, b"")
    return shb + idb + epb + block(pcapng.NRB, records)


def test_annotations_of_a_big_endian_file_with_a_late_name_block(tmp_path) -> None:
    path = tmp_path / "be.pcapng"
    path.write_bytes(big_endian_capture())
    assert len(list(read(str(path)))) == 1
    notes = annotations(str(path))
    assert notes.names == {"192.0.2.9": "nine"}
    assert notes.comments == {1: ("hello",)}
    assert notes.section_comments == ("be",)


def test_a_damaged_block_is_one_line_with_file_and_offset(tmp_path) -> None:
    data = bytearray(write_pcapng(tmp_path / "c.pcapng").read_bytes())
    shb_length = struct.unpack_from("<I", data, 4)[0]
    struct.pack_into("<I", data, shb_length + 4, 13)  # the IDB's length: not a multiple of 4
    path = tmp_path / "bad.pcapng"
    path.write_bytes(bytes(data))
    with pytest.raises(PcapError, match=rf"^{path}: offset {shb_length}: bad block length 13$"):
        annotations(str(path))
    with pytest.raises(PcapError, match="cannot read"):
        annotations(str(tmp_path / "missing.pcapng"))


def test_an_option_longer_than_its_field_is_cut_between_characters() -> None:
    cut = pcapng._cut("é" * 40_000)  # 80,000 octets
    assert len(cut) == 65_534 and cut.decode("utf-8") == "é" * 32_767


def test_rewrite_adds_names_and_comments_in_place(tmp_path) -> None:
    path = write_pcapng(tmp_path / "capture.pcapng", names={}, comments={}, section=())
    rewrite(
        path, path, application="app", section_comments=["verdict: pass"], names=NAMES,
        comments={2: ["step 9: x"]},
    )  # fmt: skip
    assert [r.data for r in read(str(path))] == FRAMES
    notes = annotations(str(path))
    assert notes.comments == {2: ("step 9: x",)} and notes.names["192.0.2.25"] == "receiver"
    assert notes.section_comments == ("verdict: pass",)
    assert os.listdir(tmp_path) == ["capture.pcapng"]  # no temporary file left


@pytest.mark.parametrize(("secrets", "mode"), [(b"", 0o644), (b"CLIENT_RANDOM 00 11\n", 0o600)])
def test_a_capture_holding_a_key_log_is_readable_by_its_owner_only(tmp_path, secrets, mode):
    """Issue 12: key logs stay mode 0600; a capture with a secrets block is one."""
    path = write_pcapng(tmp_path / "capture.pcapng", names={}, comments={})
    path.chmod(0o644)
    rewrite(
        path, path, application="a", section_comments=[], names={}, comments={}, secrets=secrets
    )
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_a_failed_rewrite_leaves_the_target_as_it_was(tmp_path) -> None:
    source = write_pcapng(tmp_path / "raw.pcapng", names={}, comments={})
    data = source.read_bytes()
    source.write_bytes(data[:-5])  # the last block cut short: the reader fails there
    target = tmp_path / "capture.pcapng"
    target.write_bytes(b"earlier")
    with pytest.raises(PcapError):
        rewrite(source, target, application="a", section_comments=[], names={}, comments={})
    assert target.read_bytes() == b"earlier"
    assert sorted(os.listdir(tmp_path)) == ["capture.pcapng", "raw.pcapng"]


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (CI installs it)")
def test_tshark_shows_the_names_with_no_lookup_and_the_comments(tmp_path) -> None:
    path = write_pcapng(tmp_path / "c.pcapng")
    fields = ["frame.number", "ip.src_host", "ip.dst_host", "ipv6.dst_host", "frame.comment"]
    done = subprocess.run(
        [TSHARK, "-N", "n", "-r", str(path), "-T", "fields", "-E", "separator=|",
         *(a for f in fields for a in ("-e", f))],
        capture_output=True, text=True, timeout=60, env={**os.environ, "LC_ALL": "C.UTF-8"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [line.split("|") for line in done.stdout.splitlines()]
    assert rows[0] == ["1", "sender", "receiver", "", "step 3: SYN to port 25"]
    assert rows[1][:4] == ["2", "", "", "receiver"]
    assert rows[2][:3] == ["3", "receiver", "sender"]
    assert rows[2][4] == "step 4: SYN-ACK,step 5: é ✓"
    info = subprocess.run(["capinfos", str(path)], capture_output=True, text=True, timeout=60)
    assert "Capture application: smtp-harness 9" in info.stdout
    assert "scenario seed" in info.stdout


def test_read_gives_each_name_block_as_it_passes_it(tmp_path) -> None:
    """The names of an NRB reach the reader's caller before the records after it, in the
    one pass that reads them (ours first, the big-endian one after its packet)."""
    seen: list[object] = []
    for record in read(str(write_pcapng(tmp_path / "c.pcapng")), names=seen.append):
        seen.append(record.number)
    assert seen == [annotations(str(tmp_path / "c.pcapng")).names, 1, 2, 3]
    (tmp_path / "be.pcapng").write_bytes(big_endian_capture())
    seen.clear()
    for record in read(str(tmp_path / "be.pcapng"), names=seen.append):
        seen.append(record.number)
    assert seen == [1, {"192.0.2.9": "nine"}]
