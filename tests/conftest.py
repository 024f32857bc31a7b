"""Shared helpers for the test suite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CLI = [PYTHON, "-m", "harness"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root for network namespaces (CI runs as root)")
    for item in items:
        if "lab" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A 0755 folder, removed afterwards: real MTAs deliver as users of their own (Exim's
    Debian-exim, OpenSMTPD's opensmtpd), who cannot enter pytest's 0700 tmp_path."""
    path = Path(tempfile.mkdtemp(prefix="smtp-harness-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def system_snapshot() -> dict[str, object]:
    """What a lab may touch on the machine: compare before and after a run."""

    def sh(cmd: str) -> str:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout

    root_ns = os.readlink("/proc/self/ns/net")
    in_other_ns = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/ns/net") != root_ns:
                in_other_ns.add(int(pid))
        except OSError:
            continue
    return {
        "netns": sh("ip netns list"),
        "root links": sh("ip -o link show | cut -d' ' -f2"),
        "root addrs": sh("ip -o addr show"),
        "root routes": sh("ip route show table all"),
        "etc/netns": sorted(os.listdir("/etc/netns")) if os.path.isdir("/etc/netns") else [],
        "records": sh("ls /run/smtp-harness/labs 2>/dev/null"),
        "processes in other netns": in_other_ns,
    }
