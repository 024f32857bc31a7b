"""A pcapng's Decryption Secrets Blocks are untrusted input: a damaged one is one line of
bad input (file, offset), exit 2 - never a traceback (it was ``struct.error``, exit 3) nor
a read of the rest of the file into memory."""

from __future__ import annotations

import struct
import subprocess

import pytest
from conftest import CLI

from harness.errors import HarnessError
from harness.tls.keylog import DSB_TYPE, TLS_KEY_LOG, from_capture

SHB = struct.pack("<IIIHHqI", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1, 28)


def block(btype: int, body: bytes, length: int | None = None) -> bytes:
    size = 12 + len(body) if length is None else length
    return struct.pack("<II", btype, size) + body + struct.pack("<I", size)


LINE = b"CLIENT_RANDOM " + b"00" * 32 + b" " + b"11" * 48 + b"\n"
DAMAGED = {
    "too short for its fields": block(DSB_TYPE, b"\0\0\0\0", length=16),
    "octets of secrets in a": block(DSB_TYPE, struct.pack("<II", TLS_KEY_LOG, 4096) + LINE),
}


@pytest.mark.parametrize("said", sorted(DAMAGED))
def test_a_damaged_secrets_block_is_one_line_of_bad_input(tmp_path, said) -> None:
    capture = tmp_path / "damaged.pcapng"
    capture.write_bytes(SHB + DAMAGED[said])
    with pytest.raises(HarnessError, match=f"secrets block at offset 28: .*{said}"):
        from_capture(capture)
    done = subprocess.run([*CLI, "ladder", str(capture)], capture_output=True, text=True)
    assert done.returncode == 2 and said in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_whole_secrets_block_is_read(tmp_path) -> None:
    padded = LINE + b"\0" * (-len(LINE) % 4)
    capture = tmp_path / "good.pcapng"
    capture.write_bytes(SHB + block(DSB_TYPE, struct.pack("<II", TLS_KEY_LOG, len(LINE)) + padded))
    assert len(from_capture(capture)) == 1
