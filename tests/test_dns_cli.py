"""``smtp-harness dns serve`` as a user runs it: a subprocess on loopback, stopped by SIGTERM."""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from dnslib import RCODE

from harness.dns import query
from harness.dns.commands import dns, parse_listen
from harness.errors import HarnessError

ROOT = Path(__file__).resolve().parent.parent
SEED_ZONES = ROOT / "fixtures" / "zones"
SMTP_HARNESS = Path(sys.executable).parent / "smtp-harness"


def full_cli_works() -> bool:
    """Whether the top-level CLI imports (it needs every subsystem's commands)."""
    return (
        subprocess.run([sys.executable, "-c", "import harness.cli"], capture_output=True).returncode
        == 0
    )


FULL_CLI = full_cli_works()
# The `dns` group alone when the top-level CLI cannot import yet (HarnessError then is a
# traceback, so the exit-2 contract is only tested through the real CLI).
DNS_COMMAND = (
    [str(SMTP_HARNESS), "dns"]
    if FULL_CLI
    else [sys.executable, "-c", "from harness.dns.commands import dns; dns()"]
)


class Lines:
    """A subprocess's stdout, read line by line with a timeout."""

    def __init__(self, stream) -> None:
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(
            target=lambda: [self._queue.put(line) for line in stream], daemon=True
        ).start()

    def next(self, timeout: float = 5.0) -> str:
        return self._queue.get(timeout=timeout)


def test_serve_answers_prints_and_exits_cleanly_on_sigterm(tmp_path):
    log = tmp_path / "queries.jsonl"
    command = [
        *DNS_COMMAND,
        "serve",
        str(SEED_ZONES),
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "[::1]:0",
    ]
    command += ["--fault", "sender.com/MX=servfail", "--log", str(log)]
    proc = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        lines = Lines(proc.stdout)
        banner = [lines.next(), lines.next()]
        assert re.fullmatch(r"serving 4 zones on 127\.0\.0\.1:\d+ \(udp\+tcp\)\n", banner[0])
        assert re.fullmatch(r"serving 4 zones on \[::1\]:\d+ \(udp\+tcp\)\n", banner[1])
        port = int(re.search(r":(\d+) ", banner[0]).group(1))
        assert len(query(("127.0.0.1", port), "receiver.com", "MX").rr) == 1
        assert (
            "udp receiver.com. MX NOERROR [receiver.com. MX 10 mail.receiver.com.]" in lines.next()
        )
        assert query(("127.0.0.1", port), "sender.com", "MX").header.rcode == RCODE.SERVFAIL
        assert "sender.com. MX SERVFAIL fault=servfail" in lines.next()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        proc.kill()
        proc.wait()
    assert proc.stderr.read() == ""
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["qname"], e["rcode"]) for e in entries] == [
        ("receiver.com.", "NOERROR"),
        ("sender.com.", "SERVFAIL"),
    ]


@pytest.mark.skipif(not FULL_CLI, reason="harness.cli does not import yet (lab commands missing)")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "localhost:53"], "--listen 'localhost:53': expected ADDR:PORT"),
        (["--listen", "127.0.0.1:53", "--fault", "x/MX=explode"], "unknown action 'explode'"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message):
    result = subprocess.run(
        [*DNS_COMMAND, "serve", str(SEED_ZONES), *args], capture_output=True, text=True, timeout=10
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "localhost:53"], "--listen 'localhost:53': expected ADDR:PORT"),
        (["--listen", "::1:53"], "expected ADDR:PORT"),
        (["--listen", "127.0.0.1:99999"], "expected ADDR:PORT"),
        (["--listen", "127.0.0.1:53", "--fault", "receiver.com"], "--fault 'receiver.com'"),
    ],
)
def test_bad_input_is_a_one_line_harness_error(args, message):
    result = CliRunner().invoke(dns, ["serve", str(SEED_ZONES), *args])
    assert isinstance(result.exception, HarnessError)
    assert message in str(result.exception) and "\n" not in str(result.exception)


def test_bad_zone_directory_is_a_harness_error(tmp_path):
    result = CliRunner().invoke(dns, ["serve", str(tmp_path), "--listen", "127.0.0.1:0"])
    assert isinstance(result.exception, HarnessError)
    assert "no *.zone files" in str(result.exception)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:53", ("127.0.0.1", 53)),
        ("[::1]:5353", ("::1", 5353)),
        ("192.0.2.53:0", ("192.0.2.53", 0)),
    ],
)
def test_parse_listen(text, expected):
    assert parse_listen(text) == expected
