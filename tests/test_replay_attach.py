"""``replay --lab-id ID --target HOST``: into a running ``lab up`` lab (started here as a
subprocess, stopped by its pid with SIGTERM), from its sender host, at one of its hosts;
any other target is refused with one line and exit 2."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CLI, ROOT

from harness.ladder.dissect import dissect
from harness.replay.attach import NOT_READ
from harness.replay.session import read_session

pytestmark = pytest.mark.lab

SEED = ROOT / "pcaps" / "seed.pcap"
UP_TIMEOUT_S = 120.0
_UP = re.compile(r"^lab (sh[0-9a-f]+) is up \(owner pid (\d+)\)$")


def _namespaces(lab_id: str) -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.startswith(f"{lab_id}-")]


@pytest.fixture(scope="module")
def running(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """A `lab up` lab (the seed, its scripted receiver): its id and folder; stopped after
    the module by its pid with SIGTERM, which must leave none of its namespaces."""
    folder = tmp_path_factory.mktemp("lab-up")
    argv = [*CLI, "lab", "up", "--out", str(folder)]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lab_id, seen = None, b""
    try:
        deadline = time.monotonic() + UP_TIMEOUT_S
        while lab_id is None and time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                seen += os.read(proc.stdout.fileno(), 4096)
                found = [_UP.match(line) for line in seen.decode().splitlines()]
                lab_id = next((m.group(1) for m in found if m), None)
        assert lab_id is not None, (seen, proc.poll())
        yield lab_id, folder
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    assert code == 143, proc.stderr.read()
    assert _namespaces(lab_id) == []


def _replay(capture: Path, out: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    argv = [*CLI, "replay", str(capture), "--as", "client", "--out", str(out), *args]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=300)
    record = out / "replay.json"
    return done, json.loads(record.read_text()) if record.exists() else {}


def test_the_seed_replays_the_same_into_the_running_labs_receiver(running, tmp_path):
    lab_id, lab_folder = running
    before = set(lab_folder.glob("maildir/*/new/*"))
    done, record = _replay(SEED, tmp_path, "--lab-id", lab_id, "--target", "receiver")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (record["lab"], record["verdict"], record["faults"]) == (lab_id, "pass", [])
    assert "same as" in (tmp_path / "diff.txt").read_text()
    assert "server     192.0.2.25:25 -> 192.0.2.25 (receiver)" in done.stdout
    assert f"stored: {NOT_READ}" in done.stdout
    live = dissect(str(tmp_path / "capture.pcapng")).steps  # the lab's bridge, captured
    assert any(s.kind == "syn" and (s.src, s.dst) == ("192.0.2.10", "192.0.2.25") for s in live)
    stored = set(lab_folder.glob("maildir/*/new/*")) - before  # the lab's receiver took it
    assert sorted(p.parent.parent.name for p in stored) == [
        "c3po@receiver.com",
        "r2d2@receiver.com",
    ]


def test_a_lab_host_without_smtp_differs_at_its_reset(running, tmp_path):
    lab_id, _ = running
    done, record = _replay(SEED, tmp_path, "--lab-id", lab_id, "--target", "dns")
    assert done.returncode == 1, done.stdout + done.stderr
    assert record["faults"] == [] and record["replies"] == []
    assert record["stopped"]["differences"][0].startswith("connect:")
    steps = read_session(str(SEED)).steps
    syn_ack = next(s.index for s in steps if s.kind == "syn-ack")
    text = (tmp_path / "diff.txt").read_text()
    assert (
        f'{SEED}:{syn_ack}: error: syn-ack differs: kind syn-ack -> rst, text "SYN-ACK" -> "RST"'
        in text
    )


@pytest.mark.parametrize(
    ("target", "said"),
    [
        ("192.0.2.25", "--target '192.0.2.25': lab {id} has no such host"),
        ("mail.receiver.com", "--target 'mail.receiver.com': lab {id} has no such host"),
        ("203.0.113.7", "--target '203.0.113.7': lab {id} has no such host"),
    ],
)
def test_a_target_that_is_no_host_of_the_lab_is_one_line_and_exit_2(
    running, tmp_path, target, said
):
    lab_id, _ = running
    done, record = _replay(SEED, tmp_path / "run", "--lab-id", lab_id, "--target", target)
    assert (done.returncode, record) == (2, {}), done.stdout + done.stderr
    assert done.stderr.startswith(f"smtp-harness: error: {said.format(id=lab_id)}")
    assert done.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("--target", "receiver"), "replay: --lab-id and --target go together"),
        (("--lab-id", "{id}"), "replay: --lab-id and --target go together"),
        (("--lab-id", "{id}", "--target", "receiver", "--lab"), "is a running lab: not with"),
        (("--lab-id", "{id}", "--target", "receiver", "--mta", "postfix"), "--lab-id: only"),
        (("--lab-id", "sh000000", "--target", "receiver"), "--lab-id 'sh000000': no running"),
    ],
)
def test_lab_id_options_that_do_not_name_a_running_lab_host_are_refused(
    running, tmp_path, args, said
):
    lab_id, _ = running
    given = [a.format(id=lab_id) for a in args]
    done, record = _replay(SEED, tmp_path / "run", *given)
    assert (done.returncode, record) == (2, {}), done.stdout + done.stderr
    assert done.stderr.startswith("smtp-harness: error: ") and said in done.stderr
    assert done.stderr.count("\n") == 1


def test_the_replay_fixture_replays_into_the_running_lab(running, replay):
    lab_id, _ = running
    result = replay(SEED, lab_id=lab_id, target="receiver")
    assert (str(result.verdict), result.into, result.faults) == ("pass", lab_id, [])
    assert result.smuggling.note == NOT_READ
