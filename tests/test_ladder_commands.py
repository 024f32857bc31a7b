"""``smtp-harness ladder`` and ``check`` as a user runs them: exit codes, one-line errors,
output that is always UTF-8 (issue 9 findings 6-8)."""

from __future__ import annotations

import contextlib
import io
import subprocess
import tempfile

import pytest
from conftest import CLI, ROOT
from ladder_pcaps import FUZZ, SEED_DIALOGUE, SENDER, seed_capture

import harness.ladder.commands as commands
from harness.cli import run_cli
from harness.ladder.model import Ladder

SEED = ROOT / "pcaps" / "seed.pcap"


def smtp_harness(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*CLI, *args], capture_output=True, timeout=60)


def one_line(stderr: bytes) -> str:
    lines = stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("1.2.3.999=x", "'1.2.3.999' is not an IP address"),
        ("mail.sender.com=x", "is not an IP address"),
        ("192.0.2.10", "expected ADDR=NAME"),
        ("192.0.2.10=two words", "printable UTF-8 without spaces"),
        ("192.0.2.10=tab\there", "printable UTF-8 without spaces"),
    ],
)
def test_a_bad_host_is_one_line_and_exit_2(host, why):
    """``--host 1.2.3.999=x`` was accepted (issue 9 finding 8)."""
    done = smtp_harness("ladder", "--host", host, str(SEED))
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert line.startswith(f"smtp-harness: error: --host {host!r}: ") and why in line
    assert done.stdout == b""


def test_a_host_address_is_matched_as_the_ladder_writes_it(tmp_path):
    path = seed_capture(tmp_path / "seed.pcap")
    done = smtp_harness("ladder", "--host", "192.0.2.010=x", str(path))
    assert done.returncode == 2  # a leading zero: octal to some, decimal to others
    done = smtp_harness("ladder", "--format", "json", "--host", f"{SENDER}=sender", str(path))
    assert Ladder.from_json(done.stdout.decode()).steps[0].src == "sender"


@pytest.mark.parametrize(
    ("data", "why"),
    [(None, "cannot read"), (b"not a capture", "offset 0: not a pcap or pcapng file")],
)
def test_an_unreadable_capture_is_one_line_and_exit_2(tmp_path, data, why):
    path = tmp_path / "bad.pcap"
    if data is not None:
        path.write_bytes(data)
    for args in (["ladder", str(path)], ["check", str(path), "--expect", str(SEED)]):
        done = smtp_harness(*args)
        assert done.returncode == 2
        line = one_line(done.stderr)
        assert line.startswith(f"smtp-harness: error: {path}: ") and why in line


def test_check_says_same_0_and_differs_1(tmp_path):
    same = smtp_harness("check", str(SEED), "--expect", str(SEED))
    assert (same.returncode, same.stderr) == (0, b"")
    changed = [(s, b"451 later\r\n" if d == b"250 OK\r\n" else d) for s, d in SEED_DIALOGUE]
    run = seed_capture(tmp_path / "run.pcap", dialogue=changed)
    golden = seed_capture(tmp_path / "golden.pcap")
    differs = smtp_harness("check", str(run), "--expect", str(golden))
    assert (differs.returncode, differs.stderr) == (1, b"")
    assert b"mismatch(es) between the run and the golden capture" in differs.stdout


def test_the_damaged_seed_is_a_difference_not_a_crash():
    """It crashed the dissector; through ``check`` the traceback exited 1, like a difference."""
    done = smtp_harness("check", str(FUZZ / "seed-1675-xor-04.pcap"), "--expect", str(SEED))
    assert (done.returncode, done.stderr) == (1, b"")
    assert b"anomaly  11 bytes after FIN, not part of the stream" in done.stdout


