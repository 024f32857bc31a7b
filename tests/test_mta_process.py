"""harness.mta.process without a lab: readiness read from this process's own TCP tables
(loopback sockets), stopping real child processes, system users that cannot be made."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from harness.errors import HarnessError
from harness.mta import process

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
# ignores SIGTERM (says so once it does), so only the SIGKILL after the grace ends it
STUBBORN = "import signal, time; signal.signal(15, 1); print('ready', flush=True); time.sleep(60)"


@pytest.mark.parametrize(
    ("address", "port", "row"),
    [
        ("127.0.0.1", 25, "0100007F:0019"),
        ("192.0.2.25", 2525, "190200C0:09DD"),
        ("::1", 25, "00000000000000000000000001000000:0019"),
        ("2001:db8::25", 25, "B80D0120000000000000000025000000:0019"),
    ],
)
def test_endpoints_are_written_as_the_kernel_writes_them(address, port, row) -> None:
    assert process.tcp_endpoint(address, port) == row


@pytest.mark.parametrize(
    ("family", "address"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
)
def test_a_listening_socket_is_seen_and_a_bound_one_is_not(family, address) -> None:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        port = sock.getsockname()[1]
        assert not process.is_listening(os.getpid(), address, port)  # bound, not listening
        sock.listen()
        assert process.is_listening(os.getpid(), address, port)
        assert process.tcp_endpoint(address, port) in process.listening(os.getpid())


def test_the_wildcard_address_listens_for_every_address() -> None:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        assert process.is_listening(os.getpid(), "192.0.2.25", sock.getsockname()[1])


def test_await_listening_names_the_mta_and_why_when_the_process_ends_first() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with pytest.raises(HarnessError, match=r"^demo: exited before listening on 127.0.0.1:9: bye$"):
        process.await_listening(
            "demo", child.pid, [("127.0.0.1", 9)], running=lambda: False, why=lambda: "bye"
        )
    assert process.listening(child.pid) == set()  # a gone process listens nowhere


def test_terminate_ends_a_child_with_sigterm_and_a_stubborn_one_with_sigkill() -> None:
    polite = subprocess.Popen(SLEEPER)
    stubborn = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE)
    assert stubborn.stdout.readline() == b"ready\n"
    process.terminate([], children=[polite, stubborn], grace_s=0.5)
    assert polite.returncode == -15 and stubborn.returncode == -9
    stubborn.stdout.close()
    assert not process.alive(polite.pid) and not process.alive(stubborn.pid)


def test_end_group_waits_for_the_whole_group() -> None:
    leader = subprocess.Popen(
        ["sh", "-c", f"{' '.join(SLEEPER[:2])} '{SLEEPER[2]}' & wait"], start_new_session=True
    )
    deadline = time.monotonic() + 5
    while len(process.group_members(leader.pid)) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    members = process.group_members(leader.pid)
    process.end_group(leader.pid, child=leader, grace_s=0.5)
    assert process.group_members(leader.pid) == []
    assert not any(process.alive(pid) for pid in members)


def test_a_zombie_is_not_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 5
    while process.alive(child.pid):  # exits, stays a zombie until reaped
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert os.path.exists(f"/proc/{child.pid}")
    child.wait()


def test_a_user_that_cannot_be_made_is_a_one_line_error() -> None:
    with pytest.raises(HarnessError, match=r"^useradd --system .* bad name: ") as error:
        process.ensure_user("bad name", "/nonexistent")
    assert "\n" not in str(error.value)
    process.ensure_user("root", "/root")  # exists: nothing to do