@pytest.mark.parametrize("command", ["ladder", "check"])
def test_a_fault_of_ours_is_one_line_exit_3_and_a_traceback_file(monkeypatch, tmp_path, command):
    """A mock: no input crashes the dissector any more (the fuzzers keep it so), so a bug is
    planted in it to see how the command reports one."""

    def broken(path, hosts=None, **options):
        raise RuntimeError("gap reported after EOF")

    monkeypatch.setattr(commands, "dissect", broken)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the traceback goes
    args = [str(SEED)] if command == "ladder" else [str(SEED), "--expect", str(SEED)]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert run_cli([command, *args]) == 3
    (line,) = err.getvalue().splitlines()
    assert line.startswith(f"smtp-harness: error: harness fault on {SEED}: RuntimeError: gap")
    path = line.rsplit("traceback in ", 1)[1]
    assert path.startswith(f"{tmp_path}/smtp-harness-traceback-")
    with open(path, encoding="utf-8") as f:
        kept = f.read()
    assert "Traceback (most recent call last)" in kept and "in broken" in kept
    assert out.getvalue() == ""


def test_json_ladder_of_binary_commands_is_utf8_on_stdout(tmp_path):
    dialogue = [("s", b"220 \xfe hi\r\n"), ("c", b"\xff\xfe\x00 x\r\n"), ("s", b"500 \xc3\r\n")]
    path = seed_capture(tmp_path / "bin.pcap", dialogue=dialogue)
    done = smtp_harness("ladder", "--format", "json", str(path))
    assert done.returncode == 0 and done.stderr == b""
    ladder = Ladder.from_json(done.stdout.decode("utf-8"))  # strict: no lone surrogates
    command = next(s for s in ladder.steps if s.kind == "command")
    assert (command.text, command.get("verb")) == ("\\xff\\xfe\x00 x", "\\xff\\xfe\x00")


def _named_seed(tmp_path, *, late: bool = False):
    """The seed capture as a pcapng naming its hosts: the name block first, as a run
    writes it, or (``late``) after every packet."""
    from harness.capture.pcapng import NRB, rewrite

    path = tmp_path / "seed.pcapng"
    names = {"192.0.2.10": ["client-x"], "192.0.2.25": ["server-y"]}
    rewrite(SEED, path, application="t", section_comments=(), names=names, comments={})
    if late:
        data, blocks, pos = path.read_bytes(), [], 0
        while pos < len(data):
            blocks.append(data[pos : pos + int.from_bytes(data[pos + 4 : pos + 8], "little")])
            pos += len(blocks[-1])
        nrb = next(b for b in blocks if int.from_bytes(b[:4], "little") == NRB)
        path.write_bytes(b"".join([*(b for b in blocks if b is not nrb), nrb]))
    return path


def test_a_pcapng_cut_short_is_a_ladder_with_its_names_and_a_warning(tmp_path):
    """Its names are read in the pass that reads its packets: a file cut short in its last
    block is read up to it (pcapfile's rule), not refused by a pass of its own (main: exit
    2, "truncated block")."""
    path = _named_seed(tmp_path)
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(path.read_bytes()[:-30])
    for fmt in ("jsonl", "json"):
        done = smtp_harness("ladder", "--format", fmt, str(cut))
        assert done.returncode == 0, done.stderr
        assert b"client-x" in done.stdout and b"server-y" in done.stdout
        assert b"capture cut short" in done.stdout
    done = smtp_harness("check", str(cut))
    assert done.returncode == 0 and b"(client-x -> server-y)" in done.stdout


def test_a_late_name_block_names_what_begins_after_it(tmp_path):
    """One pass: an NRB after every packet names no step, yet the hosts it names are the
    ladder's; --host still wins over the file's names."""
    import json

    early = smtp_harness("ladder", "--format", "jsonl", str(_named_seed(tmp_path)))
    late = smtp_harness("ladder", "--format", "jsonl", str(_named_seed(tmp_path, late=True)))
    lines = [[json.loads(line) for line in done.stdout.splitlines()] for done in (early, late)]
    assert {s["src"] for s in lines[0] if s["type"] == "step"} >= {"client-x", "server-y"}
    assert not {"client-x", "server-y"} & {s["src"] for s in lines[1] if s["type"] == "step"}
    assert (
        lines[0][-1]["hosts"]
        == lines[1][-1]["hosts"]
        == {
            "192.0.2.10": "client-x",
            "192.0.2.25": "server-y",
        }
    )
    given = smtp_harness(
        "ladder", "--format", "jsonl", "--host", "192.0.2.10=me", str(_named_seed(tmp_path))
    )
    summary = json.loads(given.stdout.splitlines()[-1])
    assert summary["hosts"] == {"192.0.2.10": "me", "192.0.2.25": "server-y"}
